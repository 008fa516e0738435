//! The API's JSON, pinned: snapshots of real answers with IDs, times, hashes and generated
//! names redacted. A change to a field's name, type or place fails here and shows in review.

use std::time::Duration;

use regex::Regex;
use serde_json::{Value, json};
use slipway_testkit::unique;

mod common;

/// Replaces what changes from run to run with a stable marker.
fn redact(v: &mut Value, names: &[(&str, &str)]) {
    let rules: Vec<(Regex, &str)> = vec![
        (
            Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z").unwrap(),
            "[time]",
        ),
        (
            Regex::new(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").unwrap(),
            "[uuid]",
        ),
        (Regex::new(r"sha256:[0-9a-f]{64}").unwrap(), "[image]"),
        (Regex::new(r"-[0-9a-z]{8}\b").unwrap(), "-[random]"),
        (Regex::new(r"\b[0-9a-f]{12}\b").unwrap(), "[short-id]"),
    ];
    match v {
        Value::String(s) => {
            for (from, to) in names {
                *s = s.replace(from, to);
            }
            for (re, to) in &rules {
                *s = re.replace_all(s, *to).into_owned();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| redact(i, names)),
        Value::Object(map) => map.values_mut().for_each(|i| redact(i, names)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_json_is_pinned() {
    let Some(served) = common::serve("snap", "t").await else {
        return;
    };
    let (repository, tag) = served.hello_image("slipway-snap").await;
    let (base, daemon_id) = (served.base.clone(), served.daemon_id.clone());
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let req = http
            .request(method, format!("{base}{path}"))
            .bearer_auth("t");
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let name = unique("snapapp");
    let names = [
        (name.as_str(), "[app-name]"),
        (daemon_id.as_str(), "[daemon]"),
    ];
    let snap = |label: &str, mut v: Value| {
        redact(&mut v, &names);
        insta::assert_json_snapshot!(label.to_string(), v);
    };

    let spec = json!({
        "name": name,
        "region": "ams",
        "services": [{"name": "web", "image": {"repository": repository, "tag": tag},
                      "health_check": {"http_path": "/healthz", "period_seconds": 0.1}}],
        "jobs": [{"name": "migrate", "kind": "PRE_DEPLOY", "image": {"repository": repository, "tag": tag},
                  "envs": [{"key": "ROLE", "value": "job"}]}],
    });
    let (status, created) = call(
        reqwest::Method::POST,
        "/v2/apps".into(),
        Some(json!({"spec": spec})),
    )
    .await;
    assert_eq!(status, 200);
    let id = created["app"]["id"].as_str().unwrap().to_string();
    let first = created["app"]["in_progress_deployment"]["id"]
        .as_str()
        .or(created["app"]["pending_deployment"]["id"].as_str())
        .unwrap()
        .to_string();
    snap("create_app_warnings", created["warnings"].clone());
    let wait = |dep: String| {
        let call = &call;
        let id = id.clone();
        async move {
            loop {
                let (_, v) = call(
                    reqwest::Method::GET,
                    format!("/v2/apps/{id}/deployments/{dep}"),
                    None,
                )
                .await;
                if ["ACTIVE", "ERROR", "CANCELED"]
                    .contains(&v["deployment"]["phase"].as_str().unwrap())
                {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    snap("first_deployment", wait(first).await);
    let (_, restart) = call(
        reqwest::Method::POST,
        format!("/v2/apps/{id}/restart"),
        Some(json!({"components": ["web"]})),
    )
    .await;
    let restart = wait(restart["deployment"]["id"].as_str().unwrap().to_string()).await;
    snap("restart_deployment", restart);
    snap(
        "app",
        call(reqwest::Method::GET, format!("/v2/apps/{id}"), None)
            .await
            .1,
    );
    snap(
        "deployments_page",
        call(
            reqwest::Method::GET,
            format!("/v2/apps/{id}/deployments?per_page=1"),
            None,
        )
        .await
        .1,
    );

    // Error bodies.
    let (s1, e1) = call(
        reqwest::Method::POST,
        format!("/v2/apps/{id}/restart"),
        Some(json!({"components": ["migrate"]})),
    )
    .await;
    let (s2, e2) = call(reqwest::Method::GET, "/v2/apps/nope".into(), None).await;
    let (s3, e3) = call(
        reqwest::Method::POST,
        "/v2/apps".into(),
        Some(json!({"spec": {"name": "Bad", "services": [{"name": "web"}], "colour": 1}})),
    )
    .await;
    let (s4, e4) = call(
        reqwest::Method::POST,
        "/v2/apps".into(),
        Some(json!({"spec": {"name": "ok-app", "services": [{"name": "web"}]}})),
    )
    .await;
    snap("errors", json!([[s1, e1], [s2, e2], [s3, e3], [s4, e4]]));
}
