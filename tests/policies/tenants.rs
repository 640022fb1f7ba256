//! Tenant-owned policies: `tenants/<tenant>/*.cedar` join the base set for
//! that tenant's requests only; they may only forbid, are validated with
//! file and line, and give the tenant's set a version of its own.

use std::sync::Arc;

use stepgate::policy::PolicySnapshot;

use crate::{policy_dir, stepgate};

const PERMIT_ALL: (&str, &str) = (
    "base.cedar",
    r#"@id("permit-all") permit (principal, action, resource);"#,
);

const ACME_PAYMENTS: &str = r#"@id("acme-payments-need-aal3")
@reason("acme asks AAL3 for every payment")
forbid (principal, action == Action::"payment", resource)
unless { context.authn.aal >= 3 };
"#;

fn with_tenant(tenant: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = policy_dir(&[PERMIT_ALL]);
    let tenant_dir = dir.path().join("tenants").join(tenant);
    std::fs::create_dir_all(&tenant_dir).expect("tenant dir");
    for (name, text) in files {
        std::fs::write(tenant_dir.join(name), text).expect("write");
    }
    dir
}

#[test]
fn a_tenants_policies_join_the_base_set_for_that_tenant_only() {
    let dir = with_tenant("acme", &[("payments.cedar", ACME_PAYMENTS)]);
    let base = Arc::new(PolicySnapshot::load(dir.path()).expect("loads"));
    let acme = base.for_tenant("acme");
    assert_eq!(acme.tenant(), Some("acme"));
    assert_eq!(acme.policy_count(), base.policy_count() + 1);
    assert_ne!(
        acme.version(),
        base.version(),
        "the tenant's set has its own version"
    );
    for other in ["globex", "", "default"] {
        let set = base.for_tenant(other);
        assert_eq!(
            set.version(),
            base.version(),
            "{other:?} is served the base set"
        );
        assert_eq!(set.tenant(), None);
    }
    assert_eq!(
        base.tenant_versions().into_iter().collect::<Vec<_>>(),
        [("acme", acme.version())]
    );
}

#[test]
fn the_default_tenant_is_the_directory_named_default() {
    let dir = with_tenant("default", &[("payments.cedar", ACME_PAYMENTS)]);
    let base = Arc::new(PolicySnapshot::load(dir.path()).expect("loads"));
    assert_eq!(base.for_tenant("").tenant(), Some("default"));
}

#[test]
fn a_tenant_may_only_forbid_and_its_errors_name_file_and_line() {
    let permit = "\n@id(\"acme-open\")\npermit (principal, action, resource);\n";
    let dir = with_tenant("acme", &[("open.cedar", permit)]);
    let error = PolicySnapshot::load(dir.path()).expect_err("refused");
    let problem = error
        .problems
        .iter()
        .find(|p| {
            p.message
                .contains("tenant `acme` may only add forbid policies")
        })
        .unwrap_or_else(|| panic!("{error:?}"));
    assert!(
        problem.file.ends_with("tenants/acme/open.cedar"),
        "{problem:?}"
    );
    assert_eq!(problem.line, Some(2), "{problem:?}");

    let unknown =
        "@id(\"x\") @reason(\"r\")\nforbid (principal, action == Action::\"nope\", resource);";
    let dir = with_tenant("acme", &[("bad.cedar", unknown)]);
    let error = PolicySnapshot::load(dir.path()).expect_err("refused");
    let problem = error
        .problems
        .iter()
        .find(|p| p.message.contains("unrecognized action"))
        .unwrap_or_else(|| panic!("{error:?}"));
    assert!(
        problem.file.ends_with("tenants/acme/bad.cedar"),
        "{problem:?}"
    );
    assert_eq!(problem.line, Some(2), "{problem:?}");

    // An id the base set already uses is the tenant's problem.
    let taken = "@id(\"permit-all\") @reason(\"r\")\nforbid (principal, action, resource);";
    let dir = with_tenant("acme", &[("taken.cedar", taken)]);
    let error = PolicySnapshot::load(dir.path()).expect_err("refused");
    assert!(
        error
            .problems
            .iter()
            .any(|p| p.file.ends_with("tenants/acme/taken.cedar")
                && p.message.contains("`permit-all` is already used")),
        "{error:?}"
    );
}

