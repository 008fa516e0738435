//! A chatty app against the real daemon: an instance printing as fast as it may (it asks for
//! 50 MB/s; Docker's log driver takes what it can), followed live by three readers, one of
//! which never reads its socket, while another client fetches the whole historic RUN log again
//! and again. The daemon's memory stays bounded throughout, and the readers that read keep
//! getting the app's lines (with lines saying how many they skipped when they fall behind).

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Daemon, docker_ready};
use serde_json::{Value, json};
use slipway_testkit::{HelloRepo, unique};

mod common;

/// How long the app floods its log while it is followed; RSS is sampled every second.
const FLOOD_FOR: Duration = Duration::from_secs(35);
/// The daemon's resident memory must stay under this.
const RSS_LIMIT_KB: u64 = 100 * 1024;

fn api(daemon: &Daemon, method: &str, path: &str, body: Option<Value>) -> Value {
    let client = reqwest::blocking::Client::new();
    let req = client
        .request(method.parse().unwrap(), format!("{}{path}", daemon.url))
        .bearer_auth(&daemon.token);
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    req.send().unwrap().json().unwrap()
}

/// VmRSS of a process, in kB.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// What a reader of the live log saw.
#[derive(Debug, Default)]
struct Seen {
    bytes: u64,
    lines: u64,
    skip_markers: u64,
    skipped: u64,
    first_flood: Option<u64>,
    last_flood: Option<u64>,
    /// A line's number was not above the one before it: not checked, since Docker's
    /// json-file driver, followed while it rotates its files, can give lines again.
    out_of_order: Option<String>,
    /// Seconds after the start of the run at which the last line came.
    last_line_at: f64,
}

/// The number of an app line (`<instance> flood 000000001234 xxx...`).
fn flood_number(line: &str) -> Option<u64> {
    let rest = &line[line.find(" flood ")? + 7..];
    rest.get(..12)?.parse().ok()
}

/// Reads the live log until `stop`, line by line.
fn follow(url: String, stop: Arc<AtomicBool>, start: Instant) -> Seen {
    let client = reqwest::blocking::Client::builder()
        // A reader that stops getting anything still ends soon after the run.
        .timeout(FLOOD_FOR + Duration::from_secs(15))
        .build()
        .unwrap();
    let response = client.get(&url).send().unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let mut reader = BufReader::with_capacity(256 * 1024, response);
    let mut seen = Seen::default();
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.bytes += n as u64,
        }
        seen.lines += 1;
        seen.last_line_at = start.elapsed().as_secs_f64();
        if let Some(marker) = line.strip_prefix("... ") {
            assert!(
                line.contains("skipped: the reader was too slow ..."),
                "{line}"
            );
            seen.skip_markers += 1;
            seen.skipped += marker
                .split(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            continue;
        }
        if let Some(n) = flood_number(&line) {
            if seen.last_flood.is_some_and(|last| n <= last) && seen.out_of_order.is_none() {
                seen.out_of_order = Some(format!("{n} after {:?}", seen.last_flood));
            }
            seen.first_flood.get_or_insert(n);
            seen.last_flood = Some(n);
        }
    }
    seen
}

/// Fetches the whole historic RUN log again and again until `stop`; returns how many bytes
/// each fetch read.
fn fetch_history(url: String, stop: Arc<AtomicBool>) -> Vec<u64> {
    let client = reqwest::blocking::Client::builder()
        // A reader that stops getting anything still ends soon after the run.
        .timeout(FLOOD_FOR + Duration::from_secs(15))
        .build()
        .unwrap();
    let mut sizes = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut response) = client.get(&url).send() else {
            break;
        };
        let mut size = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match response.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => size += n as u64,
            }
        }
        sizes.push(size);
    }
    sizes
}

/// Reads what a follower that stopped reading gets when it reads again, until the line that
/// says how many lines it skipped (or 20 s, or 64 MB): `(bytes read before it, the line)`.
fn come_back(mut s: std::net::TcpStream) -> (u64, Option<String>) {
    const MARKER: &[u8] = b" skipped: the reader was too slow ...";
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = vec![0u8; 256 * 1024];
    let mut window: Vec<u8> = Vec::new();
    let mut read = 0u64;
    while Instant::now() < deadline && read < 64 << 20 {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // What was read, after the end of what came before (a line may span two reads).
        let keep = window.len().saturating_sub(512);
        window.drain(..keep);
        window.extend_from_slice(&buf[..n]);
        if let Some(at) = window.windows(MARKER.len()).position(|w| w == MARKER) {
            let start = window[..at]
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |p| p + 1);
            let line = String::from_utf8_lossy(&window[start..at + MARKER.len()]).into_owned();
            return (read, Some(line));
        }
        read += n as u64;
    }
    (read, None)
}

