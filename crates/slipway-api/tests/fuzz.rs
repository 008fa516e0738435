//! Hostile request bodies: every one is answered with App Platform's error body or accepted,
//! never with a server error. Bounded: a fixed number of generated bodies.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Map, Value, json};

mod common;

fn any_json() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "spec",
        "name",
        "services",
        "components",
        "force_build",
        "clear_build_cache",
        "image",
        "repository",
        "git",
        "repo_clone_url",
        "envs",
        "key",
        "value",
        "app_id",
        "x",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "\\PC{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..5).prop_map(|pairs| {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_bodies_never_cause_a_server_error() {
    let Some(served) = common::serve("fuzz", "t").await else {
        return;
    };
    let base = served.base.clone();
    let http = reqwest::Client::new();

    let mut runner = TestRunner::deterministic();
    let strategy = any_json();
    let targets = [
        ("POST", "/v2/apps/propose"),
        ("POST", "/v2/apps/nope/restart"),
        ("POST", "/v2/apps/nope/deployments"),
        ("PUT", "/v2/apps/nope"),
    ];
    for i in 0..400 {
        let body = strategy.new_tree(&mut runner).unwrap().current();
        let (method, path) = targets[i % targets.len()];
        let raw = if i % 7 == 0 {
            // Not JSON at all, or cut short.
            let text = body.to_string();
            text.chars().take(text.chars().count() / 2).collect()
        } else {
            body.to_string()
        };
        let r = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .bearer_auth("t")
            .header("content-type", "application/json")
            .body(raw.clone())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let answer: Value = r.json().await.unwrap_or(Value::Null);
        assert!(
            status < 500,
            "{method} {path} with {raw} answered {status}: {answer}"
        );
        if status >= 400 {
            assert!(
                answer["id"].is_string() && answer["message"].is_string(),
                "{answer}"
            );
        }
    }
}
