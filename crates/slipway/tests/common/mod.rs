//! The real `slipway` daemon, as the CLI, panel and crash tests start it: a process on loopback
//! with a data directory and a daemon ID of its own, stopped with SIGTERM when dropped, and
//! every Docker object it made removed by its janitor.

// Each test binary uses its own part of this.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use slipway_testkit::{Janitor, unique};

pub const BIN: &str = env!("CARGO_BIN_EXE_slipway");

/// Whether Docker answers (in CI it must: [`slipway_testkit::docker`] fails there without it).
pub fn docker_ready() -> bool {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(slipway_testkit::docker())
        .is_some()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Daemon {
    child: Option<Child>,
    pub port: u16,
    /// `http(s)://127.0.0.1:<port>`.
    pub url: String,
    /// The token the daemon generated on its first start.
    pub token: String,
    pub data: tempfile::TempDir,
    /// Every Docker object it makes carries `slipway.daemon=<daemon_id>`.
    pub daemon_id: String,
    extra: Vec<String>,
    _janitor: Janitor,
}

impl Daemon {
    /// `slipway serve` with a fresh data directory, a daemon ID starting with `prefix`, and
    /// `extra` arguments; returns once it listens and has written its token.
    pub fn start(prefix: &str, extra: &[&str]) -> Daemon {
        let data = tempfile::tempdir().unwrap();
        let daemon_id = unique(prefix);
        std::fs::write(data.path().join("daemon-id"), &daemon_id).unwrap();
        let port = free_port();
        let scheme = if extra.contains(&"--tls") {
            "https"
        } else {
            "http"
        };
        let mut daemon = Daemon {
            child: None,
            port,
            url: format!("{scheme}://127.0.0.1:{port}"),
            token: String::new(),
            data,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _janitor: Janitor::new(&daemon_id),
            daemon_id,
        };
        daemon.spawn();
        daemon
    }

    /// Starts the process (again, after [`Daemon::kill`]) on the same data directory.
    pub fn spawn(&mut self) {
        self.spawn_from(std::path::Path::new(BIN));
    }

    /// [`Daemon::spawn`] from another copy of the binary (an upgrade).
    pub fn spawn_from(&mut self, bin: &std::path::Path) {
        let mut command = Command::new(bin);
        command.args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)]);
        // Any free port for the ingress, unless the test gives one.
        if !self.extra.iter().any(|a| a == "--ingress") {
            command.args(["--ingress", "127.0.0.1:0"]);
        }
        let child = command
            .args(["--allow-local-sources", "--data-dir"])
            .arg(self.data.path())
            .args(&self.extra)
            .env_remove("SLIPWAY_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let token_file = self.data.path().join("token");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
            || !token_file.exists()
        {
            assert!(
                Instant::now() < deadline,
                "the daemon did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.token = std::fs::read_to_string(&token_file)
            .unwrap()
            .trim()
            .to_string();
    }

    /// The process, for a test that stops it in its own way; dropping the daemon then leaves
    /// it alone.
    pub fn take_process(&mut self) -> Child {
        self.child.take().expect("the daemon is running")
    }

    /// The process ID of the running daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon is running").id()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Daemon {
    /// What the ingress process of the daemon's data directory says of itself
    /// (`slipway ingress status`): `listen`, `pid`, `version`, `admin`.
    pub fn ingress(&self) -> serde_json::Value {
        let out = Command::new(BIN)
            .args(["ingress", "status", "--data-dir"])
            .arg(self.data.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "slipway ingress status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Stops the ingress process of the daemon's data directory, when one runs, and waits
    /// for it to exit.
    pub fn stop_ingress(&self) {
        let Ok(out) = Command::new(BIN)
            .args(["ingress", "status", "--data-dir"])
            .arg(self.data.path())
            .output()
        else {
            return;
        };
        let Ok(hello) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return;
        };
        let _ = Command::new(BIN)
            .args(["ingress", "stop", "--data-dir"])
            .arg(self.data.path())
            .stderr(Stdio::null())
            .status();
        if let Some(pid) = hello["pid"].as_u64() {
            let deadline = Instant::now() + Duration::from_secs(40);
            // A zombie has no executable: exited is enough.
            while std::path::Path::new(&format!("/proc/{pid}/exe")).exists()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_daemon();
        self.stop_ingress();
    }
}

impl Daemon {
    fn stop_daemon(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        // SIGTERM, the way a service manager stops it; then make sure it is gone.
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

/// The API, as the tests that drive it directly use it.
impl Daemon {
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let client = reqwest::blocking::Client::new();
        let req = client
            .request(
                method.parse().unwrap(),
                format!("http://127.0.0.1:{}{path}", self.port),
            )
            .bearer_auth(&self.token);
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        req.send().unwrap().json().unwrap()
    }

    pub fn deployment(&self, app: &str, dep: &str) -> serde_json::Value {
        self.api("GET", &format!("/v2/apps/{app}/deployments/{dep}"), None)["deployment"].clone()
    }

    pub fn wait_for(
        &self,
        app: &str,
        dep: &str,
        what: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let d = self.deployment(app, dep);
            if what(&d) {
                return d;
            }
            assert!(Instant::now() < deadline, "timed out waiting on {d}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
