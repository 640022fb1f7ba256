//! `stepgate policy validate`, run as a security engineer would run it.

use std::path::Path;

use crate::{bundled, fixture, seed, stepgate};

/// A `policies` directory inside a fresh folder: the bundled schema and
/// catalog plus the files of `fixture` (if any) and `extra`.
fn workspace(fixture_name: Option<&str>, extra: &[(&str, &str)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("policies");
    std::fs::create_dir(&dir).expect("mkdir");
    seed(&dir, extra);
    if let Some(name) = fixture_name {
        for entry in std::fs::read_dir(fixture(name)).expect("fixture") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, dir.join(path.file_name().expect("name"))).expect("copy");
        }
    }
    root
}

/// Runs `stepgate policy validate policies ARGS` in `root`.
fn validate(root: &Path, args: &[&str]) -> (i32, String) {
    let args: Vec<&str> = ["policy", "validate", "policies"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    stepgate(&args, Some(root))
}

#[test]
fn validate_points_at_every_problem_with_file_line_and_column() {
    let root = workspace(Some("invalid-policies"), &[]);
    let (code, output) = validate(root.path(), &[]);
    assert_eq!(code, 1, "{output}");
    insta::assert_snapshot!(output);
}

#[test]
fn bundled_policies_validate_without_warnings() {
    let bundled = bundled();
    let (code, stdout) = stepgate(
        &[
            "policy".as_ref(),
            "validate".as_ref(),
            "--deny-warnings".as_ref(),
            bundled.as_os_str(),
        ],
        None,
    );
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("is valid: 22 policies, 6 journeys"),
        "{stdout}"
    );
    assert!(stdout.contains("(0 errors, 0 warnings)"), "{stdout}");
}

#[test]
fn warnings_fail_only_with_deny_warnings() {
    let root = workspace(
        None,
        &[(
            "rules.cedar",
            r#"@id("journey-permit") permit (principal, action, resource);
@id("odd-level") @reason("level read in an unusual way")
forbid (principal, action == Action::"signup", resource)
when { context.authn.aal < 2 && context.risk.level == "high" };
"#,
        )],
    );
    let (code, output) = validate(root.path(), &[]);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("policy `odd-level` reads `context.authn.aal`"),
        "{output}"
    );
    assert!(output.contains("(0 errors, 1 warning)"), "{output}");

    let (code, output) = validate(root.path(), &["--deny-warnings"]);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("--deny-warnings"), "{output}");
}

#[test]
fn a_journey_no_permit_reaches_is_a_warning() {
    let root = workspace(
        None,
        &[(
            "rules.cedar",
            r#"@id("login-only") permit (principal, action == Action::"login", resource);"#,
        )],
    );
    let (code, output) = validate(root.path(), &[]);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains(
            "no permit policy applies to journey `payment`, so every request for it is denied"
        ),
        "{output}"
    );
    assert!(output.contains("[journeys.payment]"), "{output}");
    assert!(output.contains("(0 errors, 5 warnings)"), "{output}");
}
