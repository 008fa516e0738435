//! The bottom of Slipway: the app spec, its validation, and the deployment model.
//!
//! This crate does no I/O. It owns:
//! - [`AppSpec`] and its components, with DigitalOcean App Platform's field names, so that a
//!   real App Platform spec parses unchanged;
//! - [`parse_spec`], which turns YAML or JSON into a validated spec, or into a list of
//!   [`Problem`]s that each name the field path and what was expected. Fields App Platform
//!   defines but Slipway does not implement are accepted and reported as warnings; fields App
//!   Platform does not define are refused;
//! - the deployment model ([`Deployment`], [`Phase`], [`Progress`], [`Step`]) as the API
//!   serializes it;
//! - the Docker labels every Slipway object carries ([`labels`]).
//!
//! Everything serialized here uses `BTreeMap` or `Vec`, so output order is stable.

mod model;
mod parse;
mod spec;

pub mod labels;

pub use model::{
    App, Cause, ComponentImage, Deployment, DeploymentComponent, DeploymentKind, Phase, Progress,
    Step, StepReason, StepStatus, new_id, now,
};
pub use parse::{
    ParsedSpec, Problem, SpecError, component_kind, parse_document, parse_spec, parse_spec_value,
};
pub use spec::{
    Amount, AppSpec, ComponentKind, ComponentRef, DatabaseEngine, DatabaseSpec, EnvScope, EnvType,
    EnvVar, GitSource, HealthCheck, HostedGitSource, ImageSource, Ingress, IngressComponent,
    IngressMatch, IngressPath, IngressRule, JobKind, JobSpec, RolloutSpec, ServiceSpec, Source,
    Termination, WorkerSpec,
};
