//! Benchmark 2d: what HTTPS costs at the ingress. The same instance of the example app through
//! Slipway's ingress over plain HTTP (the baseline) and over HTTPS (TLS 1.3, the ingress
//! terminating it with a certificate picked by SNI): first clients on kept-alive connections,
//! then clients that open a new connection for every request, where the handshake is paid
//! each time, with TLS session resumption and without it.

use std::sync::Arc;
use std::time::Duration;

use crate::cpu;
use crate::load::{self, LoadReport, LoadSpec, Target, Tls};
use crate::report::{Section, Table, Verdict};
use crate::setup::{Bench, image_source, web_spec};
use crate::stats::{median_f64, thousands};

const WARM_UP: Duration = Duration::from_millis(500);
const MAX_REQUESTS: u64 = 5_000_000;
/// New connections: this many clients, each paced to this many requests per second (a load
/// every path answers, and that leaves the machine's ephemeral ports to spare: every client
/// connection also opens one of the ingress's own to the instance, and each closed one waits
/// a minute in TIME_WAIT).
const RECONNECT_CONNECTIONS: usize = 8;
const RECONNECT_RATE: f64 = 50.0;
const RECONNECT_ROUND: Duration = Duration::from_secs(1);

/// One way to reach the instance through the ingress, and what it measured.
struct Path {
    name: &'static str,
    target: Target,
    reconnect: bool,
    throughputs: Vec<f64>,
    load: LoadReport,
    cpu: Duration,
}

impl Path {
    fn new(name: &'static str, target: Target, reconnect: bool) -> Path {
        Path {
            name,
            target,
            reconnect,
            throughputs: Vec::new(),
            load: LoadReport::default(),
            cpu: Duration::ZERO,
        }
    }

    fn cpu_per_request_us(&self) -> f64 {
        let ok = self.load.total - self.load.failed;
        if ok == 0 {
            return 0.0;
        }
        self.cpu.as_secs_f64() * 1e6 / ok as f64
    }
}

