//! The control socket of an ingress that runs as a process of its own (`slipway ingress`):
//! how the daemon tells it what to route, and how a new ingress process takes the listening
//! sockets over from the one it replaces.
//!
//! The socket is a unix stream socket in the daemon's data directory (mode 0600: only the
//! daemon's user may route traffic). Both sides write JSON documents, one per line:
//!
//! - The ingress greets every connection with `hello` (its version, pid and addresses).
//! - The daemon sends `table`, the whole routing table, whenever it changes (and first once
//!   its own table has converged after a start); the ingress makes its table that one.
//!   Instances that left it are drained, never cut off. Until a daemon sends one, and while
//!   no daemon is connected, the ingress routes with the last table it had.
//! - The daemon sends `drain` (an instance about to be stopped) and waits for `drained`: the
//!   requests in flight to it through the ingress have finished, or the time given is up.
//! - `stop`: the ingress stops accepting, lets the requests under way finish, and exits.
//! - `handover`, from a new ingress process: the running one sends its listening sockets
//!   (`SCM_RIGHTS`) and its table, and, once the new one says `took`, stops accepting, lets
//!   its requests under way finish (answers on kept-alive connections then say
//!   `Connection: close`) and exits. Connections that arrive meanwhile wait in the listening
//!   socket's queue, which both processes share: none is refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::table::{Ingress, RemoteDrain, Route};

/// The control socket's file name in the data directory.
pub const SOCKET: &str = "ingress.sock";

/// The protocol's version: both sides refuse another.
pub const PROTOCOL: u32 = 1;

/// How long an instance that left the table is drained for, at most.
const DRAIN_MAX: Duration = Duration::from_secs(60);

/// The longest line either side reads (a table of thousands of apps fits many times).
const MAX_LINE: usize = 64 << 20;

/// What went wrong on the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot reach the ingress at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the ingress at {path} did not answer within {seconds} s")]
    Silent { path: PathBuf, seconds: u64 },
    #[error("the ingress's control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the ingress at {path} said something this version does not understand: {why}")]
    Protocol { path: PathBuf, why: String },
}

/// What an ingress process says of itself to every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    /// The version of the `slipway` binary it runs.
    pub version: String,
    pub pid: u32,
    /// Where it serves the apps.
    pub listen: SocketAddr,
    /// Where it serves `/healthz` and `/metrics`, when it does.
    pub admin: Option<SocketAddr>,
    /// Where it serves HTTPS, when it does (absent from an older ingress's hello).
    #[serde(default)]
    pub https: Option<SocketAddr>,
}

/// The routing table as it crosses the socket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    pub apps: Vec<SnapshotApp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SnapshotApp {
    pub id: String,
    /// Empty while the app's routes are not known yet (its instances became ready first).
    pub name: String,
    pub routes: Vec<Route>,
    /// Absent from an older daemon's table: no domains.
    #[serde(default)]
    pub domains: Vec<crate::rules::Domain>,
    pub health_paths: Vec<(String, String)>,
    pub pools: Vec<SnapshotPool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SnapshotPool {
    pub component: String,
    pub instances: Vec<SnapshotInstance>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SnapshotInstance {
    pub id: String,
    pub addr: SocketAddr,
}

/// From the daemon (or a new ingress process) to the ingress.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Command {
    Table {
        table: Snapshot,
    },
    Drain {
        id: u64,
        app: String,
        component: String,
        instance: String,
        max_ms: u64,
    },
    Stop,
    Handover,
    Took,
}

/// From the ingress.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Report {
    Hello(Hello),
    Drained {
        id: u64,
    },
    /// Follows the message that carried the listening sockets.
    Handover {
        table: Snapshot,
    },
}

fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).expect("control messages serialize");
    line.push(b'\n');
    line
}

/// Reads one line (without its end) from `reader`; `None` at the end of the stream.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<()>> {
    buf.clear();
    let n = (&mut *reader)
        .take(MAX_LINE as u64)
        .read_until(b'\n', buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a control message was cut off or is too long",
        ));
    }
    buf.pop();
    Ok(Some(()))
}

