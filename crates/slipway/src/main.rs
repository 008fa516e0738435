//! `slipway`: the daemon (`slipway serve`), the CLI that talks to it (`slipway apps ...`,
//! shaped like `doctl apps`), and the demo (`slipway demo`).

mod apps;
mod client;
mod demo;
mod ingress;
mod output;
mod paths;
mod serve;
mod tokens;
mod wait;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use slipway_spec::FailureCode;

#[derive(Debug, Parser)]
#[command(
    name = "slipway",
    version,
    about = "Rolling restarts and force rebuilds for self-hosted apps on Docker",
    long_about = "Slipway runs apps on Docker from an App Platform spec. A restart rolls out new \
containers from the exact same image, without fetching or building; a force rebuild fetches the \
latest commit, builds a new image and rolls it out. Both drop no request."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: the API, the engine and the store.
    Serve(Box<serve::ServeArgs>),
    /// Run the ingress as a process of its own, which keeps serving the apps while the daemon
    /// is down; or stop it, or ask who it is. `slipway serve` starts one when none runs.
    Ingress(Box<ingress::IngressArgs>),
    /// Deploy, restart and force-rebuild the example app on a throwaway daemon, then clean up.
    Demo(demo::DemoArgs),
    /// Manage apps and their deployments (like `doctl apps`).
    #[command(subcommand)]
    Apps(apps::AppsCommand),
    /// Create, list and revoke API tokens (read-only or read-write).
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
}

/// How a command ended, and so its exit code: 0 success (with `--wait`: the deployment is
/// ACTIVE), 1 an error of the command itself, 2 bad usage (clap's), and for a deployment that
/// ended in ERROR or CANCELED its failure code's exit code ([`FailureCode::exit_code`]: 10
/// build, 11 health check, 12 job, 13 runtime unreachable, 14 store, 15 timeout), else 3
/// (another failure, or ERROR without a code) or 4 (CANCELED without a code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    DeploymentError(Option<FailureCode>),
    DeploymentCanceled(Option<FailureCode>),
    /// Ctrl-C stopped `--wait`; the deployment goes on.
    Interrupted,
}

impl Outcome {
    fn exit_code(self) -> u8 {
        match self {
            Outcome::Ok => 0,
            Outcome::DeploymentError(code) => code.map_or(3, FailureCode::exit_code),
            Outcome::DeploymentCanceled(code) => code.map_or(4, FailureCode::exit_code),
            Outcome::Interrupted => 130,
        }
    }
}

/// The exit codes, for the help of the commands that take `--wait`.
pub(crate) const EXIT_CODES: &str = "Exit codes with --wait: 0 ACTIVE, 1 the command failed, \
2 bad usage, 3 another deployment failure, 4 CANCELED, 10 build failed (build, source, image, \
push), 11 health check failed, 12 job failed, 13 Docker unreachable, 14 store failure, 15 \
timeout, 130 Ctrl-C stopped the waiting (the deployment goes on).";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(*args).await.map(|()| Outcome::Ok),
            Command::Ingress(args) => ingress::run(*args).await.map(|()| Outcome::Ok),
            Command::Demo(args) => demo::run(args).await.map(|()| Outcome::Ok),
            Command::Apps(cmd) => apps::run(cmd).await,
            Command::Tokens(cmd) => tokens::run(cmd).await.map(|()| Outcome::Ok),
        }
    });
    match result {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) => {
            eprintln!("error: {}", sentence(&e));
            ExitCode::from(1)
        }
    }
}

/// An error and its causes as one sentence, each cause once.
fn sentence(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
