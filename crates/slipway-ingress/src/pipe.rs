//! The lean path's connections to an instance. Each is driven by a task of its own on the
//! ingress thread that opened it, and carries the requests that thread's client connections
//! give it: when several wait at once for the same instance, they go out together in one
//! write and their answers come back together in one read (HTTP/1.1 pipelining), which spares
//! both the ingress and the instance a send and a receive per request, and makes the
//! instance read fewer, fuller buffers.
//!
//! A request takes a connection with nothing outstanding when the thread has one, else a new
//! connection, up to [`PIPELINE_CONNECTIONS`] per thread and instance: under a light load
//! every request has a connection to itself. Beyond that a request waits behind others
//! rather than open yet another connection, but only where that is safe and short:
//! - it is a safe method (GET, HEAD, OPTIONS, TRACE) without a body, and so is every request
//!   it would wait behind (RFC 9112 §9.3.2);
//! - fewer than the ingress's `pipeline_depth` requests are outstanding on the connection,
//!   and the oldest of them was given to it less than [`PIPELINE_WAIT`] ago: a connection
//!   whose answer is slow takes no more requests, and the next ones get another connection.
//!
//! Past [`PIPELINE_CONNECTIONS`], a safe request goes with a batch being gathered on a
//! connection before it takes an idle one, so that the requests that arrive together go out
//! together however many connections the thread has. Requests are pipelined to an instance
//! only once a connection to it has carried two answers, and no more once it has closed a
//! connection that had requests pipelined on it ([`Pipes::trust`]).
//!
//! When no connection may take it, a request gets a new one: it never waits for a
//! connection. Answers are read in order and relayed to each request's client as they come.
//! A connection that breaks fails every request it had not begun to answer as unanswered, so
//! that an idempotent one is sent again; one that could not be made fails them as
//! unreachable, so that they go to another instance.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::h1::{self, Failed, Framing};
use crate::idle::{IDLE_TIMEOUT, WORKER};
use crate::proxy::CONNECT_TIMEOUT;
use crate::table::{Backend, IngressConfig};

/// How many connections a thread opens to an instance before it gives a connection a
/// request behind others rather than open another.
pub const PIPELINE_CONNECTIONS: usize = 2;
/// A connection takes a request behind others only while the oldest of them has waited less
/// than this for its answer.
pub(crate) const PIPELINE_WAIT: Duration = Duration::from_millis(10);
/// The most bytes of an answer gathered before they are handed to its client.
const PART_BYTES: usize = 64 * 1024;
/// How many parts of an answer may wait for its client before the connection waits too.
const PARTS_AHEAD: usize = 4;
/// An answer whose client went away is read to its end (so that the connection can carry the
/// next one) when at most this much of it is still to come; else the connection is closed.
const DISCARD_BYTES: u64 = 256 * 1024;

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
    /// Whether it may wait behind others, and others behind it.
    pub(crate) shareable: bool,
    /// A HEAD request: its answer has no body, whatever its head says.
    pub(crate) head: bool,
    /// The client asked to close its connection after this answer.
    pub(crate) close: bool,
    /// It goes on a new connection (it is sent again after one closed under it).
    pub(crate) fresh: bool,
}

/// A backend's connections for the lean path, of every ingress thread.
#[derive(Default)]
pub(crate) struct Pipes {
    list: Mutex<Vec<Arc<Pipe>>>,
    /// What its connections have shown of how the instance treats a connection: one of
    /// [`UNKNOWN`], [`KEEPS`], [`CLOSES`].
    trust: Arc<AtomicU8>,
}

/// Nothing is known yet of how the instance treats a connection: no request is pipelined.
const UNKNOWN: u8 = 0;
/// A connection to the instance carried two answers: requests may be pipelined to it.
const KEEPS: u8 = 1;
/// The instance closed a connection that had requests pipelined on it (it may have closed it
/// without reading them, and a server that does so can cut short the answer it sent last):
/// none are pipelined to it again.
const CLOSES: u8 = 2;

impl std::fmt::Debug for Pipes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.list.lock().map_or(0, |v| v.len());
        f.debug_struct("Pipes").field("open", &n).finish()
    }
}

impl Drop for Pipes {
    /// An instance no longer in any pool: its connections end as soon as nothing waits on
    /// them (nothing can, since a request in flight keeps its backend).
    fn drop(&mut self) {
        let pipes = std::mem::take(self.list.get_mut().unwrap_or_else(|e| e.into_inner()));
        for p in pipes {
            p.lock().closed = true;
            p.wake.notify_one();
        }
    }
}

