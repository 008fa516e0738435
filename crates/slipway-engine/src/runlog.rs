//! RUN logs: what the instances of an app write, as the API serves them.
//!
//! What it promises: the daemon's memory for RUN logs is bounded whatever an app prints and
//! however slowly its readers read.
//!
//! - **Following** (the live URL): one *tap* per followed instance reads the container's log
//!   from Docker once, as fast as Docker gives it, into a ring of at most
//!   `EngineConfig::log_buffer_bytes` (1 MiB by default); the oldest lines leave the ring as
//!   new ones come. Every follower of that instance reads the same ring with a cursor of its
//!   own, in chunks of at most [`CHUNK_BYTES`], only as fast as its connection takes them: no
//!   queue of its own grows behind it. A follower whose cursor the ring has left behind skips
//!   to the ring's oldest line and is told so by a line of its own (`... N lines of <instance>
//!   skipped: the reader was too slow ...`). A tap starts with its first follower and stops
//!   when its last follower leaves, so that an app nobody follows costs nothing here; Docker
//!   is never held back by a slow follower (its own log files, whose size Docker's log
//!   options bound, are what keeps the history).
//! - **History** (the historic URL): read from Docker's log of each instance, merged in time
//!   order one line at a time, and streamed to the client as it goes: only one line per
//!   instance is held at once, whatever the length of the log.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use futures::stream::{BoxStream, StreamExt};
use slipway_rollout::{DockerRuntime, Instance, LogRecord};
use tokio::sync::watch;

/// The most bytes of log a follower is handed at once.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// The smallest ring `--log-buffer-bytes` may ask for: a few of Docker's longest lines (it
/// splits longer ones at 16 KiB).
pub const MIN_BUFFER_BYTES: usize = 64 * 1024;

/// How often followers are woken at most while lines keep coming.
const NOTIFY_EVERY: std::time::Duration = std::time::Duration::from_millis(5);

/// What a line costs in the ring besides its text: its `Arc` and its slot.
const LINE_OVERHEAD: usize = 48;

/// The lines of one instance's log that followers may still read.
#[derive(Debug)]
struct Ring {
    lines: VecDeque<Arc<str>>,
    /// The number of the oldest line in `lines` (lines are numbered from 0 as they come).
    first: u64,
    bytes: usize,
    capacity: usize,
    /// The log has ended (the container stopped, or Docker's stream broke).
    ended: bool,
}

impl Ring {
    fn new(capacity: usize) -> Ring {
        Ring {
            lines: VecDeque::new(),
            first: 0,
            bytes: 0,
            capacity,
            ended: false,
        }
    }

    /// The number the next line will get.
    fn end(&self) -> u64 {
        self.first + self.lines.len() as u64
    }

    fn push(&mut self, line: Arc<str>) {
        self.bytes += line.len() + LINE_OVERHEAD;
        self.lines.push_back(line);
        // The newest line always stays, even one longer than the ring.
        while self.bytes > self.capacity && self.lines.len() > 1 {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len() + LINE_OVERHEAD;
                self.first += 1;
            }
        }
    }
}

/// What a tap's reader and its followers share.
#[derive(Debug)]
struct Shared {
    instance: String,
    ring: Mutex<Ring>,
    /// The number of the next line, sent after every batch of lines (and when the log ends).
    progress: watch::Sender<u64>,
}

impl Shared {
    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the followers: there are new lines (or the log ended).
    fn announce(&self) {
        let end = self.ring().end();
        self.progress.send_replace(end);
    }
}

/// One instance's log, read once from Docker while someone follows it.
#[derive(Debug)]
struct Tap {
    shared: Arc<Shared>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        // The last follower left: Docker's stream is dropped with the task.
        self.reader.abort();
    }
}

