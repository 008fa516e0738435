//! Why a deployment failed, as a stable code.
//!
//! Every failure a deployment can end with has one [`FailureCode`]: the failing step's
//! `reason.code`, the deployment's `error.code`, and what the CLI's exit code is chosen from.
//! The codes are part of the API: a script may match on them, so a code is never renamed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The cause of a failed deployment (or step), from every crate up to the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureCode {
    /// The image build failed (a Dockerfile step, the build context, the build's timeout).
    BuildFailed,
    /// The source could not be fetched from git.
    SourceFetchFailed,
    /// The fetched source cannot be built (no Dockerfile at the path, a bad source_dir).
    SourceInvalid,
    /// An image the spec names is not on the engine.
    ImageMissing,
    /// The registry refused a built image (Swarm).
    PushFailed,
    /// A new instance did not pass its health check (HTTP path, TCP port or the image's own
    /// HEALTHCHECK).
    HealthCheckFailed,
    /// A new instance exited or could not start; the rollout was undone.
    RolloutFailed,
    /// A job exited with a code other than 0, or could not run.
    JobFailed,
    /// A database could not be started.
    DatabaseFailed,
    /// The deployment was canceled.
    Canceled,
    /// Docker (or the swarm's manager) could not be reached.
    RuntimeUnreachable,
    /// Docker (or Swarm) refused or failed a request.
    RuntimeFailed,
    /// The store could not save the deployment: what serves was returned to the previous
    /// version.
    StoreFailed,
    /// A step took longer than its limit.
    Timeout,
    /// The spec cannot be deployed as it is.
    InvalidSpec,
    /// A SECRET value cannot be opened with the data directory's key.
    SecretUnreadable,
    /// The daemon stopped during the deployment.
    Interrupted,
}

impl FailureCode {
    /// Every code, for documentation and tests.
    pub const ALL: [FailureCode; 17] = [
        FailureCode::BuildFailed,
        FailureCode::SourceFetchFailed,
        FailureCode::SourceInvalid,
        FailureCode::ImageMissing,
        FailureCode::PushFailed,
        FailureCode::HealthCheckFailed,
        FailureCode::RolloutFailed,
        FailureCode::JobFailed,
        FailureCode::DatabaseFailed,
        FailureCode::Canceled,
        FailureCode::RuntimeUnreachable,
        FailureCode::RuntimeFailed,
        FailureCode::StoreFailed,
        FailureCode::Timeout,
        FailureCode::InvalidSpec,
        FailureCode::SecretUnreadable,
        FailureCode::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::BuildFailed => "BuildFailed",
            FailureCode::SourceFetchFailed => "SourceFetchFailed",
            FailureCode::SourceInvalid => "SourceInvalid",
            FailureCode::ImageMissing => "ImageMissing",
            FailureCode::PushFailed => "PushFailed",
            FailureCode::HealthCheckFailed => "HealthCheckFailed",
            FailureCode::RolloutFailed => "RolloutFailed",
            FailureCode::JobFailed => "JobFailed",
            FailureCode::DatabaseFailed => "DatabaseFailed",
            FailureCode::Canceled => "Canceled",
            FailureCode::RuntimeUnreachable => "RuntimeUnreachable",
            FailureCode::RuntimeFailed => "RuntimeFailed",
            FailureCode::StoreFailed => "StoreFailed",
            FailureCode::Timeout => "Timeout",
            FailureCode::InvalidSpec => "InvalidSpec",
            FailureCode::SecretUnreadable => "SecretUnreadable",
            FailureCode::Interrupted => "Interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<FailureCode> {
        FailureCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The `slipway` CLI's exit code when a deployment it waits for ends with this code
    /// (0 is ACTIVE, 1 an error of the command itself, 2 bad usage).
    pub fn exit_code(self) -> u8 {
        match self {
            FailureCode::Canceled => 4,
            FailureCode::BuildFailed
            | FailureCode::SourceFetchFailed
            | FailureCode::SourceInvalid
            | FailureCode::ImageMissing
            | FailureCode::PushFailed => 10,
            FailureCode::HealthCheckFailed => 11,
            FailureCode::JobFailed => 12,
            FailureCode::RuntimeUnreachable => 13,
            FailureCode::StoreFailed => 14,
            FailureCode::Timeout => 15,
            FailureCode::RolloutFailed
            | FailureCode::DatabaseFailed
            | FailureCode::RuntimeFailed
            | FailureCode::InvalidSpec
            | FailureCode::SecretUnreadable
            | FailureCode::Interrupted => 3,
        }
    }
}

/// Whether a Docker API call failed because Docker could not be reached at all (no socket,
/// connection refused or dropped, no answer in time) rather than because Docker refused or
/// failed the request. The first is [`FailureCode::RuntimeUnreachable`], the second
/// [`FailureCode::RuntimeFailed`] (or the caller's more precise code).
#[cfg(feature = "docker")]
pub fn docker_unreachable(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error;
    match e {
        // The socket file is not there (checked before connecting).
        Error::SocketNotFoundError(_) => true,
        // Docker did not answer within the client's timeout.
        Error::RequestTimeoutError => true,
        // The connector could not open a connection (refused, no such socket, DNS).
        Error::HyperLegacyError { err } => err.is_connect() || io_chain_unreachable(err),
        // The connection broke while the request or its answer was under way.
        Error::HyperResponseError { err } => {
            err.is_closed() || err.is_incomplete_message() || io_chain_unreachable(err)
        }
        Error::IOError { err } => io_unreachable(err),
        _ => false,
    }
}

#[cfg(feature = "docker")]
fn io_unreachable(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::NotConnected
            | ErrorKind::BrokenPipe
            | ErrorKind::NotFound
            | ErrorKind::TimedOut
            | ErrorKind::UnexpectedEof
    )
}

#[cfg(feature = "docker")]
fn io_chain_unreachable(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io_unreachable(io);
        }
        next = err.source();
    }
    false
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::FailureCode;

    #[test]
    fn every_code_reads_back_and_no_exit_code_is_a_command_error() {
        for code in FailureCode::ALL {
            assert_eq!(FailureCode::parse(code.as_str()), Some(code));
            assert!(
                code.exit_code() >= 3,
                "{code}: 0-2 are not deployment outcomes"
            );
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
        assert_eq!(FailureCode::parse("NoSuchCode"), None);
    }
}
