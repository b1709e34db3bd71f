//! `k8s/` renders with kustomize, validates against the Kubernetes schemas and
//! passes the policy checks — and the checker rejects broken manifests.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs scripts/k8s-check.sh on `dir`; returns success and stderr.
fn check(dir: &Path) -> (bool, String) {
    let out = Command::new("bash")
        .arg(root().join("scripts/k8s-check.sh"))
        .arg(dir)
        .output()
        .expect("bash runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A copy of k8s/ with `from` replaced by `to` in `file`.
fn broken(file: &str, from: &str, to: &str) -> tempdir::Dir {
    let dir = tempdir::Dir::new();
    for entry in std::fs::read_dir(root().join("k8s")).expect("k8s/ exists") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let mut text = std::fs::read_to_string(&path).expect("readable");
            if path.file_name().is_some_and(|n| n == file) {
                assert!(text.contains(from), "{file} does not contain {from:?}");
                text = text.replacen(from, to, 1);
            }
            std::fs::write(dir.0.join(path.file_name().expect("name")), text).expect("writable");
        }
    }
    dir
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let p = std::env::temp_dir().join(format!(
                "sb-k8s-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::create_dir_all(&p).expect("temp dir");
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn shipped_manifests_pass() {
    let (ok, err) = check(&root().join("k8s"));
    assert!(ok, "k8s/ must pass: {err}");
}

fn assert_rejected(file: &str, from: &str, to: &str, reason: &str) {
    let dir = broken(file, from, to);
    let (ok, err) = check(&dir.0);
    assert!(
        !ok,
        "a manifest with {to:?} instead of {from:?} in {file} was accepted"
    );
    assert!(err.contains(reason), "expected {reason:?} in: {err}");
}

#[test]
fn missing_probe_is_rejected() {
    assert_rejected(
        "messaging-server.yaml",
        "readinessProbe:",
        "startupProbe:",
        "missing readinessProbe",
    );
}

#[test]
fn latest_tag_is_rejected() {
    assert_rejected(
        "kustomization.yaml",
        "newTag: \"0.1.0\"",
        "newTag: latest",
        "pinned tag",
    );
}

#[test]
fn short_grace_period_is_rejected() {
    assert_rejected(
        "messaging-server.yaml",
        "terminationGracePeriodSeconds: 45",
        "terminationGracePeriodSeconds: 20",
        "must exceed the drain",
    );
}

#[test]
fn missing_pdb_is_rejected() {
    assert_rejected(
        "persister.yaml",
        "kind: PodDisruptionBudget",
        "kind: ServiceAccount",
        "no PodDisruptionBudget",
    );
}

#[test]
fn schema_violations_are_rejected() {
    assert_rejected(
        "coordinator.yaml",
        "replicas: 2",
        "replicas: two",
        "schema validation failed",
    );
    assert_rejected(
        "persister.yaml",
        "replicas: 2",
        "replicas: 2\n  replicaz: 2",
        "schema validation failed",
    );
}