impl Pipes {
    /// A connection of this thread that may take `ask` now. Until the thread has
    /// [`PIPELINE_CONNECTIONS`] to the instance, one with nothing outstanding. From then on,
    /// one where a batch is being gathered first (the requests that arrive together go out
    /// together, however many connections there are), then one with nothing outstanding,
    /// then the one with the fewest outstanding that may take it behind them. `None`: a new
    /// connection is to be opened.
    fn choose(&self, ask: Ask, depth: usize) -> Option<Arc<Pipe>> {
        let worker = WORKER.get();
        let now = Instant::now();
        let pipes = self.list.lock().unwrap_or_else(|e| e.into_inner());
        let mut mine = 0;
        let mut idle: Option<&Arc<Pipe>> = None;
        let mut shared: Option<(&Arc<Pipe>, Rank)> = None;
        for pipe in pipes.iter().filter(|p| p.worker == worker) {
            let s = pipe.lock();
            if s.closed {
                continue;
            }
            mine += 1;
            match s.rank(ask, depth, now) {
                Some(Rank::Idle) => {
                    idle.get_or_insert(pipe);
                }
                Some(rank) if shared.is_none_or(|(_, r)| rank < r) => shared = Some((pipe, rank)),
                _ => {}
            }
        }
        let chosen = match shared {
            _ if mine < PIPELINE_CONNECTIONS => idle,
            Some((pipe, Rank::Gathering(_))) => Some(pipe),
            _ => idle.or(shared.map(|(p, _)| p)),
        };
        chosen.map(Arc::clone)
    }

    fn remove(&self, pipe: &Arc<Pipe>) {
        self.list
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| !Arc::ptr_eq(p, pipe));
    }

    /// How many connections to the backend are open, on every thread.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.list.lock().map_or(0, |v| v.len())
    }
}

/// One connection to an instance, as the client connections of its thread see it.
pub(crate) struct Pipe {
    worker: usize,
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
    closed: bool,
}

struct Waiter {
    parts: mpsc::Sender<Part>,
    ask: Ask,
    since: Instant,
}

/// How well a connection suits a request, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    /// Nothing is outstanding on it.
    Idle,
    /// Requests are queued on it, not yet written: this one goes out with them.
    Gathering(usize),
    /// This many requests are outstanding on it.
    Behind(usize),
}

impl State {
    /// How well this connection suits `ask` now, or `None` when it may not take it.
    fn rank(&self, ask: Ask, depth: usize, now: Instant) -> Option<Rank> {
        if self.closed {
            return None;
        }
        let outstanding = self.waiting.len();
        if outstanding == 0 {
            return Some(Rank::Idle);
        }
        let may_wait = ask.shareable
            && outstanding < depth
            && self.waiting.iter().all(|w| w.ask.shareable)
            && self
                .waiting
                .front()
                .is_some_and(|w| now.duration_since(w.since) < PIPELINE_WAIT);
        match may_wait {
            false => None,
            true if !self.queued.is_empty() => Some(Rank::Gathering(outstanding)),
            true => Some(Rank::Behind(outstanding)),
        }
    }
}

impl Pipe {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `request` (its head and body); `None` when the connection has closed meanwhile.
    fn give(&self, request: &[u8], ask: Ask) -> Option<mpsc::Receiver<Part>> {
        let mut s = self.lock();
        if s.closed {
            return None;
        }
        let (parts, rx) = mpsc::channel(PARTS_AHEAD);
        s.queued.extend_from_slice(request);
        s.waiting.push_back(Waiter {
            parts,
            ask,
            since: Instant::now(),
        });
        s.given += 1;
        drop(s);
        self.wake.notify_one();
        Some(rx)
    }
}