/// The ingress process's side: what it serves on its control socket.
#[derive(Debug)]
pub struct ControlServer {
    ingress: Arc<Ingress>,
    hello: Hello,
    /// Fired by `stop`, or by a new process that took over.
    stop: CancellationToken,
    /// The listening sockets a successor is given: the ingress's, then the admin server's.
    listeners: Vec<OwnedFd>,
    path: PathBuf,
    /// Fired when a successor took the listening sockets over.
    handed_over: CancellationToken,
}

impl ControlServer {
    pub fn new(
        ingress: Arc<Ingress>,
        hello: Hello,
        listeners: Vec<OwnedFd>,
        path: PathBuf,
        stop: CancellationToken,
    ) -> ControlServer {
        ControlServer {
            ingress,
            hello,
            stop,
            listeners,
            path,
            handed_over: CancellationToken::new(),
        }
    }

    /// Fired when a new ingress process took the listening sockets over.
    pub fn handed_over(&self) -> CancellationToken {
        self.handed_over.clone()
    }

    /// Binds the control socket at `path` with mode 0600, atomically in place of whatever
    /// was there (a new process replaces its predecessor's socket only once it can serve).
    pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
        let io = |source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        };
        let fresh = path.with_extension(format!("sock.{}", std::process::id()));
        let _ = std::fs::remove_file(&fresh);
        let listener = UnixListener::bind(&fresh).map_err(io)?;
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        std::fs::rename(&fresh, path).map_err(io)?;
        Ok(listener)
    }

    /// Serves the control socket until the ingress stops; also stops it when the socket's
    /// file is removed (its data directory is gone).
    pub async fn serve(self: Arc<Self>, listener: UnixListener) {
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let me = Arc::clone(&self);
                        tokio::spawn(async move { me.connection(stream).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting on the control socket failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = check.tick() => {
                    // Removed (its data directory is gone): stop. Replaced: a successor is
                    // taking over, and says so when it has.
                    if std::fs::metadata(&self.path).is_err() && !self.handed_over.is_cancelled() {
                        tracing::warn!(path = %self.path.display(), "the control socket was removed; the ingress stops");
                        self.stop.cancel();
                        return;
                    }
                }
            }
        }
    }

    async fn connection(self: Arc<Self>, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if write.write_all(&line).await.is_err() {
                    return None;
                }
            }
            Some(write)
        });
        let _ = tx.send(encode(&Report::Hello(self.hello.clone())));
        let mut reader = BufReader::new(read);
        let mut line = Vec::new();
        loop {
            let got = tokio::select! {
                got = read_line(&mut reader, &mut line) => got,
                () = self.stop.cancelled() => break,
            };
            match got {
                Ok(Some(())) => {}
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the control socket failed");
                    break;
                }
            }
            let command: Command = match serde_json::from_slice(&line) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "an unknown control message; closing its connection");
                    break;
                }
            };
            match command {
                Command::Table { table } => {
                    tracing::debug!(apps = table.apps.len(), "a routing table from the daemon");
                    self.ingress.apply(&table, DRAIN_MAX);
                }
                Command::Drain {
                    id,
                    app,
                    component,
                    instance,
                    max_ms,
                } => {
                    let (ingress, tx) = (Arc::clone(&self.ingress), tx.clone());
                    tokio::spawn(async move {
                        ingress
                            .drain(&app, &component, &instance, Duration::from_millis(max_ms))
                            .await;
                        let _ = tx.send(encode(&Report::Drained { id }));
                    });
                }
                Command::Stop => {
                    tracing::info!("told to stop on the control socket");
                    self.stop.cancel();
                }
                Command::Handover => {
                    // The sockets go first, on a message of their own, so that the new process
                    // reads them before any buffered reading of lines.
                    drop(tx);
                    let Ok(Some(write)) = writer.await else {
                        return;
                    };
                    let stream = match reader.into_inner().reunite(write) {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                    self.hand_over(stream).await;
                    return;
                }
                Command::Took => {}
            }
        }
        drop(tx);
        let _ = writer.await;
    }

    /// Gives the listening sockets and the table to a new process on `stream`, and stops
    /// once it says it took them.
    async fn hand_over(&self, stream: UnixStream) {
        let fds: Vec<_> = self.listeners.iter().map(AsFd::as_fd).collect();
        if let Err(e) = send_fds(&stream, &fds).await {
            tracing::warn!(error = %e, "sending the listening sockets to a new ingress process failed");
            return;
        }
        let (read, mut write) = stream.into_split();
        let table = encode(&Report::Handover {
            table: self.ingress.snapshot(),
        });
        if let Err(e) = write.write_all(&table).await {
            tracing::warn!(error = %e, "sending the table to a new ingress process failed");
            return;
        }
        let mut reader = BufReader::new(read);
        let mut line = Vec::new();
        match read_line(&mut reader, &mut line).await {
            Ok(Some(())) if matches!(serde_json::from_slice(&line), Ok(Command::Took)) => {
                tracing::info!(
                    "a new ingress process took the listening sockets over; stopping once the requests under way have finished"
                );
                self.handed_over.cancel();
                self.stop.cancel();
            }
            _ => {
                tracing::warn!("the new ingress process went away before it took over; serving on")
            }
        }
    }
}

