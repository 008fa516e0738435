//! Steady HTTP traffic for the zero-drop tests: clients that send `GET`s one after another
//! until they are stopped, each bounded in count and in time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What the clients saw: requests answered with a 2xx, the failures (status and body, or the
/// error), each distinct body with how often it was answered, and which bound a client reached
/// if it stopped before it was told to.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub failures: Vec<String>,
    pub bodies: BTreeMap<String, u64>,
    pub ran_out: Option<String>,
}

impl Tally {
    /// Panics, with the first few failures, unless every request was answered with a 2xx and
    /// the load lasted until it was stopped (a load that ended early proves nothing about what
    /// came after it).
    pub fn assert_none_failed(&self, during: &str) {
        assert!(
            self.failures.is_empty(),
            "{} of {} requests failed during {during}: {:?}",
            self.failures.len(),
            self.ok as usize + self.failures.len(),
            &self.failures[..self.failures.len().min(5)]
        );
        if let Some(bound) = &self.ran_out {
            panic!("the load reached its bound ({bound}) before {during} ended");
        }
    }

    /// Whether any answer's body starts with `prefix`.
    pub fn any_body_starts_with(&self, prefix: &str) -> bool {
        self.bodies.keys().any(|b| b.starts_with(prefix))
    }

    /// Whether every answer's body starts with `prefix`.
    pub fn every_body_starts_with(&self, prefix: &str) -> bool {
        self.bodies.keys().all(|b| b.starts_with(prefix))
    }
}

/// An error with all its causes, as `outer: inner: innermost`: which of the many ways a
/// request can fail (refused, reset, closed before the answer, timed out) is in the causes.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Clients under way.
#[derive(Debug)]
pub struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Traffic {
    /// Starts `clients` clients on `url`. Each runs until [`Traffic::finish`], or stops by
    /// itself after `max_requests` requests or `max_time`, so that a test that hangs does not
    /// load the machine for ever; the tally then says so and [`Tally::assert_none_failed`]
    /// fails. Choose bounds well beyond what the test needs.
    pub fn start(
        http: &reqwest::Client,
        url: &str,
        clients: usize,
        max_requests: u64,
        max_time: Duration,
    ) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|_| {
                let (http, url, stop) = (http.clone(), url.to_string(), Arc::clone(&stop));
                tokio::spawn(async move {
                    let started = Instant::now();
                    let mut tally = Tally::default();
                    let mut sent = 0;
                    while !stop.load(Ordering::SeqCst) {
                        if started.elapsed() > max_time {
                            tally.ran_out = Some(format!("{max_time:?}"));
                            break;
                        }
                        if sent == max_requests {
                            tally.ran_out = Some(format!("{max_requests} requests per client"));
                            break;
                        }
                        sent += 1;
                        match http.get(&url).send().await {
                            Ok(r) if r.status().is_success() => {
                                tally.ok += 1;
                                let body = r.text().await.unwrap_or_default();
                                *tally.bodies.entry(body).or_default() += 1;
                            }
                            Ok(r) => tally.failures.push(format!(
                                "at {:.3} s: {} {}",
                                started.elapsed().as_secs_f64(),
                                r.status(),
                                r.text().await.unwrap_or_default()
                            )),
                            Err(e) => tally.failures.push(format!(
                                "at {:.3} s: {}",
                                started.elapsed().as_secs_f64(),
                                chain(&e)
                            )),
                        }
                    }
                    tally
                })
            })
            .collect();
        Traffic { stop, tasks }
    }

    /// Stops the clients and adds up what they saw.
    pub async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        let mut all = Tally::default();
        for t in self.tasks {
            let t = t.await.expect("a traffic client panicked");
            all.ok += t.ok;
            all.failures.extend(t.failures);
            for (body, n) in t.bodies {
                *all.bodies.entry(body).or_default() += n;
            }
            all.ran_out = all.ran_out.or(t.ran_out);
        }
        all
    }
}
