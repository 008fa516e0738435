//! The lean path's connections to instances. Each belongs to the one client connection that
//! opened it, for its whole life, and is driven by a task of its own: whatever an instance
//! sends on it, right or wrong, can only ever reach the client connection that asked.
//!
//! An instance's answers cannot all be told apart from the bytes: a `Content-Length` larger
//! than the body that follows makes the next answer look like the end of this one. Sharing a
//! connection to an instance between client connections, one after another or pipelined,
//! would let such an answer, or one sent late, go to another client. So a client connection
//! reuses only its own connections to an instance, one request at a time, and they close with
//! it. Anything that breaks the framing closes the connection and fails only the request that
//! was on it: bytes that come while no request is outstanding (an extra answer, a body after a
//! `204`, a `304` or an answer to `HEAD`, a body longer than its `Content-Length`), the end of
//! the connection, or a head that does not parse. A connection that has something to read
//! while idle is closed before it is used again.
//!
//! Answers are read in order and relayed to the client connection as they come, a few parts
//! ahead of it at most. A connection that breaks fails its request as unanswered, so that an
//! idempotent one is sent again; one that could not be made fails it as unreachable, so that
//! it goes to another instance, and takes the instance out of rotation until a probe
//! connects to it again.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::framing::{self, Framing};
use crate::table::{Backend, IngressConfig};

/// How many connections a client connection keeps to each instance: its requests go out on
/// it one at a time, and no other client connection's ever do.
pub const PIPELINE_CONNECTIONS: usize = 1;
/// How long an idle connection to an instance is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most bytes of an answer gathered before they are handed to its client.
const PART_BYTES: usize = 64 * 1024;
/// How many parts of an answer may wait for its client before the connection waits too.
const PARTS_AHEAD: usize = 4;
/// An answer whose client went away is read to its end (so that the connection can carry the
/// next one) when at most this much of it is still to come; else the connection is closed.
const DISCARD_BYTES: u64 = 256 * 1024;

/// How long connecting to an instance may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Why an exchange with an instance ended without an answer's head.
#[derive(Debug)]
pub(crate) enum Failed {
    /// No connection could be made: the request was not sent.
    Unreachable(io::Error),
    /// Nothing came back: the request may or may not have reached it (the connection was
    /// closed under it). `shared`: the connection carried other requests too, so that it may
    /// have been closed for them (by an instance that closed it as it sat idle, or as it
    /// answered one of them), and a new connection to the same instance is worth a try.
    NoAnswer { error: io::Error, shared: bool },
    /// The instance answered with something that is not an HTTP/1.1 answer.
    Bad(String),
}

/// What a request's client connection is given of its answer.
#[derive(Debug)]
pub(crate) enum Part {
    /// The head as it goes to the client, or a part of the body after it; more follows.
    More(Vec<u8>),
    /// The end of the answer (the whole of it when it is small); `keep`: the client's
    /// connection may carry another request.
    Last { bytes: Vec<u8>, keep: bool },
    /// No byte of an answer came.
    Failed(Failed),
}

/// A request as it is given to a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask {
    /// A HEAD request: its answer has no body, whatever its head says.
    pub(crate) head: bool,
    /// The client asked to close its connection after this answer.
    pub(crate) close: bool,
    /// It goes on a new connection (it is sent again after one closed under it).
    pub(crate) fresh: bool,
}

/// One client connection's connections to instances. They close when it is dropped.
#[derive(Default)]
pub(crate) struct Pipes {
    list: Vec<(Weak<Backend>, Arc<Pipe>)>,
}

impl Drop for Pipes {
    fn drop(&mut self) {
        for (_, p) in self.list.drain(..) {
            p.close();
        }
    }
}

