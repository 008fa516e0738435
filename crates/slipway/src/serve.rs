//! `slipway serve`: the daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use slipway_api::server::ServerConfig as ApiServerConfig;
use slipway_engine::{BuildKeySecret, Engine, EngineConfig, Publish, SwarmConfig};
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
    /// Where the ingress serves its own `GET /healthz` and `GET /metrics` (Prometheus text),
    /// on a listener of its own, never the ingress's. Off unless given: the metrics name every
    /// app and are served without a token, so keep it on loopback or a private network.
    #[arg(long, env = "SLIPWAY_INGRESS_ADMIN_ADDRESS", value_name = "ADDR")]
    pub ingress_admin_address: Option<SocketAddr>,
    /// How the ingress runs: `auto`, as a process of its own that keeps serving the apps
    /// while the daemon is down or restarts (the one already serving for the data directory,
    /// else one started now; `slipway ingress stop` stops it); `external`, as a process a
    /// service manager runs (`slipway ingress`), which the daemon waits for; or `embedded`,
    /// inside the daemon, stopping with it.
    #[arg(long, env = "SLIPWAY_INGRESS_PROCESS", value_enum, default_value_t = IngressProcessArg::Auto)]
    pub ingress_process: IngressProcessArg,
    /// Apps are served at `<app name>.<base domain>`.
    #[arg(long, env = "SLIPWAY_BASE_DOMAIN", default_value = "localhost")]
    pub base_domain: String,
    #[command(flatten)]
    pub https: crate::ingress::HttpsArgs,
    /// An ACME server's directory URL (Let's Encrypt:
    /// `https://acme-v02.api.letsencrypt.org/directory`): every app's domains get certificates
    /// from it (HTTP-01, answered by the ingress on its plain-HTTP port, which must be the
    /// domains' port 80), renewed with a third of their lifetime left. Needs --https-listen.
    #[arg(
        long,
        env = "SLIPWAY_ACME_DIRECTORY",
        value_name = "URL",
        requires = "https_listen"
    )]
    pub acme_directory: Option<String>,
    /// The contact address of the ACME account.
    #[arg(long, env = "SLIPWAY_ACME_EMAIL", value_name = "EMAIL")]
    pub acme_email: Option<String>,
    /// A certificate authority (PEM) to trust for the ACME server's HTTPS, for a private one.
    #[arg(long, env = "SLIPWAY_ACME_CA_CERT", value_name = "PATH")]
    pub acme_ca_cert: Option<PathBuf>,
    /// How the ACME server is shown that this host serves a domain: `http-01`, a file on the
    /// plain-HTTP port (the domains' port 80); or `tls-alpn-01`, a certificate in a handshake
    /// on the HTTPS port (port 443), for a host whose port 80 is closed.
    #[arg(long, env = "SLIPWAY_ACME_CHALLENGE", value_enum, default_value_t = AcmeChallengeArg::Http01)]
    pub acme_challenge: AcmeChallengeArg,
    /// `HOST[:PORT][/PATH-PREFIX]=FILE`: a token (in FILE) for private `https://` git
    /// remotes on HOST (its port 443 unless given), under PATH-PREFIX when given. Sent only
    /// over https:// to remotes the scope covers, after any redirect. Repeatable; in the
    /// environment, comma-separated.
    #[arg(
        long = "git-credential",
        value_name = "HOST[:PORT][/PATH-PREFIX]=FILE",
        env = "SLIPWAY_GIT_CREDENTIALS",
        value_delimiter = ','
    )]
    pub git_credentials: Vec<String>,
    /// `HOST[:PORT]=FILE`: a private key for `ssh://` and scp-style git remotes on HOST (port
    /// 22 unless given). Offered to no other host. Repeatable; in the environment,
    /// comma-separated.
    #[arg(
        long = "git-ssh-key",
        value_name = "HOST[:PORT]=FILE",
        env = "SLIPWAY_GIT_SSH_KEYS",
        value_delimiter = ','
    )]
    pub git_ssh_keys: Vec<String>,
    /// Certificate authorities (PEM) to trust for `https://` git remotes besides the
    /// system's: a self-hosted server with a private CA.
    #[arg(long, env = "SLIPWAY_GIT_CA_CERT", value_name = "FILE")]
    pub git_ca_cert: Option<PathBuf>,
    /// Let apps build from repositories on this host (a path or `file://` in
    /// `repo_clone_url`), which read whatever the daemon's user can read. For tests, the
    /// demo, and a machine whose API users may read its disk.
    #[arg(long, env = "SLIPWAY_ALLOW_LOCAL_SOURCES")]
    pub allow_local_sources: bool,
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
    /// No longer has any effect (kept so that existing command lines still start): the
    /// ingress gives each client connection connections of its own to instances, one request
    /// at a time, and never pipelines one client's requests behind another's.
    #[arg(
        long,
        hide = true,
        env = "SLIPWAY_INGRESS_PIPELINE_DEPTH",
        default_value_t = IngressConfig::default().pipeline_depth as u16,
        value_parser = clap::value_parser!(u16).range(1..=256),
    )]
    pub ingress_pipeline_depth: u16,
    /// The most client connections the ingress keeps open at once; beyond it, a new
    /// connection is closed as soon as it is accepted.
    #[arg(
        long,
        env = "SLIPWAY_INGRESS_MAX_CONNECTIONS",
        default_value_t = IngressConfig::default().max_connections as u32,
        value_parser = clap::value_parser!(u32).range(1..),
    )]
    pub ingress_max_connections: u32,
    /// The most connections the API keeps open at once (HTTP and HTTPS); beyond it, new
    /// connections wait in the kernel's listen backlog until one ends. It bounds the file
    /// descriptors API clients can take from the ingress, which runs in the same process.
    #[arg(
        long,
        env = "SLIPWAY_API_MAX_CONNECTIONS",
        default_value_t = ApiServerConfig::default().max_connections as u32,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000),
    )]
    pub api_max_connections: u32,
    /// Seconds an API connection has, from its accept, to finish its TLS handshake and send
    /// its first request's headers (HTTP/1: also each later request's, from the previous
    /// answer).
    #[arg(
        long,
        env = "SLIPWAY_API_HEADER_TIMEOUT_SECONDS",
        default_value_t = ApiServerConfig::default().header_timeout.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=3600),
    )]
    pub api_header_timeout_seconds: u64,
    /// Seconds an API connection may stay open with no request in flight and none begun.
    #[arg(
        long,
        env = "SLIPWAY_API_IDLE_TIMEOUT_SECONDS",
        default_value_t = ApiServerConfig::default().idle_timeout.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=86_400),
    )]
    pub api_idle_timeout_seconds: u64,
    /// Seconds a pre-signed log URL stays valid (it also dies with the token that asked for
    /// it).
    #[arg(
        long,
        env = "SLIPWAY_LOG_URL_SECONDS",
        default_value_t = slipway_api::SIGNED_URL_SECONDS as u64,
        value_parser = clap::value_parser!(u64).range(1..=604_800),
    )]
    pub log_url_seconds: u64,
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

