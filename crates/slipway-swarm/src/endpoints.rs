//! The tasks of a service as HTTP endpoints, for the ingress.
//!
//! Each task publishes its HTTP port in host mode on the node it runs on, on a port Docker
//! chooses. A task is reported [`EndpointEvent::Ready`] once Swarm says it runs (after its
//! container health check passed, when the image has one) and it answers the health check's
//! `http_path` (or accepts a connection) there; it is reported [`EndpointEvent::Leaving`] as
//! soon as Swarm wants it stopped, or it stopped. Tasks on the manager's own node are reached
//! on `127.0.0.1`, others on their node's address: never on an overlay address.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::probe::{NodeAddrs, Prober, runs};
use crate::swarm::Swarm;

/// How often the tasks are read: the delay between Swarm marking a task for shutdown and the
/// ingress taking it out of its pool is at most this, plus one API call.
pub(crate) const POLL: Duration = Duration::from_millis(100);

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
/// connection is the probe ([`Prober`], as the rollout's health gate probes). Must be called within a tokio runtime.
pub fn follow_endpoints(
    swarm: Swarm,
    name: String,
    port: u16,
    http_path: Option<String>,
    mut on: impl FnMut(EndpointEvent) + Send + 'static,
) -> Follower {
    let handle = tokio::spawn(async move {
        let prober = Prober::new(http_path, Duration::from_secs(1));
        let mut ready: BTreeSet<String> = BTreeSet::new();
        let mut nodes = NodeAddrs::default();
        loop {
            match swarm.endpoints(&name, port).await {
                Ok(tasks) => {
                    let mut serving = BTreeSet::new();
                    for (task, published) in tasks {
                        let id = task.id.clone().unwrap_or_default();
                        let Some(published) = published.filter(|_| runs(&task)) else {
                            continue;
                        };
                        serving.insert(id.clone());
                        if ready.contains(&id) {
                            continue;
                        }
                        let addr = nodes.addr(&swarm, &task, published).await;
                        if prober.probe(addr).await.is_ok() {
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
