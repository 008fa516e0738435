//! The lean path for plain HTTP/1.1: the common request (no body, or a small one with a
//! `Content-Length`) is parsed in place, its head written again for the instance with the
//! forwarding headers, and the answer relayed as it comes, framing and all, over a raw
//! kept-alive connection: no header map, no task between the client's connection and the
//! instance's.
//!
//! Every head is first checked against [`head::check`]'s rules, whichever path then serves
//! it: one that breaks them is answered 400 and the connection closed. Everything else
//! (HTTP/2, upgrades, `Expect`, chunked or large request bodies, HTTP/1.0, `Connection`
//! naming other headers) is left to hyper: the connection is handed over, with the bytes
//! already read, at the start of that request. Hyper reads that one request and no further
//! ([`OneRequest`]), answers it, and gives the connection back, so that no HTTP/1 head reaches
//! hyper unchecked; it keeps the rest of the connection only for HTTP/2, an upgrade, HTTP/1.0
//! or `Connection: close`, after which no HTTP/1 head comes.
//!
//! Every write to the client is given the ingress's `client_write_timeout`: a client that does
//! not read its answers loses its connection, and holds nothing but its own connection's
//! buffers and its own connection to an instance meanwhile.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use tokio::sync::mpsc::Receiver;

use crate::framing::{ChunkedEnd, HOP_BY_HOP, READ_SIZE, header, is};
use crate::head::{self, Head};
use crate::metrics::{AppMetrics, Source};
use crate::pipe::{Ask, Failed, Part, Pipes};
use crate::table::{Backend, InFlight, Pool, Proxy};

/// The most header lines a request may have on this path (more: hyper answers it).
const MAX_REQUEST_HEADERS: usize = 64;
/// Request bodies up to this size are kept, so that a request that could not be sent can be
/// sent again to another instance.
pub(crate) const RETRY_BODY_BYTES: u64 = 64 * 1024;
/// How a client connection left the lean path.
pub(crate) enum Ended {
    /// It is closed, or is to be.
    Closed,
    /// Its next request is hyper's to serve: the connection, the bytes read from it, and what
    /// the request's head says of its extent (`None`: HTTP/2, the whole connection).
    HandOff(TcpStream, BytesMut, Option<head::Request>),
}

/// A client connection's buffers, kept from one request to the next.
struct Conn {
    client: TcpStream,
    /// Bytes read from the client and not yet used.
    input: BytesMut,
    /// The request as it goes to the instance, or the ingress's own answer.
    out: Vec<u8>,
    /// The client's address as it is appended to `X-Forwarded-For`.
    client_ip: String,
    /// Its own connections to instances.
    pipes: Pipes,
    /// How long one write to the client may wait for it to read.
    write_timeout: Duration,
}

/// What the head at the start of the input asks for.
enum Prepared {
    Partial,
    NotMine,
    /// The ingress answers by itself (no app, no route, no instance).
    Answer {
        status: StatusCode,
        text: String,
        consumed: usize,
        close: bool,
        /// The counters of the app it is for, when its host names one.
        app: Option<Arc<AppMetrics>>,
        /// When its head had been read.
        start: std::time::Instant,
    },
    /// The request for the instance is in `out`, without its body.
    Forward(Forward),
}

struct Forward {
    pool: Arc<Pool>,
    /// Its app's counters.
    app: Arc<AppMetrics>,
    /// When its head had been read.
    start: std::time::Instant,
    head_len: usize,
    body_len: usize,
    /// Whether the request may be sent a second time after the first got no answer.
    idempotent: bool,
    ask: Ask,
    close: bool,
}