#[test]
fn a_reload_keeps_a_broken_tenants_last_good_set_and_takes_the_rest() {
    let dir = with_tenant("acme", &[("payments.cedar", ACME_PAYMENTS)]);
    let globex = dir.path().join("tenants/globex");
    std::fs::create_dir_all(&globex).expect("dir");
    std::fs::write(
        globex.join("g.cedar"),
        ACME_PAYMENTS.replace("acme", "globex"),
    )
    .expect("w");
    let serving = PolicySnapshot::load(dir.path()).expect("loads");
    let acme_before = serving.tenant_versions()["acme"].to_owned();
    let globex_before = serving.tenant_versions()["globex"].to_owned();

    std::fs::write(dir.path().join("tenants/acme/payments.cedar"), "forbid (").expect("break");
    std::fs::write(
        globex.join("g.cedar"),
        ACME_PAYMENTS
            .replace("acme", "globex")
            .replace(">= 3", ">= 2"),
    )
    .expect("change");
    // At start (and for `policy validate`) a broken tenant refuses all.
    assert!(PolicySnapshot::check(dir.path()).snapshot.is_err());
    let reloaded = PolicySnapshot::check_reload(dir.path(), &serving);
    let next = reloaded.checked.snapshot.expect("the base set loads");
    assert_eq!(reloaded.refused_tenants.len(), 1);
    let (tenant, error) = &reloaded.refused_tenants[0];
    assert_eq!(tenant, "acme");
    assert!(
        !error.problems.is_empty()
            && error
                .problems
                .iter()
                .all(|p| p.file.ends_with("tenants/acme/payments.cedar")),
        "{error:?}"
    );
    let versions = next.tenant_versions();
    assert_eq!(
        versions["acme"], acme_before,
        "acme keeps its last good set"
    );
    assert_ne!(
        versions["globex"], globex_before,
        "globex's change is taken"
    );
}

#[test]
fn validate_reports_each_tenant_set() {
    let dir = with_tenant("acme", &[("payments.cedar", ACME_PAYMENTS)]);
    let (code, output) = stepgate(
        &[
            "policy".as_ref(),
            "validate".as_ref(),
            dir.path().as_os_str(),
        ],
        None,
    );
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("tenant `acme`: 2 policies with its own"),
        "{output}"
    );
}

#[test]
fn suites_test_a_tenants_rules_by_the_request_tenant() {
    let dir = with_tenant("acme", &[("payments.cedar", ACME_PAYMENTS)]);
    let suites = dir.path().join("suites");
    std::fs::create_dir(&suites).expect("dir");
    std::fs::write(
        suites.join("t.yaml"),
        r#"name: tenants
now: 2026-11-01T12:00:00Z
defaults: { journey: payment, user: alice, device: laptop, ip: 81.2.69.142, aal: 2, auth_age: 1m }
cases:
  - name: acme asks AAL3 for a payment
    request: { tenant: acme }
    expect: { outcome: step_up, level: 3, reasons: [acme-payments-need-aal3] }
  - name: globex does not
    request: { tenant: globex }
    expect: { outcome: allow, reasons: [permit-all] }
"#,
    )
    .expect("suite");
    let (code, output) = stepgate(
        &[
            "policy".as_ref(),
            "test".as_ref(),
            dir.path().as_os_str(),
            "--suites".as_ref(),
            suites.as_os_str(),
        ],
        None,
    );
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("2 passed, 0 failed"), "{output}");
}

#[test]
fn a_base_change_reaches_a_broken_tenant_through_its_last_good_files_or_is_refused() {
    let dir = with_tenant("acme", &[("payments.cedar", ACME_PAYMENTS)]);
    let serving = PolicySnapshot::load(dir.path()).expect("loads");
    std::fs::write(dir.path().join("tenants/acme/payments.cedar"), "forbid (").expect("break");
    // The base set gains a forbid: acme gets it too, with its last good
    // rule, while its own files stay broken.
    let lockdown = "@id(\"lockdown\") @reason(\"paused\")\nforbid (principal, action == Action::\"signup\", resource);\n";
    std::fs::write(dir.path().join("lockdown.cedar"), lockdown).expect("write");
    let reloaded = PolicySnapshot::check_reload(dir.path(), &serving);
    assert_eq!(reloaded.refused_tenants.len(), 1);
    let next = Arc::new(reloaded.checked.snapshot.expect("loads"));
    let acme = next.for_tenant("acme");
    assert_eq!(acme.policy_count(), next.policy_count() + 1);
    let has = |id: &str| {
        acme.policies()
            .policy(&cedar_policy::PolicyId::new(id))
            .is_some()
    };
    assert!(has("lockdown"), "the base change reached acme");
    assert!(has("acme-payments-need-aal3"), "with acme's last good rule");

    // A base change that acme's last good files do not fit (it takes
    // their id) is refused as a whole while acme's files are broken.
    let clash = "@id(\"acme-payments-need-aal3\") @reason(\"r\")\nforbid (principal, action == Action::\"signup\", resource);\n";
    std::fs::write(dir.path().join("clash.cedar"), clash).expect("write");
    let error = PolicySnapshot::check_reload(dir.path(), &next)
        .checked
        .snapshot
        .expect_err("refused");
    assert!(
        error.problems.iter().any(|p| p
            .message
            .contains("tenant `acme`'s last good policies do not fit")),
        "{error:?}"
    );
}

