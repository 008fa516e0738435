//! Attacks on a real `slipway serve` process: slow API clients trying to take the ingress
//! down with it, log URLs outliving the token that asked for them, and a data directory or
//! secret files other users of the host can read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, docker_ready, free_port};
use serde_json::{Value, json};
use slipway_testkit::{HelloRepo, Janitor, unique};

mod common;

/// A `slipway serve` started through `sh -c "<prelude>; exec slipway serve ..."` (so that the
/// prelude can set its umask or its limits), with its log in a file; SIGTERM when dropped.
struct Served {
    child: Option<Child>,
    api: String,
    ingress_port: u16,
    data: PathBuf,
    log: PathBuf,
    token: String,
    _janitor: Option<Janitor>,
}

/// Starts the daemon; `Err(output)` when it exits before listening.
fn serve(prelude: &str, data: &Path, log: &Path, extra: &[&str]) -> Result<Served, Output> {
    let port = free_port();
    let ingress_port = free_port();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("{prelude}\nexec \"$0\" \"$@\""))
        .arg(BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--ingress",
            &format!("127.0.0.1:{ingress_port}"),
            // The test's repositories are bare repositories in temp dirs.
            "--allow-local-sources",
            "--data-dir",
        ])
        .arg(data)
        .args(extra)
        .env_remove("SLIPWAY_TOKEN")
        .env("SLIPWAY_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let token_file = data.join("token");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() || !token_file.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(Output {
                status,
                stdout: Vec::new(),
                stderr: std::fs::read(log).unwrap(),
            });
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let daemon_id = std::fs::read_to_string(data.join("daemon-id")).unwrap();
    let scheme = if extra.contains(&"--tls") {
        "https"
    } else {
        "http"
    };
    Ok(Served {
        child: Some(child),
        api: format!("{scheme}://127.0.0.1:{port}"),
        ingress_port,
        data: data.to_path_buf(),
        log: log.to_path_buf(),
        token: std::fs::read_to_string(&token_file)
            .unwrap()
            .trim()
            .to_string(),
        _janitor: Some(Janitor::new(daemon_id.trim())),
    })
}

