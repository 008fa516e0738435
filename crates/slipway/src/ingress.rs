//! `slipway ingress`: the ingress as a process of its own, so that the apps' traffic does not
//! go down with the daemon. `slipway serve` starts one (or attaches to the one that runs for
//! its data directory); a service manager can run it as a unit of its own. Started while
//! another runs for the same data directory, it takes that one's listening sockets and table
//! over and the other one stops: an upgrade of the ingress that refuses no connection.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use slipway_ingress::control::{self, ControlServer, Hello};
use slipway_ingress::{Certificates, Ingress, IngressConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::paths;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct IngressArgs {
    #[command(subcommand)]
    command: Option<IngressCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum IngressCommand {
    /// Tell the ingress of a data directory to stop: it stops accepting, lets the requests
    /// under way finish, and exits.
    Stop(DataDirArg),
    /// Who serves as the ingress of a data directory (JSON).
    Status(DataDirArg),
    /// Replace the running ingress of a data directory with this binary's, dropping no
    /// connection: a new ingress process takes its listening sockets and table over, and the
    /// old one exits once its requests under way have finished. Returns once the new one
    /// serves (for `ExecReload=` of a service unit, see docs/operating.md).
    Upgrade(RunArgs),
}

#[derive(Debug, Args)]
struct DataDirArg {
    /// The daemon's data directory, where the ingress's control socket is.
    #[arg(long, env = "SLIPWAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// How the ingress process is run.
#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// The daemon's data directory: the control socket is `DATA_DIR/ingress.sock` (0600).
    #[arg(long, env = "SLIPWAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where apps are served (`0.0.0.0:80` in production). Ignored when the ingress takes
    /// over from a running one: it keeps that one's sockets.
    #[arg(long, env = "SLIPWAY_INGRESS", default_value = "127.0.0.1:7480")]
    pub listen: SocketAddr,
    /// Where `GET /healthz` and `GET /metrics` are served; off unless given.
    #[arg(long, env = "SLIPWAY_INGRESS_ADMIN_ADDRESS", value_name = "ADDR")]
    pub admin_address: Option<SocketAddr>,
    /// Apps are served at `<app name>.<base domain>`.
    #[arg(long, env = "SLIPWAY_BASE_DOMAIN", default_value = "localhost")]
    pub base_domain: String,
    /// The most client connections kept open at once.
    #[arg(
        long,
        env = "SLIPWAY_INGRESS_MAX_CONNECTIONS",
        default_value_t = IngressConfig::default().max_connections as u32,
        value_parser = clap::value_parser!(u32).range(1..),
    )]
    pub max_connections: u32,
    #[command(flatten)]
    pub https: HttpsArgs,
}

/// How the ingress serves HTTPS for the apps' domains.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct HttpsArgs {
    /// Where the apps' domains are served over HTTPS (`0.0.0.0:443` in production); off
    /// unless given. Plain HTTP for a domain with a certificate is then redirected here.
    #[arg(long, env = "SLIPWAY_HTTPS_LISTEN", value_name = "ADDR")]
    pub https_listen: Option<SocketAddr>,
    /// The certificates served: each subdirectory holds a `cert.pem` (the chain) and its
    /// `key.pem` (mode 0600), served for the names the certificate names. Read again when
    /// they change. Default `DATA_DIR/certs`.
    #[arg(long, env = "SLIPWAY_CERTS_DIR", value_name = "DIR")]
    pub certs_dir: Option<PathBuf>,
    /// Makes a self-signed certificate for a domain that has none in the certificates'
    /// directory (for local use: browsers warn about them).
    #[arg(long, env = "SLIPWAY_SELF_SIGNED_CERTS")]
    pub self_signed_certs: bool,
}

impl HttpsArgs {
    /// The certificates' directory for `data_dir`.
    pub(crate) fn certs_dir(&self, data_dir: &Path) -> PathBuf {
        self.certs_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("certs"))
    }
}

pub(crate) async fn run(args: IngressArgs) -> anyhow::Result<()> {
    match args.command {
        Some(IngressCommand::Stop(dir)) => {
            let socket = socket_of(dir.data_dir);
            let hello = control::stop(&socket).await?;
            eprintln!(
                "the ingress (pid {}, version {}) on {} is stopping",
                hello.pid, hello.version, hello.listen
            );
            Ok(())
        }
        Some(IngressCommand::Status(dir)) => {
            let hello = control::hello(&socket_of(dir.data_dir)).await?;
            println!("{}", serde_json::to_string_pretty(&hello)?);
            Ok(())
        }
        Some(IngressCommand::Upgrade(run)) => upgrade(run).await,
        None => serve(args.run).await,
    }
}