/// Sends `fds` with one byte, as `SCM_RIGHTS`.
async fn send_fds(stream: &UnixStream, fds: &[std::os::fd::BorrowedFd<'_>]) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    loop {
        stream.writable().await?;
        let mut space =
            vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        control.push(SendAncillaryMessage::ScmRights(fds));
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            sendmsg(
                stream,
                &[std::io::IoSlice::new(b"F")],
                &mut control,
                SendFlags::empty(),
            )
            .map_err(std::io::Error::from)
        });
        match sent {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Receives the byte [`send_fds`] sends and the sockets that came with it.
async fn receive_fds(stream: &UnixStream) -> std::io::Result<Vec<OwnedFd>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    loop {
        stream.readable().await?;
        let mut space = vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut byte = [0u8; 1];
        let got = stream.try_io(tokio::io::Interest::READABLE, || {
            recvmsg(
                stream,
                &mut [std::io::IoSliceMut::new(&mut byte)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .map_err(std::io::Error::from)
        });
        match got {
            Ok(msg) if msg.bytes == 1 => {
                let mut fds = Vec::new();
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(rights) = message {
                        fds.extend(rights);
                    }
                }
                return Ok(fds);
            }
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the ingress closed the socket instead of sending its listening sockets",
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads one line byte by byte, so that nothing after it (the message that carries the
/// sockets) is read with it.
async fn read_line_exactly(stream: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the ingress closed its control socket",
            ));
        }
        if byte[0] == b'\n' {
            return Ok(line);
        }
        line.push(byte[0]);
        if line.len() > 64 << 10 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the greeting is too long",
            ));
        }
    }
}