impl Served {
    fn api(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let req = client
            .request(method.parse().unwrap(), format!("{}{path}", self.api))
            .bearer_auth(token);
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let r = req.send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--data-dir")
            .arg(&self.data)
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and waits for the process to end.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates an app with one web instance of the example app; returns (app ID, name, the
/// first deployment's ID) once it is ACTIVE.
fn create_app(daemon: &Served, repo_url: &str, wait_active: bool) -> (String, String, String) {
    let name = unique("hard");
    let spec = format!(
        "name: {name}\nservices:\n  - name: web\n    git: {{repo_clone_url: \"{repo_url}\", branch: main}}\n    health_check: {{http_path: /healthz, period_seconds: 0.1, failure_threshold: 600}}\n"
    );
    let spec = slipway_spec::parse_document(&spec).unwrap();
    let (status, v) = daemon.api(
        "POST",
        "/v2/apps",
        &daemon.token,
        Some(json!({"spec": spec})),
    );
    assert_eq!(status, 200, "{v}");
    let app = v["app"]["id"].as_str().unwrap().to_string();
    let dep = v["app"]["in_progress_deployment"]["id"]
        .as_str()
        .or(v["app"]["pending_deployment"]["id"].as_str())
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, d) = daemon.api(
            "GET",
            &format!("/v2/apps/{app}/deployments/{dep}"),
            &daemon.token,
            None,
        );
        let phase = d["deployment"]["phase"].as_str().unwrap_or_default();
        if !wait_active || phase == "ACTIVE" {
            break;
        }
        assert_ne!(phase, "ERROR", "{d}");
        assert!(Instant::now() < deadline, "not ACTIVE in time: {d}");
        std::thread::sleep(Duration::from_millis(100));
    }
    (app, name, dep)
}

/// The most file descriptors this process may hold, raised to its hard limit.
fn raise_own_open_files_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let l = getrlimit(Resource::Nofile);
    if let Some(max) = l.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        );
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Slow clients (a byte every 2 s, never a whole request) open 5,000 connections to the API
/// of a daemon limited to 1,024 open files; while they hold on, every request through the
/// ingress to the app must succeed, and once they leave the API answers again.
#[test]
fn slow_api_clients_cannot_take_the_ingress_down() {
    const ATTACKERS: usize = 5_000;
    const OPEN_FILES: u64 = 1_024;
    if !docker_ready() {
        return;
    }
    let own = raise_own_open_files_limit();
    assert!(
        own >= ATTACKERS as u64 + 512,
        "this test holds {ATTACKERS} sockets and may open only {own} files: raise `ulimit -Hn`"
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = serve(
        &format!("ulimit -n {OPEN_FILES} || exit 99"),
        &data,
        &dir.path().join("daemon.log"),
        &[],
    )
    .unwrap_or_else(|o| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    assert!(
        daemon
            .log()
            .contains(&format!("open files limit (RLIMIT_NOFILE): {OPEN_FILES}")),
        "the daemon logs its open files limit:\n{}",
        daemon.log()
    );
    let repo = HelloRepo::new("v1").unwrap();
    let (_, name, _) = create_app(&daemon, &repo.url(), true);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api_addr: std::net::SocketAddr = daemon.api.trim_start_matches("http://").parse().unwrap();
    let ingress_addr = std::net::SocketAddr::from(([127, 0, 0, 1], daemon.ingress_port));
    let host = format!("{name}.localhost");
    let (served, failures, attack) = rt.block_on(async {
        let stop = tokio_util::sync::CancellationToken::new();
        let attack = tokio::spawn(slow_clients(api_addr, ATTACKERS, stop.clone()));
        // Let the attackers fill every slot they can.
        tokio::time::sleep(Duration::from_secs(4)).await;
        // A fresh connection per request: the ingress must accept each.
        let client = reqwest::Client::builder()
            .resolve(&host, ingress_addr)
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        let (mut served, mut failures) = (0, Vec::new());
        let until = Instant::now() + Duration::from_secs(15);
        while served + failures.len() < 20 && Instant::now() < until {
            let r = client
                .get(format!("http://{host}:{}/", ingress_addr.port()))
                .send()
                .await;
            match r {
                Ok(r) if r.status() == 200 => match r.text().await {
                    Ok(t) if t.starts_with("hello from v1") => served += 1,
                    other => failures.push(format!("{other:?}")),
                },
                other => failures.push(format!("{other:?}")),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        stop.cancel();
        (served, failures, attack.await.unwrap())
    });
    eprintln!(
        "attack: {} connections opened, {} peak open at once, {} closed by the daemon; ingress: {served} answered, {} failed",
        attack.opened,
        attack.peak,
        attack.closed_by_daemon,
        failures.len()
    );
    assert!(
        attack.peak > OPEN_FILES as usize,
        "the attack held fewer connections than the daemon may open files: {attack:?}"
    );
    assert!(
        served == 20 && failures.is_empty(),
        "through the ingress, {served} requests answered and {} failed (20 must answer): {failures:?}",
        failures.len()
    );

    // The attack is over: the API answers again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap()
            .get(format!("{}/v2/apps", daemon.api))
            .bearer_auth(&daemon.token)
            .send()
            .is_ok_and(|r| r.status() == 200);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the API does not answer after the attack:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    rt.shutdown_timeout(Duration::from_secs(1));
}

#[derive(Debug, Default)]
struct Attack {
    opened: usize,
    peak: usize,
    closed_by_daemon: usize,
}

/// Keeps `n` connections to `addr` open (opening a new one for each the daemon closes), each
/// sending one byte of a request every 2 s and never finishing it, until `stop`.
async fn slow_clients(
    addr: std::net::SocketAddr,
    n: usize,
    stop: tokio_util::sync::CancellationToken,
) -> Attack {
    use tokio::io::AsyncWriteExt;
    let mut attack = Attack::default();
    let connect = || async move {
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .ok()
            .and_then(Result::ok)
    };
    let mut open: Vec<tokio::net::TcpStream> = Vec::with_capacity(n);
    // Bounded by the stop signal (the caller's 14 s of requests) and by n per round.
    while !stop.is_cancelled() {
        let missing = n - open.len();
        let mut joins = tokio::task::JoinSet::new();
        for _ in 0..missing {
            joins.spawn(connect());
        }
        while let Some(r) = joins.join_next().await {
            if let Ok(Some(s)) = r {
                attack.opened += 1;
                open.push(s);
            }
        }
        attack.peak = attack.peak.max(open.len());
        // One byte each, then a pause: never a whole request head.
        let mut still = Vec::with_capacity(open.len());
        for mut s in open.drain(..) {
            let wrote = tokio::time::timeout(Duration::from_millis(20), s.write_all(b"G")).await;
            if matches!(wrote, Ok(Ok(()))) {
                still.push(s);
            } else {
                attack.closed_by_daemon += 1;
            }
        }
        open = still;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = stop.cancelled() => {}
        }
    }
    attack
}

/// A log URL made with a read-write token stops working when that token is revoked, and
/// any log URL stops working when its time is up, each with a message that says why.
#[test]
fn a_log_url_dies_with_its_token_and_with_time() {
    if !docker_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = serve(
        "true",
        &data,
        &dir.path().join("daemon.log"),
        &["--log-url-seconds", "4"],
    )
    .unwrap_or_else(|o| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    let out = daemon.cli(&["tokens", "create", "deployer", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let writer = serde_json::from_slice::<Value>(&out.stdout).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    // A deployment whose fetch fails at once: its BUILD log is all this needs.
    let (app, _, dep) = create_app(&daemon, "/nonexistent/repository.git", false);
    let log_url = |token: &str| {
        let (status, v) = daemon.api(
            "GET",
            &format!("/v2/apps/{app}/deployments/{dep}/logs?type=BUILD"),
            token,
            None,
        );
        assert_eq!(status, 200, "{v}");
        v["historic_urls"][0].as_str().unwrap().to_string()
    };
    let get = |url: &str| {
        let r = reqwest::blocking::get(url).unwrap();
        let status = r.status().as_u16();
        (status, r.text().unwrap())
    };

    let url = log_url(&writer);
    assert_eq!(get(&url).0, 200, "a fresh URL works without a token");
    // The URL names its token; naming another one breaks the signature.
    let (before, rest) = url.split_once("&tok=").unwrap();
    let forged = format!(
        "{before}&tok=daemon&exp={}",
        rest.split_once("&exp=").unwrap().1
    );
    assert_eq!(get(&forged).0, 401);
    let out = daemon.cli(&["tokens", "revoke", "deployer"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = get(&url);
    assert_eq!(status, 401, "a URL of a revoked token: {body}");
    assert!(body.contains("was revoked"), "{body}");

    let url = log_url(&daemon.token);
    assert_eq!(get(&url).0, 200);
    std::thread::sleep(Duration::from_secs(5));
    let (status, body) = get(&url);
    assert_eq!(status, 401, "an expired URL: {body}");
    assert!(
        body.contains("this signed URL expired at") && body.contains("valid for 4 seconds"),
        "{body}"
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Under umask 022, everything the daemon makes in its data directory is its user's alone;
/// a token file or a --git-credential file others can read is refused at start.
#[test]
fn the_data_directory_is_private_whatever_the_umask() {
    if !docker_ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("daemon.log");
    let mut daemon = serve("umask 022", &data, &log, &["--tls", "self-signed"])
        .unwrap_or_else(|o| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    // A write through the store, so that SQLite's WAL files exist while it runs.
    let out = daemon.cli(&["tokens", "create", "reader", "--read-only"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (path, expected) in [
        ("", 0o700),
        ("slipway.db", 0o600),
        ("slipway.db-wal", 0o600),
        ("slipway.db-shm", 0o600),
        ("token", 0o600),
        ("secret.key", 0o600),
        ("daemon-id", 0o600),
        ("git", 0o700),
        ("tls", 0o700),
        ("tls/key.pem", 0o600),
    ] {
        let p = data.join(path);
        assert_eq!(mode(&p), expected, "{} is {:04o}", p.display(), mode(&p));
    }
    daemon.stop();

    // A token file others can read: refused, naming the file, its mode and the fix.
    let token = data.join("token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = serve("umask 022", &data, &log, &[]).err().expect("refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let fix = format!("chmod 600 {}", token.display());
    assert!(
        stderr.contains(&format!("the token file {} has mode 0644", token.display()))
            && stderr.contains(&fix),
        "{stderr}"
    );
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();

    // The same for a git token file.
    let git_token = dir.path().join("git-token");
    std::fs::write(&git_token, "secret\n").unwrap();
    std::fs::set_permissions(&git_token, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = serve(
        "umask 022",
        &data,
        &log,
        &[
            "--git-credential",
            &format!("git.example.com={}", git_token.display()),
        ],
    )
    .err()
    .expect("refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "the --git-credential file {} has mode 0640",
            git_token.display()
        )) && stderr.contains(&format!("chmod 600 {}", git_token.display())),
        "{stderr}"
    );
}
