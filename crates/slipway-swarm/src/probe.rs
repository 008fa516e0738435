//! The health probe of a task's published port, as the ingress and the rollout's gate run it
//! from the daemon: `GET http_path` answering 2xx or 3xx, or, without a path, a TCP connect.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bollard::models::{Task, TaskState};

use crate::swarm::Swarm;

/// Probes one address the same way every time.
#[derive(Debug, Clone)]
pub struct Prober {
    /// `None` when no HTTP client could be built: the probe is a TCP connect then.
    http: Option<reqwest::Client>,
    path: Option<String>,
    timeout: Duration,
}

impl Prober {
    /// A probe of `http_path` (a TCP connect without one), each attempt bounded by `timeout`.
    pub fn new(http_path: Option<String>, timeout: Duration) -> Prober {
        let timeout = timeout.max(Duration::from_millis(10));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .build()
            .ok();
        Prober {
            http,
            path: http_path,
            timeout,
        }
    }

    /// What the probe does, for messages: `GET /healthz` or `TCP connect`.
    pub fn describe(&self) -> String {
        match (&self.http, &self.path) {
            (Some(_), Some(path)) => format!("GET {path}"),
            _ => "TCP connect".to_string(),
        }
    }

    /// Probes `addr` once: `Ok` with what it answered when it passed, `Err` with what it
    /// answered (or why it could not be asked) when it did not.
    pub async fn probe(&self, addr: SocketAddr) -> Result<String, String> {
        match (&self.http, &self.path) {
            (Some(http), Some(path)) => {
                let what = format!("GET {path}");
                match http.get(format!("http://{addr}{path}")).send().await {
                    Ok(r) if r.status().is_success() || r.status().is_redirection() => {
                        Ok(format!("{what} answered {}", r.status()))
                    }
                    Ok(r) => Err(format!("{what} answered {}", r.status())),
                    Err(e) => Err(format!("{what} on {addr} failed: {}", chain(&e))),
                }
            }
            _ => match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(addr))
                .await
            {
                Ok(Ok(_)) => Ok(format!("TCP connect to {addr} succeeded")),
                Ok(Err(e)) => Err(format!("TCP connect to {addr} failed: {e}")),
                Err(_) => Err(format!(
                    "TCP connect to {addr} did not answer within {:.1} s",
                    self.timeout.as_secs_f64()
                )),
            },
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Where the daemon reaches a task's published port: its node's address, `127.0.0.1` for the
/// manager's own node (never an overlay address). Node addresses are remembered.
#[derive(Debug, Default)]
pub(crate) struct NodeAddrs {
    known: HashMap<String, IpAddr>,
}

impl NodeAddrs {
    pub(crate) async fn addr(&mut self, swarm: &Swarm, task: &Task, port: u16) -> SocketAddr {
        let node = task.node_id.clone().unwrap_or_default();
        let ip = match self.known.get(&node) {
            Some(ip) => *ip,
            None => {
                let ip = swarm
                    .node_addr(&node)
                    .await
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
                self.known.insert(node, ip);
                ip
            }
        };
        SocketAddr::new(ip, port)
    }
}

/// Whether Swarm wants the task to run and says it runs (after the image's own health check
/// passed, when it has one).
pub(crate) fn runs(task: &Task) -> bool {
    task.desired_state == Some(TaskState::RUNNING)
        && task.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering every request with `status`; its address.
    async fn answering(status: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_path_passes_on_2xx_and_3xx_and_says_what_it_answered_otherwise() {
        let p = Prober::new(Some("/healthz".into()), Duration::from_secs(1));
        assert_eq!(
            p.probe(answering("200 OK").await).await,
            Ok("GET /healthz answered 200 OK".into())
        );
        assert!(p.probe(answering("302 Found").await).await.is_ok());
        assert_eq!(
            p.probe(answering("500 Internal Server Error").await).await,
            Err("GET /healthz answered 500 Internal Server Error".into())
        );
    }

    #[tokio::test]
    async fn without_a_path_a_connection_is_the_probe() {
        let p = Prober::new(None, Duration::from_secs(1));
        let addr = answering("500 Internal Server Error").await;
        assert!(
            p.probe(addr).await.is_ok(),
            "any answer: only the connection counts"
        );
        // A port nothing listens on (just freed).
        let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = free.local_addr().unwrap();
        drop(free);
        let e = p.probe(closed).await.unwrap_err();
        assert!(
            e.starts_with(&format!("TCP connect to {closed} failed")),
            "{e}"
        );
    }
}