/// Starts this binary's ingress beside the running one, which hands over to it.
async fn upgrade(run: RunArgs) -> anyhow::Result<()> {
    let data_dir = run.data_dir.clone().unwrap_or_else(paths::default_data_dir);
    let socket = data_dir.join(control::SOCKET);
    let old = control::hello(&socket).await.with_context(|| {
        format!(
            "no ingress runs for {} to upgrade (start one with `slipway ingress --data-dir {}`)",
            data_dir.display(),
            data_dir.display()
        )
    })?;
    // It keeps the service manager's notification socket: it tells it that it is the
    // service's main process now.
    let mut child = detached(&data_dir, &run, true)?;
    let pid = child.id();
    let deadline = tokio::time::Instant::now() + START_WAIT;
    let new = loop {
        if let Ok(hello) = control::hello(&socket).await
            && hello.pid == pid
        {
            break hello;
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "the new ingress process exited ({status}) before it took over; the old one (pid {}) serves on; see {}",
                old.pid,
                data_dir.join("ingress.log").display()
            );
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the new ingress process (pid {pid}) did not take over within {} s; see {}",
                START_WAIT.as_secs(),
                data_dir.join("ingress.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    eprintln!(
        "the ingress on {} is now pid {} (version {}); pid {} (version {}) stops once its requests under way have finished",
        new.listen, new.pid, new.version, old.pid, old.version
    );
    println!("{}", serde_json::to_string_pretty(&new)?);
    Ok(())
}

/// `slipway ingress` with `run`'s settings, started from this binary in a process group of
/// its own (a terminal's Ctrl-C for its parent does not reach it), logging to
/// `DATA_DIR/ingress.log`.
fn detached(
    data_dir: &Path,
    run: &RunArgs,
    keep_notify_socket: bool,
) -> anyhow::Result<std::process::Child> {
    let exe = std::env::current_exe().context("finding this program to start the ingress")?;
    let log_path = data_dir.join("ingress.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("ingress")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg(run.listen.to_string())
        .arg("--base-domain")
        .arg(&run.base_domain)
        .arg("--max-connections")
        .arg(run.max_connections.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(admin) = run.admin_address {
        command.arg("--admin-address").arg(admin.to_string());
    }
    if let Some(https) = run.https.https_listen {
        command.arg("--https-listen").arg(https.to_string());
    }
    if let Some(dir) = &run.https.certs_dir {
        command.arg("--certs-dir").arg(dir);
    }
    if run.https.self_signed_certs {
        command.arg("--self-signed-certs");
    }
    if !keep_notify_socket {
        // Started by the daemon, it is not the daemon's service's main process.
        command.env_remove("NOTIFY_SOCKET");
    }
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command
        .spawn()
        .context("starting the ingress process (slipway ingress)")
}

/// Tells the service manager (systemd's `Type=notify`) how the ingress is, when it started
/// it: `READY=1` once it serves, with `MAINPID` (a successor started by `slipway ingress
/// upgrade` becomes the service's main process; the unit needs `NotifyAccess=all`), and
/// `STOPPING=1`.
fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot notify the service manager");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), Path::new(&path))
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

fn socket_of(data_dir: Option<PathBuf>) -> PathBuf {
    data_dir
        .unwrap_or_else(paths::default_data_dir)
        .join(control::SOCKET)
}

/// Runs the ingress until it is told to stop, receives SIGTERM or SIGINT, a successor takes
/// over, or its control socket disappears.
async fn serve(args: RunArgs) -> anyhow::Result<()> {
    crate::serve::init_logging();
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    crate::serve::raise_open_files_limit();
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(paths::default_data_dir);
    paths::private_dir(&data_dir)?;
    let socket = data_dir.join(control::SOCKET);

    let taken = control::take_over(&socket)
        .await
        .context("taking over from the running ingress")?;
    let (listener, admin, https) = match &taken {
        Some(taken) => {
            tracing::info!(pid = taken.predecessor.pid, version = %taken.predecessor.version, listen = %taken.predecessor.listen, "taking the listening sockets over from the running ingress");
            let mut fds = taken.listeners.iter();
            let listener = fds
                .next()
                .context("no listening socket came from the running ingress")?;
            let listener = tcp_listener(listener.as_fd())?;
            // The sockets come in this order: the apps', the admin server's when there was
            // one, HTTPS's when it was served.
            let admin = match taken.predecessor.admin.and_then(|_| fds.next()) {
                Some(fd) => Some(tcp_listener(fd.as_fd())?),
                None => None,
            };
            if args.admin_address.is_some() && admin.is_none() {
                tracing::warn!(
                    "--admin-address is ignored: the running ingress had none, and its sockets are kept"
                );
            }
            let https = match taken.predecessor.https.and_then(|_| fds.next()) {
                Some(fd) => Some(tcp_listener(fd.as_fd())?),
                None => None,
            };
            if args.https.https_listen.is_some() && https.is_none() {
                tracing::warn!(
                    "--https-listen is ignored: the running ingress served no HTTPS, and its sockets are kept"
                );
            }
            (listener, admin, https)
        }
        None => {
            let listener = TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("cannot listen on {} for the ingress", args.listen))?;
            let admin = match args.admin_address {
                Some(addr) => {
                    if !addr.ip().is_loopback() {
                        tracing::warn!(address = %addr, "the ingress's /healthz and /metrics are served beyond loopback, without a token: they name every app");
                    }
                    Some(TcpListener::bind(addr).await.with_context(|| {
                        format!("cannot listen on {addr} for the ingress's admin server (--admin-address)")
                    })?)
                }
                None => None,
            };
            let https = match args.https.https_listen {
                Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                    format!("cannot listen on {addr} for HTTPS (--https-listen)")
                })?),
                None => None,
            };
            (listener, admin, https)
        }
    };
    let listen = listener.local_addr()?;
    let admin_addr = admin.as_ref().map(TcpListener::local_addr).transpose()?;
    let https_addr = https.as_ref().map(TcpListener::local_addr).transpose()?;
    let ingress = Ingress::new(IngressConfig {
        base_domain: args.base_domain.clone(),
        public_port: Some(listen.port()),
        max_connections: args.max_connections as usize,
        acme_challenges: Some(slipway_acme::challenges_dir(&data_dir)),
        ..IngressConfig::default()
    });
    if let Some(taken) = &taken {
        taken.table_into(&ingress);
    }
    // Copies of the listening sockets, for a successor.
    let mut handed = vec![listener.as_fd().try_clone_to_owned()?];
    if let Some(admin) = &admin {
        handed.push(admin.as_fd().try_clone_to_owned()?);
    }
    if let Some(https) = &https {
        handed.push(https.as_fd().try_clone_to_owned()?);
    }
    let stop = CancellationToken::new();
    let hello = Hello {
        protocol: control::PROTOCOL,
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        listen,
        admin: admin_addr,
        https: https_addr,
    };
    // Serving first; then the control socket, which replaces a predecessor's.
    let proxy = tokio::spawn(slipway_ingress::serve(
        Arc::clone(&ingress),
        listener,
        stop.clone(),
    ));
    let https_task = https.map(|listener| {
        let certs = Certificates::new(
            Some(args.https.certs_dir(&data_dir)),
            args.https.self_signed_certs,
        );
        tokio::spawn(slipway_ingress::serve_tls(
            Arc::clone(&ingress),
            listener,
            certs,
            stop.clone(),
        ))
    });
    let admin_task = admin.map(|listener| {
        tokio::spawn(slipway_ingress::serve_admin(
            Arc::clone(&ingress),
            listener,
            stop.clone(),
        ))
    });
    let control_listener = ControlServer::bind(&socket)?;
    let server = Arc::new(ControlServer::new(
        Arc::clone(&ingress),
        hello,
        handed,
        socket.clone(),
        stop.clone(),
    ));
    let handed_over = server.handed_over();
    let control_task = tokio::spawn(Arc::clone(&server).serve(control_listener));
    // The service manager hears that this process is the service's main one before its
    // predecessor, told next, exits.
    notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    if let Some(taken) = taken {
        taken
            .finish()
            .await
            .context("telling the running ingress that this one serves now")?;
    }
    tracing::info!(%listen, admin = admin_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()), https = https_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()), socket = %socket.display(), pid = std::process::id(), "the ingress is serving");

    tokio::select! {
        () = stop.cancelled() => {}
        () = crate::serve::shutdown_signal() => {
            tracing::info!("stopping: no new connection is accepted; requests under way finish");
            stop.cancel();
        }
    }
    if !handed_over.is_cancelled() {
        notify("STOPPING=1");
    }
    let _ = control_task.await;
    let _ = proxy.await;
    if let Some(admin) = admin_task {
        let _ = admin.await;
    }
    if let Some(https) = https_task {
        let _ = https.await;
    }
    if !handed_over.is_cancelled() {
        remove_own_socket(&socket).await;
    }
    tracing::info!("the ingress stopped");
    Ok(())
}

