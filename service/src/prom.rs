//! Reading a Prometheus text page (what every service's `/metrics` serves):
//! for the operator console and the tests, one parser.

/// One sample: its metric name, the label text inside `{}` (empty when
/// none) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    pub labels: &'a str,
    pub value: f64,
}

impl<'a> Sample<'a> {
    /// The value of label `key`, if the sample has it (as written: escapes
    /// are left in; a value may hold commas).
    pub fn label(&self, key: &str) -> Option<&'a str> {
        let mut rest: &'a str = self.labels;
        loop {
            let (k, after) = rest.split_once('=')?;
            let after = after.trim_start().strip_prefix('"')?;
            let end = closing_quote(after)?;
            if k.trim().trim_start_matches(',').trim() == key {
                return Some(&after[..end]);
            }
            rest = &after[end + 1..];
        }
    }
}

/// Where the quoted value at the start of `s` ends (its closing `"`).
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

/// Every sample of `text`, comments skipped.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (series, rest) = match line.find('{') {
            Some(open) => {
                let close = open + line[open..].find('}')?;
                (&line[..close + 1], &line[close + 1..])
            }
            None => line.split_at(line.find(char::is_whitespace)?),
        };
        let value = rest.split_whitespace().next()?.parse().ok()?;
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        Some(Sample {
            name,
            labels,
            value,
        })
    })
}

/// The value of one series: `name` alone for an unlabelled sample, or
/// `name{labels}` exactly as the page writes it.
pub fn value(text: &str, series: &str) -> Option<f64> {
    let (name, labels) = match series.split_once('{') {
        Some((n, l)) => (n, l.strip_suffix('}').unwrap_or(l)),
        None => (series, ""),
    };
    samples(text)
        .find(|s| s.name == name && s.labels == labels)
        .map(|s| s.value)
}

/// The sum of every sample of `name`, whatever its labels (0 if none).
pub fn sum(text: &str, name: &str) -> f64 {
    samples(text)
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP switchboard_server_connections Open sessions\n\
        # TYPE switchboard_server_connections gauge\n\
        switchboard_server_connections 12\n\
        switchboard_server_consumer_lag{partition=\"0\"} 3\n\
        switchboard_server_consumer_lag{partition=\"1\"} 4\n\
        switchboard_server_closes_total{code=\"4006\",x=\"a b\"} 2 1700000000\n\
        switchboard_server_closes_total{code=\"4006\",reason=\"resume unavailable, reconnect\",x=\"q\\\"x\"} 3\n";

    #[test]
    fn reads_plain_and_labelled_samples() {
        assert_eq!(value(PAGE, "switchboard_server_connections"), Some(12.0));
        assert_eq!(value(PAGE, "switchboard_server_consumer_lag"), None);
        assert_eq!(
            value(PAGE, "switchboard_server_consumer_lag{partition=\"1\"}"),
            Some(4.0)
        );
        assert_eq!(sum(PAGE, "switchboard_server_consumer_lag"), 7.0);
        let close = samples(PAGE)
            .find(|s| s.name == "switchboard_server_closes_total")
            .unwrap();
        assert_eq!((close.label("code"), close.value), (Some("4006"), 2.0));
        let reason = samples(PAGE).find(|s| s.label("reason").is_some()).unwrap();
        assert_eq!(
            (
                reason.label("reason"),
                reason.label("x"),
                reason.label("code")
            ),
            (
                Some("resume unavailable, reconnect"),
                Some("q\\\"x"),
                Some("4006")
            )
        );
        assert_eq!(close.label("reason"), None);
        let lag: Vec<(Option<&str>, f64)> = samples(PAGE)
            .filter(|s| s.name.ends_with("consumer_lag"))
            .map(|s| (s.label("partition"), s.value))
            .collect();
        assert_eq!(lag, [(Some("0"), 3.0), (Some("1"), 4.0)]);
    }
}