impl Pipes {
    /// Gives `request` (its head and body) to this client connection's idle connection to
    /// `backend`, or to a new one when it has none that is idle and quiet (or `ask.fresh`
    /// says so). Returns the receiver of its answer's parts.
    pub(crate) fn send(
        &mut self,
        backend: &Arc<Backend>,
        request: &[u8],
        ask: Ask,
        config: &IngressConfig,
    ) -> mpsc::Receiver<Part> {
        // Connections that ended, or whose instance left every pool, are forgotten.
        self.list.retain(|(b, p)| {
            let keep = b.strong_count() > 0 && !p.lock().closed;
            if !keep {
                p.close();
            }
            keep
        });
        if !ask.fresh
            && let Some(i) = self
                .list
                .iter()
                .position(|(b, _)| std::ptr::eq(b.as_ptr(), Arc::as_ptr(backend)))
        {
            let pipe = Arc::clone(&self.list[i].1);
            if pipe.quiet()
                && let Some(given) = pipe.give(request, ask)
            {
                return given;
            }
            pipe.close();
            self.list.swap_remove(i);
        }
        let pipe = Arc::new(Pipe {
            state: Mutex::default(),
            wake: Notify::new(),
        });
        let given = pipe
            .give(request, ask)
            .expect("a connection being opened is not closed");
        // One connection to each instance is kept: a fresh one takes the place of the old.
        if let Some(i) = self
            .list
            .iter()
            .position(|(b, _)| std::ptr::eq(b.as_ptr(), Arc::as_ptr(backend)))
        {
            self.list.swap_remove(i).1.close();
        }
        self.list.push((Arc::downgrade(backend), Arc::clone(&pipe)));
        let driver = Driver {
            pipe,
            backend: Arc::downgrade(backend),
            id: backend.id.clone(),
            input: Vec::new(),
            start: 0,
            out: Vec::new(),
            written: 0,
            answer: None,
            request_timeout: config.request_timeout,
        };
        tokio::spawn(driver.run(backend.addr));
        given
    }
}

/// One connection to an instance, as its client connection sees it.
pub(crate) struct Pipe {
    state: Mutex<State>,
    /// Wakes the connection's task: a request was queued, or it is to close.
    wake: Notify,
}

#[derive(Default)]
struct State {
    /// Requests not yet written, back to back.
    queued: Vec<u8>,
    /// The requests whose answers are still to come, oldest first.
    waiting: VecDeque<Waiter>,
    /// How many requests it was given in all.
    given: u64,
    /// The connection, once made: what it has to read is looked at before it is used again.
    socket: Option<Arc<TcpStream>>,
    closed: bool,
}

struct Waiter {
    parts: mpsc::Sender<Part>,
    ask: Ask,
}

impl Pipe {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells the connection's task to end once nothing is outstanding.
    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Whether the connection is open, has nothing outstanding, and has nothing to read: an
    /// instance that sent bytes (or closed it) while no request was outstanding broke the
    /// framing, and whatever it sent must not be taken for the next answer.
    fn quiet(&self) -> bool {
        let s = self.lock();
        if s.closed || !s.waiting.is_empty() || !s.queued.is_empty() {
            return false;
        }
        let Some(socket) = &s.socket else {
            return false;
        };
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        // The socket does not block: nothing to read is `WouldBlock`; a byte or the end of the
        // connection (0) is something.
        match socket2::SockRef::from(socket.as_ref()).peek(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            Ok(_) | Err(_) => false,
        }
    }

    /// Queues `request`; `None` when the connection has closed meanwhile.
    fn give(&self, request: &[u8], ask: Ask) -> Option<mpsc::Receiver<Part>> {
        let mut s = self.lock();
        if s.closed {
            return None;
        }
        let (parts, rx) = mpsc::channel(PARTS_AHEAD);
        s.queued.extend_from_slice(request);
        s.waiting.push_back(Waiter { parts, ask });
        s.given += 1;
        drop(s);
        self.wake.notify_one();
        Some(rx)
    }
}

/// Reads what the instance sent into `buf`. Cancel-safe.
async fn read_some(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        stream.readable().await?;
        match stream.try_read_buf(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return r,
        }
    }
}

/// Writes what it can of `bytes`. Cancel-safe.
async fn write_some(stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    loop {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return r,
        }
    }
}

/// The task of one connection.
struct Driver {
    pipe: Arc<Pipe>,
    backend: Weak<Backend>,
    /// The instance's ID, for the log.
    id: String,
    /// Bytes read from the instance; those before `start` are used.
    input: Vec<u8>,
    start: usize,
    /// Requests being written; those before `written` are.
    out: Vec<u8>,
    written: usize,
    /// The answer being relayed, to the oldest waiting request.
    answer: Option<Answer>,
    request_timeout: Duration,
}

