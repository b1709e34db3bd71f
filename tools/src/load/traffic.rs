//! What the load generator sends and who must receive it: plain functions,
//! no I/O, so the expectations the loss count rests on are unit-tested.

use protocol::Kind;
use rand::Rng;

/// Users `0..users`, each with `devices` devices; a device's index is
/// `user * devices + device`.
#[derive(Debug, Clone)]
pub struct Population {
    pub users: usize,
    pub devices: usize,
    /// Members (user indices) of each group conversation.
    pub groups: Vec<Vec<usize>>,
    /// The groups each user belongs to.
    pub groups_of: Vec<Vec<usize>>,
    /// Channels; device `d` subscribes to channel `d % channels`.
    pub channels: usize,
}

/// Shares of each kind of message, in percent of all sends.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Mix {
    pub dm: u32,
    pub group: u32,
    pub ephemeral: u32,
    /// Chat publications to a channel.
    pub channel: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum To {
    User(usize),
    Group(usize),
    Channel(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub sender: usize,
    pub device: usize,
    pub kind: Kind,
    pub to: To,
}

impl Population {
    /// Groups of `size` members: user `u` starts group `g` when
    /// `u % groups_every == 0`, with the next `size - 1` users (wrapping).
    pub fn new(users: usize, devices: usize, group_size: usize, groups: usize) -> Self {
        Self::with_channels(users, devices, group_size, groups, 0)
    }

    /// [`Population::new`] with `channels` channels (none when 0).
    pub fn with_channels(
        users: usize,
        devices: usize,
        group_size: usize,
        groups: usize,
        channels: usize,
    ) -> Self {
        let size = group_size.clamp(2, users.max(2));
        let stride = (users / groups.max(1)).max(1);
        let groups: Vec<Vec<usize>> = (0..groups.min(users))
            .map(|g| (0..size).map(|k| (g * stride + k) % users).collect())
            .collect();
        let mut groups_of = vec![Vec::new(); users];
        for (g, members) in groups.iter().enumerate() {
            for &u in members {
                groups_of[u].push(g);
            }
        }
        Self {
            users,
            devices,
            groups,
            groups_of,
            channels,
        }
    }

    pub fn device_count(&self) -> usize {
        self.users * self.devices
    }

    pub fn device_index(&self, user: usize, device: usize) -> usize {
        user * self.devices + device
    }

    /// The channel device `index` subscribes to.
    pub fn channel_of(&self, index: usize) -> Option<usize> {
        (self.channels > 0).then(|| index % self.channels)
    }

    /// The next message: a random sending device, a kind drawn from `mix`
    /// (a group message from a user in no group becomes a DM, and so does a
    /// channel publication without channels), a target.
    pub fn plan(&self, mix: Mix, rng: &mut impl Rng) -> Planned {
        let sender = rng.random_range(0..self.users);
        let device = rng.random_range(0..self.devices);
        let total = (mix.dm + mix.group + mix.ephemeral + mix.channel).max(1);
        let roll = rng.random_range(0..total);
        let (kind, group) = if roll < mix.dm {
            (Kind::Chat, false)
        } else if roll < mix.dm + mix.group {
            (Kind::Chat, true)
        } else if roll < mix.dm + mix.group + mix.ephemeral {
            (Kind::Ephemeral, rng.random_bool(0.5))
        } else if self.channels > 0 {
            let to = To::Channel(rng.random_range(0..self.channels));
            let kind = Kind::Chat;
            return Planned {
                sender,
                device,
                kind,
                to,
            };
        } else {
            (Kind::Chat, false)
        };
        let mine = &self.groups_of[sender];
        let to = if group && !mine.is_empty() {
            To::Group(mine[rng.random_range(0..mine.len())])
        } else {
            To::User(self.other_user(sender, rng))
        };
        Planned {
            sender,
            device,
            kind,
            to,
        }
    }

    fn other_user(&self, sender: usize, rng: &mut impl Rng) -> usize {
        if self.users < 2 {
            return sender;
        }
        (sender + rng.random_range(1..self.users)) % self.users
    }

    /// Every device that must receive `p` (DESIGN §3: the sender's own devices
    /// receive chat; ephemeral skips the sending device).
    pub fn expected(&self, p: &Planned) -> Vec<usize> {
        let mut users = match &p.to {
            To::User(u) => vec![p.sender, *u],
            To::Group(g) => self.groups[*g].clone(),
            // Its subscribers, the sending device included.
            To::Channel(c) => {
                return (0..self.device_count())
                    .filter(|&d| self.channel_of(d) == Some(*c))
                    .collect()
            }
        };
        users.sort_unstable();
        users.dedup();
        let sending = self.device_index(p.sender, p.device);
        users
            .into_iter()
            .flat_map(|u| (0..self.devices).map(move |d| (u, d)))
            .map(|(u, d)| self.device_index(u, d))
            .filter(|&d| p.kind == Kind::Chat || d != sending)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    const MIX: Mix = Mix {
        dm: 50,
        group: 25,
        ephemeral: 20,
        channel: 5,
    };

    #[test]
    fn chat_dm_reaches_every_device_of_both_users() {
        let pop = Population::new(10, 3, 4, 2);
        let p = Planned {
            sender: 1,
            device: 2,
            kind: Kind::Chat,
            to: To::User(7),
        };
        assert_eq!(pop.expected(&p), vec![3, 4, 5, 21, 22, 23]);
    }

    #[test]
    fn ephemeral_skips_only_the_sending_device() {
        let pop = Population::new(10, 3, 4, 2);
        let p = Planned {
            sender: 1,
            device: 2,
            kind: Kind::Ephemeral,
            to: To::User(7),
        };
        assert_eq!(pop.expected(&p), vec![3, 4, 21, 22, 23]);
    }

    #[test]
    fn group_reaches_every_member_device_once() {
        let pop = Population::new(10, 2, 4, 2);
        assert_eq!(pop.groups, vec![vec![0, 1, 2, 3], vec![5, 6, 7, 8]]);
        let p = Planned {
            sender: 6,
            device: 0,
            kind: Kind::Chat,
            to: To::Group(1),
        };
        assert_eq!(pop.expected(&p), vec![10, 11, 12, 13, 14, 15, 16, 17]);
    }

    proptest! {
        #[test]
        fn plans_are_valid(users in 2usize..60, devices in 1usize..5, size in 2usize..10,
                           groups in 0usize..10, channels in 0usize..4, seed: u64) {
            let pop = Population::with_channels(users, devices, size, groups, channels);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            for _ in 0..50 {
                let p = pop.plan(MIX, &mut rng);
                let expected = pop.expected(&p);
                let sending = pop.device_index(p.sender, p.device);
                match p.to {
                    To::User(u) => prop_assert_ne!(u, p.sender),
                    To::Group(g) => prop_assert!(pop.groups[g].contains(&p.sender)),
                    To::Channel(c) => {
                        prop_assert!(c < channels && p.kind == Kind::Chat);
                        prop_assert!(expected.iter().all(|&d| pop.channel_of(d) == Some(c)));
                        prop_assert_eq!(expected.len(), (0..pop.device_count()).filter(|&d| d % channels == c).count());
                        prop_assert_eq!(expected.contains(&sending), pop.channel_of(sending) == Some(c));
                        continue;
                    }
                }
                prop_assert_eq!(expected.contains(&sending), p.kind == Kind::Chat);
                let mut sorted = expected.clone();
                sorted.dedup();
                prop_assert_eq!(sorted.len(), expected.len());
                prop_assert!(expected.iter().all(|&d| d < pop.device_count()));
            }
        }

        #[test]
        fn the_mix_is_respected(seed: u64) {
            let pop = Population::new(50, 2, 5, 10);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let eph = (0..2000).filter(|_| pop.plan(MIX, &mut rng).kind == Kind::Ephemeral).count();
            prop_assert!((300..500).contains(&eph), "ephemeral {eph} of 2000");
        }
    }
}
