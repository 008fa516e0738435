//! The OpenAPI document: the checked-in file is exactly what the code serves.

use serde_json::Value;

mod common;

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

#[test]
fn the_checked_in_document_is_the_implemented_one() {
    let generated = slipway_api::openapi_json();
    if std::env::var("SLIPWAY_UPDATE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::write(FILE, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(FILE).unwrap_or_default();
    assert!(
        checked_in == generated,
        "crates/slipway-api/openapi.json differs from the API the code implements; \
         review the change and run: SLIPWAY_UPDATE_OPENAPI=1 cargo test -p slipway-api --test openapi"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_and_the_document_is_served_too() {
    let Some(served) = common::serve("openapi", "t").await else {
        return;
    };
    let base = served.base.clone();
    let http = reqwest::Client::new();

    let served: Value = http
        .get(format!("{base}/v2/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let file: Value = serde_json::from_str(&std::fs::read_to_string(FILE).unwrap()).unwrap();
    assert_eq!(served, file, "the daemon serves the checked-in document");

    let paths = file["paths"].as_object().unwrap();
    assert!(paths.len() >= 13, "{:?}", paths.keys().collect::<Vec<_>>());
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let url = format!(
                "{base}{}",
                path.replace("{app}", "no-such-app")
                    .replace("{dep}", "no-such-deployment")
                    .replace("{component}", "web")
            );
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = http
                .request(m, &url)
                .bearer_auth("t")
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert_ne!(status, 405, "{method} {path} is documented but not routed");
            assert!(
                !body.contains("no such endpoint"),
                "{method} {path} is documented but not routed: {body}"
            );
        }
    }
    // And an undocumented path is not served.
    let r = http
        .get(format!("{base}/v2/apps/x/nothing"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("no such endpoint"));
}

#[test]
fn the_documented_failure_codes_are_every_code_there_is() {
    let doc: Value = serde_json::from_str(&slipway_api::openapi_json()).unwrap();
    let documented: Vec<&str> = doc["components"]["schemas"]["FailureCodeBody"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let codes: Vec<&str> = slipway_spec::FailureCode::ALL
        .iter()
        .map(|c| c.as_str())
        .collect();
    assert_eq!(documented, codes);
}
