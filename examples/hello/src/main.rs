//! A tiny HTTP service: the app of Slipway's demo and tests. See README.md.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use std::{env, fs, process, thread};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn env_ms(key: &str) -> Option<Duration> {
    env::var(key).ok()?.parse().ok().map(Duration::from_millis)
}

fn main() {
    match env::args().nth(1).as_deref() {
        Some("check") => process::exit(check()),
        Some("stamp") => process::exit(stamp(env::args().nth(2))),
        Some("has-env") => process::exit(has_env(env::args().nth(2))),
        _ => {}
    }
    let role = env::var("ROLE").unwrap_or_else(|_| "web".into());
    watch_signals();
    if let Some(after) = env_ms("EXIT_AFTER_MS") {
        thread::spawn(move || {
            thread::sleep(after);
            eprintln!("exiting with 1 after {after:?}, as EXIT_AFTER_MS asks");
            process::exit(1);
        });
    }
    if let Some(rate) = env::var("LOG_BYTES_PER_SEC")
        .ok()
        .and_then(|r| r.parse::<u64>().ok())
        .filter(|r| *r > 0)
    {
        thread::spawn(move || flood(rate));
    }
    match role.as_str() {
        "job" => {
            let code: i32 = env::var("JOB_EXIT_CODE")
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            println!("job {} running", hostname());
            if let Some(d) = env_ms("JOB_DURATION_MS") {
                thread::sleep(d);
            }
            println!("job done, exit code {code}");
            process::exit(code);
        }
        "worker" => idle("worker"),
        "db" => {
            let dir = env::var("DATA_DIR").unwrap_or_else(|_| "/data".into());
            let path = format!("{dir}/boots");
            let mut boots = fs::read_to_string(&path).unwrap_or_default();
            boots.push_str(&format!("{}\n", hostname()));
            if let Err(e) = fs::write(&path, &boots) {
                eprintln!("cannot write {path}: {e}");
                process::exit(2);
            }
            println!("db booted ({} boots recorded)", boots.lines().count());
            idle("db");
        }
        _ => serve(),
    }
}

/// `hello check`: a HEALTHCHECK command for images without a shell. Exits 0 when
/// `GET /healthz` on `PORT` answers 200.
fn check() -> i32 {
    let port = env::var("PORT").unwrap_or_else(|_| "8080".into());
    let Ok(mut stream) = TcpStream::connect(format!("127.0.0.1:{port}")) else {
        eprintln!("nothing listens on port {port}");
        return 1;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return 1;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status = answer.lines().next().unwrap_or("").to_string();
    println!("{status}");
    i32::from(!status.contains(" 200 "))
}

/// `hello stamp FILE`: writes the time (nanoseconds since the epoch) to FILE; a `RUN` step
/// for images without a shell, whose output shows whether the step ran or came from the
/// build cache.
fn stamp(file: Option<String>) -> i32 {
    let Some(file) = file else {
        eprintln!("usage: hello stamp FILE");
        return 2;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    match fs::write(&file, format!("{nanos}\n")) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cannot write {file}: {e}");
            1
        }
    }
}

/// `hello has-env KEY`: exits 0 when KEY is set and not empty, 1 otherwise, without printing
/// its value; a `RUN` step for images without a shell that needs a build argument.
fn has_env(key: Option<String>) -> i32 {
    let Some(key) = key else {
        eprintln!("usage: hello has-env KEY");
        return 2;
    };
    if env::var_os(&key).is_some_and(|v| !v.is_empty()) {
        0
    } else {
        eprintln!("{key} is not set");
        1
    }
}

fn idle(role: &str) -> ! {
    println!("{role} {} started", hostname());
    let mut n = 0u64;
    loop {
        thread::sleep(Duration::from_secs(1));
        n += 1;
        if n.is_multiple_of(10) {
            println!("{role} still working ({n}s)");
        }
    }
}