/// How long an idle client connection is kept once the ingress stops, for a request its
/// client may have sent already.
const IDLE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves `client` until it closes, or until a request is one for hyper.
pub(crate) async fn serve(
    proxy: &Proxy,
    client: TcpStream,
    remote: SocketAddr,
    shutdown: &CancellationToken,
    input: BytesMut,
) -> Ended {
    let mut c = Conn {
        client,
        input,
        out: Vec::with_capacity(1024),
        client_ip: remote.ip().to_string(),
        pipes: Pipes::default(),
        write_timeout: proxy.ingress.config.client_write_timeout,
    };
    let config = &proxy.ingress.config;
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        // A whole head, read within the header timeout.
        let deadline = Instant::now() + config.header_timeout;
        let prepared = loop {
            if !c.input.is_empty() {
                match head::check(&c.input) {
                    Err(refused) => {
                        let text = format!("{}\n", refused.why);
                        let _ = answer_locally(&mut c, refused.status, &text, true).await;
                        let _ = c.client.shutdown().await;
                        return Ended::Closed;
                    }
                    Ok(Head::Partial) => {}
                    Ok(Head::Http2) => return Ended::HandOff(c.client, c.input, None),
                    Ok(Head::Valid(request)) => {
                        match prepare(proxy, &c.input, &c.client_ip, &mut c.out) {
                            Prepared::Partial | Prepared::NotMine => {
                                return Ended::HandOff(c.client, c.input, Some(request));
                            }
                            p => break p,
                        }
                    }
                }
            }
            let idle = c.input.is_empty();
            // Once the ingress stops, an idle connection is given a moment for the request
            // its client may be sending already (whose answer then says `Connection: close`):
            // closing it at once could cut that request off.
            let deadline = if idle && shutdown.is_cancelled() {
                deadline.min(Instant::now() + IDLE_GRACE)
            } else {
                deadline
            };
            let read = tokio::select! {
                r = tokio::time::timeout_at(deadline, read_into(&mut c.client, &mut c.input)) => r,
                () = &mut cancelled, if idle && !shutdown.is_cancelled() => continue,
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                _ => return Ended::Closed,
            }
        };
        let close = match prepared {
            Prepared::Answer {
                status,
                text,
                consumed,
                close,
                app,
                start,
            } => {
                let close = close || shutdown.is_cancelled();
                if !read_at_least(&mut c, consumed, deadline).await {
                    return Ended::Closed;
                }
                c.input.advance(consumed);
                if let Some(app) = app {
                    app.answered(status.as_u16(), Source::Ingress, start.elapsed());
                }
                if answer_locally(&mut c, status, &text, close).await.is_err() {
                    return Ended::Closed;
                }
                close
            }
            Prepared::Forward(mut f) => {
                if shutdown.is_cancelled() {
                    // The last answer on this connection: it says so.
                    f.ask.close = true;
                    f.close = true;
                }
                let whole = f.head_len + f.body_len;
                let deadline = Instant::now() + config.request_timeout;
                if !read_at_least(&mut c, whole, deadline).await {
                    return Ended::Closed;
                }
                c.out.extend_from_slice(&c.input[f.head_len..whole]);
                c.input.advance(whole);
                match forward(proxy, &mut c, &f).await {
                    Ok(keep) => f.close || !keep,
                    Err(_) => return Ended::Closed,
                }
            }
            Prepared::Partial | Prepared::NotMine => unreachable!("handled above"),
        };
        if close || shutdown.is_cancelled() {
            let _ = c.client.shutdown().await;
            return Ended::Closed;
        }
    }
}

/// Reads what the client sent until the input holds `len` bytes, by `deadline`.
async fn read_at_least(c: &mut Conn, len: usize, deadline: Instant) -> bool {
    while c.input.len() < len {
        match tokio::time::timeout_at(deadline, read_into(&mut c.client, &mut c.input)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return false,
        }
    }
    true
}

async fn read_into(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    buf.reserve(READ_SIZE);
    stream.read_buf(buf).await
}

/// Headers never forwarded to an instance, the forwarding headers among them (they are
/// written again).
fn dropped_from_request(name: &str) -> bool {
    HOP_BY_HOP
        .iter()
        .chain(&[
            "host",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
        ])
        .any(|h| is(name, h))
}