impl ServeArgs {
    fn api_server(&self) -> ApiServerConfig {
        ApiServerConfig {
            max_connections: self.api_max_connections as usize,
            header_timeout: Duration::from_secs(self.api_header_timeout_seconds),
            idle_timeout: Duration::from_secs(self.api_idle_timeout_seconds),
        }
    }
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

/// How the ingress runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum IngressProcessArg {
    /// A process of its own (`slipway ingress`), which outlives the daemon: the one that
    /// serves for the data directory, else one started now.
    Auto,
    /// A process of its own that a service manager runs: the daemon waits for it.
    External,
    /// Inside the daemon: it stops with it.
    Embedded,
}

/// Where apps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RuntimeArg {
    Docker,
    Swarm,
}

/// The operator's git credentials from `--git-credential` and `--git-ssh-key`.
fn git_credentials(args: &ServeArgs) -> anyhow::Result<slipway_engine::GitCredentials> {
    let mut credentials = slipway_engine::GitCredentials::default();
    for value in &args.git_credentials {
        let (scope, file) =
            split_scoped(value, "--git-credential", "HOST[:PORT][/PATH-PREFIX]=FILE")?;
        paths::check_private(std::path::Path::new(file), "the --git-credential file")?;
        let token = std::fs::read_to_string(file).with_context(|| {
            format!("--git-credential {value}: cannot read the token file {file}")
        })?;
        credentials
            .add_token(scope, token)
            .with_context(|| format!("--git-credential {value}"))?;
    }
    for value in &args.git_ssh_keys {
        let (host, file) = split_scoped(value, "--git-ssh-key", "HOST[:PORT]=FILE")?;
        if !std::path::Path::new(file).is_file() {
            anyhow::bail!("--git-ssh-key {value}: {file} is not a file");
        }
        paths::check_private(std::path::Path::new(file), "the --git-ssh-key file")?;
        credentials
            .add_ssh_key(host, file)
            .with_context(|| format!("--git-ssh-key {value}"))?;
    }
    Ok(credentials)
}

