//! Load, chaos and benchmark tools. They drive the real services through the
//! test harness (`harness`) but live apart from the integration tests, so
//! plotting and histograms are not built into every test binary.

pub mod bench;
pub mod conntrack;
pub mod history;
pub mod load;
pub mod netstat;
pub mod procstat;
pub mod topic;
