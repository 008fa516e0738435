//! The tasks of a service as HTTP endpoints, for the ingress.
//!
//! Each task publishes its HTTP port in host mode on the node it runs on, on a port Docker
//! chooses. A task is reported [`EndpointEvent::Ready`] once Swarm says it runs (after its
//! container health check passed, when the image has one) and it answers the health check's
//! `http_path` (or accepts a connection) there; it is reported [`EndpointEvent::Leaving`] as
//! soon as Swarm wants it stopped, or it stopped. Tasks on the manager's own node are reached
//! on `127.0.0.1`, others on their node's address: never on an overlay address.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bollard::models::TaskState;
use tokio::task::JoinHandle;

use crate::swarm::Swarm;

/// How often the tasks are read: the delay between Swarm marking a task for shutdown and the
/// ingress taking it out of its pool is at most this, plus one API call.
const POLL: Duration = Duration::from_millis(100);

/// A change in a service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointEvent {
    /// A task serves at `addr`.
    Ready { task_id: String, addr: SocketAddr },
    /// A task is being stopped (or stopped): send it nothing new.
    Leaving { task_id: String },
}

/// Follows a service's endpoints until dropped (the task is aborted then).
#[derive(Debug)]
pub struct Follower {
    handle: JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Follows the tasks of service `name` publishing `port`, passing every change to `on`.
/// `http_path` is probed (2xx or 3xx) before a task is reported ready; without it a TCP
/// connection is the probe. Must be called within a tokio runtime.
pub fn follow_endpoints(
    swarm: Swarm,
    name: String,
    port: u16,
    http_path: Option<String>,
    mut on: impl FnMut(EndpointEvent) + Send + 'static,
) -> Follower {
    let handle = tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(1))
            .build()
            .ok();
        let mut ready: BTreeSet<String> = BTreeSet::new();
        let mut nodes: HashMap<String, IpAddr> = HashMap::new();
        loop {
            match swarm.endpoints(&name, port).await {
                Ok(tasks) => {
                    let mut serving = BTreeSet::new();
                    for (task, published) in tasks {
                        let id = task.id.clone().unwrap_or_default();
                        let running = task.desired_state == Some(TaskState::RUNNING)
                            && task.status.as_ref().and_then(|s| s.state)
                                == Some(TaskState::RUNNING);
                        let Some(published) = published.filter(|_| running) else {
                            continue;
                        };
                        serving.insert(id.clone());
                        if ready.contains(&id) {
                            continue;
                        }
                        let node = task.node_id.clone().unwrap_or_default();
                        let ip = match nodes.get(&node) {
                            Some(ip) => *ip,
                            None => {
                                let ip = swarm
                                    .node_addr(&node)
                                    .await
                                    .and_then(|a| a.parse().ok())
                                    .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
                                nodes.insert(node, ip);
                                ip
                            }
                        };
                        let addr = SocketAddr::new(ip, published);
                        if probe(http.as_ref(), addr, http_path.as_deref()).await {
                            tracing::debug!(task = %id, %addr, "endpoint ready");
                            ready.insert(id.clone());
                            on(EndpointEvent::Ready { task_id: id, addr });
                        }
                    }
                    let leaving: Vec<String> = ready.difference(&serving).cloned().collect();
                    for id in leaving {
                        tracing::debug!(task = %id, "endpoint leaving");
                        ready.remove(&id);
                        on(EndpointEvent::Leaving { task_id: id });
                    }
                }
                Err(e) => tracing::warn!(service = %name, error = %e, "cannot read the tasks"),
            }
            tokio::time::sleep(POLL).await;
        }
    });
    Follower { handle }
}

async fn probe(http: Option<&reqwest::Client>, addr: SocketAddr, path: Option<&str>) -> bool {
    match (http, path) {
        (Some(http), Some(path)) => http
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success() || r.status().is_redirection()),
        _ => tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
            .await
            .is_ok_and(|r| r.is_ok()),
    }
}
