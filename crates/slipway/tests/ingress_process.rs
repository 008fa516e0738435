//! The apps' traffic outlives the control plane: steady load through the ingress process
//! while the daemon is killed and stays down for a minute, is stopped and started again from
//! another binary, is killed in the middle of a rolling restart, and while the ingress itself
//! is replaced by a new process. Every failure counts (refused, reset, 5xx, timeout): there
//! must be none.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, Daemon, docker_ready};
use serde_json::Value;
use slipway_testkit::{HelloRepo, unique};
use slipway_testkit::{Tally, Traffic};

mod common;

/// Clients sending one request after another, as fast as the ingress answers.
const CLIENTS: usize = 16;

struct App {
    id: String,
    host: String,
}

/// An app of two web instances whose new instances take `ready_ms` to listen.
fn create(daemon: &Daemon, repo: &HelloRepo, ready_ms: u64) -> App {
    let name = unique("outlive");
    let spec = format!(
        "name: {name}\nservices:\n  - name: web\n    git: {{repo_clone_url: \"{}\", branch: main}}\n    instance_count: 2\n    envs: [{{key: READY_DELAY_MS, value: \"{ready_ms}\"}}]\n    health_check: {{http_path: /healthz, period_seconds: 0.1, failure_threshold: 600}}\n",
        repo.url()
    );
    let spec = slipway_spec::parse_document(&spec).unwrap();
    let v = daemon.api("POST", "/v2/apps", Some(serde_json::json!({"spec": spec})));
    let id = v["app"]["id"].as_str().unwrap().to_string();
    let first = v["app"]["in_progress_deployment"]["id"]
        .as_str()
        .or(v["app"]["pending_deployment"]["id"].as_str())
        .unwrap()
        .to_string();
    let d = daemon.wait_for(&id, &first, |d| {
        d["phase"] == "ACTIVE" || d["phase"] == "ERROR"
    });
    assert_eq!(d["phase"], "ACTIVE", "{d}");
    App {
        id,
        host: format!("{name}.localhost"),
    }
}

/// Load on the app through the ingress process, on a runtime of its own.
struct Load {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    url: String,
}

impl Load {
    fn new(daemon: &Daemon, app: &App) -> Load {
        let listen: SocketAddr = daemon.ingress()["listen"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let http = reqwest::Client::builder()
            .resolve(&app.host, listen)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Load {
            runtime,
            http,
            url: format!("http://{}:{}/", app.host, listen.port()),
        }
    }

    fn start(&self) -> (Traffic, Instant) {
        let _guard = self.runtime.enter();
        let traffic = Traffic::start(
            &self.http,
            &self.url,
            CLIENTS,
            10_000_000,
            Duration::from_secs(600),
        );
        (traffic, Instant::now())
    }

    /// Stops the load and checks that nothing failed during `what`.
    fn finish(&self, (traffic, started): (Traffic, Instant), what: &str) -> Tally {
        let tally = self.runtime.block_on(traffic.finish());
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "{what}: {} requests in {seconds:.1} s ({:.0}/s), {} failed",
            tally.ok,
            tally.ok as f64 / seconds,
            tally.failures.len()
        );
        tally.assert_none_failed(what);
        assert!(tally.ok > 0, "no request was answered during {what}");
        tally
    }
}

/// The app's running web containers, from Docker.
fn running_web(app: &App) -> usize {
    let out = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=slipway.app={}", app.id),
            "--filter",
            "label=slipway.component=web",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Waits until the deployment `dep` has ended.
fn settled(daemon: &Daemon, app: &App, dep: &str) -> Value {
    daemon.wait_for(&app.id, dep, |d| {
        !matches!(
            d["phase"].as_str(),
            Some("PENDING_BUILD" | "BUILDING" | "PENDING_DEPLOY" | "DEPLOYING")
        )
    })
}

/// A copy of the `slipway` binary at another path: starting it is a real exec of another
/// program file, as an upgrade is.
fn other_binary(dir: &Path) -> PathBuf {
    let path = dir.join("slipway-next");
    std::fs::copy(BIN, &path).unwrap();
    path
}

fn exe_of(pid: u64) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
}

