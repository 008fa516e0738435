//! Slipway's rolling-restart scheduler, and the container runtime it drives.
//!
//! A rollout replaces the instances of one component with instances of a new version (a
//! restart: the same image; a rebuild: a new one). It is split in three, so that the logic can
//! be tested without Docker and the Docker calls are tested against a real engine:
//! - [`plan::next_step`] is a pure function of the counts of instances in each state and the
//!   bounds (`max_surge`, `max_unavailable`); it holds the invariants;
//! - [`roll`] runs a rollout against any [`Runtime`]: it starts, probes, drains and stops
//!   instances as the plan says, reporting every transition to an [`Observer`];
//! - [`DockerRuntime`] implements [`Runtime`] with bollard, and adds what the engine needs
//!   around rollouts (networks, volumes, databases, run-to-completion jobs).
//!
//! Guarantees of [`roll`]: a new instance serves only after its readiness check passes; an old
//! instance is drained before its stop signal and killed only after its grace period; when a
//! new instance fails, every new instance still starting is removed, the old ones still running
//! keep running, and the error names the instance and why (the last probe result or the exit
//! code, and the last lines of its log). Every container it creates is removed again if the
//! rollout fails or is canceled before the container became ready.

mod docker;
mod execute;
pub mod plan;
mod readiness;
mod runtime;

#[cfg(test)]
mod fake;

pub use docker::{DockerRuntime, JOB_OUTPUT_BYTES, JobOutcome, LogRecord, Publish, connect};
pub use execute::{ComponentPlan, Event, NoTraffic, Observer, RolloutError, roll};
pub use plan::Bounds;
pub use readiness::{NotReady, Readiness};
pub use runtime::{Instance, InstanceSpec, Probe, ProbeResult, Runtime, RuntimeError};