fn split_scoped<'a>(value: &'a str, flag: &str, form: &str) -> anyhow::Result<(&'a str, &'a str)> {
    match value.split_once('=') {
        Some((scope, file)) if !scope.trim().is_empty() && !file.trim().is_empty() => {
            Ok((scope.trim(), file.trim()))
        }
        _ => anyhow::bail!(
            "{flag} {value}: expected {form} (every credential names the host it is for)"
        ),
    }
}

/// `--acme-challenge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AcmeChallengeArg {
    #[value(name = "http-01")]
    Http01,
    #[value(name = "tls-alpn-01")]
    TlsAlpn01,
}

/// A running daemon: the engine and the API server.
#[derive(Debug)]
pub(crate) struct Daemon {
    pub engine: Engine,
    pub addr: SocketAddr,
    pub ingress_addr: SocketAddr,
    /// Where the ingress's `/healthz` and `/metrics` are served, when they are.
    pub ingress_admin_addr: Option<SocketAddr>,
    /// Where the ingress serves HTTPS, when it does.
    pub https_addr: Option<SocketAddr>,
    pub token: String,
    pub data_dir: PathBuf,
    stop: CancellationToken,
    /// The certificate clients must trust, when the API is served over HTTPS.
    pub tls: Option<slipway_api::tls::TlsFiles>,
    server: JoinHandle<()>,
    ingress: IngressRun,
    /// Ends the supervision of the ingress process, when dropped.
    _supervision: tokio_util::sync::DropGuard,
}

/// Where the ingress runs.
#[derive(Debug)]
enum IngressRun {
    /// In this process.
    Embedded {
        stop: CancellationToken,
        task: JoinHandle<()>,
        admin: Option<JoinHandle<()>>,
        https: Option<JoinHandle<()>>,
    },
    /// A process of its own, which outlives this one.
    Process { pid: u32, socket: PathBuf },
}

