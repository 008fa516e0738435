//! The API over real HTTP, against a real engine, Docker and store.

use std::time::Duration;

use serde_json::{Value, json};
use slipway_testkit::unique;

mod common;

struct Api {
    base: String,
    http: reqwest::Client,
    tag: String,
    _served: common::Served,
}

const TOKEN: &str = "test-token-for-the-api";

async fn api() -> Option<Api> {
    let served = common::serve("api", TOKEN).await?;
    let (repository, tag) = served.hello_image("slipway-api-test").await;
    Some(Api {
        base: served.base.clone(),
        http: reqwest::Client::new(),
        tag: format!("{repository}:{tag}"),
        _served: served,
    })
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    fn spec(&self, name: &str) -> Value {
        let (repo, tag) = self.tag.split_once(':').unwrap();
        json!({
            "name": name,
            "services": [{"name": "web", "image": {"repository": repo, "tag": tag},
                          "health_check": {"http_path": "/healthz", "period_seconds": 0.2}}],
            "workers": [{"name": "worker", "image": {"repository": repo, "tag": tag},
                         "envs": [{"key": "ROLE", "value": "worker"}],
                         "rollout": {"min_ready_seconds": 0.2}}],
            "jobs": [{"name": "once", "image": {"repository": repo, "tag": tag},
                      "envs": [{"key": "ROLE", "value": "job"}]}],
        })
    }

    async fn wait_phase(&self, app: &str, dep: &str) -> Value {
        for _ in 0..600 {
            let (status, v) = self.get(&format!("/v2/apps/{app}/deployments/{dep}")).await;
            assert_eq!(status, 200, "{v}");
            let phase = v["deployment"]["phase"].as_str().unwrap().to_string();
            if ["ACTIVE", "ERROR", "CANCELED", "SUPERSEDED"].contains(&phase.as_str()) {
                return v["deployment"].clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("deployment {dep} did not end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_errors_and_bodies_are_app_platform_shaped() {
    let Some(api) = api().await else { return };
    let url = format!("{}/v2/apps", api.base);

    let r = api.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], "unauthorized");
    let r = api
        .http
        .get(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = api
        .http
        .get(format!("{}/healthz", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the health probe needs no token");

    let r = api
        .http
        .post(&url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], "bad_request");
    assert!(
        v["message"].as_str().unwrap().contains("not valid JSON"),
        "{v}"
    );

    let (status, v) = api
        .post("/v2/apps", json!({"spec": {"name": "x", "services": [{"name": "Web", "image": {"repository": "a"}}]}}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(v["id"], "bad_request");
    assert_eq!(v["problems"][0]["path"], "name");
    assert_eq!(v["problems"][1]["path"], "services[0].name");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("services[0].name: \"Web\" must match"),
        "{v}"
    );

    let (status, v) = api.post("/v2/apps", json!({"specs": {}})).await;
    assert_eq!(status, 400);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `specs`"),
        "{v}"
    );

    let big = "x".repeat(slipway_api::MAX_BODY_BYTES + 10);
    let r = api
        .http
        .post(&url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], "request_entity_too_large");

    let (status, v) = api.get("/v2/apps/no-such-app").await;
    assert_eq!(status, 404);
    assert_eq!(v["id"], "not_found");
    assert_eq!(v["message"], "no app with ID or name \"no-such-app\"");
    let (status, _) = api.get("/v2/nothing-here").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_deployments_restart_and_pagination() {
    let Some(api) = api().await else { return };
    let name = unique("apiapp");
    let (status, v) = api.post("/v2/apps", json!({"spec": api.spec(&name)})).await;
    assert_eq!(status, 200, "{v}");
    let app = v["app"].clone();
    let id = app["id"].as_str().unwrap().to_string();
    assert_eq!(app["spec"]["name"], name);
    let first = app["in_progress_deployment"]["id"]
        .as_str()
        .or(app["pending_deployment"]["id"].as_str())
        .expect("the first deployment is under way")
        .to_string();
    let d = api.wait_phase(&id, &first).await;
    assert_eq!(d["phase"], "ACTIVE", "{d}");
    assert_eq!(d["cause"], "app created");
    assert!(d["progress"]["total_steps"].as_u64().unwrap() >= 2);
    assert_eq!(d["progress"]["error_steps"], 0);
    assert!(
        d["services"][0]["image"]["id"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );

    // The app by name, with its active deployment.
    let (status, v) = api.get(&format!("/v2/apps/{name}")).await;
    assert_eq!(status, 200);
    assert_eq!(v["app"]["id"], id.as_str());
    assert_eq!(v["app"]["active_deployment"]["id"], first.as_str());

    // Restart refusals name what is wrong; nothing is created.
    let (status, v) = api
        .post(
            &format!("/v2/apps/{id}/restart"),
            json!({"components": ["nope"]}),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(v["id"], "unprocessable_entity");
    assert!(v["message"].as_str().unwrap().contains("\"nope\""), "{v}");
    let (status, v) = api
        .post(
            &format!("/v2/apps/{id}/restart"),
            json!({"components": ["once"]}),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        v["message"].as_str().unwrap().contains("once is a job"),
        "{v}"
    );
    let (status, v) = api
        .post(
            &format!("/v2/apps/{id}/deployments"),
            json!({"force_build": "yes"}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("force_build: invalid type"),
        "{v}"
    );

    // A restart of one component, then a deployment without a body.
    let (status, v) = api
        .post(
            &format!("/v2/apps/{id}/restart"),
            json!({"components": ["worker"]}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["deployment"]["cause"], "manual restart");
    assert_eq!(v["deployment"]["phase"], "PENDING_DEPLOY");
    let restart = v["deployment"]["id"].as_str().unwrap().to_string();
    assert_eq!(api.wait_phase(&id, &restart).await["phase"], "ACTIVE");
    let r = api
        .http
        .post(format!("{}/v2/apps/{id}/deployments", api.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["deployment"]["cause"], "manual");
    let third = v["deployment"]["id"].as_str().unwrap().to_string();
    assert_eq!(api.wait_phase(&id, &third).await["phase"], "ACTIVE");

    // Pagination: newest first, links and meta.
    let (status, v) = api
        .get(&format!("/v2/apps/{id}/deployments?per_page=2"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["meta"]["total"], 3);
    assert_eq!(v["deployments"].as_array().unwrap().len(), 2);
    assert_eq!(v["deployments"][0]["id"], third.as_str());
    assert_eq!(v["deployments"][1]["phase"], "SUPERSEDED");
    assert_eq!(
        v["links"]["pages"]["next"],
        format!("/v2/apps/{id}/deployments?page=2&per_page=2")
    );
    let (_, v) = api
        .get(&format!("/v2/apps/{id}/deployments?page=2&per_page=2"))
        .await;
    assert_eq!(v["deployments"][0]["id"], first.as_str());
    assert!(v["links"]["pages"].get("next").is_none());
    let (status, _) = api
        .get(&format!("/v2/apps/{id}/deployments?per_page=0"))
        .await;
    assert_eq!(status, 400);

    // Propose: the name is taken; a bad spec is refused with its problems.
    let (status, v) = api
        .post("/v2/apps/propose", json!({"spec": api.spec(&name)}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["app_name_available"], false);
    let (status, v) = api
        .post(
            "/v2/apps/propose",
            json!({"spec": {"name": "ok-name", "services": [{"name": "w"}]}}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(v["problems"][0]["path"], "services[0].name");

    // Cancel of an ended deployment is refused; delete removes the app.
    let (status, _) = api
        .post(
            &format!("/v2/apps/{id}/deployments/{first}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(status, 422);
    let (status, v) = api
        .call(reqwest::Method::DELETE, &format!("/v2/apps/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["id"], id.as_str());
    let (status, _) = api.get(&format!("/v2/apps/{id}")).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_pre_signed_urls_and_events_stream_every_step() {
    use futures::StreamExt;
    let Some(api) = api().await else { return };
    let repo = slipway_testkit::HelloRepo::new("v1").unwrap();
    let name = unique("logs");
    let spec = json!({
        "name": name,
        "services": [{"name": "web", "git": {"repo_clone_url": repo.url(), "branch": "main"},
                      "health_check": {"http_path": "/healthz", "period_seconds": 0.1}}],
    });
    let (status, v) = api.post("/v2/apps", json!({"spec": spec})).await;
    assert_eq!(status, 200, "{v}");
    let id = v["app"]["id"].as_str().unwrap().to_string();
    let first = v["app"]["in_progress_deployment"]["id"]
        .as_str()
        .or(v["app"]["pending_deployment"]["id"].as_str())
        .unwrap()
        .to_string();

    // The live BUILD log follows the build while it runs, and ends with the deployment.
    let (status, v) = api
        .get(&format!(
            "/v2/apps/{id}/deployments/{first}/logs?type=BUILD&follow=true"
        ))
        .await;
    assert_eq!(status, 200, "{v}");
    let live = v["live_url"].as_str().unwrap().to_string();
    assert!(live.starts_with(&api.base), "{live}");
    let text = tokio::time::timeout(Duration::from_secs(120), async {
        reqwest::get(&live).await.unwrap().text().await.unwrap()
    })
    .await
    .expect("the live log ends when the deployment does");
    assert!(text.contains("web Successfully tagged"), "{text}");
    assert_eq!(api.wait_phase(&id, &first).await["phase"], "ACTIVE");

    // The historic log needs no token (the URL is signed), but a tampered URL is refused.
    let historic = v["historic_urls"][0].as_str().unwrap().to_string();
    let r = reqwest::get(&historic).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert!(r.text().await.unwrap().contains("Step 1/"));
    let tampered = historic.replace("type=BUILD", "type=DEPLOY");
    assert_eq!(reqwest::get(&tampered).await.unwrap().status(), 401);

    // One component's log, without the component prefix.
    let (_, v) = api
        .get(&format!(
            "/v2/apps/{id}/deployments/{first}/components/web/logs?type=DEPLOY"
        ))
        .await;
    let text = reqwest::get(v["historic_urls"][0].as_str().unwrap())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("web: ") && l.ends_with(" is ready")),
        "{text}"
    );
    let (status, _) = api
        .get(&format!(
            "/v2/apps/{id}/deployments/{first}/components/nope/logs?type=BUILD"
        ))
        .await;
    assert_eq!(status, 404);
    let (status, v) = api
        .get(&format!(
            "/v2/apps/{id}/deployments/{first}/logs?type=SOMETIMES"
        ))
        .await;
    assert_eq!(status, 400);
    assert!(v["message"].as_str().unwrap().starts_with("type:"), "{v}");

    // RUN: what the instances write, each line prefixed with its instance.
    let (_, v) = api.get(&format!("/v2/apps/{id}/logs?type=RUN")).await;
    let text = reqwest::get(v["historic_urls"][0].as_str().unwrap())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("listening on port 8080"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.starts_with(&format!("slipway-{name}-web-")), "{line}");

    // Events: a restart's creation, phases and steps, with millisecond times and durations.
    let events = api
        .http
        .get(format!("{}/v2/apps/{id}/events", api.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut body = events.bytes_stream();
    let (status, v) = api.post(&format!("/v2/apps/{id}/restart"), json!({})).await;
    assert_eq!(status, 200);
    let restart = v["deployment"]["id"].as_str().unwrap().to_string();
    let mut text = String::new();
    let seen = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if text.contains("event: deployment.finished") {
                break;
            }
        }
        text
    })
    .await
    .expect("the restart's events arrive");
    let events: Vec<(String, Value)> = seen
        .split("\n\n")
        .filter_map(|block| {
            let name = block.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((name.to_string(), serde_json::from_str(data).unwrap()))
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[0], "ready");
    assert!(names.contains(&"deployment.created"), "{names:?}");
    let phases = |dep: &str| -> Vec<String> {
        events
            .iter()
            .filter(|(n, d)| n == "deployment.phase" && d["deployment_id"] == dep)
            .map(|(_, d)| d["phase"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(phases(&restart), ["DEPLOYING", "ACTIVE"]);
    assert_eq!(
        phases(&first),
        ["SUPERSEDED"],
        "the previous deployment is superseded"
    );
    let finished = events
        .iter()
        .find(|(n, d)| n == "step.finished" && d["step"] == "deploy/web/instance 1/1")
        .unwrap();
    assert_eq!(finished.1["deployment_id"], restart.as_str());
    assert_eq!(finished.1["status"], "SUCCESS");
    assert!(finished.1["duration_ms"].as_i64().unwrap() >= 0);
    let at = finished.1["at"].as_str().unwrap();
    assert!(
        at.len() >= "2026-01-01T00:00:00.000Z".len() - 2 && at.contains('.'),
        "millisecond times: {at}"
    );
    let (_, last) = events.last().unwrap();
    assert_eq!(last["phase"], "ACTIVE");
    assert!(last["duration_ms"].as_i64().unwrap() > 0);
}
