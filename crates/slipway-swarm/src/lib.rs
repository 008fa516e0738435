//! Slipway's Docker Swarm runtime: the same restart and rebuild as on one Docker engine, run by
//! Swarm across the machines of a cluster.
//!
//! What it owns:
//! - [`ServiceDef`] and [`service_spec`]: the pure mapping of a component to a Swarm service
//!   spec — replicas from `instance_count`; the rollout bounds and the health check mapped to
//!   Swarm's `UpdateConfig` (`start-first` when `max_surge` allows it, failure action
//!   `rollback`, a monitor period from the health check) and to the container's `HealthCheck`;
//!   databases with a named volume and a placement constraint on one node; jobs as
//!   `replicated-job` services.
//! - [`Swarm`]: the calls to a swarm manager. [`Swarm::connect`] refuses an engine that is not
//!   a manager; [`Swarm::apply`] creates or updates a service; [`Swarm::restart`] writes the
//!   running version's spec again with the force-update counter bumped, so that every task is
//!   replaced from the same image digest and nothing else changes; [`Swarm::wait`] follows the
//!   rolling update from `UpdateStatus` and the task states, reports each task transition,
//!   and turns Swarm's rollback into [`SwarmError::RolledBack`] naming the component and why
//!   Swarm rolled back (a new service whose every task fails, which Swarm would restart for
//!   ever, is [`SwarmError::NeverStarted`]); [`Swarm::failed_health_check`] reads what a
//!   failing task's health check answered; [`Swarm::run_job`] runs a job to completion and
//!   reads its exit code from the task.
//! - [`push`]: pushes a built image to the registry every node pulls from, and returns the
//!   reference pinned by digest; [`unpush`] and [`unpush_repository`] delete what it pushed
//!   (an app's old images, a deleted app's repositories).
//! - [`follow_endpoints`]: the tasks of a service as HTTP endpoints, for the ingress. Tasks
//!   publish their port in host mode (a port per task, chosen by Docker), so the ingress reaches
//!   them on the node's address (`127.0.0.1` for tasks on the local node), never through an
//!   overlay address.
//!
//! Promises and assumptions:
//! - Every service, container, network and volume it creates carries the same labels as the
//!   single-engine runtime (`slipway.daemon`, `.app`, `.component`, `.deployment`, `.kind`).
//! - Images are never resolved against a registry when a service is created or updated: the
//!   reference given is used as is (pin it by digest, as [`push`] returns it).
//! - Swarm stops an old task at about the moment it marks it for shutdown, so an app must keep
//!   serving for a moment after its stop signal (the ingress also sends an idempotent request
//!   that failed to connect to another instance).

mod endpoints;
mod error;
mod gate;
mod probe;
mod registry;
mod spec;
mod swarm;
mod wait;

pub use endpoints::{EndpointEvent, Follower, follow_endpoints};
pub use error::SwarmError;
pub use gate::{HealthGate, canary_name, task_name};
pub use probe::Prober;
pub use registry::{push, unpush, unpush_repository};
pub use spec::{
    ServiceDef, canary_spec, network_name, service_name, service_spec, short_id, update_settings,
};
pub use swarm::{JOB_OUTPUT_BYTES, JobOutcome, Swarm};
pub use wait::{TaskEvent, UpdateOutcome};
