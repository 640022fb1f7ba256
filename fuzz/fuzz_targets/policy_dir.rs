//! A policy directory with fuzzed content: the bundled schema and catalog
//! plus one fuzzed policy file, or (after a 0xFF byte) a fuzzed journey
//! catalog. Loading either succeeds or names the problem; it never panics.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (policy, catalog) = match data.iter().position(|&b| b == 0xFF) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    };
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let bundled = common::policies_dir();
    for name in [
        stepgate::policy::SCHEMA_FILE,
        stepgate::policy::CATALOG_FILE,
        "base.cedar",
    ] {
        std::fs::copy(bundled.join(name), dir.path().join(name))
            .unwrap_or_else(|e| panic!("copy {name}: {e}"));
    }
    std::fs::write(dir.path().join("fuzzed.cedar"), policy).unwrap_or_else(|e| panic!("{e}"));
    if let Some(catalog) = catalog {
        std::fs::write(dir.path().join(stepgate::policy::CATALOG_FILE), catalog)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let checked = stepgate::policy::PolicySnapshot::check(dir.path());
    if let Err(err) = &checked.snapshot {
        assert!(!err.to_string().is_empty(), "a refusal names its problem");
    }
});
