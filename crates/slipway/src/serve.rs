//! `slipway serve`: the daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use slipway_engine::{Engine, EngineConfig, Publish, SwarmConfig};
use slipway_ingress::IngressConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::paths;

#[derive(Debug, Clone, Args)]
pub(crate) struct ServeArgs {
    /// Where the store, git mirrors and token live [default: $XDG_DATA_HOME/slipway, else
    /// ~/.local/share/slipway].
    #[arg(long, env = "SLIPWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The API's address.
    #[arg(long, env = "SLIPWAY_LISTEN", default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// The API token; without it, one is generated on first start and kept in DATA_DIR/token.
    #[arg(long, env = "SLIPWAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The ingress's address, where apps are served (`0.0.0.0:80` in production).
    #[arg(long, env = "SLIPWAY_INGRESS", default_value = "127.0.0.1:7480")]
    pub ingress: SocketAddr,
    /// Apps are served at `<app name>.<base domain>`.
    #[arg(long, env = "SLIPWAY_BASE_DOMAIN", default_value = "localhost")]
    pub base_domain: String,
    /// A file holding a token for private `https://` git remotes (a spec's
    /// `SLIPWAY_GIT_TOKEN` env takes precedence).
    #[arg(long, env = "SLIPWAY_GIT_TOKEN_FILE")]
    pub git_token_file: Option<PathBuf>,
    /// A private key for `ssh://` and scp-style git remotes; without it, the SSH agent.
    #[arg(long, env = "SLIPWAY_GIT_SSH_KEY")]
    pub git_ssh_key: Option<PathBuf>,
    /// Serve the API over HTTPS with this certificate (PEM; with --tls-key).
    #[arg(
        long,
        env = "SLIPWAY_TLS_CERT",
        requires = "tls_key",
        conflicts_with = "tls"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "SLIPWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// `self-signed`: serve the API over HTTPS with a certificate generated for the listen
    /// address on first start and kept in DATA_DIR/tls (its path is printed).
    #[arg(long, env = "SLIPWAY_TLS", value_parser = ["self-signed"])]
    pub tls: Option<String>,
    /// Where apps run: `docker`, as containers on this Docker engine, or `swarm`, as services
    /// of the Docker Swarm this engine manages (needs --registry).
    #[arg(long, env = "SLIPWAY_RUNTIME", value_enum, default_value_t = RuntimeArg::Docker)]
    pub runtime: RuntimeArg,
    /// With `--runtime swarm`: the registry every node of the swarm pulls from
    /// (`host[:port]`); built images are pushed there.
    #[arg(long, env = "SLIPWAY_REGISTRY", required_if_eq("runtime", "swarm"))]
    pub registry: Option<String>,
    /// Where instance ports are published: `gateway`, on the app network's gateway, where the
    /// ingress reaches them through Docker's NAT rules; or `loopback`, on 127.0.0.1, where only
    /// this host's own processes reach them, through Docker's slower port proxy.
    #[arg(long, env = "SLIPWAY_PUBLISH_ON", value_enum, default_value_t = PublishArg::Gateway)]
    pub publish_on: PublishArg,
    /// The most requests the ingress sends at once on one connection to an instance: once
    /// each ingress thread has 4 connections to an instance busy, safe requests without a
    /// body (GET, HEAD) are pipelined on them rather than given more connections. 1: never.
    #[arg(
        long,
        env = "SLIPWAY_INGRESS_PIPELINE_DEPTH",
        default_value_t = IngressConfig::default().pipeline_depth as u16,
        value_parser = clap::value_parser!(u16).range(1..=256),
    )]
    pub ingress_pipeline_depth: u16,
    /// The most bytes of each followed instance's RUN log kept in memory for its followers
    /// (the live log URL, `slipway apps logs --follow`, the panel): a follower that falls
    /// further behind skips lines and reads a line saying how many. At least 65536.
    #[arg(
        long,
        env = "SLIPWAY_LOG_BUFFER_BYTES",
        default_value_t = 1 << 20,
        value_parser = log_buffer_bytes,
    )]
    pub log_buffer_bytes: usize,
}

fn log_buffer_bytes(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("\"{s}\" is not a number of bytes"))?;
    if n < slipway_engine::runlog::MIN_BUFFER_BYTES {
        return Err(format!(
            "{n} is too small: at least {} bytes, so that Docker's longest lines (16 KiB) fit",
            slipway_engine::runlog::MIN_BUFFER_BYTES
        ));
    }
    Ok(n)
}

/// Where instance ports are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PublishArg {
    Gateway,
    Loopback,
}

impl From<PublishArg> for Publish {
    fn from(p: PublishArg) -> Publish {
        match p {
            PublishArg::Gateway => Publish::Gateway,
            PublishArg::Loopback => Publish::Loopback,
        }
    }
}

/// Where apps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RuntimeArg {
    Docker,
    Swarm,
}