#[test]
fn a_chatty_app_followed_by_a_reader_that_never_reads_leaves_the_daemon_memory_bounded() {
    if !docker_ready() {
        return;
    }
    let daemon = Daemon::start("logs", &[]);
    let pid = daemon.pid();
    let repo = HelloRepo::new("v1").unwrap();
    let spec = format!(
        "name: {}\nservices:\n  - name: web\n    git: {{repo_clone_url: \"{}\", branch: main}}\n    instance_count: 1\n    health_check: {{http_path: /healthz}}\n    envs:\n      - {{key: LOG_BYTES_PER_SEC, value: \"50000000\"}}\n",
        unique("chatty"),
        repo.url()
    );
    let spec = slipway_spec::parse_document(&spec).unwrap();
    let created = api(&daemon, "POST", "/v2/apps", Some(json!({"spec": spec})));
    let app = created["app"]["id"].as_str().unwrap().to_string();
    let dep = created["app"]["pending_deployment"]["id"]
        .as_str()
        .or(created["app"]["in_progress_deployment"]["id"].as_str())
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = api(
            &daemon,
            "GET",
            &format!("/v2/apps/{app}/deployments/{dep}"),
            None,
        );
        match d["deployment"]["phase"].as_str() {
            Some("ACTIVE") => break,
            Some("ERROR" | "CANCELED") => panic!("the chatty app did not deploy: {d}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "timed out deploying: {d}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let urls = api(
        &daemon,
        "GET",
        &format!("/v2/apps/{app}/logs?type=RUN"),
        None,
    );
    let live = urls["live_url"].as_str().unwrap().to_string();
    let historic = urls["historic_urls"][0].as_str().unwrap().to_string();
    let before_kb = rss_kb(pid);

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // The reader that never reads: it asks for the live log and leaves its socket alone.
    let stalled = {
        let url = reqwest::Url::parse(&live).unwrap();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap();
        write!(
            s,
            "GET {}?{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
            url.path(),
            url.query().unwrap_or_default(),
            daemon.port
        )
        .unwrap();
        s
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (url, stop) = (live.clone(), Arc::clone(&stop));
            std::thread::spawn(move || follow(url, stop, start))
        })
        .collect();
    let history = {
        let (url, stop) = (historic.clone(), Arc::clone(&stop));
        std::thread::spawn(move || fetch_history(url, stop))
    };

    let mut samples = Vec::new();
    while start.elapsed() < FLOOD_FOR {
        std::thread::sleep(Duration::from_secs(1));
        samples.push(rss_kb(pid));
    }
    let at_end = start.elapsed().as_secs_f64();
    // The reader that never read comes back: past what its connection's buffers held, it
    // is told how many lines it missed, and goes on with the newest ones.
    let comeback = come_back(stalled);
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Seen> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    let fetched = history.join().unwrap();

    let max_kb = samples.iter().copied().max().unwrap_or(0);
    eprintln!(
        "daemon RSS before {before_kb} kB, max {max_kb} kB over {} samples: {samples:?}",
        samples.len()
    );
    for (i, s) in seen.iter().enumerate() {
        let rate = match (s.first_flood, s.last_flood) {
            (Some(a), Some(b)) if s.last_line_at > 0.0 => (b - a) as f64 * 100.0 / s.last_line_at,
            _ => 0.0,
        };
        eprintln!(
            "reader {i}: {} lines, {} bytes, {} skip markers ({} lines skipped), app lines {:?}..{:?} (the app wrote about {:.1} MB/s), last line at {:.1} s of {at_end:.1} s",
            s.lines,
            s.bytes,
            s.skip_markers,
            s.skipped,
            s.first_flood,
            s.last_flood,
            rate / 1e6,
            s.last_line_at,
        );
    }
    eprintln!("historic fetches (bytes each): {fetched:?}");
    eprintln!("the reader that never read, back: {comeback:?}");

    assert!(
        max_kb < RSS_LIMIT_KB,
        "the daemon's RSS reached {max_kb} kB (limit {RSS_LIMIT_KB} kB): {samples:?}"
    );
    for (i, s) in seen.iter().enumerate() {
        assert!(
            s.lines >= 10_000,
            "reader {i} got only {} lines: {s:?}",
            s.lines
        );
        assert!(
            s.last_line_at > at_end - 5.0,
            "reader {i} stopped getting lines at {:.1} s of {at_end:.1} s: {s:?}",
            s.last_line_at
        );
    }
    let (read_before, marker) = comeback;
    assert!(
        marker.is_some(),
        "the reader that never read was not told it skipped lines ({read_before} bytes read)"
    );
    assert!(
        fetched.iter().any(|n| *n > 0),
        "the historic log was read: {fetched:?}"
    );
}
