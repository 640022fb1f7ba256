//! A policy directory that does not validate is refused with every problem
//! located by file and line.

use stepgate::policy::PolicySnapshot;

use crate::{bundled, policy_dir};

fn problems(dir: &std::path::Path) -> Vec<String> {
    let err = PolicySnapshot::load(dir).expect_err("directory must be refused");
    err.problems.iter().map(ToString::to_string).collect()
}

const BASE: &str = r#"@id("permit-all") @reason("base")
permit (principal, action, resource);
"#;

#[test]
fn bundled_policies_load_and_have_a_stable_version() {
    let a = PolicySnapshot::load(&bundled()).expect("bundled policies load");
    let b = PolicySnapshot::load(&bundled()).expect("again");
    assert_eq!(a.version(), b.version());
    assert_eq!(a.catalog().journeys.len(), 6);
    assert!(a.policy_count() >= 8);
}

#[test]
fn the_version_changes_with_the_policy_text() {
    let one = policy_dir(&[("p.cedar", BASE)]);
    let two = policy_dir(&[("p.cedar", &format!("{BASE}\n// a comment\n"))]);
    let v1 = PolicySnapshot::load(one.path())
        .expect("load")
        .version()
        .to_owned();
    let v2 = PolicySnapshot::load(two.path())
        .expect("load")
        .version()
        .to_owned();
    assert_ne!(v1, v2);
}

#[test]
fn a_syntax_error_names_file_and_line() {
    let dir = policy_dir(&[
        ("a.cedar", BASE),
        (
            "b.cedar",
            "@id(\"x\") @reason(\"y\")\nforbid (principal, action, resource)\nwhen { context.device.known = };\n",
        ),
    ]);
    let all = problems(dir.path());
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(all[0].contains("b.cedar:3:"), "{all:?}");
}

#[test]
fn a_schema_violation_names_file_line_and_attribute() {
    let dir = policy_dir(&[
        ("a.cedar", BASE),
        (
            "typo.cedar",
            "// comment line\n@id(\"typo\") @reason(\"misspelt signal\")\nforbid (principal, action, resource)\nwhen { context.device.knwon };\n",
        ),
    ]);
    let all = problems(dir.path());
    assert_eq!(all.len(), 1, "{all:?}");
    assert!(all[0].contains("typo.cedar:4:"), "{all:?}");
    assert!(all[0].contains("knwon"), "{all:?}");
}

#[test]
fn missing_annotations_and_duplicate_ids_are_refused_together() {
    let dir = policy_dir(&[
        ("a.cedar", BASE),
        ("b.cedar", "\n\npermit (principal, action, resource);\n"),
        (
            "c.cedar",
            "@id(\"quiet\")\nforbid (principal, action, resource);\n",
        ),
        (
            "d.cedar",
            "@id(\"permit-all\") @reason(\"again\")\nforbid (principal, action, resource);\n",
        ),
    ]);
    let all = problems(dir.path()).join("\n");
    assert!(all.contains("b.cedar:3:1: policy has no `@id"), "{all}");
    assert!(
        all.contains("c.cedar:1:1: forbid policy `quiet` has no `@reason"),
        "{all}"
    );
    assert!(
        all.contains("d.cedar:1:1: policy id `permit-all` is already used in"),
        "{all}"
    );
}

#[test]
fn a_permit_may_go_without_a_reason() {
    let dir = policy_dir(&[(
        "a.cedar",
        "@id(\"open\")\npermit (principal, action, resource);\n",
    )]);
    let snapshot = PolicySnapshot::load(dir.path()).expect("a permit needs no @reason");
    assert_eq!(snapshot.policy_count(), 1);
}

