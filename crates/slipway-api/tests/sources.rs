//! A spec naming a repository on the daemon's own disk, through the API: refused unless the
//! daemon allows local sources.

use std::time::Duration;

use serde_json::{Value, json};

mod common;

const TOKEN: &str = "test-token-for-sources";

async fn call(base: &str, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn spec(name: &str, service_url: &str, worker_url: &str) -> Value {
    json!({
        "name": name,
        "services": [{"name": "web", "git": {"repo_clone_url": service_url, "branch": "main"}}],
        "workers": [{"name": "worker", "git": {"repo_clone_url": worker_url, "branch": "main"}}],
    })
}

/// An empty repository on this machine: its `main` branch does not exist, so a deployment
/// of it fails at its fetch, without building anything.
fn empty_repository() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    git2::Repository::init(dir.path()).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_repository_is_refused_unless_the_daemon_allows_it() {
    let repo = empty_repository();
    let path = repo.path().display().to_string();
    let file_url = format!("file://{path}");

    let Some(served) = common::serve_with("sources", TOKEN, false).await else {
        return;
    };
    let base = served.base.as_str();
    let (status, v) = call(
        base,
        reqwest::Method::POST,
        "/v2/apps",
        json!({"spec": spec("local", &path, &file_url)}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["id"], "bad_request");
    assert_eq!(v["problems"][0]["path"], "services[0].git.repo_clone_url");
    assert_eq!(v["problems"][1]["path"], "workers[0].git.repo_clone_url");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("services[0].git.repo_clone_url")
            && message.contains("is a path on the daemon's host")
            && message.contains("--allow-local-sources"),
        "{message}"
    );
    let (status, v) = call(base, reqwest::Method::GET, "/v2/apps", Value::Null).await;
    assert_eq!(
        (status, v["apps"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );

    let (status, v) = call(
        base,
        reqwest::Method::POST,
        "/v2/apps/propose",
        json!({"spec": spec("local", &path, &path)}),
    )
    .await;
    assert_eq!(status, 400, "{v}");

    // An app with a remote source cannot be switched to a local one either.
    let remote = "https://git.invalid/acme/app.git";
    let (status, v) = call(
        base,
        reqwest::Method::POST,
        "/v2/apps",
        json!({"spec": spec("remote", remote, remote)}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let id = v["app"]["id"].as_str().unwrap().to_string();
    let (status, v) = call(
        base,
        reqwest::Method::PUT,
        &format!("/v2/apps/{id}"),
        json!({"spec": spec("remote", remote, &file_url)}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["problems"][0]["path"], "workers[0].git.repo_clone_url");
    drop(served);

    // With --allow-local-sources the same spec is accepted, and its fetch reads the path.
    let Some(served) = common::serve_with("sources", TOKEN, true).await else {
        return;
    };
    let base = served.base.as_str();
    let (status, v) = call(
        base,
        reqwest::Method::POST,
        "/v2/apps",
        json!({"spec": spec("local", &path, &file_url)}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let app = v["app"]["id"].as_str().unwrap().to_string();
    let deployment = v["app"]["pending_deployment"]["id"]
        .as_str()
        .or(v["app"]["in_progress_deployment"]["id"].as_str())
        .expect("the first deployment")
        .to_string();
    let mut ended = Value::Null;
    for _ in 0..300 {
        let (_, v) = call(
            base,
            reqwest::Method::GET,
            &format!("/v2/apps/{app}/deployments/{deployment}"),
            Value::Null,
        )
        .await;
        if ["ACTIVE", "ERROR", "CANCELED"]
            .contains(&v["deployment"]["phase"].as_str().unwrap_or(""))
        {
            ended = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ended["deployment"]["phase"], "ERROR", "{ended}");
    let text = ended.to_string();
    assert!(
        text.contains("branch \\\"main\\\" does not exist"),
        "the fetch reached the repository: {text}"
    );
}
