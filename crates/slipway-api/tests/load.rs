//! 100 API clients polling while 10 apps restart at once: no error, bounded memory. The load is
//! bounded in count and time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use slipway_testkit::unique;

mod common;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_poll_while_ten_apps_restart() {
    let Some(served) = common::serve("load", "t").await else {
        return;
    };
    let (repository, tag) = served.hello_image("slipway-load").await;
    let base = served.base.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();

    let mut apps = Vec::new();
    for _ in 0..10 {
        let spec = json!({
            "name": unique("load"),
            "services": [{"name": "web", "image": {"repository": repository, "tag": tag},
                          "health_check": {"http_path": "/healthz", "period_seconds": 0.1}}],
        });
        let v: Value = http
            .post(format!("{base}/v2/apps"))
            .bearer_auth("t")
            .json(&json!({"spec": spec}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        apps.push(v["app"]["id"].as_str().unwrap().to_string());
    }
    let wait_all = |http: reqwest::Client, base: String, apps: Vec<String>| async move {
        for app in &apps {
            for _ in 0..600 {
                let v: Value = http
                    .get(format!("{base}/v2/apps/{app}"))
                    .bearer_auth("t")
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if v["app"]["in_progress_deployment"].is_null()
                    && v["app"]["pending_deployment"].is_null()
                    && !v["app"]["active_deployment"].is_null()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_all(http.clone(), base.clone(), apps.clone()).await;
    let rss_before = rss_kib();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let (http, base, app) = (http.clone(), base.clone(), apps[i % apps.len()].clone());
            let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            tokio::spawn(async move {
                for n in 0..300 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let path = if n % 2 == 0 {
                        format!("/v2/apps/{app}")
                    } else {
                        format!("/v2/apps/{app}/deployments?per_page=5")
                    };
                    match http
                        .get(format!("{base}{path}"))
                        .bearer_auth("t")
                        .send()
                        .await
                    {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
        .collect();

    // All ten restart at once.
    let mut restarts = Vec::new();
    for app in &apps {
        let r = http
            .post(format!("{base}/v2/apps/{app}/restart"))
            .bearer_auth("t")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        restarts.push((
            app.clone(),
            v["deployment"]["id"].as_str().unwrap().to_string(),
        ));
    }
    for (app, dep) in &restarts {
        let mut phase = String::new();
        for _ in 0..1200 {
            let v: Value = http
                .get(format!("{base}/v2/apps/{app}/deployments/{dep}"))
                .bearer_auth("t")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            phase = v["deployment"]["phase"].as_str().unwrap().to_string();
            if phase != "PENDING_DEPLOY" && phase != "DEPLOYING" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(phase, "ACTIVE", "{app} {dep}");
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} of {} polls failed", ok + failed);
    assert!(ok >= 1000, "the clients polled: {ok}");
    let grown_mib = rss_kib().saturating_sub(rss_before) / 1024;
    assert!(grown_mib < 200, "memory grew by {grown_mib} MiB");
    eprintln!("{ok} polls answered while 10 apps restarted; memory grew by {grown_mib} MiB");
}
