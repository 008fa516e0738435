//! The daemon killed with SIGKILL during a build, a PRE_DEPLOY job and a rollout, then
//! started again on the same data: the app keeps answering while the daemon is down, the
//! interrupted deployment is settled, and exactly the previous version runs.

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, docker_ready};
use serde_json::Value;
use slipway_testkit::{HelloRepo, unique};

mod common;

/// The app's web containers (ID, published address, running), read from Docker directly.
fn web_containers(app_id: &str) -> Vec<(String, String, bool)> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=slipway.app={app_id}"),
            "--filter",
            "label=slipway.component=web",
            "--format",
            "{{.ID}} {{.State}} {{.Ports}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut parts = l.split_whitespace();
            let id = parts.next().unwrap().to_string();
            let running = parts.next() == Some("running");
            // `192.168.0.1:32770->8080/tcp`: where 8080 is published.
            let published = parts
                .next()
                .and_then(|p| p.split("->").next())
                .unwrap_or_default()
                .to_string();
            (id, published, running)
        })
        .collect()
}

fn answers(containers: &[(String, String, bool)]) -> usize {
    containers
        .iter()
        .filter(|(_, published, _)| {
            reqwest::blocking::get(format!("http://{published}/"))
                .and_then(|r| r.text())
                .is_ok_and(|t| t.starts_with("hello from v1"))
        })
        .count()
}