/// Parses the head at the start of `input` and, for a request this path serves, writes the
/// head to send to the instance into `out`.
fn prepare(proxy: &Proxy, input: &[u8], client_ip: &str, out: &mut Vec<u8>) -> Prepared {
    let start = std::time::Instant::now();
    let mut headers = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Prepared::Partial,
        Err(_) => return Prepared::NotMine,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Prepared::NotMine;
    };
    if !target.starts_with('/') {
        return Prepared::NotMine;
    }
    let mut host: Option<&str> = None;
    let mut length: Option<u64> = None;
    let mut close = false;
    let mut origin = false;
    for h in req.headers.iter() {
        let name = h.name;
        if is(name, "origin") {
            origin = true;
        }
        if is(name, "host") {
            if host.is_some() {
                return Prepared::NotMine;
            }
            let Ok(v) = std::str::from_utf8(h.value) else {
                return Prepared::NotMine;
            };
            host = Some(v.trim());
        } else if is(name, "content-length") {
            let parsed = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            match (parsed, length) {
                (Some(l), None) => length = Some(l),
                _ => return Prepared::NotMine,
            }
        } else if is(name, "connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                    return Prepared::NotMine;
                }
            }
        } else if is(name, "transfer-encoding") || is(name, "upgrade") || is(name, "expect") {
            return Prepared::NotMine;
        }
    }
    let Some(host) = host else {
        return Prepared::NotMine;
    };
    let body_len = length.unwrap_or(0);
    if body_len > RETRY_BODY_BYTES.min(proxy.ingress.config.max_body_bytes) {
        return Prepared::NotMine;
    }
    let consumed = head_len + body_len as usize;
    let answer = |status: StatusCode, text: String, app| Prepared::Answer {
        status,
        text,
        consumed,
        close,
        app,
        start,
    };

    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let (pool, forwarded_path, app) = match proxy.ingress.route(host, path, false) {
        // A request its route's CORS policy may answer or add headers to.
        Ok(r) if origin && r.cors.is_some() => return Prepared::NotMine,
        Ok(r) => (r.pool, r.path, r.app),
        // A redirect's answer has a `Location`.
        Err(refused) if refused.redirect.is_some() => return Prepared::NotMine,
        Err(refused) => return answer(refused.status, refused.text, refused.app),
    };

    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    match forwarded_path {
        None => out.extend_from_slice(target.as_bytes()),
        Some(p) => {
            out.extend_from_slice(p.as_bytes());
            if let Some(q) = query {
                out.push(b'?');
                out.extend_from_slice(q.as_bytes());
            }
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut forwarded_for: Option<&[u8]> = None;
    for h in req.headers.iter() {
        if dropped_from_request(h.name) {
            if is(h.name, "x-forwarded-for") && forwarded_for.is_none() {
                forwarded_for = Some(h.value);
            }
            continue;
        }
        header(out, h.name.as_bytes(), h.value);
    }
    header(out, b"host", host.as_bytes());
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(previous) = forwarded_for {
        out.extend_from_slice(previous);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client_ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    header(out, b"x-forwarded-proto", proxy.scheme.as_bytes());
    header(out, b"x-forwarded-host", host.as_bytes());
    out.extend_from_slice(b"\r\n");

    Prepared::Forward(Forward {
        pool,
        app,
        start,
        head_len,
        body_len: body_len as usize,
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        ),
        ask: Ask {
            head: method == "HEAD",
            close,
            fresh: false,
        },
        close,
    })
}

/// The ingress's own short plain-text answer.
async fn answer_locally(
    c: &mut Conn,
    status: StatusCode,
    text: &str,
    close: bool,
) -> io::Result<()> {
    use std::io::Write;
    c.out.clear();
    write!(
        c.out,
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n{text}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        text.len(),
        if close { "connection: close\r\n" } else { "" },
    )?;
    write_within(&mut c.client, &c.out, c.write_timeout).await
}

/// Writes `bytes` to the client, unless it reads none of them for `timeout`.
async fn write_within(client: &mut TcpStream, bytes: &[u8], timeout: Duration) -> io::Result<()> {
    match tokio::time::timeout(timeout, client.write_all(bytes)).await {
        Ok(written) => written,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client read nothing for {} s", timeout.as_secs()),
        )),
    }
}