#[test]
fn an_emptied_tenant_or_a_misnamed_directory_is_refused_on_reload_alone() {
    let dir = with_tenant("acme", &[("payments.cedar", ACME_PAYMENTS)]);
    let serving = PolicySnapshot::load(dir.path()).expect("loads");
    let acme_before = serving.tenant_versions()["acme"].to_owned();
    std::fs::write(dir.path().join("tenants/acme/payments.cedar"), "").expect("empty");
    std::fs::create_dir_all(dir.path().join("tenants/bad\tname")).expect("dir");
    let reloaded = PolicySnapshot::check_reload(dir.path(), &serving);
    let next = reloaded.checked.snapshot.expect("the base set loads");
    let refused: Vec<&str> = reloaded
        .refused_tenants
        .iter()
        .map(|(t, _)| t.as_str())
        .collect();
    assert_eq!(
        refused,
        ["bad\tname", "acme"],
        "{:?}",
        reloaded.refused_tenants
    );
    assert!(
        reloaded.refused_tenants[1].1.problems[0]
            .message
            .contains("has no policy of its own"),
        "{:?}",
        reloaded.refused_tenants
    );
    assert_eq!(next.tenant_versions()["acme"], acme_before);
}

#[test]
fn what_a_tenant_directory_holds_besides_its_policies_is_refused_not_ignored() {
    for (what, make) in [
        ("an empty tenant", "tenants/acme"),
        (
            "a tenant directory starting with a dot",
            "tenants/.hidden/x.cedar",
        ),
        ("a file directly under tenants", "tenants/flat.cedar"),
        ("a nested directory", "tenants/acme/sub/x.cedar"),
        ("a schema in a tenant", "tenants/acme/schema.cedarschema"),
    ] {
        let dir = policy_dir(&[PERMIT_ALL]);
        let path = dir.path().join(make);
        if make.ends_with(".cedar") || make.ends_with(".cedarschema") {
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
            std::fs::write(&path, ACME_PAYMENTS).expect("write");
        } else {
            std::fs::create_dir_all(&path).expect("dir");
        }
        if make.starts_with("tenants/acme/") {
            std::fs::write(dir.path().join("tenants/acme/p.cedar"), ACME_PAYMENTS).expect("w");
        }
        let (code, output) = stepgate(
            &[
                "policy".as_ref(),
                "validate".as_ref(),
                dir.path().as_os_str(),
            ],
            None,
        );
        assert_eq!(code, 1, "{what}: {output}");
    }
}

#[test]
fn explain_shows_a_tenants_own_rule_for_that_tenant() {
    let dir = with_tenant("acme", &[("payments.cedar", ACME_PAYMENTS)]);
    let explain = |tenant: &str| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "policy".as_ref(),
            "explain".as_ref(),
            dir.path().as_os_str(),
            "--journey".as_ref(),
            "payment".as_ref(),
            "--user".as_ref(),
            "alice".as_ref(),
            "--aal".as_ref(),
            "2".as_ref(),
        ];
        if !tenant.is_empty() {
            args.push("--tenant".as_ref());
            args.push(tenant.as_ref());
        }
        stepgate(&args, None)
    };
    let (code, acme) = explain("acme");
    assert_eq!(code, 0, "{acme}");
    assert!(acme.contains("acme-payments-need-aal3"), "{acme}");
    let (code, other) = explain("globex");
    assert_eq!(code, 0, "{other}");
    assert!(!other.contains("acme-payments-need-aal3"), "{other}");
}