fn count_labelled(label: &str) -> usize {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn create(daemon: &Daemon, repo: &HelloRepo, extra: &str) -> (String, String) {
    let spec = format!(
        "name: {}\nservices:\n  - name: web\n    git: {{repo_clone_url: \"{}\", branch: main}}\n    instance_count: 3\n    health_check: {{http_path: /healthz, period_seconds: 0.1, failure_threshold: 600}}\n{extra}",
        unique("crash"),
        repo.url()
    );
    let spec = slipway_spec::parse_document(&spec).unwrap();
    let v = daemon.api("POST", "/v2/apps", Some(serde_json::json!({"spec": spec})));
    let app = v["app"]["id"].as_str().unwrap().to_string();
    let first = v["app"]["in_progress_deployment"]["id"]
        .as_str()
        .or(v["app"]["pending_deployment"]["id"].as_str())
        .unwrap()
        .to_string();
    let d = daemon.wait_for(&app, &first, |d| {
        d["phase"] == "ACTIVE" || d["phase"] == "ERROR"
    });
    assert_eq!(d["phase"], "ACTIVE", "{d}");
    (app, first)
}

/// Kills the daemon once `at` holds for the deployment, checks the app answers while it is
/// down, starts it again and returns the settled deployment.
fn kill_and_restart(
    daemon: &mut Daemon,
    app: &str,
    dep: &str,
    at: impl Fn(&Value) -> bool,
) -> Value {
    daemon.wait_for(app, dep, at);
    daemon.kill();
    let running = web_containers(app);
    assert!(
        answers(&running) >= 3,
        "the app answers while the daemon is down: {running:?}"
    );
    daemon.spawn();
    daemon.wait_for(app, dep, |d| {
        d["phase"] != "BUILDING"
            && d["phase"] != "DEPLOYING"
            && d["phase"] != "PENDING_BUILD"
            && d["phase"] != "PENDING_DEPLOY"
    })
}

/// After recovery: exactly 3 running web instances of the previous version, all answering,
/// and nothing of the interrupted deployment left.
fn settled(daemon: &Daemon, app: &str, first: &str, interrupted: &Value) {
    assert_eq!(interrupted["phase"], "ERROR", "{interrupted}");
    let text = interrupted.to_string();
    assert!(text.contains("the daemon stopped during"), "{text}");
    assert!(text.contains("the previous version was restored"), "{text}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let web = web_containers(app);
        if web.len() == 3 && web.iter().all(|(_, _, r)| *r) && answers(&web) == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not back to 3 instances: {web:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let id = interrupted["id"].as_str().unwrap();
    assert_eq!(
        count_labelled(&format!("slipway.deployment={id}")),
        0,
        "nothing of it is left"
    );
    assert_eq!(daemon.deployment(app, first)["phase"], "ACTIVE");
}

#[test]
fn killed_during_a_build_a_job_and_a_rollout_it_comes_back_to_one_version() {
    if !docker_ready() {
        return;
    }
    let mut daemon = Daemon::start("crash", &[]);
    let repo = HelloRepo::new("v1").unwrap();
    let (app, first) = create(&daemon, &repo, "");
    let original = web_containers(&app);
    for (id, published, _) in &original {
        let addr: std::net::SocketAddr = published.parse().unwrap();
        assert!(
            !addr.ip().is_loopback(),
            "by default {id} is published on its network's gateway, not at {published}"
        );
    }

    // 1. During a build (its RUN step serves forever, so the build hangs).
    repo.write(
        "Dockerfile",
        "FROM scratch\nCOPY hello /hello\nRUN [\"/hello\"]\n",
    )
    .unwrap();
    repo.commit("a build that hangs").unwrap();
    let d = daemon.api(
        "POST",
        &format!("/v2/apps/{app}/deployments"),
        Some(serde_json::json!({"force_build": true})),
    );
    let dep = d["deployment"]["id"].as_str().unwrap().to_string();
    let settled_build = kill_and_restart(&mut daemon, &app, &dep, |d| d["phase"] == "BUILDING");
    settled(&daemon, &app, &first, &settled_build);
    assert!(
        settled_build.to_string().contains("during build/web"),
        "{settled_build}"
    );
    let mut now: Vec<String> = web_containers(&app).into_iter().map(|c| c.0).collect();
    let mut before: Vec<String> = original.into_iter().map(|c| c.0).collect();
    now.sort();
    before.sort();
    assert_eq!(
        now, before,
        "the build never touched the running containers"
    );

    // 2. During a PRE_DEPLOY job.
    repo.write(
        "Dockerfile",
        &std::fs::read_to_string(
            slipway_testkit::workspace_root().join("examples/hello/Dockerfile"),
        )
        .unwrap(),
    )
    .unwrap();
    repo.commit("a build that works").unwrap();
    let spec = daemon.api("GET", &format!("/v2/apps/{app}"), None)["app"]["spec"].clone();
    let mut spec = spec;
    spec["jobs"] = serde_json::json!([{
        "name": "migrate", "kind": "PRE_DEPLOY",
        "git": {"repo_clone_url": repo.url(), "branch": "main"},
        "envs": [{"key": "ROLE", "value": "job"}, {"key": "JOB_DURATION_MS", "value": "60000"}],
    }]);
    daemon.api(
        "PUT",
        &format!("/v2/apps/{app}"),
        Some(serde_json::json!({"spec": spec.clone()})),
    );
    let list = daemon.api(
        "GET",
        &format!("/v2/apps/{app}/deployments?per_page=1"),
        None,
    );
    let dep = list["deployments"][0]["id"].as_str().unwrap().to_string();
    let settled_job = kill_and_restart(&mut daemon, &app, &dep, |d| {
        d["progress"]["steps"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == "pre-deploy" && s["status"] == "RUNNING")
        })
    });
    settled(&daemon, &app, &first, &settled_job);
    assert!(
        settled_job
            .to_string()
            .contains("during pre-deploy/migrate"),
        "{settled_job}"
    );

    // 3. In the middle of a rollout: new instances take 2 s to listen; killed after the first
    // one is ready.
    spec["jobs"] = serde_json::json!([]);
    spec["services"][0]["envs"] = serde_json::json!([{"key": "READY_DELAY_MS", "value": "2000"}]);
    daemon.api(
        "PUT",
        &format!("/v2/apps/{app}"),
        Some(serde_json::json!({"spec": spec})),
    );
    let list = daemon.api(
        "GET",
        &format!("/v2/apps/{app}/deployments?per_page=1"),
        None,
    );
    let dep = list["deployments"][0]["id"].as_str().unwrap().to_string();
    let settled_rollout = kill_and_restart(&mut daemon, &app, &dep, |d| {
        let deploy = d["progress"]["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "deploy").cloned());
        deploy.is_some_and(|deploy| deploy["steps"][0]["steps"][0]["status"] == "SUCCESS")
    });
    settled(&daemon, &app, &first, &settled_rollout);
    assert!(
        settled_rollout.to_string().contains("during deploy/web"),
        "{settled_rollout}"
    );
}

#[test]
fn sigterm_stops_the_daemon_cleanly_and_abandons_a_build() {
    if !docker_ready() {
        return;
    }
    // This daemon publishes on loopback, before and after its restart.
    let mut daemon = Daemon::start("crash", &["--publish-on", "loopback"]);
    let repo = HelloRepo::new("v1").unwrap();
    let (app, first) = create(&daemon, &repo, "");
    for (id, published, _) in web_containers(&app) {
        let addr: std::net::SocketAddr = published.parse().unwrap();
        assert!(addr.ip().is_loopback(), "{id} at {published}");
    }
    repo.write(
        "Dockerfile",
        "FROM scratch\nCOPY hello /hello\nRUN [\"/hello\"]\n",
    )
    .unwrap();
    repo.commit("a build that hangs").unwrap();
    let d = daemon.api(
        "POST",
        &format!("/v2/apps/{app}/deployments"),
        Some(serde_json::json!({"force_build": true})),
    );
    let dep = d["deployment"]["id"].as_str().unwrap().to_string();
    daemon.wait_for(&app, &dep, |d| d["phase"] == "BUILDING");

    let mut child = daemon.take_process();
    let t = Instant::now();
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the daemon did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "a clean exit: {status:?}");
    assert!(answers(&web_containers(&app)) >= 3, "the app keeps running");

    daemon.spawn();
    let d = daemon.deployment(&app, &dep);
    assert_eq!(
        d["phase"], "CANCELED",
        "the build was abandoned, not left half-done: {d}"
    );
    assert_eq!(daemon.deployment(&app, &first)["phase"], "ACTIVE");
    assert_eq!(count_labelled(&format!("slipway.deployment={dep}")), 0);
}
