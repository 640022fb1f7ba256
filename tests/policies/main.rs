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
mod tenants;
mod validate;

use std::path::{Path, PathBuf};

/// A policy directory: the bundled schema and catalog, plus the given files.
pub fn policy_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    seed(dir.path(), files);
    dir
}

/// Puts the bundled schema and catalog and the given files into `dir`.
pub fn seed(dir: &Path, files: &[(&str, &str)]) {
    let bundled = bundled();
    for name in ["schema.cedarschema", "journeys.toml"] {
        std::fs::copy(bundled.join(name), dir.join(name)).expect("copy bundled file");
    }
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write policy");
    }
}

/// A directory under `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Runs the `stepgate` binary with `args` (in `dir`, when given): its exit
/// code and what it printed, stdout then stderr.
pub fn stepgate<S: AsRef<std::ffi::OsStr>>(args: &[S], dir: Option<&Path>) -> (i32, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_stepgate"));
    command
        .args(args)
        .env_remove("STEPGATE_CONFIG")
        .env("NO_COLOR", "1");
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let out = command.output().expect("run stepgate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().expect("exit code"), text)
}

pub fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}
