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
//! - the Docker labels every Slipway object carries ([`labels`]);
//! - how a repository URL is read ([`remote`]): which transport, host, port and path, and
//!   whether it names the daemon's own disk ([`check_local_sources`]);
//! - [`error_chain`], the one way an error and its causes become a step's or a log's words.
//!
//! Everything serialized here uses `BTreeMap` or `Vec`, so output order is stable.

mod code;
mod model;
mod parse;
pub mod routing;
mod spec;
mod tail;

pub mod labels;
pub mod lifecycle;
pub mod remote;

pub use code::FailureCode;
#[cfg(feature = "docker")]
pub use code::docker_unreachable;
pub use model::{
    App, AppDomain, Cause, ComponentImage, Deployment, DeploymentComponent, DeploymentError,
    DeploymentKind, DomainPhase, Phase, Progress, Step, StepReason, StepStatus, new_id, now,
};
pub use parse::{
    ALLOW_LOCAL_SOURCES_FLAG, ParsedSpec, Problem, SpecError, check_local_sources, component_kind,
    parse_document, parse_spec, parse_spec_value,
};
pub use spec::{
    Amount, AppSpec, ComponentKind, ComponentRef, CorsPolicy, DatabaseEngine, DatabaseSpec,
    DomainSpec, DomainType, EnvScope, EnvType, EnvVar, ExactMatch, GitSource, HealthCheck,
    HostedGitSource, ImageSource, Ingress, IngressComponent, IngressMatch, IngressPath,
    IngressRule, JobKind, JobSpec, REDIRECT_CODES, RedirectSpec, RolloutSpec, RouteSpec,
    ServiceSpec, Source, StringMatch, Termination, WorkerSpec,
};
pub use tail::OutputTail;

/// An error and its sources, joined with ": ". A source whose words the text already holds
/// (an error that repeats its cause in its own message) is left out.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    #[error("{message}")]
    struct Failure {
        message: String,
        #[source]
        source: Option<Box<Failure>>,
    }

    fn failure(message: &str, source: Option<Failure>) -> Failure {
        Failure {
            message: message.into(),
            source: source.map(Box::new),
        }
    }

    #[test]
    fn an_error_reads_with_its_causes_and_no_cause_twice() {
        let inner = failure("connection refused", None);
        let middle = failure("connecting to 127.0.0.1:5000", Some(inner));
        let outer = failure("pushing the image failed", Some(middle));
        assert_eq!(
            error_chain(&outer),
            "pushing the image failed: connecting to 127.0.0.1:5000: connection refused"
        );
        // A message that already quotes its cause does not repeat it.
        let repeated = failure(
            "the build failed: no space left",
            Some(failure("no space left", None)),
        );
        assert_eq!(error_chain(&repeated), "the build failed: no space left");
        assert_eq!(error_chain(&failure("alone", None)), "alone");
    }
}