/// Sends the request in `c.out` to an instance of the pool and relays the answer. A request
/// that got no answer at all may be sent once more: on a new connection when the one it went
/// out on had carried other requests (the instance may have closed it as it sat idle), and to
/// another instance when a new connection failed (one that could not be made counts for any
/// request, one closed under it only for idempotent ones). `Ok(false)` when the client's
/// connection is to be closed afterwards; `Err` when it broke.
async fn forward(proxy: &Proxy, c: &mut Conn, f: &Forward) -> io::Result<bool> {
    let config = &proxy.ingress.config;
    let mut exclude: Option<Arc<Backend>> = None;
    let (mut sent_again, mut sent_elsewhere) = (false, false);
    let mut ask = f.ask;
    loop {
        let Some(backend) = f.pool.pick(exclude.as_deref().map(|b| b.id.as_str())) else {
            let text = format!("no instance of {} is ready\n", f.pool.component);
            answer_own(c, f, StatusCode::SERVICE_UNAVAILABLE, &text).await?;
            return Ok(true);
        };
        let guard = InFlight::new(Arc::clone(&backend));
        let mut parts = c.pipes.send(&backend, &c.out, ask, config);
        let first = match tokio::time::timeout(config.request_timeout, parts.recv()).await {
            Err(_) => {
                let text = format!(
                    "{} did not answer within {} s\n",
                    f.pool.component,
                    config.request_timeout.as_secs()
                );
                answer_own(c, f, StatusCode::GATEWAY_TIMEOUT, &text).await?;
                return Ok(true);
            }
            Ok(Some(Part::Failed(failed))) => failed,
            // The answer had begun when its connection broke, though none of it was relayed.
            Ok(None) => Failed::NoAnswer {
                error: io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the connection was closed in the middle of an answer",
                ),
                shared: true,
            },
            Ok(Some(part)) => {
                f.app
                    .answered(status_of(&part), Source::Upstream, f.start.elapsed());
                let keep = relay(c, part, &mut parts).await?;
                drop(guard);
                return Ok(keep);
            }
        };
        if matches!(first, Failed::Unreachable(_)) {
            f.app.connect_error();
        }
        match failed_again(first, f.idempotent, &mut sent_again, &mut sent_elsewhere) {
            // Sent again, it has a new connection to itself: nothing before it to take it
            // down, and not one the instance may have closed as it sat idle.
            Retry::SameInstance => {
                ask.fresh = true;
            }
            Retry::Elsewhere => {
                ask.fresh = true;
                exclude = Some(backend);
            }
            Retry::No(why) => {
                let text = format!("{} {why}\n", f.pool.component);
                answer_own(c, f, StatusCode::BAD_GATEWAY, &text).await?;
                return Ok(true);
            }
        }
    }
}

/// The ingress's own answer to a request it forwards, counted for its app.
async fn answer_own(c: &mut Conn, f: &Forward, status: StatusCode, text: &str) -> io::Result<()> {
    f.app
        .answered(status.as_u16(), Source::Ingress, f.start.elapsed());
    answer_locally(c, status, text, f.close).await
}

/// The status of an answer from the first part relayed of it, which starts with the head
/// written for the client (`HTTP/1.1 NNN `).
fn status_of(part: &Part) -> u16 {
    let bytes = match part {
        Part::More(b) | Part::Last { bytes: b, .. } => b.as_slice(),
        Part::Failed(_) => return 502,
    };
    bytes
        .get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(502)
}

/// What to do after a request got no answer.
enum Retry {
    /// Send it again to the same instance, on a new connection.
    SameInstance,
    /// Send it to another instance.
    Elsewhere,
    /// Answer the client with a 502 that says this after the component's name.
    No(String),
}

/// Whether a request that got no answer (`failed`) is sent once more, and where; each kind of
/// second chance is given once.
fn failed_again(
    failed: Failed,
    idempotent: bool,
    sent_again: &mut bool,
    sent_elsewhere: &mut bool,
) -> Retry {
    match failed {
        Failed::Unreachable(e) if !*sent_elsewhere => {
            tracing::debug!(error = %e, "sending to another instance");
            *sent_elsewhere = true;
            Retry::Elsewhere
        }
        Failed::Unreachable(e) => Retry::No(format!("could not be reached: {e}")),
        Failed::NoAnswer { error: e, shared } if idempotent && shared && !*sent_again => {
            tracing::debug!(error = %e, "a shared connection was closed; sending again on a new one");
            *sent_again = true;
            Retry::SameInstance
        }
        Failed::NoAnswer { error: e, .. } if idempotent && !*sent_elsewhere => {
            tracing::debug!(error = %e, "sending again to another instance");
            *sent_elsewhere = true;
            Retry::Elsewhere
        }
        Failed::NoAnswer { error: e, .. } => Retry::No(format!("could not be reached: {e}")),
        Failed::Bad(why) => Retry::No(format!("answered with something that is not HTTP: {why}")),
    }
}

