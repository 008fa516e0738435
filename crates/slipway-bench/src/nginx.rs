//! Debian's nginx as a reverse proxy to one instance, for the proxy-cost benchmark: installed
//! from Debian's packages when missing, run with a configuration of its own in a temp dir,
//! listening on 127.0.0.1 only, and stopped at the end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::Child;

use crate::cmd::{self, Cmd};
use crate::load::{self, Target};

const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// A running nginx.
#[derive(Debug)]
pub struct Nginx {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
}

/// Installs nginx (`nginx-light`, else `nginx`) unless it is on the PATH; returns its version.
pub async fn ensure_installed() -> anyhow::Result<String> {
    if !cmd::exists("nginx").await {
        println!("    installing nginx from Debian's packages");
        if install("nginx-light").await.is_err() {
            let _ = Cmd::new("apt-get")
                .args(["update", "-q"])
                .timeout(INSTALL_TIMEOUT)
                .run()
                .await;
            if install("nginx-light").await.is_err() {
                install("nginx").await?;
            }
        }
    }
    let out = tokio::process::Command::new("nginx")
        .arg("-v")
        .output()
        .await
        .context("nginx does not run")?;
    // nginx prints its version on stderr: "nginx version: nginx/1.22.1".
    let text = String::from_utf8_lossy(&out.stderr);
    Ok(text
        .trim()
        .trim_start_matches("nginx version: ")
        .to_string())
}

async fn install(package: &str) -> anyhow::Result<()> {
    Cmd::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .timeout(INSTALL_TIMEOUT)
        .run()
        .await
        .map(|_| ())
}

/// The configuration: 2 workers, no access log, and a kept-alive upstream.
fn config(dir: &std::path::Path, port: u16, upstream: SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes 2;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  upstream app {{
    server {upstream};
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"#
    )
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Starts nginx in front of `upstream` and waits until it answers.
pub async fn start(upstream: SocketAddr) -> anyhow::Result<Nginx> {
    let dir = tempfile::Builder::new()
        .prefix("slipway-bench-nginx-")
        .tempdir()?;
    let port = free_port()?;
    let conf: PathBuf = dir.path().join("nginx.conf");
    std::fs::write(&conf, config(dir.path(), port, upstream))?;
    let child = tokio::process::Command::new("nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .arg("-c")
        .arg(&conf)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("cannot start nginx")?;
    let mut nginx = Nginx {
        child: Some(child),
        dir,
        port,
    };
    nginx.wait_until_it_answers().await?;
    Ok(nginx)
}

impl Nginx {
    async fn wait_until_it_answers(&mut self) -> anyhow::Result<()> {
        let target = Target::local(self.port, "localhost");
        for _ in 0..100 {
            if load::get(&target).await.is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log =
                    std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
                bail!("nginx exited ({status}): {}", cmd::last_lines(&log, 3));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("nginx did not answer within 10 s")
    }

    /// The master process's ID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Stops nginx (SIGTERM to its master, which stops its workers) and waits for it.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
            }
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&child);
            for _ in 0..50 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.start_kill();
        }
    }
}

/// Sends SIGTERM to the master process, so that it stops its workers before it exits.
fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}
