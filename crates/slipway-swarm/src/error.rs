//! The errors of the Swarm runtime: each names what was being done and to what.

use slipway_spec::{FailureCode, docker_unreachable};

/// What went wrong talking to Swarm or to the registry.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// The engine is not part of a swarm at all.
    #[error(
        "the Docker engine is not in a swarm (its swarm state is \"{state}\"): run `docker swarm init` on the manager, or use the single-engine runtime"
    )]
    NotInSwarm { state: String },
    /// The engine is a swarm worker: only managers can create and update services.
    #[error("the Docker engine is a swarm worker, not a manager: point Slipway at a manager node")]
    NotManager,
    /// A node Slipway needs is not ready (down, or unknown to the swarm).
    #[error("swarm node {node} is {state}{}", detail(.message))]
    NodeDown {
        node: String,
        state: String,
        message: String,
    },
    /// A Docker API call failed.
    #[error("{action} failed")]
    Docker {
        action: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// The registry refused the push, or could not be reached.
    #[error("pushing {image} to the registry {registry} failed: {reason}")]
    Push {
        image: String,
        registry: String,
        reason: String,
    },
    /// The registry refused to delete an image, or could not be reached.
    #[error("deleting {image} from the registry failed: {reason}")]
    Unpush { image: String, reason: String },
    /// Swarm rolled the component back after its new tasks failed; the previous version runs.
    #[error("{component}: the update failed and Swarm rolled it back ({message})")]
    RolledBack { component: String, message: String },
    /// A new service's every task failed: there is no previous version to roll back to.
    #[error("{component}: every task of the new service failed ({message})")]
    NeverStarted { component: String, message: String },
    /// The new version's canary did not pass the component's health check: the service was
    /// not touched.
    #[error(
        "{component}: the new version did not pass its health check within {seconds:.1} s in a canary task ({last})"
    )]
    CanaryFailed {
        component: String,
        seconds: f64,
        last: String,
    },
    /// A task of the service's new version did not pass the component's health check once
    /// Swarm's update completed.
    #[error(
        "{component}: new task {task} did not pass its health check within {seconds:.1} s ({last})"
    )]
    HealthCheckFailed {
        component: String,
        task: String,
        seconds: f64,
        last: String,
    },
    /// Swarm paused the update (or the rollback) and it needs an operator.
    #[error("{component}: Swarm paused the update ({message})")]
    Paused { component: String, message: String },
    /// The update did not finish in time.
    #[error("{component}: the update did not finish within {seconds} s ({state})")]
    Timeout {
        component: String,
        seconds: u64,
        state: String,
    },
    /// A job ended without success.
    #[error("job {component} failed: {reason}")]
    JobFailed { component: String, reason: String },
    /// A component that cannot be made into a service as asked.
    #[error("{component}: {reason}")]
    Invalid { component: String, reason: String },
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    }
}

impl SwarmError {
    /// The stable code a deployment that fails with this error ends with.
    pub fn code(&self) -> FailureCode {
        match self {
            // A manager that cannot be reached, or a node it needs that is down.
            SwarmError::Docker { source, .. } if docker_unreachable(source) => {
                FailureCode::RuntimeUnreachable
            }
            SwarmError::NodeDown { .. } => FailureCode::RuntimeUnreachable,
            // Reached, but the engine is not a swarm manager, or it refused the request.
            SwarmError::NotInSwarm { .. }
            | SwarmError::NotManager
            | SwarmError::Docker { .. }
            | SwarmError::Unpush { .. } => FailureCode::RuntimeFailed,
            SwarmError::Push { .. } => FailureCode::PushFailed,
            SwarmError::RolledBack { .. }
            | SwarmError::NeverStarted { .. }
            | SwarmError::Paused { .. } => FailureCode::RolloutFailed,
            SwarmError::CanaryFailed { .. } | SwarmError::HealthCheckFailed { .. } => {
                FailureCode::HealthCheckFailed
            }
            SwarmError::Timeout { .. } => FailureCode::Timeout,
            SwarmError::JobFailed { .. } => FailureCode::JobFailed,
            SwarmError::Invalid { .. } => FailureCode::InvalidSpec,
        }
    }

    pub(crate) fn docker(action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> Self {
        let action = action.into();
        move |source| SwarmError::Docker { action, source }
    }
}
