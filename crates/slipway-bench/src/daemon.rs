//! The real `slipway` binary run as processes, for the benchmark of traffic through the
//! ingress process (2c): where the binary is (built when it is missing), `slipway serve` on a
//! data directory of its own with a daemon ID of its own, its API, and the ingress process of
//! that data directory. Whatever it started is stopped however the run ends: the daemon with
//! SIGTERM, the ingress with `slipway ingress stop`, and every Docker object labelled with the
//! daemon's ID is removed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use slipway_ingress::control::{self, Hello};
use slipway_testkit::Janitor;

use crate::cmd::{self, Cmd};

/// How long a daemon may take to listen after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a daemon may take to exit after SIGTERM, and an ingress after `ingress stop`.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one API request may take.
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a deployment may take to end.
const DEPLOYMENT_TIMEOUT: Duration = Duration::from_secs(240);
/// How long `cargo build --release -p slipway` may take when the binary is missing.
const BUILD_TIMEOUT: Duration = Duration::from_secs(3600);

/// The `slipway` binary next to this one (`target/release/slipway` beside
/// `target/release/slipway-bench`), built with `cargo build -p slipway` when it is missing.
pub async fn binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the bench's own binary")?;
    let dir = exe
        .parent()
        .context("the bench's binary is in no directory")?
        .to_path_buf();
    let slipway = dir.join("slipway");
    if slipway.is_file() {
        return Ok(slipway);
    }
    let release = dir.file_name().is_some_and(|n| n == "release");
    let target = dir
        .parent()
        .context("the bench's binary is not in a target directory")?;
    let manifest = slipway_testkit::workspace_root().join("Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let line = if release {
        "cargo build --release -p slipway"
    } else {
        "cargo build -p slipway"
    };
    println!("    {} is missing: {line}", slipway.display());
    let mut build = Cmd::new(&cargo).args(["build", "-p", "slipway", "--quiet"]);
    if release {
        build = build.args(["--release"]);
    }
    build
        .args([
            "--manifest-path".as_ref(),
            manifest.as_os_str(),
            "--target-dir".as_ref(),
            target.as_os_str(),
        ])
        .timeout(BUILD_TIMEOUT)
        .run()
        .await
        .with_context(|| {
            format!(
                "the slipway binary is missing beside the bench ({}) and `{line}` failed; \
                 build it first",
                slipway.display()
            )
        })?;
    if !slipway.is_file() {
        bail!(
            "`{line}` did not make {}: build the slipway binary into the bench's target \
             directory first",
            slipway.display()
        );
    }
    Ok(slipway)
}

