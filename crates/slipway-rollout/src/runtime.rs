//! The narrow seam between the scheduler and the container engine.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use slipway_spec::{ComponentKind, FailureCode, docker_unreachable};

/// Everything needed to create one instance of a component.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InstanceSpec {
    pub app_id: String,
    /// Used in container names, which the runtime makes unique.
    pub app_name: String,
    pub component: String,
    pub kind: Option<ComponentKind>,
    pub deployment_id: String,
    /// The image ID (`sha256:...`) the instance runs.
    pub image: String,
    pub env: BTreeMap<String, String>,
    /// Replaces the image's command (run by `/bin/sh -c`).
    pub run_command: Option<String>,
    /// Container ports to publish on this host (on the network's gateway or on loopback, as
    /// the runtime's [`Publish`](crate::Publish) says).
    pub ports: Vec<u16>,
    /// The app's network; the component's name is the instance's alias on it.
    pub network: Option<String>,
    /// Extra labels (the daemon's).
    pub labels: BTreeMap<String, String>,
}

/// A running instance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Instance {
    /// The container ID.
    pub id: String,
    pub name: String,
    pub component: String,
    pub deployment_id: String,
    pub image: String,
    /// Container port to the host address it is published on.
    pub ports: BTreeMap<u16, std::net::SocketAddr>,
    /// Whether the container was running when this was read.
    pub running: bool,
}

impl Instance {
    /// The host address a container port is published on.
    pub fn address(&self, container_port: u16) -> Option<std::net::SocketAddr> {
        self.ports.get(&container_port).copied()
    }
}

/// One readiness probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// An HTTP GET that must answer 2xx or 3xx.
    Http { port: u16, path: String },
    /// A TCP connect that must succeed.
    Tcp { port: u16 },
    /// The image's own HEALTHCHECK, as Docker reports it.
    DockerHealth,
    /// The instance is still running (workers).
    Running,
}

/// The answer of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeResult {
    Ready,
    /// Not ready yet; says why (the status, the connection error, ...).
    NotReady(String),
    /// The instance is no longer running.
    Exited(i64),
    /// The instance will not become ready (its image's HEALTHCHECK gave up on it).
    Unhealthy(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("Docker could not {action} {object}")]
    Docker {
        action: &'static str,
        object: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("job {component} did not finish within {seconds} s and was stopped")]
    JobTimeout { component: String, seconds: u64 },
    #[error("job {component} was canceled")]
    JobCanceled { component: String },
}

impl RuntimeError {
    /// The stable code a deployment that fails with this error ends with: Docker that cannot
    /// be reached at all is [`FailureCode::RuntimeUnreachable`], a request it refused or failed
    /// [`FailureCode::RuntimeFailed`].
    pub fn code(&self) -> FailureCode {
        match self {
            RuntimeError::Docker { source, .. } if docker_unreachable(source) => {
                FailureCode::RuntimeUnreachable
            }
            RuntimeError::Docker { .. } => FailureCode::RuntimeFailed,
            RuntimeError::JobTimeout { .. } => FailureCode::Timeout,
            RuntimeError::JobCanceled { .. } => FailureCode::Canceled,
        }
    }
}

/// The container calls a rollout needs. Implemented by [`crate::DockerRuntime`] and, in
/// tests, by an in-memory fake.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// Creates and starts an instance. On failure nothing is left behind. Not cancel-safe:
    /// a caller that drops the future may leave a container behind (labelled, so that the
    /// reconciler finds it).
    fn start(
        &self,
        spec: &InstanceSpec,
    ) -> impl Future<Output = Result<Instance, RuntimeError>> + Send;

    /// Called once a new instance is ready: from then on the engine restarts it when it
    /// crashes. (Before, a crash must end the instance, so that the rollout sees it.)
    fn keep_running(
        &self,
        instance: &Instance,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Probes an instance once, waiting at most `timeout`.
    fn probe(
        &self,
        instance: &Instance,
        probe: &Probe,
        timeout: Duration,
    ) -> impl Future<Output = ProbeResult> + Send;

    /// Sends the stop signal (the image's STOPSIGNAL, else SIGTERM), kills the instance after
    /// `grace` if it is still running, and removes it.
    fn stop(
        &self,
        instance: &Instance,
        grace: Duration,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// The last `lines` lines the instance wrote, for failure reports.
    fn last_logs(&self, instance: &Instance, lines: usize) -> impl Future<Output = String> + Send;
}