impl Daemon {
    /// Starts the engine and the API on `args.listen`.
    pub(crate) async fn start(
        args: &ServeArgs,
        daemon_id: Option<String>,
    ) -> anyhow::Result<Daemon> {
        // The credentials' scopes and files are checked before anything is started.
        let git_credentials = git_credentials(args)?;
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(paths::default_data_dir);
        // Nobody but the daemon's user may look into its data: the store holds the apps'
        // logs and specs, the mirrors their code, the token and keys the rest.
        paths::private_dir(&data_dir)?;
        paths::private_dir(&data_dir.join("git"))?;
        // Secrets the daemon reads must not be readable by others: a wider mode is refused
        // (the secret may have leaked already; tightening it in silence would hide that).
        paths::check_private(&data_dir.join("secret.key"), "the secret key file")?;
        if args.token.as_deref().is_none_or(str::is_empty) {
            paths::check_private(&data_dir.join("token"), "the token file")?;
        }
        if let Some(path) = &args.tls_key {
            paths::check_private(path, "the --tls-key file")?;
        }
        let token = match &args.token {
            Some(t) if !t.is_empty() => t.clone(),
            _ => paths::read_or_create(&data_dir.join("token"), || paths::random_hex(32))?,
        };
        let daemon_id = match daemon_id {
            Some(id) => id,
            None => paths::read_or_create(&data_dir.join("daemon-id"), || paths::random_hex(8))?,
        };
        // HTTPS is settled before anything starts: a certificate clients would refuse is
        // said now, with its fix, not by every client later.
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
        if let Some(files) = &tls {
            let ip = args.listen.ip();
            slipway_api::tls::check(files, (!ip.is_unspecified()).then_some(ip))?;
        }
        let docker = slipway_rollout::connect()
            .await
            .context("Slipway needs a Docker engine (is the Docker daemon running, and may this user use its socket?)")?;
        // The ingress: a process of its own (found or started), or listeners of this one's.
        let (ingress_addr, ingress_admin_addr, https_addr, embedded, process) = match args
            .ingress_process
        {
            IngressProcessArg::Embedded => {
                let ingress_listener =
                    TcpListener::bind(args.ingress).await.with_context(|| {
                        format!("cannot listen on {} for the ingress", args.ingress)
                    })?;
                let ingress_addr = ingress_listener.local_addr()?;
                let admin_listener = match args.ingress_admin_address {
                    None => None,
                    Some(admin) => {
                        let listener = TcpListener::bind(admin).await.with_context(|| {
                            format!("cannot listen on {admin} for the ingress's admin server (--ingress-admin-address)")
                        })?;
                        if !admin.ip().is_loopback() {
                            tracing::warn!(address = %admin, "the ingress's /healthz and /metrics are served beyond loopback, without a token: they name every app");
                        }
                        Some(listener)
                    }
                };
                let admin_addr = admin_listener
                    .as_ref()
                    .map(TcpListener::local_addr)
                    .transpose()?;
                let https_listener = match args.https.https_listen {
                    None => None,
                    Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                        format!("cannot listen on {addr} for HTTPS (--https-listen)")
                    })?),
                };
                let https_addr = https_listener
                    .as_ref()
                    .map(TcpListener::local_addr)
                    .transpose()?;
                (
                    ingress_addr,
                    admin_addr,
                    https_addr,
                    Some((ingress_listener, admin_listener, https_listener)),
                    None,
                )
            }
            mode => {
                let run = crate::ingress::RunArgs {
                    data_dir: Some(data_dir.clone()),
                    listen: args.ingress,
                    admin_address: args.ingress_admin_address,
                    base_domain: args.base_domain.clone(),
                    max_connections: args.ingress_max_connections,
                    https: args.https.clone(),
                };
                let (hello, started) =
                    crate::ingress::ensure(&data_dir, &run, mode == IngressProcessArg::Auto)
                        .await?;
                if args.https.https_listen.is_some() && hello.https.is_none() {
                    tracing::warn!(
                        "--https-listen is not served: the running ingress serves no HTTPS (`slipway ingress upgrade --https-listen ADDR` adds it)"
                    );
                }
                (
                    hello.listen,
                    hello.admin,
                    hello.https,
                    None,
                    Some((hello.pid, started)),
                )
            }
        };
        let mut config = EngineConfig::new(&data_dir);
        config.daemon_id = daemon_id;
        config.build_key_secret = BuildKeySecret::load_or_create(&data_dir.join("build.key"))?;
        config.git_credentials = git_credentials;
        config.git_ca_cert = args.git_ca_cert.clone();
        config.allow_local_sources = args.allow_local_sources;
        config.publish = args.publish_on.into();
        config.log_buffer_bytes = args.log_buffer_bytes;
        config.ingress = IngressConfig {
            base_domain: args.base_domain.clone(),
            public_port: Some(ingress_addr.port()),
            pipeline_depth: usize::from(args.ingress_pipeline_depth),
            max_connections: args.ingress_max_connections as usize,
            acme_challenges: Some(slipway_acme::challenges_dir(&data_dir)),
            ..IngressConfig::default()
        };
        config.acme = args.acme_directory.as_deref().map(|directory| {
            let mut acme = slipway_acme::AcmeConfig::new(
                directory,
                &data_dir,
                args.https.certs_dir(&data_dir),
            );
            acme.email = args.acme_email.clone();
            acme.ca_cert = args.acme_ca_cert.clone();
            acme.challenge = match args.acme_challenge {
                AcmeChallengeArg::Http01 => slipway_acme::Challenge::Http01,
                AcmeChallengeArg::TlsAlpn01 => slipway_acme::Challenge::TlsAlpn01,
            };
            acme
        });
        config.swarm = match (args.runtime, &args.registry) {
            (RuntimeArg::Swarm, Some(registry)) if !registry.trim().is_empty() => {
                Some(SwarmConfig::new(registry.trim()))
            }
            (RuntimeArg::Swarm, _) => anyhow::bail!(
                "--runtime swarm needs --registry: the registry every node of the swarm pulls the built images from"
            ),
            (RuntimeArg::Docker, _) => None,
        };
        let socket = data_dir.join(slipway_ingress::control::SOCKET);
        let mut started_ingress = None;
        let supervision = CancellationToken::new();
        if process.is_some() {
            config.ingress_socket = Some(socket.clone());
        }
        let engine = Engine::start(config, docker).await?;
        let ingress = match (embedded, process) {
            (Some((listener, admin, https)), _) => {
                let stop = CancellationToken::new();
                let task = tokio::spawn(slipway_ingress::serve(
                    engine.ingress(),
                    listener,
                    stop.clone(),
                ));
                let admin = admin.map(|listener| {
                    tokio::spawn(slipway_ingress::serve_admin(
                        engine.ingress(),
                        listener,
                        stop.clone(),
                    ))
                });
                let https = https.map(|listener| {
                    tokio::spawn(slipway_ingress::serve_tls(
                        engine.ingress(),
                        listener,
                        slipway_ingress::Certificates::new(
                            Some(args.https.certs_dir(&data_dir)),
                            args.https.self_signed_certs,
                        ),
                        stop.clone(),
                    ))
                });
                IngressRun::Embedded {
                    stop,
                    task,
                    admin,
                    https,
                }
            }
            (None, Some((pid, started))) => {
                started_ingress = started;
                if args.ingress_process == IngressProcessArg::Auto {
                    let run = crate::ingress::RunArgs {
                        data_dir: Some(data_dir.clone()),
                        // Started again, it serves where it served.
                        listen: ingress_addr,
                        admin_address: ingress_admin_addr,
                        base_domain: args.base_domain.clone(),
                        max_connections: args.ingress_max_connections,
                        https: crate::ingress::HttpsArgs {
                            https_listen: https_addr,
                            ..args.https.clone()
                        },
                    };
                    tokio::spawn(crate::ingress::supervise(
                        data_dir.clone(),
                        run,
                        supervision.clone(),
                    ));
                }
                IngressRun::Process { pid, socket }
            }
            (None, None) => unreachable!("the ingress is embedded or a process"),
        };
        let acceptor = tls.as_ref().map(slipway_api::tls::acceptor).transpose()?;
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;

        let auth = slipway_api::Auth::token(&token)
            .with_store(engine.store().clone())
            .signed_urls_for(i64::try_from(args.log_url_seconds).unwrap_or(i64::MAX));
        let router = slipway_api::router(engine.clone(), auth);
        let stop = CancellationToken::new();
        let supervision = supervision.drop_guard();
        let server = tokio::spawn(slipway_api::server::serve(
            listener,
            router,
            acceptor,
            args.api_server(),
            stop.clone(),
        ));
        if let Some(started) = started_ingress {
            started.disarm();
        }
        Ok(Daemon {
            tls,
            engine,
            addr,
            ingress_addr,
            ingress_admin_addr,
            https_addr,
            ingress,
            _supervision: supervision,
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
        self.server.await.context("the API server task failed")?;
        self.engine.shutdown().await;
        match self.ingress {
            // The ingress goes last: it serves the apps until the engine has stopped.
            IngressRun::Embedded {
                stop,
                task,
                admin,
                https,
            } => {
                stop.cancel();
                let _ = task.await;
                if let Some(admin) = admin {
                    let _ = admin.await;
                }
                if let Some(https) = https {
                    let _ = https.await;
                }
            }
            IngressRun::Process { pid, .. } => {
                tracing::info!(
                    pid,
                    "the ingress process keeps serving the apps (`slipway ingress stop` stops it)"
                );
            }
        }
        Ok(())
    }

    /// [`Daemon::stop`], and then the ingress process too, when there is one.
    pub(crate) async fn stop_with_ingress(self) -> anyhow::Result<()> {
        let socket = match &self.ingress {
            IngressRun::Process { socket, .. } => Some(socket.clone()),
            IngressRun::Embedded { .. } => None,
        };
        self.stop().await?;
        if let Some(socket) = socket {
            slipway_ingress::control::stop(&socket).await?;
        }
        Ok(())
    }
}