/// `slipway --version`, e.g. `slipway 0.1.0`.
pub async fn version(bin: &Path) -> String {
    match Cmd::new(&bin.to_string_lossy())
        .args(["--version"])
        .timeout(Duration::from_secs(10))
        .run()
        .await
    {
        Ok(out) => out.stdout.trim().to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Where the ingress runs: `--ingress-process auto` or `embedded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressMode {
    /// A process of its own, found or started by the daemon; it outlives the daemon.
    Auto,
    /// Inside the daemon, on a port chosen here so that a restarted daemon listens on it again.
    Embedded,
}

/// A `slipway serve` process on a data directory of its own.
#[derive(Debug)]
pub struct Daemon {
    /// Its daemon ID: every Docker object it makes carries `slipway.daemon=<id>`.
    pub id: String,
    data: tempfile::TempDir,
    /// The API's port on 127.0.0.1.
    port: u16,
    /// `--ingress`: port 0 with an ingress process (it keeps its own), a fixed one embedded.
    ingress_arg: SocketAddr,
    mode: IngressMode,
    token: String,
    /// The binary `slipway ingress stop` is run from at the end.
    bin: PathBuf,
    child: Option<Child>,
    /// Ingress processes this daemon's data directory had, for the clean-up.
    ingress_pids: Mutex<Vec<u32>>,
    /// Ingress processes started here (a handover), reaped at the end.
    ingresses: Vec<Child>,
    janitor: Option<Janitor>,
    /// Whether its processes were stopped already.
    stopped: bool,
}

impl Daemon {
    /// Starts `slipway serve` from `bin` with a fresh data directory whose `daemon-id` is `id`
    /// (written before its first start), and waits until it listens and has written its token.
    pub async fn start(bin: &Path, id: &str, mode: IngressMode) -> anyhow::Result<Daemon> {
        let data = tempfile::Builder::new()
            .prefix("slipway-bench-daemon-")
            .tempdir()
            .context("cannot make a data directory")?;
        std::fs::write(data.path().join("daemon-id"), id)?;
        let ingress_arg = match mode {
            IngressMode::Auto => SocketAddr::from(([127, 0, 0, 1], 0)),
            IngressMode::Embedded => SocketAddr::from(([127, 0, 0, 1], free_port()?)),
        };
        let mut daemon = Daemon {
            id: id.to_string(),
            data,
            port: free_port()?,
            ingress_arg,
            mode,
            token: String::new(),
            bin: bin.to_path_buf(),
            child: None,
            ingress_pids: Mutex::new(Vec::new()),
            ingresses: Vec::new(),
            janitor: Some(Janitor::new(id)),
            stopped: false,
        };
        daemon.spawn_from(bin).await?;
        Ok(daemon)
    }

    /// Starts the daemon (again) from `bin`, on the same data directory and ports; returns
    /// once it listens and has written its token.
    pub async fn spawn_from(&mut self, bin: &Path) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("the daemon runs already");
        }
        let log = self.log_file("daemon.log")?;
        let mode = match self.mode {
            IngressMode::Auto => "auto",
            IngressMode::Embedded => "embedded",
        };
        let child = Command::new(bin)
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--ingress", &self.ingress_arg.to_string()])
            .args(["--ingress-process", mode])
            .arg("--allow-local-sources")
            .arg("--data-dir")
            .arg(self.data.path())
            .env_remove("SLIPWAY_TOKEN")
            .env_remove("SLIPWAY_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        self.child = Some(child);
        let token_file = self.data.path().join("token");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if token_file.exists()
                && tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_ok()
            {
                break;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                self.child = None;
                bail!(
                    "the daemon exited ({status}) before it listened: {}",
                    self.log_tail("daemon.log")
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the daemon did not listen within {} s: {}",
                    START_TIMEOUT.as_secs(),
                    self.log_tail("daemon.log")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.token = std::fs::read_to_string(&token_file)?.trim().to_string();
        if self.mode == IngressMode::Auto {
            self.ingress().await?;
        }
        Ok(())
    }

    /// The process ID of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the daemon gets no chance to clean up.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("the daemon is not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGTERM, as a service manager stops it; waits until it exits.
    pub async fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("the daemon is not running")?;
        signal(child.id(), "TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the daemon did not exit within {} s of SIGTERM",
                    STOP_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the ingress process of the data directory says of itself.
    pub async fn ingress(&self) -> anyhow::Result<Hello> {
        let hello = control::hello(&self.data.path().join(control::SOCKET))
            .await
            .context("the ingress process does not answer on its control socket")?;
        let mut pids = self.ingress_pids.lock().unwrap_or_else(|e| e.into_inner());
        if !pids.contains(&hello.pid) {
            pids.push(hello.pid);
        }
        Ok(hello)
    }

    /// Where the apps are served: the ingress process's address, or the embedded one's.
    pub async fn ingress_addr(&self) -> anyhow::Result<SocketAddr> {
        match self.mode {
            IngressMode::Auto => Ok(self.ingress().await?.listen),
            IngressMode::Embedded => Ok(self.ingress_arg),
        }
    }

    /// Starts `bin ingress --data-dir D`: a new ingress process that takes the running one's
    /// sockets and table over. Returns its process ID.
    pub fn start_ingress(&mut self, bin: &Path) -> anyhow::Result<u32> {
        let log = self.log_file("ingress.log")?;
        let child = Command::new(bin)
            .arg("ingress")
            .arg("--data-dir")
            .arg(self.data.path())
            .env_remove("SLIPWAY_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} ingress", bin.display()))?;
        let pid = child.id();
        self.ingress_pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pid);
        self.ingresses.push(child);
        Ok(pid)
    }

    /// A request to the daemon's API with its token; the JSON answer of a 2xx.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let call = async {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let body = body.map(|b| b.to_string()).unwrap_or_default();
            let req = http::Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, format!("127.0.0.1:{}", self.port))
                .header(
                    http::header::AUTHORIZATION,
                    format!("Bearer {}", self.token),
                )
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))?;
            let resp = sender.send_request(req).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            let text = String::from_utf8_lossy(&bytes);
            if !status.is_success() {
                bail!("{status}: {}", text.trim());
            }
            Ok::<Value, anyhow::Error>(serde_json::from_str(&text)?)
        };
        tokio::time::timeout(API_TIMEOUT, call)
            .await
            .with_context(|| format!("{method} {path} did not answer"))?
            .with_context(|| format!("{method} {path}"))
    }

    /// Creates an app from a YAML spec through the API and waits until its first deployment
    /// is ACTIVE; returns the app's ID.
    pub async fn create_app(&self, yaml: &str) -> anyhow::Result<String> {
        let spec = slipway_spec::parse_document(yaml).context("the bench's spec is invalid")?;
        let v = self
            .api(
                "POST",
                "/v2/apps",
                Some(serde_json::json!({ "spec": spec })),
            )
            .await?;
        let app = v["app"]["id"]
            .as_str()
            .with_context(|| format!("no app ID in {v}"))?
            .to_string();
        let first = v["app"]["in_progress_deployment"]["id"]
            .as_str()
            .or(v["app"]["pending_deployment"]["id"].as_str())
            .with_context(|| format!("no first deployment in {v}"))?
            .to_string();
        let d = self.wait_ended(&app, &first).await?;
        if d["phase"] != "ACTIVE" {
            bail!("the app's first deployment ended {}: {d}", d["phase"]);
        }
        Ok(app)
    }

    /// `POST /v2/apps/{app}/restart`; returns the deployment's ID.
    pub async fn restart(&self, app: &str) -> anyhow::Result<String> {
        let v = self
            .api(
                "POST",
                &format!("/v2/apps/{app}/restart"),
                Some(serde_json::json!({})),
            )
            .await?;
        Ok(v["deployment"]["id"]
            .as_str()
            .with_context(|| format!("no deployment in {v}"))?
            .to_string())
    }

    pub async fn deployment(&self, app: &str, dep: &str) -> anyhow::Result<Value> {
        let v = self
            .api("GET", &format!("/v2/apps/{app}/deployments/{dep}"), None)
            .await?;
        Ok(v["deployment"].clone())
    }

    /// Waits until `what` holds of a deployment; returns it.
    pub async fn wait_for(
        &self,
        app: &str,
        dep: &str,
        what: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + DEPLOYMENT_TIMEOUT;
        loop {
            let d = self.deployment(app, dep).await?;
            if what(&d) {
                return Ok(d);
            }
            if Instant::now() > deadline {
                bail!(
                    "deployment {dep} is still {} after {} s",
                    d["phase"],
                    DEPLOYMENT_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a deployment has ended, whichever way.
    pub async fn wait_ended(&self, app: &str, dep: &str) -> anyhow::Result<Value> {
        self.wait_for(app, dep, |d| {
            !matches!(
                d["phase"].as_str(),
                Some("PENDING_BUILD" | "BUILDING" | "PENDING_DEPLOY" | "DEPLOYING")
            )
        })
        .await
    }

    /// Waits until the API answers for `app` (the daemon has started and read its state).
    pub async fn wait_app(&self, app: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.api("GET", &format!("/v2/apps/{app}"), None).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn log_file(&self, name: &str) -> anyhow::Result<std::fs::File> {
        let path = self.data.path().join(name);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))
    }

    /// The last lines of a log in the data directory.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.data.path().join(name)).unwrap_or_default();
        cmd::last_lines(&text, 5)
    }

    /// Stops the daemon (SIGTERM, then SIGKILL if it lingers), then the ingress process of
    /// its data directory (`slipway ingress stop`, then SIGKILL for one that lingers), and
    /// reaps the ingress processes started here. Blocking; safe to call twice.
    fn stop_processes(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            if !wait_exit(&mut child, STOP_TIMEOUT) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if self.mode == IngressMode::Auto {
            let _ = Command::new(&self.bin)
                .args(["ingress", "stop", "--data-dir"])
                .arg(self.data.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let pids =
            std::mem::take(&mut *self.ingress_pids.lock().unwrap_or_else(|e| e.into_inner()));
        let deadline = Instant::now() + STOP_TIMEOUT;
        for pid in pids {
            while self.is_our_ingress(pid) && Instant::now() < deadline {
                for c in &mut self.ingresses {
                    let _ = c.try_wait();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.is_our_ingress(pid) {
                signal(pid, "KILL");
            }
        }
        for mut c in self.ingresses.drain(..) {
            if !wait_exit(&mut c, Duration::from_secs(5)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Whether `pid` still runs as an ingress of this data directory (and is not a process
    /// that took its number since).
    fn is_our_ingress(&self, pid: u32) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let dir = self.data.path().as_os_str().as_encoded_bytes();
        // A zombie has an empty command line: it has exited.
        cmdline.windows(dir.len()).any(|w| w == dir)
            && cmdline.split(|b| *b == 0).any(|a| a == b"ingress")
    }

    /// Stops every process (as [`Drop`] does) and removes the daemon's Docker objects; returns
    /// how many were removed.
    pub async fn close(mut self, docker: &bollard::Docker) -> usize {
        tokio::task::block_in_place(|| self.stop_processes());
        Janitor::sweep(docker, &self.id).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_processes();
        // Then the janitor removes the daemon's Docker objects, before the data directory goes.
        drop(self.janitor.take());
    }
}

/// Whether `/proc/<pid>/exe` is `path`: the process runs that program file.
pub fn runs(pid: u32, path: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == path)
}

/// Whether a process runs (a zombie, which has exited, does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok()
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `timeout` for a child to exit; whether it did.
fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
