//! Hostile and broken specs: the parser never panics, and every refusal says what is wrong.

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use slipway_spec::{SpecError, parse_spec, parse_spec_value};

/// Field names that the parser knows, so that generated documents go deep.
const KEYS: &[&str] = &[
    "name",
    "services",
    "workers",
    "jobs",
    "databases",
    "envs",
    "ingress",
    "rules",
    "git",
    "repo_clone_url",
    "branch",
    "image",
    "repository",
    "tag",
    "source_dir",
    "dockerfile_path",
    "run_command",
    "instance_count",
    "http_port",
    "health_check",
    "http_path",
    "period_seconds",
    "rollout",
    "max_surge",
    "max_unavailable",
    "termination",
    "drain_seconds",
    "key",
    "value",
    "scope",
    "type",
    "kind",
    "engine",
    "data_dir",
    "match",
    "path",
    "prefix",
    "component",
    "region",
    "alerts",
    "github",
    "repo",
    "../x",
    "",
    "\u{0}",
];

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-zA-Z0-9_./ %-]{0,40}".prop_map(Value::String),
        prop::sample::select(KEYS).prop_map(|k| Value::String(k.to_string())),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|pairs| {
                Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

fn check(result: Result<slipway_spec::ParsedSpec, SpecError>) -> Result<(), TestCaseError> {
    if let Err(e) = result {
        let problems = e.problems();
        prop_assert!(!problems.is_empty());
        for p in problems {
            prop_assert!(
                !p.message.trim().is_empty(),
                "a problem without a message: {p:?}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn any_json_document_is_answered_without_panic(doc in any_json()) {
        check(parse_spec_value(doc))?;
    }

    #[test]
    fn any_text_is_answered_without_panic(text in "\\PC{0,200}") {
        check(parse_spec(&text))?;
    }

    /// A valid spec with one field replaced by anything: refused with that field's path, or
    /// accepted.
    #[test]
    fn one_broken_field_is_named(field in prop::sample::select(&["name", "instance_count", "http_port", "source_dir", "envs", "health_check", "rollout"][..]), value in any_json()) {
        let mut doc = json!({"name": "shop", "services": [{"name": "web", "image": {"repository": "hello"}}]});
        if field == "name" {
            doc["name"] = value;
        } else {
            doc["services"][0][field] = value;
        }
        if let Err(SpecError::Invalid(problems)) = parse_spec_value(doc) {
            let want = if field == "name" { "name".to_string() } else { format!("services[0].{field}") };
            prop_assert!(
                problems.iter().any(|p| p.path.starts_with(&want)),
                "{problems:?} does not name {want}"
            );
        }
    }
}