impl Tap {
    /// Starts reading `source` (the instance's lines, already formatted) into a ring of
    /// `capacity` bytes.
    fn start(instance: &str, capacity: usize, mut source: BoxStream<'static, String>) -> Tap {
        let shared = Arc::new(Shared {
            instance: instance.to_string(),
            ring: Mutex::new(Ring::new(capacity)),
            progress: watch::Sender::new(0),
        });
        let writer = Arc::clone(&shared);
        let reader = tokio::spawn(async move {
            // Followers are woken at most every NOTIFY_EVERY while lines keep coming, so that
            // each wakes to a chunk worth sending rather than to every line.
            let mut notified_at = tokio::time::Instant::now();
            let mut unannounced = false;
            loop {
                let next = if unannounced {
                    match tokio::time::timeout_at(notified_at + NOTIFY_EVERY, source.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            writer.announce();
                            notified_at = tokio::time::Instant::now();
                            unannounced = false;
                            continue;
                        }
                    }
                } else {
                    source.next().await
                };
                let Some(line) = next else {
                    break;
                };
                writer.ring().push(Arc::from(line));
                unannounced = true;
                if notified_at.elapsed() >= NOTIFY_EVERY {
                    writer.announce();
                    notified_at = tokio::time::Instant::now();
                    unannounced = false;
                }
            }
            writer.ring().ended = true;
            writer.announce();
        });
        Tap { shared, reader }
    }

    /// A follower: the last `tail` lines the ring holds, then every new line, in chunks of
    /// whole lines (each ending with `\n`) of at most [`CHUNK_BYTES`] (or one longer line),
    /// with a line saying how many were skipped whenever the ring has moved past it. Ends
    /// with the log.
    fn follow(self: Arc<Tap>, tail: usize) -> BoxStream<'static, String> {
        let progress = self.shared.progress.subscribe();
        let next = {
            let ring = self.shared.ring();
            ring.end() - (tail as u64).min(ring.lines.len() as u64)
        };
        futures::stream::unfold(
            (self, progress, next),
            |(tap, mut progress, mut next)| async move {
                loop {
                    let (chunk, ended) = {
                        let ring = tap.shared.ring();
                        let mut chunk = String::new();
                        if next < ring.first {
                            chunk.push_str(&skipped_line(ring.first - next, &tap.shared.instance));
                            next = ring.first;
                        }
                        let from = (next - ring.first) as usize;
                        for line in ring.lines.range(from..) {
                            if !chunk.is_empty() && chunk.len() + line.len() + 1 > CHUNK_BYTES {
                                break;
                            }
                            chunk.push_str(line);
                            chunk.push('\n');
                            next += 1;
                        }
                        (chunk, ring.ended && next == ring.end())
                    };
                    if !chunk.is_empty() {
                        return Some((chunk, (tap, progress, next)));
                    }
                    if ended {
                        return None;
                    }
                    // Lines or the end will come; a reader that is gone ends it too.
                    if progress.changed().await.is_err() {
                        return None;
                    }
                }
            },
        )
        .boxed()
    }
}

/// The line a follower reads in place of the lines it was too slow to read.
pub fn skipped_line(n: u64, instance: &str) -> String {
    format!(
        "... {n} line{} of {instance} skipped: the reader was too slow ...\n",
        if n == 1 { "" } else { "s" }
    )
}

/// The taps of the instances being followed, by container ID.
#[derive(Debug)]
pub(crate) struct Taps {
    capacity: usize,
    taps: Mutex<HashMap<String, Weak<Tap>>>,
}

impl Taps {
    pub(crate) fn new(capacity: usize) -> Taps {
        Taps {
            capacity: capacity.max(MIN_BUFFER_BYTES),
            taps: Mutex::new(HashMap::new()),
        }
    }

    /// Follows one instance: its tap, started (reading Docker's log from its last `tail`
    /// lines) when nobody follows it yet.
    pub(crate) fn follow(
        &self,
        runtime: &DockerRuntime,
        instance: &Instance,
        tail: usize,
    ) -> BoxStream<'static, String> {
        let tap = {
            let mut taps = self.taps.lock().unwrap_or_else(|e| e.into_inner());
            taps.retain(|_, t| t.strong_count() > 0);
            match taps.get(&instance.id).and_then(Weak::upgrade) {
                Some(tap) => tap,
                None => {
                    let source = runtime.log_lines(instance, true, Some(tail));
                    let tap = Arc::new(Tap::start(&instance.name, self.capacity, source));
                    taps.insert(instance.id.clone(), Arc::downgrade(&tap));
                    tap
                }
            }
        };
        tap.follow(tail)
    }
}

/// A RUN log line: the instance's name, then what it wrote.
pub(crate) fn format_record(r: &LogRecord) -> String {
    format!("{} {}", r.instance, r.line)
}

/// Several instances' logs (each in time order) merged in time order as they are read,
/// holding one record per instance: `(at, line)` pairs, `at` an RFC 3339 timestamp.
pub(crate) fn merge_by_time(
    streams: Vec<BoxStream<'static, (String, String)>>,
) -> BoxStream<'static, String> {
    let heads: Vec<Option<(String, String)>> = vec![None; streams.len()];
    let live: Vec<bool> = vec![true; streams.len()];
    futures::stream::unfold(
        (streams, heads, live),
        |(mut streams, mut heads, mut live)| async move {
            for i in 0..streams.len() {
                if heads[i].is_none() && live[i] {
                    heads[i] = streams[i].next().await;
                    live[i] = heads[i].is_some();
                }
            }
            let oldest = heads
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.as_ref().map(|(at, _)| (i, at)))
                .min_by(|a, b| a.1.cmp(b.1))
                .map(|(i, _)| i)?;
            let (_, line) = heads[oldest].take()?;
            Some((line, (streams, heads, live)))
        },
    )
    .boxed()
}