#[test]
fn a_journey_without_an_action_and_an_action_without_a_journey_are_refused() {
    let dir = policy_dir(&[("a.cedar", BASE)]);
    let catalog = dir.path().join("journeys.toml");
    let mut text = std::fs::read_to_string(&catalog).expect("read");
    text = text.replace("[journeys.signup]", "[journeys.register]");
    std::fs::write(&catalog, text).expect("write");
    let all = problems(dir.path()).join("\n");
    // Each is located where it can be fixed: the catalog's table, the
    // schema's `action` line.
    assert!(
        all.contains("journeys.toml:5:1: journey `register` has no `action \"register\"` in schema.cedarschema"),
        "{all}"
    );
    assert!(
        all.contains("schema.cedarschema:126:8: action `signup` has no journey in journeys.toml"),
        "{all}"
    );
}

#[test]
fn a_schema_that_does_not_accept_the_signals_is_refused() {
    let dir = policy_dir(&[("a.cedar", BASE)]);
    let schema = dir.path().join("schema.cedarschema");
    let text = std::fs::read_to_string(&schema).expect("read");
    std::fs::write(
        &schema,
        text.replace("  deny_listed: Bool,", "  deny_listed: Long,"),
    )
    .expect("write");
    let all = problems(dir.path()).join("\n");
    assert!(all.contains("must accept stepgate's signals"), "{all}");
}

#[test]
fn a_required_journey_attribute_is_refused_at_load() {
    let dir = policy_dir(&[("a.cedar", BASE)]);
    let schema = dir.path().join("schema.cedarschema");
    let text = std::fs::read_to_string(&schema).expect("read");
    std::fs::write(&schema, text.replace("amount?: Long", "amount: Long")).expect("write");
    let all = problems(dir.path()).join("\n");
    assert!(all.contains("action `payment`"), "{all}");
    assert!(all.contains("declare journey attributes optional"), "{all}");
}

#[test]
fn a_bad_catalog_entry_is_located() {
    let dir = policy_dir(&[("a.cedar", BASE)]);
    let catalog = dir.path().join("journeys.toml");
    let text = std::fs::read_to_string(&catalog).expect("read");
    std::fs::write(
        &catalog,
        text.replace("tier = \"medium\"", "tier = \"severe\""),
    )
    .expect("write");
    let all = problems(dir.path()).join("\n");
    assert!(all.contains("journeys.toml:"), "{all}");
    assert!(all.contains("severe"), "{all}");
}

#[test]
fn a_missing_directory_says_how_to_point_at_one() {
    let all = problems(std::path::Path::new("/nonexistent/stepgate-policies")).join("\n");
    assert!(all.contains("--policies"), "{all}");
}

/// Accepted attribute shapes are remembered, values aside: a remembered
/// shape never lets another type through, however often it was seen.
#[test]
fn attributes_are_checked_by_shape_and_a_remembered_shape_accepts_no_other_type() {
    use std::collections::BTreeMap;
    use stepgate::decision::AttrValue;
    let snapshot = PolicySnapshot::load(&bundled()).expect("bundled policies load");
    let attrs = |pairs: &[(&str, AttrValue)]| -> BTreeMap<String, AttrValue> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    };
    let long = attrs(&[("amount", AttrValue::Long(500))]);
    let other_long = attrs(&[("amount", AttrValue::Long(9_999_999))]);
    let string = attrs(&[("amount", AttrValue::String("500".into()))]);
    let with_currency = attrs(&[
        ("amount", AttrValue::Long(1)),
        ("currency", AttrValue::String("EUR".into())),
    ]);
    let undeclared = attrs(&[
        ("amount", AttrValue::Long(1)),
        ("colour", AttrValue::Bool(true)),
    ]);
    for _ in 0..2 {
        assert_eq!(snapshot.check_attributes("payment", &long), Ok(()));
        assert_eq!(snapshot.check_attributes("payment", &other_long), Ok(()));
        assert_eq!(snapshot.check_attributes("payment", &with_currency), Ok(()));
        let refused = snapshot
            .check_attributes("payment", &string)
            .expect_err("a string amount");
        assert!(refused.contains("amount"), "{refused}");
        assert!(
            snapshot.check_attributes("payment", &undeclared).is_err(),
            "an undeclared attribute"
        );
        // The same shape on a journey that declares no attributes.
        assert!(snapshot.check_attributes("login", &long).is_err());
    }
}