async fn connect(path: &Path, timeout: Duration) -> Result<(UnixStream, Hello), ControlError> {
    let silent = || ControlError::Silent {
        path: path.to_path_buf(),
        seconds: timeout.as_secs().max(1),
    };
    let mut stream = tokio::time::timeout(timeout, UnixStream::connect(path))
        .await
        .map_err(|_| silent())?
        .map_err(|source| ControlError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    let line = tokio::time::timeout(timeout, read_line_exactly(&mut stream))
        .await
        .map_err(|_| silent())?
        .map_err(|source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let hello = match serde_json::from_slice::<Report>(&line) {
        Ok(Report::Hello(hello)) if hello.protocol == PROTOCOL => hello,
        Ok(Report::Hello(hello)) => {
            return Err(ControlError::Protocol {
                path: path.to_path_buf(),
                why: format!(
                    "protocol {} (version {}), this one speaks {PROTOCOL}",
                    hello.protocol, hello.version
                ),
            });
        }
        other => {
            return Err(ControlError::Protocol {
                path: path.to_path_buf(),
                why: format!("{other:?} instead of hello"),
            });
        }
    };
    Ok((stream, hello))
}

/// Asks the ingress process at `path` who it is.
pub async fn hello(path: &Path) -> Result<Hello, ControlError> {
    connect(path, Duration::from_secs(5)).await.map(|(_, h)| h)
}

/// Tells the ingress process at `path` to stop; returns who it was.
pub async fn stop(path: &Path) -> Result<Hello, ControlError> {
    let (mut stream, hello) = connect(path, Duration::from_secs(5)).await?;
    stream
        .write_all(&encode(&Command::Stop))
        .await
        .map_err(|source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(hello)
}

/// What a new ingress process takes from the one it replaces.
pub struct Taken {
    /// Who it replaces.
    pub predecessor: Hello,
    /// Its listening sockets: the ingress's, then the admin server's when it had one.
    pub listeners: Vec<OwnedFd>,
    table: Snapshot,
    stream: UnixStream,
}

impl std::fmt::Debug for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taken")
            .field("predecessor", &self.predecessor)
            .field("listeners", &self.listeners.len())
            .field("apps", &self.table.apps.len())
            .finish()
    }
}

/// Asks the ingress process at `path`, if one answers there, for its listening sockets and
/// table. `Ok(None)` when none answers.
pub async fn take_over(path: &Path) -> Result<Option<Taken>, ControlError> {
    let (mut stream, predecessor) = match connect(path, Duration::from_secs(5)).await {
        Ok(c) => c,
        Err(ControlError::Connect { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    stream
        .write_all(&encode(&Command::Handover))
        .await
        .map_err(io)?;
    let listeners = tokio::time::timeout(Duration::from_secs(10), receive_fds(&stream))
        .await
        .map_err(|_| ControlError::Silent {
            path: path.to_path_buf(),
            seconds: 10,
        })?
        .map_err(io)?;
    if listeners.is_empty() {
        return Err(ControlError::Protocol {
            path: path.to_path_buf(),
            why: "no listening socket came with the handover".into(),
        });
    }
    let mut line = Vec::new();
    let mut reader = BufReader::new(&mut stream);
    match read_line(&mut reader, &mut line).await.map_err(io)? {
        Some(()) => {}
        None => {
            return Err(ControlError::Protocol {
                path: path.to_path_buf(),
                why: "the table did not follow the listening sockets".into(),
            });
        }
    }
    let table = match serde_json::from_slice::<Report>(&line) {
        Ok(Report::Handover { table }) => table,
        other => {
            return Err(ControlError::Protocol {
                path: path.to_path_buf(),
                why: format!("{other:?} instead of the table"),
            });
        }
    };
    Ok(Some(Taken {
        predecessor,
        listeners,
        table,
        stream,
    }))
}

impl Taken {
    /// Routes with the predecessor's table in `ingress`, then tells it that this process
    /// serves now (call once this process accepts on the sockets and its control socket is in
    /// place).
    pub fn table_into(&self, ingress: &Arc<Ingress>) {
        ingress.apply(&self.table, DRAIN_MAX);
    }

    pub async fn finish(mut self) -> std::io::Result<()> {
        self.stream.write_all(&encode(&Command::Took)).await
    }
}

/// The daemon's side: keeps an ingress process's table the daemon's, and sends it the
/// daemon's drains. Reconnects whenever the connection is lost (the ingress restarted or
/// was replaced).
#[derive(Debug, Clone)]
pub struct Link {
    hello: watch::Receiver<Option<Hello>>,
    follow: Arc<tokio::sync::Notify>,
    following: Arc<std::sync::atomic::AtomicBool>,
}

impl Link {
    /// Starts following `path`: from now on, `ingress`'s drains wait for the ingress process
    /// as well. Its table is sent only once [`Link::follow`] is called.
    pub fn start(ingress: Arc<Ingress>, path: PathBuf, shutdown: CancellationToken) -> Link {
        let (relay, drains) = mpsc::unbounded_channel();
        ingress.set_relay(relay);
        let (hello_tx, hello) = watch::channel(None);
        let link = Link {
            hello,
            follow: Arc::new(tokio::sync::Notify::new()),
            following: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let task = Follower {
            ingress,
            path,
            shutdown,
            drains,
            hello: hello_tx,
            follow: Arc::clone(&link.follow),
            following: Arc::clone(&link.following),
        };
        tokio::spawn(task.run());
        link
    }

    /// Sends the table now and on every change from now on: call once the table is the one
    /// to serve (after a start, once the running instances are back in it).
    pub fn follow(&self) {
        self.following
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.follow.notify_one();
    }

    /// Who the ingress process is, once connected.
    pub fn hello(&self) -> watch::Receiver<Option<Hello>> {
        self.hello.clone()
    }
}

struct Follower {
    ingress: Arc<Ingress>,
    path: PathBuf,
    shutdown: CancellationToken,
    drains: mpsc::UnboundedReceiver<RemoteDrain>,
    hello: watch::Sender<Option<Hello>>,
    follow: Arc<tokio::sync::Notify>,
    following: Arc<std::sync::atomic::AtomicBool>,
}

impl Follower {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(20);
        let mut next_id = 0u64;
        let mut reported = false;
        while !self.shutdown.is_cancelled() {
            match connect(&self.path, Duration::from_secs(5)).await {
                Ok((stream, hello)) => {
                    backoff = Duration::from_millis(20);
                    reported = false;
                    tracing::info!(pid = hello.pid, version = %hello.version, listen = %hello.listen, "connected to the ingress process");
                    self.hello.send_replace(Some(hello));
                    self.connected(stream, &mut next_id).await;
                    if self.shutdown.is_cancelled() {
                        return;
                    }
                    tracing::warn!(
                        "the connection to the ingress process was lost; connecting again"
                    );
                }
                Err(e) => {
                    if !reported {
                        tracing::warn!(error = %e, "the ingress process does not answer; trying again");
                        reported = true;
                    }
                    // No ingress process to drain in: drains answer at once.
                    while let Ok(drain) = self.drains.try_recv() {
                        let _ = drain.done.send(());
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Serves one connection until it is lost.
    async fn connected(&mut self, stream: UnixStream, next_id: &mut u64) {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut changes = self.ingress.changes();
        let mut pending: HashMap<u64, tokio::sync::oneshot::Sender<()>> = HashMap::new();
        let mut line = Vec::new();
        let following = || self.following.load(std::sync::atomic::Ordering::SeqCst);
        if following() {
            changes.mark_changed();
        }
        loop {
            let out = tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = self.follow.notified() => {
                    changes.mark_changed();
                    continue;
                }
                changed = changes.changed(), if following() => {
                    if changed.is_err() {
                        break;
                    }
                    encode(&Command::Table { table: self.ingress.snapshot() })
                }
                drain = self.drains.recv() => {
                    let Some(drain) = drain else { break };
                    *next_id += 1;
                    pending.insert(*next_id, drain.done);
                    encode(&Command::Drain {
                        id: *next_id,
                        app: drain.app,
                        component: drain.component,
                        instance: drain.instance,
                        max_ms: u64::try_from(drain.max.as_millis()).unwrap_or(u64::MAX),
                    })
                }
                got = read_line(&mut reader, &mut line) => {
                    match got {
                        Ok(Some(())) => {
                            if let Ok(Report::Drained { id }) = serde_json::from_slice(&line)
                                && let Some(done) = pending.remove(&id)
                            {
                                let _ = done.send(());
                            }
                            continue;
                        }
                        _ => break,
                    }
                }
            };
            if let Err(e) = write.write_all(&out).await {
                tracing::debug!(error = %e, "writing to the ingress process failed");
                break;
            }
        }
        // Drains under way there cannot be followed any more: the ingress that served them
        // went away (a new one routes with the table it is sent).
        for (_, done) in pending {
            let _ = done.send(());
        }
    }
}