/// Logs to stderr, at `SLIPWAY_LOG`'s levels (info by default).
pub(crate) fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            slipway_engine::QUIET_TARGETS.iter().fold(
                tracing_subscriber::EnvFilter::try_from_env("SLIPWAY_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                |filter, target| {
                    filter
                        .add_directive(format!("{target}=info").parse().expect("a valid directive"))
                },
            ),
        )
        .with_writer(std::io::stderr)
        .init();
}

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    // Whatever the umask it was started with, what the daemon creates is its user's alone.
    let umask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    tracing::debug!(
        previous = format!("{:04o}", umask.as_raw_mode()),
        "umask set to 0077"
    );
    let open_files = raise_open_files_limit();
    if let Some(limit) = open_files
        && u64::from(args.api_max_connections) > limit / 2
    {
        tracing::warn!(
            open_files = limit,
            api_max_connections = args.api_max_connections,
            "--api-max-connections is more than half the open files limit: API clients could leave the ingress without file descriptors"
        );
    }
    let daemon = Daemon::start(&args, None).await?;
    tracing::info!(
        url = %daemon.url(),
        ingress = %daemon.ingress_addr,
        ingress_admin = daemon.ingress_admin_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        https = daemon.https_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
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

/// Raises the soft limit on open files to the hard one (connections are files: the ingress
/// and the API hold one per client, the ingress one more per request in flight) and logs it.
/// Returns the limit in force, `None` when unlimited.
pub(crate) fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let mut now = before.current;
    if let (Some(current), Some(maximum)) = (before.current, before.maximum)
        && current < maximum
    {
        match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(maximum),
                maximum: Some(maximum),
            },
        ) {
            Ok(()) => now = Some(maximum),
            Err(e) => tracing::warn!(
                soft = current,
                hard = maximum,
                error = %e,
                "cannot raise the open files limit to its hard limit"
            ),
        }
    }
    let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_string(), |v| v.to_string());
    tracing::info!(
        open_files = %show(now),
        was = %show(before.current),
        hard = %show(before.maximum),
        "open files limit (RLIMIT_NOFILE): {}",
        show(now)
    );
    now
}

pub(crate) async fn shutdown_signal() {
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