/// Lines (without their `\n`) gathered into chunks of whole lines of about [`CHUNK_BYTES`],
/// each line ending with `\n`, for a response body.
pub(crate) fn chunked(lines: BoxStream<'static, String>) -> BoxStream<'static, String> {
    lines
        .ready_chunks(512)
        .flat_map(|lines| {
            let mut chunks = Vec::new();
            let mut chunk = String::new();
            for line in lines {
                if !chunk.is_empty() && chunk.len() + line.len() + 1 > CHUNK_BYTES {
                    chunks.push(std::mem::take(&mut chunk));
                }
                chunk.push_str(&line);
                chunk.push('\n');
            }
            if !chunk.is_empty() {
                chunks.push(chunk);
            }
            futures::stream::iter(chunks)
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn source() -> (mpsc::Sender<String>, BoxStream<'static, String>) {
        let (tx, rx) = mpsc::channel(1024);
        (tx, tokio_stream_from(rx))
    }

    fn tokio_stream_from(mut rx: mpsc::Receiver<String>) -> BoxStream<'static, String> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
    }

    async fn settle(tap: &Tap, end: u64) {
        let mut progress = tap.shared.progress.subscribe();
        while *progress.borrow_and_update() < end {
            progress.changed().await.unwrap();
        }
    }

    #[tokio::test]
    async fn the_ring_keeps_its_bound_and_a_slow_follower_is_told_what_it_skipped() {
        let (tx, lines) = source();
        let capacity = 100 * (10 + LINE_OVERHEAD);
        let tap = Arc::new(Tap::start("web-1", capacity, lines));
        let mut fast = Arc::clone(&tap).follow(0);
        let mut slow = Arc::clone(&tap).follow(0);
        for n in 0..1000u32 {
            tx.send(format!("line {n:05}")).await.unwrap();
        }
        settle(&tap, 1000).await;
        {
            let ring = tap.shared.ring();
            assert!(ring.bytes <= capacity, "{} > {capacity}", ring.bytes);
            assert_eq!(ring.lines.len(), 100);
            assert_eq!(ring.first, 900);
        }
        // Both were left behind while they did not read: they skip to the ring's start.
        let text = fast.next().await.unwrap();
        assert!(
            text.starts_with(
                "... 900 lines of web-1 skipped: the reader was too slow ...\nline 00900\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("line 00999\n"), "{text}");
        // A follower that keeps up reads every line.
        tx.send("line 01000".into()).await.unwrap();
        assert_eq!(fast.next().await.unwrap(), "line 01000\n");
        // The slow one, still behind, now skips one more (the ring moved on by one).
        let text = slow.next().await.unwrap();
        assert!(
            text.starts_with(
                "... 901 lines of web-1 skipped: the reader was too slow ...\nline 00901\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("line 01000\n"), "{text}");
        // The log ends: the followers end once they have read it.
        tx.send("line 01001".into()).await.unwrap();
        drop(tx);
        assert_eq!(fast.next().await.unwrap(), "line 01001\n");
        assert_eq!(fast.next().await, None);
    }

    #[tokio::test]
    async fn a_new_follower_starts_with_its_tail_and_chunks_are_bounded() {
        let (tx, lines) = source();
        let tap = Arc::new(Tap::start("web-1", 4 << 20, lines));
        let long = "y".repeat(1000);
        for _ in 0..200 {
            tx.send(long.clone()).await.unwrap();
        }
        settle(&tap, 200).await;
        let mut tail = Arc::clone(&tap).follow(3);
        assert_eq!(tail.next().await.unwrap().len(), 3 * 1001);
        let mut all = Arc::clone(&tap).follow(1000);
        let first = all.next().await.unwrap();
        assert!(first.len() <= CHUNK_BYTES && first.len() > CHUNK_BYTES - 1001);
        drop(tx);
        let rest: Vec<String> = all.collect().await;
        let total: usize = rest.iter().map(String::len).sum::<usize>() + first.len();
        assert_eq!(total, 200 * 1001);
    }

    #[tokio::test]
    async fn history_is_merged_in_time_order() {
        let a = futures::stream::iter(vec![
            ("2026-01-01T00:00:01Z".to_string(), "a1".to_string()),
            ("2026-01-01T00:00:03Z".to_string(), "a3".to_string()),
        ])
        .boxed();
        let b = futures::stream::iter(vec![
            ("2026-01-01T00:00:02Z".to_string(), "b2".to_string()),
            ("2026-01-01T00:00:04Z".to_string(), "b4".to_string()),
        ])
        .boxed();
        let merged: Vec<String> = chunked(merge_by_time(vec![a, b])).collect().await;
        assert_eq!(merged.concat(), "a1\nb2\na3\nb4\n");
    }
}
