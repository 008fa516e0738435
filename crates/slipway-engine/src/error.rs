use std::path::PathBuf;

use slipway_spec::{ComponentKind, Phase};

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

fn quote(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}