/// The answer being relayed.
struct Answer {
    framing: Framing,
    /// What is still to come of a body of known length.
    remaining: u64,
    chunks: framing::ChunkedEnd,
    /// What is gathered for the client and not yet handed over.
    part: Vec<u8>,
    /// The connection may carry another answer after this one.
    reusable: bool,
    /// Its client went away: the rest is read and dropped.
    dropped: bool,
}

/// Why a connection ended.
enum End {
    /// It could not be made: nothing was sent.
    Unreachable(io::Error),
    /// It broke, was closed by the instance, or an answer ended it.
    Closed(io::Error),
    /// The instance sent what is not an HTTP/1.1 answer to the oldest request.
    Bad(String),
    /// It is not needed any more: idle too long, or its client connection ended.
    Done,
}

enum Event {
    Read(io::Result<usize>),
    Wrote(io::Result<usize>),
    Woken,
    Timer,
}

impl Driver {
    async fn run(mut self, addr: std::net::SocketAddr) {
        let end = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Err(_) => End::Unreachable(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "connecting took longer than {} s",
                    CONNECT_TIMEOUT.as_secs()
                ),
            )),
            Ok(Err(e)) => End::Unreachable(e),
            Ok(Ok(stream)) => {
                if let Some(b) = self.backend.upgrade() {
                    b.connected();
                }
                let _ = stream.set_nodelay(true);
                let stream = Arc::new(stream);
                self.pipe.lock().socket = Some(Arc::clone(&stream));
                let end = self.serve(&stream).await;
                let _ = socket2::SockRef::from(stream.as_ref()).shutdown(std::net::Shutdown::Both);
                end
            }
        };
        self.end(end);
    }

    /// Writes what is queued and reads the answers, until the connection ends.
    async fn serve(&mut self, stream: &TcpStream) -> End {
        // When the connection last made progress; it ends after the request timeout without
        // any while answers are awaited, and after the idle timeout without a request.
        let mut active = Instant::now();
        let timer = tokio::time::sleep(IDLE_TIMEOUT.min(self.request_timeout));
        tokio::pin!(timer);
        loop {
            if self.written == self.out.len() {
                self.out.clear();
                self.written = 0;
                let mut s = self.pipe.lock();
                // Closed by its client connection, which is gone or wants it no more.
                if s.closed {
                    return End::Done;
                }
                std::mem::swap(&mut s.queued, &mut self.out);
            }
            // What is left is a part of an answer still to come: it moves to the front.
            if self.start > 0 {
                self.input.drain(..self.start);
                self.start = 0;
            }
            self.input.reserve(framing::READ_SIZE);
            let event = {
                let pending = &self.out[self.written..];
                let input = &mut self.input;
                tokio::select! {
                    biased;
                    r = read_some(stream, input) => Event::Read(r),
                    r = write_some(stream, pending), if !pending.is_empty() => Event::Wrote(r),
                    () = self.pipe.wake.notified(), if pending.is_empty() => Event::Woken,
                    () = &mut timer => Event::Timer,
                }
            };
            match event {
                Event::Read(Ok(0)) => return self.closed_by_instance(),
                Event::Read(Ok(_)) => {
                    active = Instant::now();
                    if let Err(end) = self.take_answers().await {
                        return end;
                    }
                }
                Event::Read(Err(e)) | Event::Wrote(Err(e)) => return End::Closed(e),
                Event::Wrote(Ok(n)) => {
                    self.written += n;
                    active = Instant::now();
                    let deadline = active + self.request_timeout;
                    if timer.deadline() > deadline {
                        timer.as_mut().reset(deadline);
                    }
                }
                Event::Woken => {}
                Event::Timer => {
                    let awaited = self.answer.is_some() || !self.pipe.lock().waiting.is_empty();
                    let limit = if awaited {
                        self.request_timeout
                    } else {
                        IDLE_TIMEOUT
                    };
                    if active.elapsed() >= limit {
                        return match awaited {
                            true => End::Closed(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("no answer came within {} s", limit.as_secs()),
                            )),
                            false => End::Done,
                        };
                    }
                    timer.as_mut().reset(active + limit);
                }
            }
        }
    }

    /// The instance closed the connection: an answer that runs until the close ends here.
    fn closed_by_instance(&mut self) -> End {
        if self
            .answer
            .as_ref()
            .is_some_and(|a| a.framing == Framing::UntilClose)
            && let Some(a) = self.answer.take()
            && let Some(w) = self.pipe.lock().waiting.pop_front()
            && !a.dropped
        {
            let _ = w.parts.try_send(Part::Last {
                bytes: a.part,
                keep: false,
            });
        }
        End::Closed(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the instance closed the connection",
        ))
    }

    /// Hands what was read to the requests it answers, in order. `Err` when the connection
    /// is to end.
    async fn take_answers(&mut self) -> Result<(), End> {
        loop {
            if self.answer.is_none() {
                if self.start == self.input.len() {
                    return Ok(());
                }
                let ask = match self.pipe.lock().waiting.front() {
                    Some(w) => w.ask,
                    None => {
                        return Err(End::Closed(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the instance sent bytes no request asked for",
                        )));
                    }
                };
                match self.answer_head(ask)? {
                    Some(answer) => self.answer = Some(answer),
                    None => return Ok(()),
                }
            }
            let Some(a) = self.answer.as_mut() else {
                return Ok(());
            };
            let rest = &self.input[self.start..];
            let (take, ended) = match a.framing {
                Framing::Empty => (0, true),
                Framing::Length(_) => {
                    let n = rest
                        .len()
                        .min(usize::try_from(a.remaining).unwrap_or(usize::MAX));
                    a.remaining -= n as u64;
                    (n, a.remaining == 0)
                }
                Framing::Chunked => match a.chunks.feed(rest) {
                    Ok(Some(end)) => (end, true),
                    Ok(None) => (rest.len(), false),
                    Err(()) => {
                        // The client's answer is cut short: its connection closes.
                        return Err(End::Closed(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "an instance's chunked body is malformed",
                        )));
                    }
                },
                Framing::UntilClose => (rest.len(), false),
            };
            if !a.dropped {
                a.part.extend_from_slice(&rest[..take]);
            }
            self.start += take;
            if ended {
                let a = self.answer.take().expect("an answer is being relayed");
                // Bytes after the answer with no request left to answer break the framing:
                // the connection is closed before its client can give it another request.
                let (waiter, excess) = {
                    let mut s = self.pipe.lock();
                    let waiter = s.waiting.pop_front();
                    let excess = self.start < self.input.len() && s.waiting.is_empty();
                    if excess || !a.reusable {
                        s.closed = true;
                    }
                    (waiter, excess)
                };
                if let Some(w) = waiter
                    && !a.dropped
                {
                    let keep = a.framing != Framing::UntilClose;
                    let _ = w
                        .parts
                        .send(Part::Last {
                            bytes: a.part,
                            keep,
                        })
                        .await;
                }
                if excess {
                    return Err(End::Closed(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the instance sent bytes after its answer that no request asked for",
                    )));
                }
                if !a.reusable {
                    return Err(End::Closed(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the instance's answer ended the connection",
                    )));
                }
                continue;
            }
            if !a.dropped && a.part.len() >= PART_BYTES {
                let part = std::mem::take(&mut a.part);
                let sent = match self.pipe.lock().waiting.front() {
                    Some(w) => w.parts.clone(),
                    None => return Err(End::Done),
                };
                if sent.send(Part::More(part)).await.is_err() {
                    // Its client went away: read the rest to the end when little is left.
                    let little =
                        matches!(a.framing, Framing::Length(_)) && a.remaining <= DISCARD_BYTES;
                    if !little {
                        return Err(End::Closed(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            "the client of an answer went away",
                        )));
                    }
                    a.dropped = true;
                }
            }
            return Ok(());
        }
    }

    /// Parses the head of the oldest request's answer, skipping interim (1xx) answers.
    /// `Ok(None)` until it is whole.
    fn answer_head(&mut self, ask: Ask) -> Result<Option<Answer>, End> {
        loop {
            let input = &self.input[self.start..];
            if input.is_empty() {
                return Ok(None);
            }
            let mut headers = [httparse::EMPTY_HEADER; framing::MAX_RESPONSE_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(input) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let code = resp.code.unwrap_or(0);
                    if code == 101 {
                        return Err(End::Bad(
                            "it switched protocols without being asked to".into(),
                        ));
                    }
                    if (100..200).contains(&code) {
                        self.start += head_len;
                        continue;
                    }
                    let head = framing::answer_head(&resp, ask.head).map_err(End::Bad)?;
                    let mut part = Vec::with_capacity(head_len + 256);
                    framing::client_head(
                        &resp,
                        ask.close || head.framing == Framing::UntilClose,
                        &mut part,
                    );
                    self.start += head_len;
                    return Ok(Some(Answer {
                        framing: head.framing,
                        remaining: match head.framing {
                            Framing::Length(l) => l,
                            _ => 0,
                        },
                        chunks: framing::ChunkedEnd::default(),
                        part,
                        reusable: head.reusable,
                        dropped: false,
                    }));
                }
                Ok(httparse::Status::Partial) if input.len() < framing::MAX_HEAD_BYTES => {
                    return Ok(None);
                }
                Ok(httparse::Status::Partial) => {
                    return Err(End::Bad(format!(
                        "its answer's head is longer than {} bytes",
                        framing::MAX_HEAD_BYTES
                    )));
                }
                Err(e) => return Err(End::Bad(e.to_string())),
            }
        }
    }

    /// Closes the connection for good: every request still waiting on it is told why.
    fn end(self, end: End) {
        let (waiting, shared) = {
            let mut s = self.pipe.lock();
            s.closed = true;
            s.queued.clear();
            s.socket = None;
            (std::mem::take(&mut s.waiting), s.given > 1)
        };
        let backend = self.backend.upgrade();
        let mut waiting = waiting.into_iter();
        if self.answer.is_some() {
            // The oldest request's answer had begun: dropping its sender cuts it short.
            waiting.next();
        }
        match &end {
            End::Unreachable(e) => {
                tracing::debug!(instance = %self.id, error = %e, "a connection to an instance could not be made");
                if let Some(b) = &backend {
                    crate::probe::connect_failed(b);
                }
            }
            End::Closed(e) => {
                tracing::debug!(instance = %self.id, error = %e, "a connection to an instance ended");
            }
            End::Bad(why) => {
                tracing::debug!(instance = %self.id, error = %why, "an instance's answer was not HTTP/1.1");
            }
            End::Done => {}
        }
        for (i, w) in waiting.enumerate() {
            let failed = match &end {
                End::Unreachable(e) => Failed::Unreachable(io::Error::new(e.kind(), e.to_string())),
                End::Bad(why) if i == 0 => Failed::Bad(why.clone()),
                End::Closed(e) => Failed::NoAnswer {
                    error: io::Error::new(e.kind(), e.to_string()),
                    shared,
                },
                End::Bad(_) | End::Done => Failed::NoAnswer {
                    error: io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the connection was closed before an answer",
                    ),
                    shared,
                },
            };
            let _ = w.parts.try_send(Part::Failed(failed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask() -> Ask {
        Ask {
            head: false,
            close: false,
            fresh: false,
        }
    }

    #[tokio::test]
    async fn a_connection_with_bytes_to_read_while_idle_is_not_used_again() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pipe = Pipe {
            state: Mutex::default(),
            wake: Notify::new(),
        };
        assert!(!pipe.quiet(), "a connection not yet made is not idle");
        let stream = Arc::new(TcpStream::connect(addr).await.unwrap());
        let (mut server, _) = listener.accept().await.unwrap();
        pipe.lock().socket = Some(Arc::clone(&stream));
        assert!(pipe.quiet());
        let rx = pipe.give(b"GET / HTTP/1.1\r\n\r\n", ask());
        assert!(rx.is_some());
        assert!(!pipe.quiet(), "a request is outstanding");
        pipe.lock().waiting.clear();
        pipe.lock().queued.clear();
        tokio::io::AsyncWriteExt::write_all(&mut server, b"HTTP/1.1 200 OK\r\n\r\n")
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while pipe.quiet() {
            assert!(Instant::now() < deadline, "the bytes sent never showed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // Nor is one the instance closed while it was idle.
        let closed = Pipe {
            state: Mutex::default(),
            wake: Notify::new(),
        };
        let stream = Arc::new(TcpStream::connect(addr).await.unwrap());
        let (server, _) = listener.accept().await.unwrap();
        closed.lock().socket = Some(stream);
        assert!(closed.quiet());
        drop(server);
        while closed.quiet() {
            assert!(
                Instant::now() < deadline,
                "the end of the connection never showed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