/// A running daemon: the engine and the API server.
#[derive(Debug)]
pub(crate) struct Daemon {
    pub engine: Engine,
    pub addr: SocketAddr,
    pub ingress_addr: SocketAddr,
    pub token: String,
    pub data_dir: PathBuf,
    stop: CancellationToken,
    /// The certificate clients must trust, when the API is served over HTTPS.
    pub tls: Option<slipway_api::tls::TlsFiles>,
    server: JoinHandle<std::io::Result<()>>,
    ingress_stop: CancellationToken,
    ingress: JoinHandle<()>,
}

impl Daemon {
    /// Starts the engine and the API on `args.listen`.
    pub(crate) async fn start(
        args: &ServeArgs,
        daemon_id: Option<String>,
    ) -> anyhow::Result<Daemon> {
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(paths::default_data_dir);
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
        let token = match &args.token {
            Some(t) if !t.is_empty() => t.clone(),
            _ => paths::read_or_create(&data_dir.join("token"), || paths::random_hex(32))?,
        };
        let daemon_id = match daemon_id {
            Some(id) => id,
            None => paths::read_or_create(&data_dir.join("daemon-id"), || paths::random_hex(8))?,
        };
        let docker = slipway_rollout::connect()
            .await
            .context("Slipway needs a Docker engine (is the Docker daemon running, and may this user use its socket?)")?;
        let ingress_listener = TcpListener::bind(args.ingress)
            .await
            .with_context(|| format!("cannot listen on {} for the ingress", args.ingress))?;
        let ingress_addr = ingress_listener.local_addr()?;
        let mut config = EngineConfig::new(&data_dir);
        config.daemon_id = daemon_id;
        config.git_token = match &args.git_token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the git token file {}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        config.git_ssh_key = args.git_ssh_key.clone();
        config.publish = args.publish_on.into();
        config.log_buffer_bytes = args.log_buffer_bytes;
        config.ingress = IngressConfig {
            base_domain: args.base_domain.clone(),
            public_port: Some(ingress_addr.port()),
            pipeline_depth: usize::from(args.ingress_pipeline_depth),
            ..IngressConfig::default()
        };
        config.swarm = match (args.runtime, &args.registry) {
            (RuntimeArg::Swarm, Some(registry)) if !registry.trim().is_empty() => {
                Some(SwarmConfig::new(registry.trim()))
            }
            (RuntimeArg::Swarm, _) => anyhow::bail!(
                "--runtime swarm needs --registry: the registry every node of the swarm pulls the built images from"
            ),
            (RuntimeArg::Docker, _) => None,
        };
        let engine = Engine::start(config, docker).await?;
        let ingress_stop = CancellationToken::new();
        let ingress = tokio::spawn(slipway_ingress::serve(
            engine.ingress(),
            ingress_listener,
            ingress_stop.clone(),
        ));
        let tls = match (&args.tls_cert, &args.tls_key, args.tls.as_deref()) {
            (Some(cert), Some(key), _) => Some(slipway_api::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (_, _, Some("self-signed")) => {
                let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
                if !args.listen.ip().is_unspecified() {
                    names.push(args.listen.ip().to_string());
                }
                if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
                    names.push(host.trim().to_string());
                }
                names.dedup();
                Some(slipway_api::tls::self_signed(
                    &data_dir.join("tls"),
                    &names,
                )?)
            }
            _ => None,
        };
        if tls.is_none() && !args.listen.ip().is_loopback() {
            anyhow::bail!(
                "the API would listen on {} over plain HTTP, and tokens would cross the network in clear text: give it a certificate (--tls-cert and --tls-key, or --tls self-signed), or listen on loopback",
                args.listen
            );
        }
        let acceptor = tls.as_ref().map(slipway_api::tls::acceptor).transpose()?;
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;

        let auth = slipway_api::Auth::token(&token).with_store(engine.store().clone());
        let router = slipway_api::router(engine.clone(), auth);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let server = match acceptor {
            Some(acceptor) => tokio::spawn(async move {
                slipway_api::tls::serve_tls(listener, router, acceptor, stopped).await;
                Ok(())
            }),
            None => tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { stopped.cancelled().await })
                    .await
            }),
        };
        Ok(Daemon {
            tls,
            engine,
            addr,
            ingress_addr,
            ingress_stop,
            ingress,
            token,
            data_dir,
            stop,
            server,
        })
    }

    pub(crate) fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops taking requests, lets running deployments end, and returns.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.server.await.context("the API server task failed")??;
        self.engine.shutdown().await;
        // The ingress goes last: it serves the apps until the engine has stopped.
        self.ingress_stop.cancel();
        let _ = self.ingress.await;
        Ok(())
    }
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let daemon = Daemon::start(&args, None).await?;
    tracing::info!(
        url = %daemon.url(),
        ingress = %daemon.ingress_addr,
        data_dir = %daemon.data_dir.display(),
        "Slipway is serving; the API token is in {}",
        if args.token.is_some() { "SLIPWAY_TOKEN / --token".to_string() } else { daemon.data_dir.join("token").display().to_string() }
    );
    if let Some(tls) = &daemon.tls {
        tracing::info!(certificate = %tls.cert.display(), "the API is served over HTTPS; clients trust this certificate with SLIPWAY_CA_CERT");
    }
    shutdown_signal().await;
    tracing::info!("stopping: no new deployment starts; running ones are canceled cleanly");
    daemon.stop().await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