/// A tokio listener on a listening socket received from the running ingress.
fn tcp_listener(fd: std::os::fd::BorrowedFd<'_>) -> anyhow::Result<TcpListener> {
    let listener = std::net::TcpListener::from(fd.try_clone_to_owned()?);
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener)?)
}

/// Removes the control socket unless another process answers on it now (a successor).
async fn remove_own_socket(socket: &Path) {
    if let Ok(hello) = control::hello(socket).await
        && hello.pid != std::process::id()
    {
        return;
    }
    let _ = std::fs::remove_file(socket);
}

/// How long `slipway serve` waits for an ingress process to answer.
const START_WAIT: Duration = Duration::from_secs(30);

/// The ingress process for `data_dir`: the one that answers on its control socket, else (with
/// `spawn`) one started now, detached, that outlives this process; else one waited for (a
/// service manager starts it).
pub(crate) async fn ensure(
    data_dir: &Path,
    run: &RunArgs,
    spawn: bool,
) -> anyhow::Result<(Hello, Option<StopOnDrop>)> {
    let socket = data_dir.join(control::SOCKET);
    if let Ok(hello) = control::hello(&socket).await {
        let wanted = run.listen;
        if wanted.port() != 0 && wanted != hello.listen {
            anyhow::bail!(
                "the ingress of {} (pid {}) serves on {}, not on --ingress {wanted}: stop it with `slipway ingress stop --data-dir {}`, or give --ingress {}",
                data_dir.display(),
                hello.pid,
                hello.listen,
                data_dir.display(),
                hello.listen
            );
        }
        tracing::info!(pid = hello.pid, version = %hello.version, listen = %hello.listen, "the ingress process of this data directory serves on");
        return Ok((hello, None));
    }
    if !spawn {
        tracing::info!(socket = %socket.display(), "waiting for the ingress process (--ingress-process external)");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(hello) = control::hello(&socket).await {
                return Ok((hello, None));
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "no ingress answered on {} within 120 s (--ingress-process external: start `slipway ingress --data-dir {}`)",
                    socket.display(),
                    data_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let log_path = data_dir.join("ingress.log");
    let mut child = detached(data_dir, run, false)?;
    let pid = child.id();
    let deadline = tokio::time::Instant::now() + START_WAIT;
    let hello = loop {
        if let Ok(hello) = control::hello(&socket).await
            && hello.pid == pid
        {
            break hello;
        }
        if let Some(status) = child.try_wait()? {
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            anyhow::bail!(
                "the ingress process exited ({status}) before it served: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            );
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the ingress process (pid {pid}) did not answer on {} within {} s; see {}",
                socket.display(),
                START_WAIT.as_secs(),
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    // Reaped when it exits while this process lives.
    std::thread::spawn(move || child.wait());
    tracing::info!(pid = hello.pid, listen = %hello.listen, log = %log_path.display(), "started the ingress process; it outlives the daemon (`slipway ingress stop` stops it)");
    Ok((hello, Some(StopOnDrop(Some(socket)))))
}

/// While the daemon runs (`--ingress-process auto`): when the ingress process has not
/// answered for 3 s in a row (it crashed, was killed or stopped), starts a new one with `run`
/// (where the last one served); the daemon's link sends it the table as soon as it answers.
pub(crate) async fn supervise(data_dir: PathBuf, run: RunArgs, stop: CancellationToken) {
    let socket = data_dir.join(control::SOCKET);
    let mut misses = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return,
        }
        if control::hello(&socket).await.is_ok() {
            misses = 0;
            continue;
        }
        misses += 1;
        if misses < 3 {
            continue;
        }
        misses = 0;
        tracing::warn!(socket = %socket.display(), "the ingress process does not answer; starting a new one");
        match ensure(&data_dir, &run, true).await {
            Ok((hello, started)) => {
                if let Some(started) = started {
                    started.disarm();
                }
                tracing::info!(pid = hello.pid, listen = %hello.listen, "the ingress serves again");
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "starting the ingress process failed; trying again")
            }
        }
    }
}

/// Stops the ingress process this daemon started when dropped armed: a daemon that fails to
/// start leaves no ingress behind that it started.
#[derive(Debug)]
pub(crate) struct StopOnDrop(Option<PathBuf>);

impl StopOnDrop {
    /// The daemon started: the ingress stays.
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let Some(socket) = self.0.take() else { return };
        use std::io::Write;
        if let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&socket) {
            let _ = stream.write_all(b"{\"type\":\"stop\"}\n");
        }
    }
}