pub async fn run(bench: &Bench) -> anyhow::Result<(Section, Vec<Verdict>)> {
    let (repository, tag) = bench.image_parts();
    let name = slipway_testkit::unique("bench-https");
    bench
        .create_app(&web_spec(&name, &image_source(repository, tag), 1, 0))
        .await?;
    let host = bench.host(&name);
    // A certificate for the app's host from an authority of the run's own, which the clients
    // trust, in a directory the ingress reads.
    let authority = slipway_testkit::Authority::new();
    let certs_dir = tempfile::tempdir()?;
    authority.issue(certs_dir.path(), "bench", &[&host], 0o600)?;
    let certs = slipway_ingress::Certificates::new(Some(certs_dir.path().to_path_buf()), false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let https = listener.local_addr()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn(slipway_ingress::serve_tls(
        bench.engine.ingress(),
        listener,
        certs,
        stop.clone(),
    ));
    let tls = |resume: bool| -> anyhow::Result<Tls> {
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(authority.pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        if !resume {
            config.resumption = rustls::client::Resumption::disabled();
        }
        Ok(Tls {
            config: Arc::new(config),
            name: rustls::pki_types::ServerName::try_from(host.clone())?,
        })
    };
    let plain = Target::local(bench.ingress.port(), &host);
    let secure = Target::at(https, &host);
    let mut kept = vec![
        Path::new("plain HTTP", plain.clone(), false),
        Path::new("HTTPS (TLS 1.3)", secure.clone().over(tls(true)?), false),
    ];
    let mut fresh = vec![
        Path::new("plain HTTP", plain, true),
        Path::new(
            "HTTPS, sessions resumed",
            secure.clone().over(tls(true)?),
            true,
        ),
        Path::new("HTTPS, full handshakes", secure.over(tls(false)?), true),
    ];
    let s = &bench.settings;
    let mut result = rounds(&mut kept, s.proxy_rounds, s.proxy_duration, bench).await;
    if result.is_ok() {
        let count = s.proxy_rounds.max(2);
        result = rounds(&mut fresh, count, RECONNECT_ROUND, bench).await;
    }
    stop.cancel();
    let _ = served.await;
    result?;
    Ok(write(bench, &kept, &fresh))
}

/// Loads every path once per round for `duration`, in a rotating order.
async fn rounds(
    paths: &mut [Path],
    count: usize,
    duration: Duration,
    bench: &Bench,
) -> anyhow::Result<()> {
    let n = paths.len();
    for round in 0..count {
        for i in 0..n {
            let path = &mut paths[(i + round) % n];
            let spec = LoadSpec {
                target: path.target.clone(),
                connections: if path.reconnect {
                    RECONNECT_CONNECTIONS
                } else {
                    bench.settings.proxy_connections
                },
                warm_up: WARM_UP,
                max_duration: duration,
                max_requests: MAX_REQUESTS,
                rate_per_connection: path.reconnect.then_some(RECONNECT_RATE),
                reconnect: path.reconnect,
            };
            let running = load::start(spec);
            tokio::time::sleep(WARM_UP).await;
            let before = cpu::bench_threads();
            tokio::time::sleep(duration).await;
            let r = running.finish().await?;
            path.cpu += cpu::bench_threads().saturating_sub(before);
            println!(
                "    {}{} round {}: {:.0} req/s, p99 {:.2} ms, {} failed",
                path.name,
                if path.reconnect {
                    " (new connections)"
                } else {
                    ""
                },
                round + 1,
                r.throughput(),
                r.latency_ms(99.0),
                r.failed
            );
            path.throughputs.push(r.throughput());
            path.load.merge(r);
        }
    }
    Ok(())
}

fn row(p: &Path, base: &Path) -> Vec<String> {
    let min = p.throughputs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = p.throughputs.iter().copied().fold(0.0, f64::max);
    let resumed = if p.load.handshakes == 0 {
        "—".to_string()
    } else {
        format!(
            "{:.0}% of {}",
            p.load.resumed as f64 * 100.0 / p.load.handshakes as f64,
            thousands(p.load.handshakes)
        )
    };
    vec![
        p.name.to_string(),
        format!("{:.0} ({min:.0}–{max:.0})", median_f64(&p.throughputs)),
        format!("{:.2}", p.load.latency_ms(50.0)),
        format!("{:.2}", p.load.latency_ms(99.0)),
        format!(
            "{:+.2}",
            p.load.latency_ms(99.0) - base.load.latency_ms(99.0)
        ),
        format!("{:.1}", p.cpu_per_request_us()),
        resumed,
        thousands(p.load.failed),
    ]
}

const COLUMNS: [&str; 8] = [
    "path",
    "req/s, median (min–max)",
    "p50 ms",
    "p99 ms",
    "p99 added",
    "ingress CPU µs/request",
    "TLS sessions resumed",
    "failed",
];

fn write(bench: &Bench, kept: &[Path], fresh: &[Path]) -> (Section, Vec<Verdict>) {
    let s = &bench.settings;
    let mut sec = Section::new("2d. What HTTPS costs at the ingress");
    sec.text(format!(
        "One instance of the example app, through Slipway's ingress over plain HTTP (the \
         baseline) and over HTTPS: `slipway_ingress::serve_tls` on 127.0.0.1, TLS 1.3 with \
         the certificate its directory holds for the app's host (picked by SNI), HTTP/1.1 by \
         ALPN. The load generator runs in the same process on threads of its own, as in 2b. \
         First {c} clients, each on its own kept-alive connection, send `GET /` one after \
         another for {d} s, {r} round(s), the two paths taking turns (each load's first {w} ms, \
         while it connects, is not recorded). *Ingress CPU* is the CPU time of the ingress's \
         threads and the bench's runtime threads per request, as in 2b. A client's TLS \
         session cache keeps a few tickets per server, so of the connections opened at once \
         at the start of each round only some resume.",
        c = s.proxy_connections,
        d = s.proxy_duration.as_secs(),
        r = s.proxy_rounds,
        w = WARM_UP.as_millis(),
    ));
    let mut table = Table::new(&COLUMNS);
    for p in kept {
        table.row(row(p, &kept[0]));
    }
    sec.table(table);
    sec.text(format!(
        "Then clients that open a new connection for every request (its TCP connect and TLS \
         handshake counted in its latency): {c} clients, each paced to {rate:.0} requests per \
         second, in rounds of {d} s, the three paths taking turns. With resumption, each \
         client's TLS settings keep the session tickets the ingress gives, so that a new \
         connection resumes (TLS 1.3, no certificate sent or checked); without it every \
         connection makes a full handshake. The last column counts the handshakes that \
         resumed. Every client connection also costs the ingress a connection of its own to \
         the instance (a client connection's connections to instances are never shared), \
         which the ingress CPU column includes.",
        c = RECONNECT_CONNECTIONS,
        rate = RECONNECT_RATE,
        d = RECONNECT_ROUND.as_secs(),
    ));
    let mut table = Table::new(&COLUMNS);
    for p in fresh {
        table.row(row(p, &fresh[0]));
    }
    sec.table(table);
    let share = median_f64(&kept[1].throughputs) / median_f64(&kept[0].throughputs).max(1.0);
    let failed: u64 = kept.iter().chain(fresh).map(|p| p.load.failed).sum();
    let resumed = &fresh[1].load;
    let verdicts = vec![
        Verdict::new(
            "2d. HTTPS at the ingress",
            "no request fails over HTTPS",
            format!("{failed} failed"),
            Some(failed == 0),
        ),
        Verdict::new(
            "2d. HTTPS at the ingress",
            "new connections resume their TLS sessions",
            format!(
                "{} of {} handshakes resumed; kept-alive HTTPS at {:.0}% of plain HTTP's throughput",
                thousands(resumed.resumed),
                thousands(resumed.handshakes),
                share * 100.0
            ),
            Some(resumed.handshakes > 0 && resumed.resumed * 10 >= resumed.handshakes * 9),
        ),
    ];
    (sec, verdicts)
}