/// Relays an answer to the client as its parts come, from `first`. `Ok(true)` when the
/// client's connection may carry another request.
async fn relay(c: &mut Conn, first: Part, parts: &mut Receiver<Part>) -> io::Result<bool> {
    let mut part = Some(first);
    loop {
        match part {
            Some(Part::More(bytes)) => write_within(&mut c.client, &bytes, c.write_timeout).await?,
            Some(Part::Last { bytes, keep }) => {
                write_within(&mut c.client, &bytes, c.write_timeout).await?;
                return Ok(keep);
            }
            Some(Part::Failed(_)) | None => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "an instance closed its connection in the middle of an answer",
                ));
            }
        }
        part = parts.recv().await;
    }
}

/// A client connection handed to hyper for one HTTP/1 request: what it reads ends with that
/// request (head and body), so that hyper cannot read the next head, which the lean path
/// checks first. Bytes read past the request are put back in front of the rest.
pub(crate) struct OneRequest {
    pub(crate) inner: Rewound,
    /// Bytes of the head, or of a body of known length, still to come.
    fixed: u64,
    /// The end of a chunked body, once the head is through.
    chunks: Option<ChunkedEnd>,
    /// The request has been read whole: reads end here.
    done: bool,
}

impl OneRequest {
    pub(crate) fn new(inner: Rewound, request: &head::Request) -> Self {
        let (body, chunks) = match request.body {
            head::Body::None => (0, None),
            head::Body::Length(l) => (l, None),
            head::Body::Chunked => (0, Some(ChunkedEnd::default())),
        };
        OneRequest {
            inner,
            fixed: request.len as u64 + body,
            chunks,
            done: false,
        }
    }

    /// Whether the request was read to its end.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }
}

impl AsyncRead for OneRequest {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let got = &buf.filled()[before..];
        let mut used = 0;
        while used < got.len() && !this.done {
            if this.fixed > 0 {
                let n = (got.len() - used).min(usize::try_from(this.fixed).unwrap_or(usize::MAX));
                this.fixed -= n as u64;
                used += n;
            } else if let Some(chunks) = this.chunks.as_mut() {
                match chunks.feed(&got[used..]) {
                    Ok(Some(end)) => {
                        used += end;
                        this.done = true;
                    }
                    Ok(None) => used = got.len(),
                    // Hyper refuses it, and the connection ends with it.
                    Err(()) => {
                        this.chunks = None;
                        this.fixed = u64::MAX;
                        used = got.len();
                    }
                }
            } else {
                this.done = true;
            }
            if this.fixed == 0 && this.chunks.is_none() {
                this.done = true;
            }
        }
        if used < got.len() {
            let mut back = BytesMut::from(&got[used..]);
            back.extend_from_slice(&this.inner.read);
            this.inner.read = back;
            buf.set_filled(before + used);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for OneRequest {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A client connection handed to hyper: the bytes already read come first, and a write that
/// waits longer than `write_timeout` for the client to read fails.
pub(crate) struct Rewound {
    pub(crate) read: BytesMut,
    pub(crate) stream: TcpStream,
    pub(crate) write_timeout: Duration,
    /// When the write under way gives up.
    pub(crate) stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Rewound {
    /// `polled` of a write, failed when the client has not read for `write_timeout`.
    fn in_time<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.write_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {} s", timeout.as_secs()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Rewound {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            let n = this.read.len().min(buf.remaining());
            buf.put_slice(&this.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.in_time(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.in_time(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_flush(cx);
        this.in_time(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
