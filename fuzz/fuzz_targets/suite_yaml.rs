//! A policy test suite file with fuzzed YAML: it loads, or every problem
//! is reported with its place; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let file = dir.path().join("suite.yaml");
    std::fs::write(&file, data).unwrap_or_else(|e| panic!("{e}"));
    if let Err(problems) = stepgate::suites::load_file(&file) {
        assert!(!problems.is_empty(), "a refused suite says why");
        for problem in &problems {
            assert!(!problem.to_string().is_empty());
        }
    }
});
