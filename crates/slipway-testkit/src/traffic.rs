//! Steady HTTP traffic for the zero-drop tests: clients that send `GET`s one after another
//! until they are stopped, each bounded in count and in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What the clients saw: requests answered with a 2xx, the failures (status and body, or the
/// error), and the bodies of the answers.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: u64,
    pub failures: Vec<String>,
    pub bodies: Vec<String>,
}

impl Tally {
    /// Panics, with the first few failures, unless every request was answered with a 2xx.
    pub fn assert_none_failed(&self, during: &str) {
        assert!(
            self.failures.is_empty(),
            "{} of {} requests failed during {during}: {:?}",
            self.failures.len(),
            self.ok as usize + self.failures.len(),
            &self.failures[..self.failures.len().min(5)]
        );
    }
}

/// Clients under way.
#[derive(Debug)]
pub struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Traffic {
    /// Starts `clients` clients on `url`, each stopping by itself after `max_requests`
    /// requests or `max_time`.
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
                    for _ in 0..max_requests {
                        if stop.load(Ordering::SeqCst) || started.elapsed() > max_time {
                            break;
                        }
                        match http.get(&url).send().await {
                            Ok(r) if r.status().is_success() => {
                                tally.ok += 1;
                                tally.bodies.push(r.text().await.unwrap_or_default());
                            }
                            Ok(r) => tally.failures.push(format!(
                                "{} {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            )),
                            Err(e) => tally.failures.push(e.to_string()),
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
            all.bodies.extend(t.bodies);
        }
        all
    }
}
