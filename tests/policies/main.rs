//! Policy loading and the assurance ladder, on real Cedar policy directories
//! written to temporary folders.

#![expect(
    clippy::expect_used,
    reason = "test helpers fail loudly: a broken fixture should stop the test"
)]

mod explain;
mod ladder;
mod load;
mod suites;
mod validate;

use std::path::{Path, PathBuf};

/// A policy directory: the bundled schema and catalog, plus the given files.
pub fn policy_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundled = bundled();
    for name in ["schema.cedarschema", "journeys.toml"] {
        std::fs::copy(bundled.join(name), dir.path().join(name)).expect("copy bundled file");
    }
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write policy");
    }
    dir
}

pub fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}