/// Gives `request` to a connection to `backend` of this thread, opening one when none may
/// take it (or `ask.fresh` says so). Returns the receiver of its answer's parts.
pub(crate) fn send(
    backend: &Arc<Backend>,
    request: &[u8],
    ask: Ask,
    config: &IngressConfig,
) -> mpsc::Receiver<Part> {
    // Pipelined only to an instance that has shown it keeps its connections.
    let depth = match backend.pipes.trust.load(Ordering::Relaxed) {
        KEEPS => config.pipeline_depth,
        _ => 1,
    };
    while let Some(pipe) = (!ask.fresh)
        .then(|| backend.pipes.choose(ask, depth))
        .flatten()
    {
        if let Some(given) = pipe.give(request, ask) {
            return given;
        }
    }
    let pipe = Arc::new(Pipe {
        worker: WORKER.get(),
        state: Mutex::default(),
        wake: Notify::new(),
    });
    let given = pipe
        .give(request, ask)
        .expect("a connection being opened is not closed");
    backend
        .pipes
        .list
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Arc::clone(&pipe));
    let driver = Driver {
        pipe,
        backend: Arc::downgrade(backend),
        trust: Arc::clone(&backend.pipes.trust),
        answered: 0,
        closing_answer: false,
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

/// The task of one connection.
struct Driver {
    pipe: Arc<Pipe>,
    backend: Weak<Backend>,
    /// The backend's [`Pipes::trust`].
    trust: Arc<AtomicU8>,
    /// How many answers the connection carried.
    answered: u64,
    /// The last of them closed the connection.
    closing_answer: bool,
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
    chunks: h1::ChunkedEnd,
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
    /// It is not needed any more: idle too long, or its instance left its pool.
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
            Ok(Ok(mut stream)) => {
                let _ = stream.set_nodelay(true);
                let end = self.serve(&mut stream).await;
                let _ = stream.shutdown().await;
                end
            }
        };
        self.end(end);
    }

    /// Writes what is queued and reads the answers, until the connection ends.
    async fn serve(&mut self, stream: &mut TcpStream) -> End {
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
                if s.closed && s.waiting.is_empty() {
                    return End::Done;
                }
                std::mem::swap(&mut s.queued, &mut self.out);
            }
            // What is left is a part of an answer still to come: it moves to the front.
            if self.start > 0 {
                self.input.drain(..self.start);
                self.start = 0;
            }
            self.input.reserve(h1::READ_SIZE);
            let event = {
                let (mut reader, mut writer) = stream.split();
                let pending = &self.out[self.written..];
                tokio::select! {
                    biased;
                    r = reader.read_buf(&mut self.input) => Event::Read(r),
                    r = writer.write(pending), if !pending.is_empty() => Event::Wrote(r),
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
            self.closing_answer = true;
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
                self.answered += 1;
                if self.answered == 2 && a.reusable {
                    let _ = self.trust.compare_exchange(
                        UNKNOWN,
                        KEEPS,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                let waiter = self.pipe.lock().waiting.pop_front();
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
                if !a.reusable {
                    self.closing_answer = true;
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
            let mut headers = [httparse::EMPTY_HEADER; h1::MAX_RESPONSE_HEADERS];
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
                    let head = h1::answer_head(&resp, ask.head).map_err(End::Bad)?;
                    let mut part = Vec::with_capacity(head_len + 256);
                    h1::client_head(
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
                        chunks: h1::ChunkedEnd::default(),
                        part,
                        reusable: head.reusable,
                        dropped: false,
                    }));
                }
                Ok(httparse::Status::Partial) if input.len() < h1::MAX_HEAD_BYTES => {
                    return Ok(None);
                }
                Ok(httparse::Status::Partial) => {
                    return Err(End::Bad(format!(
                        "its answer's head is longer than {} bytes",
                        h1::MAX_HEAD_BYTES
                    )));
                }
                Err(e) => return Err(End::Bad(e.to_string())),
            }
        }
    }

    /// Closes the connection for good: every request still waiting on it is told why, and it
    /// leaves its backend's list.
    fn end(self, end: End) {
        let (waiting, shared) = {
            let mut s = self.pipe.lock();
            s.closed = true;
            s.queued.clear();
            (std::mem::take(&mut s.waiting), s.given > 1)
        };
        // Closed with requests pipelined on it: by the instance, or after an answer that said
        // so (for the requests behind it, `waiting` holds that answer's as well).
        let pipelined = waiting.len() + usize::from(self.closing_answer) >= 2;
        if pipelined && matches!(end, End::Closed(_)) {
            self.trust.store(CLOSES, Ordering::Relaxed);
        }
        let backend = self.backend.upgrade();
        if let Some(b) = &backend {
            b.pipes.remove(&self.pipe);
        }
        let mut waiting = waiting.into_iter();
        if self.answer.is_some() {
            // The oldest request's answer had begun: dropping its sender cuts it short.
            waiting.next();
        }
        match &end {
            End::Unreachable(e) => {
                tracing::debug!(instance = %self.id, error = %e, "a connection to an instance could not be made");
                if let Some(b) = &backend {
                    b.mark_down();
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

    fn ask(shareable: bool) -> Ask {
        Ask {
            shareable,
            head: false,
            close: false,
            fresh: false,
        }
    }

    fn waiter(shareable: bool, since: Instant) -> Waiter {
        Waiter {
            parts: mpsc::channel(1).0,
            ask: ask(shareable),
            since,
        }
    }

    #[test]
    fn a_request_waits_behind_others_only_when_safe_and_short() {
        let now = Instant::now();
        let depth = 4;
        let mut s = State::default();
        // Nothing outstanding: anything goes.
        assert_eq!(s.rank(ask(false), depth, now), Some(Rank::Idle));
        assert_eq!(s.rank(ask(true), depth, now), Some(Rank::Idle));

        s.waiting.push_back(waiter(true, now));
        // Behind a safe request that has just gone: only another safe one.
        assert_eq!(s.rank(ask(true), depth, now), Some(Rank::Behind(1)));
        assert_eq!(s.rank(ask(false), depth, now), None);
        // Not with pipelining off.
        assert_eq!(s.rank(ask(true), 1, now), None);
        // A batch still being gathered comes before one already sent.
        s.queued.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(s.rank(ask(true), depth, now), Some(Rank::Gathering(1)));
        assert!(Rank::Gathering(3) < Rank::Behind(1));
        // Not behind an answer that is slow to come.
        assert_eq!(s.rank(ask(true), depth, now + PIPELINE_WAIT), None);

        // Not behind a request that is not safe.
        let mut s = State::default();
        s.waiting.push_back(waiter(false, now));
        assert_eq!(s.rank(ask(true), depth, now), None);

        // Not deeper than the depth, and never on a closed connection.
        let mut s = State::default();
        for _ in 0..depth {
            s.waiting.push_back(waiter(true, now));
        }
        assert_eq!(s.rank(ask(true), depth, now), None);
        let s = State {
            closed: true,
            ..State::default()
        };
        assert_eq!(s.rank(ask(false), depth, now), None);
    }

    fn pipe(worker: usize, outstanding: usize) -> Arc<Pipe> {
        let pipe = Arc::new(Pipe {
            worker,
            state: Mutex::default(),
            wake: Notify::new(),
        });
        for _ in 0..outstanding {
            pipe.lock().waiting.push_back(waiter(true, Instant::now()));
        }
        pipe
    }

    #[test]
    fn requests_are_pipelined_only_once_a_thread_has_its_connections() {
        let me = WORKER.get();
        let pipes = Pipes::default();
        // Another thread's idle connection is not this thread's to use.
        pipes.list.lock().unwrap().push(pipe(me + 1, 0));
        assert!(pipes.choose(ask(true), 16).is_none());
        // Busy connections, fewer than the thread opens: a new one.
        for n in 1..PIPELINE_CONNECTIONS {
            pipes.list.lock().unwrap().push(pipe(me, n));
        }
        assert!(pipes.choose(ask(true), 16).is_none());
        // As many as it opens: the least busy takes a safe request; another is opened for
        // one that is not safe.
        pipes.list.lock().unwrap().push(pipe(me, 5));
        let chosen = pipes.choose(ask(true), 16).unwrap();
        assert_eq!(chosen.lock().waiting.len(), 1);
        assert!(pipes.choose(ask(false), 16).is_none());
        // An idle one is taken whatever the request, before one with requests outstanding.
        let idle = pipe(me, 0);
        pipes.list.lock().unwrap().push(Arc::clone(&idle));
        assert!(Arc::ptr_eq(&pipes.choose(ask(false), 16).unwrap(), &idle));
        assert!(Arc::ptr_eq(&pipes.choose(ask(true), 16).unwrap(), &idle));
        // But a safe request goes with a batch being gathered.
        chosen
            .lock()
            .queued
            .extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert!(Arc::ptr_eq(&pipes.choose(ask(true), 16).unwrap(), &chosen));
        assert!(Arc::ptr_eq(&pipes.choose(ask(false), 16).unwrap(), &idle));
        assert_eq!(pipes.len(), PIPELINE_CONNECTIONS + 2);
        pipes.remove(&idle);
        assert_eq!(pipes.len(), PIPELINE_CONNECTIONS + 1);
    }
}