#[test]
fn traffic_survives_the_daemon_killed_down_for_a_minute_and_killed_mid_rollout() {
    if !docker_ready() {
        return;
    }
    let mut daemon = Daemon::start("outlive", &[]);
    let repo = HelloRepo::with_healthcheck("v1").unwrap();
    let app = create(&daemon, &repo, 1500);
    let ingress = daemon.ingress();
    let load = Load::new(&daemon, &app);

    // 1. SIGKILL, a minute down, started again.
    let traffic = load.start();
    std::thread::sleep(Duration::from_secs(2));
    daemon.kill();
    std::thread::sleep(Duration::from_secs(60));
    daemon.spawn();
    // The new daemon's table reaches the ingress: a restart rolls out through it.
    std::thread::sleep(Duration::from_secs(2));
    load.finish(traffic, "a minute with the daemon killed, and its start");
    assert_eq!(
        daemon.ingress()["pid"],
        ingress["pid"],
        "the same ingress process served throughout"
    );

    // 2. A rolling restart in flight when the daemon is killed: the new daemon reverts it,
    // and the traffic follows the instances that are ready.
    let traffic = load.start();
    let restart = daemon.api(
        "POST",
        &format!("/v2/apps/{}/restart", app.id),
        Some(serde_json::json!({})),
    );
    let dep = restart["deployment"]["id"].as_str().unwrap().to_string();
    daemon.wait_for(&app.id, &dep, |d| {
        let deploy = d["progress"]["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "deploy").cloned());
        deploy.is_some_and(|deploy| deploy["steps"][0]["steps"][0]["status"] == "SUCCESS")
    });
    daemon.kill();
    std::thread::sleep(Duration::from_secs(3));
    daemon.spawn();
    let ended = settled(&daemon, &app, &dep);
    assert_eq!(ended["phase"], "ERROR", "{ended}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while running_web(&app) != 2 {
        assert!(
            Instant::now() < deadline,
            "the app is not back to 2 instances"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Then a restart that completes, through the same ingress.
    let restart = daemon.api(
        "POST",
        &format!("/v2/apps/{}/restart", app.id),
        Some(serde_json::json!({})),
    );
    let dep = restart["deployment"]["id"].as_str().unwrap().to_string();
    assert_eq!(settled(&daemon, &app, &dep)["phase"], "ACTIVE");
    load.finish(
        traffic,
        "a rolling restart interrupted by SIGKILL, its recovery, and a restart",
    );
    assert_eq!(daemon.ingress()["pid"], ingress["pid"]);
}

#[test]
fn traffic_survives_an_upgrade_of_the_daemon_and_of_the_ingress() {
    if !docker_ready() {
        return;
    }
    let mut daemon = Daemon::start("upgrade", &[]);
    let repo = HelloRepo::with_healthcheck("v1").unwrap();
    let app = create(&daemon, &repo, 0);
    let ingress = daemon.ingress();
    let load = Load::new(&daemon, &app);
    let bins = tempfile::tempdir().unwrap();
    let next = other_binary(bins.path());

    // 1. SIGTERM, then the daemon from another binary.
    let traffic = load.start();
    std::thread::sleep(Duration::from_secs(2));
    let mut old = daemon.take_process();
    Command::new("kill")
        .arg("-TERM")
        .arg(old.id().to_string())
        .status()
        .unwrap();
    assert!(old.wait().unwrap().success(), "a clean exit on SIGTERM");
    std::thread::sleep(Duration::from_secs(2));
    daemon.spawn_from(&next);
    assert_eq!(exe_of(u64::from(daemon.pid())), next, "the new binary runs");
    let restart = daemon.api(
        "POST",
        &format!("/v2/apps/{}/restart", app.id),
        Some(serde_json::json!({})),
    );
    let dep = restart["deployment"]["id"].as_str().unwrap().to_string();
    assert_eq!(settled(&daemon, &app, &dep)["phase"], "ACTIVE");
    load.finish(
        traffic,
        "a daemon upgrade by SIGTERM and a restart after it",
    );
    assert_eq!(daemon.ingress()["pid"], ingress["pid"]);

    // 2. The ingress replaced by a new process from the other binary: it takes the listening
    // socket over; the old one finishes what it serves and exits.
    let traffic = load.start();
    std::thread::sleep(Duration::from_secs(2));
    let upgrade = Command::new(&next)
        .args(["ingress", "upgrade", "--data-dir"])
        .arg(daemon.data.path())
        .output()
        .unwrap();
    assert!(
        upgrade.status.success(),
        "{}",
        String::from_utf8_lossy(&upgrade.stderr)
    );
    let successor: Value = serde_json::from_slice(&upgrade.stdout).unwrap();
    let successor = successor["pid"].as_u64().unwrap();
    eprintln!(
        "the successor serves {:.3} s into the load",
        traffic.1.elapsed().as_secs_f64()
    );
    let old_pid = ingress["pid"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Path::new(&format!("/proc/{old_pid}/exe")).exists() {
        assert!(
            Instant::now() < deadline,
            "the old ingress did not exit after the handover"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "the old ingress exited {:.3} s into the load",
        traffic.1.elapsed().as_secs_f64()
    );
    let now = daemon.ingress();
    assert_eq!(now["pid"].as_u64(), Some(successor));
    assert_eq!(now["listen"], ingress["listen"], "the same socket serves");
    assert_eq!(exe_of(successor), next);
    // The daemon follows the new ingress: a restart rolls out through it.
    let restart = daemon.api(
        "POST",
        &format!("/v2/apps/{}/restart", app.id),
        Some(serde_json::json!({})),
    );
    let dep = restart["deployment"]["id"].as_str().unwrap().to_string();
    assert_eq!(settled(&daemon, &app, &dep)["phase"], "ACTIVE");
    load.finish(
        traffic,
        "an ingress upgrade by handover and a restart after it",
    );

    // 3. The ingress process killed: the daemon starts another where it served, and sends it
    // the table (requests fail meanwhile; none is routed wrong).
    Command::new("kill")
        .args(["-KILL", &successor.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let revived = loop {
        let out = Command::new(BIN)
            .args(["ingress", "status", "--data-dir"])
            .arg(daemon.data.path())
            .output()
            .unwrap();
        if let Ok(hello) = serde_json::from_slice::<Value>(&out.stdout)
            && hello["pid"].as_u64() != Some(successor)
        {
            break hello;
        }
        assert!(Instant::now() < deadline, "no ingress was started again");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(revived["listen"], ingress["listen"], "where it served");
    let http = reqwest::blocking::Client::builder()
        .resolve(
            &app.host,
            revived["listen"].as_str().unwrap().parse().unwrap(),
        )
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answered = http
            .get(&load.url)
            .send()
            .is_ok_and(|r| r.status().is_success());
        if answered {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new ingress was not given the table"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// As systemd runs it (`Type=notify`, `NotifyAccess=all`, `ExecReload=slipway ingress
/// upgrade`): the service manager hears when the ingress serves and which process is the
/// service's main one, before and after an upgrade; the ingress a daemon starts tells it
/// nothing.
#[test]
fn the_service_manager_hears_which_process_serves_across_an_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let next_message = || {
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let mut first = Command::new(BIN)
        .args(["ingress", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert_eq!(next_message(), format!("READY=1\nMAINPID={}", first.id()));

    let bins = tempfile::tempdir().unwrap();
    let next = other_binary(bins.path());
    let upgrade = Command::new(&next)
        .args(["ingress", "upgrade", "--data-dir"])
        .arg(&data)
        .env("NOTIFY_SOCKET", &notify_path)
        .output()
        .unwrap();
    assert!(
        upgrade.status.success(),
        "{}",
        String::from_utf8_lossy(&upgrade.stderr)
    );
    let new: Value = serde_json::from_slice(&upgrade.stdout).unwrap();
    let new_pid = new["pid"].as_u64().unwrap();
    assert_ne!(new_pid, u64::from(first.id()));
    assert_eq!(exe_of(new_pid), next, "the new binary serves");
    assert_eq!(next_message(), format!("READY=1\nMAINPID={new_pid}"));
    // The old one exits, and tells the service manager nothing on its way out.
    assert!(first.wait().unwrap().success());
    notify
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(
        notify.recv(&mut buf).is_err(),
        "nothing more after the handover: {:?}",
        String::from_utf8_lossy(&buf)
    );

    let stop = Command::new(BIN)
        .args(["ingress", "stop", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(stop.status.success());
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(next_message(), "STOPPING=1");
    let deadline = Instant::now() + Duration::from_secs(40);
    while Path::new(&format!("/proc/{new_pid}/exe")).exists() {
        assert!(Instant::now() < deadline, "the ingress did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !data.join("ingress.sock").exists(),
        "a stopped ingress removes its control socket"
    );
}
