use std::path::PathBuf;

use slipway_spec::{ComponentKind, FailureCode, Phase};

/// What the engine refuses, or what failed under it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no {what} with ID or name \"{id}\"")]
    NotFound { what: &'static str, id: String },
    #[error("app {app} has no component named {}; its services and workers are: {}", quote(.names), if .known.is_empty() { "none".to_string() } else { .known.join(", ") })]
    UnknownComponents {
        app: String,
        names: Vec<String>,
        known: Vec<String>,
    },
    #[error(
        "{name} is a {kind}: only services and workers are restarted (jobs run with deployments, databases keep running)"
    )]
    NotRestartable { name: String, kind: ComponentKind },
    #[error("app {app} has no active deployment to restart")]
    NothingToRestart { app: String },
    #[error("deployment {id} has already ended ({phase})")]
    AlreadyEnded { id: String, phase: Phase },
    /// A cancel that came too late: the deployment is committing its switch-over.
    #[error("deployment {id} can no longer be canceled: {reason}")]
    CancelRefused { id: String, reason: String },
    #[error(
        "a SECRET env cannot be decrypted: the data directory's secret.key is not the one it was sealed with"
    )]
    Secret,
    /// A spec this daemon refuses (each problem names its field path).
    #[error("{0}")]
    InvalidSpec(slipway_spec::SpecError),
    #[error("cannot set up the source fetcher")]
    Sources(#[source] slipway_source::SourceError),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error(
        "the data directory {path} is in use by another Slipway daemon{}; stop it or give this one its own --data-dir",
        holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    DataDirInUse { path: PathBuf, holder: Option<u32> },
    #[error(
        "{path} has mode {mode:o}, which lets other users read or change it: a key file must be readable by its owner only (chmod 600 {path})",
        path = .path.display()
    )]
    KeyFileMode { path: PathBuf, mode: u32 },
    #[error("cannot use the data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] slipway_store::StoreError),
    #[error(transparent)]
    Runtime(#[from] slipway_rollout::RuntimeError),
    #[error(transparent)]
    Build(#[from] slipway_build::BuildError),
    #[error(transparent)]
    Swarm(#[from] slipway_swarm::SwarmError),
}

impl EngineError {
    /// The stable code of a deployment that fails with this error, or `None` when the error is
    /// a request the engine refuses (nothing found, a name taken, a restart of nothing, a
    /// data directory it cannot use) rather than a way a deployment fails. An error from a
    /// crate below carries that crate's code.
    pub fn code(&self) -> Option<FailureCode> {
        match self {
            EngineError::NotFound { .. }
            | EngineError::UnknownComponents { .. }
            | EngineError::NotRestartable { .. }
            | EngineError::NothingToRestart { .. }
            | EngineError::AlreadyEnded { .. }
            | EngineError::CancelRefused { .. }
            | EngineError::DataDirInUse { .. }
            | EngineError::KeyFileMode { .. }
            | EngineError::DataDir { .. }
            | EngineError::Store(slipway_store::StoreError::NameTaken(_)) => None,
            EngineError::Secret => Some(FailureCode::SecretUnreadable),
            EngineError::InvalidSpec(_) => Some(FailureCode::InvalidSpec),
            EngineError::ShuttingDown => Some(FailureCode::Interrupted),
            EngineError::Sources(e) => Some(e.code()),
            EngineError::Store(e) => Some(e.code()),
            EngineError::Runtime(e) => Some(e.code()),
            EngineError::Build(e) => Some(e.code()),
            EngineError::Swarm(e) => Some(e.code()),
        }
    }
}

fn quote(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_request_has_no_code_and_a_failure_below_keeps_its_own() {
        let refused = EngineError::Store(slipway_store::StoreError::NameTaken("web".into()));
        assert_eq!(refused.code(), None);
        let refused = EngineError::NothingToRestart { app: "web".into() };
        assert_eq!(refused.code(), None);
        let build = EngineError::Build(slipway_build::BuildError::Timeout {
            tag: "t".into(),
            seconds: 1,
        });
        assert_eq!(build.code(), Some(FailureCode::Timeout));
        let fetch = EngineError::Sources(slipway_source::SourceError::DockerfileMissing {
            path: "Dockerfile".into(),
            commit: "abc".into(),
        });
        assert_eq!(fetch.code(), Some(FailureCode::SourceInvalid));
        assert_eq!(
            EngineError::Store(slipway_store::StoreError::Full).code(),
            Some(FailureCode::StoreFailed)
        );
    }
}