/// Writes numbered lines of about 100 bytes to stdout at `rate` bytes a second
/// (`LOG_BYTES_PER_SEC`): a chatty app, for the tests of how the daemon copes with its log.
/// It writes through a descriptor of its own, not Rust's `Stdout`, whose lock it would
/// otherwise hold nearly all the time and starve the program's own lines (and its exit, which
/// flushes `Stdout`); each write is at most 4 KiB of whole lines, which a pipe keeps whole.
fn flood(rate: u64) {
    let mut out: Box<dyn Write> = match fs::OpenOptions::new().write(true).open("/proc/self/fd/1") {
        Ok(f) => Box::new(f),
        Err(_) => Box::new(std::io::stdout()),
    };
    let filler = "x".repeat(80);
    let start = std::time::Instant::now();
    let (mut n, mut written) = (0u64, 0u64);
    let mut batch = String::with_capacity(4096);
    loop {
        // Sleep while ahead of the rate.
        let due = rate.saturating_mul(start.elapsed().as_millis() as u64) / 1000;
        if written > due {
            thread::sleep(Duration::from_millis(10));
            continue;
        }
        batch.clear();
        for _ in 0..40 {
            n += 1;
            batch.push_str(&format!("flood {n:012} {filler}\n"));
        }
        written += batch.len() as u64;
        if out.write_all(batch.as_bytes()).is_err() {
            return;
        }
    }
}

fn watch_signals() {
    let mut signals = Signals::new([SIGTERM, SIGINT]).expect("signal handlers install");
    thread::spawn(move || {
        for sig in signals.forever() {
            if env::var("IGNORE_SIGTERM").as_deref() == Ok("1") {
                println!("received signal {sig}, ignoring it as IGNORE_SIGTERM asks");
                continue;
            }
            if let Some(d) = env_ms("STOP_DELAY_MS") {
                thread::sleep(d);
            }
            println!("received signal {sig}, exiting");
            process::exit(0);
        }
    });
}

fn hostname() -> String {
    fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

struct Info {
    version: String,
    instance: String,
    healthz_fail: bool,
    /// `/healthz` fails once this instant has passed (`HEALTHZ_FAIL_AFTER_MS`).
    healthz_fail_at: Option<std::time::Instant>,
}

fn serve() {
    let version =
        fs::read_to_string(env::var("VERSION_FILE").unwrap_or_else(|_| "/VERSION".into()))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
    let info = Arc::new(Info {
        version,
        instance: hostname(),
        healthz_fail: env::var("HEALTHZ_FAIL").as_deref() == Ok("1"),
        healthz_fail_at: env_ms("HEALTHZ_FAIL_AFTER_MS").map(|d| std::time::Instant::now() + d),
    });
    if let Some(d) = env_ms("READY_DELAY_MS") {
        thread::sleep(d);
    }
    let port = env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = TcpListener::bind(format!("0.0.0.0:{port}")).unwrap_or_else(|e| {
        eprintln!("cannot listen on port {port}: {e}");
        process::exit(2);
    });
    println!("hello {} listening on port {port}", info.version);
    for stream in listener.incoming().flatten() {
        let info = Arc::clone(&info);
        thread::spawn(move || {
            let _ = handle(stream, &info);
        });
    }
}

/// Serves one connection, keeping it alive across requests.
fn handle(stream: TcpStream, info: &Info) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let http10 = parts.next() == Some("HTTP/1.0");
        let mut length = 0usize;
        let mut close = http10;
        let mut headers = String::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            headers.push_str(header);
            headers.push('\n');
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = value.parse().unwrap_or(0),
                    "connection" if value.eq_ignore_ascii_case("close") => close = true,
                    "connection" if value.eq_ignore_ascii_case("keep-alive") => close = false,
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;

        let (status, text) = match (method, path.split('?').next().unwrap_or("")) {
            ("GET" | "HEAD", "/healthz")
                if info.healthz_fail
                    || info
                        .healthz_fail_at
                        .is_some_and(|t| std::time::Instant::now() >= t) =>
            {
                ("500 Internal Server Error", "unhealthy\n".to_string())
            }
            ("GET" | "HEAD", "/healthz") => ("200 OK", "ok\n".to_string()),
            ("GET" | "HEAD", "/headers") => ("200 OK", headers.clone()),
            ("POST", "/echo") => ("200 OK", String::from_utf8_lossy(&body).into_owned()),
            ("GET" | "HEAD", "/") => (
                "200 OK",
                format!("hello from {} ({})\n", info.version, info.instance),
            ),
            _ => ("404 Not Found", "not found\n".to_string()),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Version: {}\r\nX-Instance: {}\r\n{}\r\n",
            text.len(),
            info.version,
            info.instance,
            if close { "Connection: close\r\n" } else { "" },
        );
        out.write_all(response.as_bytes())?;
        if method != "HEAD" {
            out.write_all(text.as_bytes())?;
        }
        out.flush()?;
        if close {
            return Ok(());
        }
    }
}
