//! The etcd key layout (docs/protocol.md, "etcd layout"), under a configurable prefix.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdLayout {
    prefix: String,
}

impl EtcdLayout {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }
    /// Prefix of every leased server registration (ends with `/`).
    pub fn servers_prefix(&self) -> String {
        format!("{}/servers/", self.prefix)
    }
    pub fn server_key(&self, server_id: &crate::ServerId) -> String {
        format!("{}/servers/{server_id}", self.prefix)
    }
    /// The election name coordinators campaign on.
    pub fn election(&self) -> String {
        format!("{}/coordinator/leader", self.prefix)
    }
    pub fn assignment_key(&self) -> String {
        format!("{}/assignment", self.prefix)
    }
    /// The id of this incarnation of the topic, written once; cursors carry it.
    pub fn log_epoch_key(&self) -> String {
        format!("{}/log_epoch", self.prefix)
    }
}

impl Default for EtcdLayout {
    fn default() -> Self {
        Self::new("/switchboard")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let l = EtcdLayout::new("/sb/");
        let s1 = crate::ServerId::new("s1").unwrap();
        assert_eq!(l.server_key(&s1), "/sb/servers/s1");
        assert!(l.server_key(&s1).starts_with(&l.servers_prefix()));
        assert_eq!(l.assignment_key(), "/sb/assignment");
        assert_eq!(
            EtcdLayout::default().election(),
            "/switchboard/coordinator/leader"
        );
    }
}
