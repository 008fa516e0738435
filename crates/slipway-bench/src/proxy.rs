//! Benchmark 2b: what the ingress costs. The same loads, a heavy one and then a paced moderate
//! one, against one instance of the example app, directly on its published port, through
//! Slipway's ingress, through nginx, and at the container's own address (what Docker's
//! publishing of the port costs the others).

use std::net::SocketAddr;
use std::time::Duration;

use crate::cpu;
use crate::load::{self, LoadReport, LoadSpec, Target};
use crate::nginx;
use crate::report::{Section, Table, Verdict};
use crate::setup::{Bench, image_source, web_spec};
use crate::stats::{median_f64, thousands};

/// Targets: the ingress keeps this share of the direct throughput, adds less than this p99.
const MIN_SHARE: f64 = 0.85;
const MAX_ADDED_P99_MS: f64 = 1.0;
const WARM_UP: Duration = Duration::from_millis(500);
/// The moderate load: this many connections, each paced to this many requests per second.
const MODERATE_CONNECTIONS: usize = 8;
const MODERATE_RATE: f64 = 250.0;
/// How long each path is loaded in one round of the moderate load.
const MODERATE_ROUND: Duration = Duration::from_secs(1);
const MAX_REQUESTS: u64 = 5_000_000;

/// The columns of both tables: one row a path.
const COLUMNS: [&str; 9] = [
    "path",
    "req/s, median (min–max)",
    "of direct",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "p99 added",
    "proxy CPU µs/request",
    "failed",
];

/// Whose CPU time is the proxy's.
#[derive(Clone, Copy)]
enum Meter {
    /// No proxy.
    None,
    /// The bench's own runtime threads, where the ingress runs.
    BenchThreads,
    /// A process and its children.
    Process(u32),
}

impl Meter {
    fn read(self) -> Duration {
        match self {
            Meter::None => Duration::ZERO,
            Meter::BenchThreads => cpu::bench_threads(),
            Meter::Process(pid) => cpu::process_tree(pid),
        }
    }
}

/// What one kind of load measured through one path, over the rounds.
#[derive(Default)]
struct Measured {
    /// Successful requests per second, per round.
    throughputs: Vec<f64>,
    load: LoadReport,
    /// The proxy's CPU time during the measured loads.
    proxy_cpu: Duration,
}

impl Measured {
    /// The proxy's CPU time per successful request, in microseconds.
    fn cpu_per_request_us(&self) -> f64 {
        let ok = self.load.total - self.load.failed;
        if ok == 0 {
            return 0.0;
        }
        self.proxy_cpu.as_secs_f64() * 1e6 / ok as f64
    }

    fn throughput(&self) -> f64 {
        median_f64(&self.throughputs)
    }

    fn p99(&self) -> f64 {
        self.load.latency_ms(99.0)
    }
}

/// One way to reach the instance, and what was measured through it.
struct Path {
    name: &'static str,
    target: Result<Target, String>,
    meter: Meter,
    /// As many requests as the path answers.
    heavy: Measured,
    /// A paced load well below what any path can take.
    moderate: Measured,
}

impl Path {
    fn new(name: &'static str, target: Result<Target, String>, meter: Meter) -> Path {
        Path {
            name,
            target,
            meter,
            heavy: Measured::default(),
            moderate: Measured::default(),
        }
    }

    fn cpu_per_request_us(&self) -> f64 {
        self.heavy.cpu_per_request_us()
    }

    fn throughput(&self) -> f64 {
        self.heavy.throughput()
    }

    fn measured(&self) -> bool {
        !self.heavy.throughputs.is_empty()
    }
}

pub async fn run(bench: &Bench) -> anyhow::Result<(Section, Vec<Verdict>)> {
    let (paths, nginx_version) = measure(bench).await?;
    Ok(write(bench, &paths, &nginx_version))
}

async fn measure(bench: &Bench) -> anyhow::Result<(Vec<Path>, String)> {
    let (repository, tag) = bench.image_parts();
    let name = slipway_testkit::unique("bench-proxy");
    let app = bench
        .create_app(&web_spec(&name, &image_source(repository, tag), 1, 0))
        .await?;
    let instances = bench.web_instances(&app).await?;
    let Some((container, direct)) = instances.first() else {
        anyhow::bail!("the app has no instance");
    };
    let own = own_address(bench, container).await;
    let (nginx, nginx_version) = match start_nginx(*direct).await {
        Ok((n, v)) => (Ok(n), v),
        Err(e) => (Err(format!("{e:#}")), String::new()),
    };
    let nginx_meter = nginx
        .as_ref()
        .ok()
        .and_then(nginx::Nginx::pid)
        .map_or(Meter::None, Meter::Process);
    let mut paths = vec![
        Path::new(
            "direct to the instance",
            Ok(Target::at(*direct, "localhost")),
            Meter::None,
        ),
        Path::new(
            "through Slipway's ingress",
            Ok(Target::local(bench.ingress.port(), &bench.host(&name))),
            Meter::BenchThreads,
        ),
        Path::new(
            "through nginx",
            nginx
                .as_ref()
                .map(|n| Target::local(n.port, "localhost"))
                .map_err(Clone::clone),
            nginx_meter,
        ),
        Path::new(
            "direct to the container's own address",
            own.map(|addr| Target::at(addr, "localhost")),
            Meter::None,
        ),
    ];
    let s = &bench.settings;
    let mut result = rounds(bench, &mut paths, false, s.proxy_rounds, s.proxy_duration).await;
    if result.is_ok() {
        let (count, duration) = moderate_rounds(bench);
        result = rounds(bench, &mut paths, true, count, duration).await;
    }
    if let Ok(n) = nginx {
        n.stop().await;
    }
    result?;
    Ok((paths, nginx_version))
}

/// The instance's port at the container's own address on Docker's bridge, past Docker's port
/// proxy, when this host reaches it.
async fn own_address(bench: &Bench, container: &str) -> Result<SocketAddr, String> {
    let inspect = bench
        .docker
        .inspect_container(container, None)
        .await
        .map_err(|e| format!("cannot inspect the instance: {e}"))?;
    let ip = inspect
        .network_settings
        .and_then(|n| n.networks)
        .into_iter()
        .flatten()
        .find_map(|(_, n)| n.ip_address.filter(|ip| !ip.is_empty()))
        .ok_or("the instance has no address of its own")?;
    let addr = SocketAddr::new(
        ip.parse().map_err(|e| format!("its address {ip}: {e}"))?,
        8080,
    );
    tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("{addr} cannot be reached from this host"))?
        .map_err(|e| format!("{addr} cannot be reached from this host: {e}"))?;
    Ok(addr)
}

async fn start_nginx(upstream: SocketAddr) -> anyhow::Result<(nginx::Nginx, String)> {
    let version = nginx::ensure_installed().await?;
    Ok((nginx::start(upstream).await?, version))
}

/// The moderate load's rounds: as long in all as the heavy load's, cut into rounds of
/// [`MODERATE_ROUND`], so that a passing disturbance of the machine (a daemon waking up, a
/// burst of disk writes) falls on every path alike instead of on whichever one was being
/// loaded; a tail percentile takes such a disturbance in whole.
fn moderate_rounds(bench: &Bench) -> (usize, Duration) {
    let s = &bench.settings;
    let per_round = (s.proxy_duration.as_secs_f64() / MODERATE_ROUND.as_secs_f64())
        .round()
        .max(1.0) as usize;
    (s.proxy_rounds * per_round, MODERATE_ROUND)
}

/// Loads every path once per round for `duration`, in a different order each round: as fast
/// as it answers, or `paced` at the moderate load.
async fn rounds(
    bench: &Bench,
    paths: &mut [Path],
    paced: bool,
    count: usize,
    duration: Duration,
) -> anyhow::Result<()> {
    let s = &bench.settings;
    let n = paths.len();
    for round in 0..count {
        for i in 0..n {
            let path = &mut paths[(i + round) % n];
            let Ok(target) = path.target.clone() else {
                continue;
            };
            let spec = LoadSpec {
                target,
                connections: if paced {
                    MODERATE_CONNECTIONS
                } else {
                    s.proxy_connections
                },
                warm_up: WARM_UP,
                max_duration: duration,
                max_requests: MAX_REQUESTS,
                rate_per_connection: paced.then_some(MODERATE_RATE),
                reconnect: false,
            };
            let running = load::start(spec);
            tokio::time::sleep(WARM_UP).await;
            let cpu_before = path.meter.read();
            tokio::time::sleep(duration).await;
            let r = running.finish().await?;
            let cpu = path.meter.read().saturating_sub(cpu_before);
            println!(
                "    {} round {}{}: {:.0} req/s, p99 {:.2} ms, {} failed",
                path.name,
                round + 1,
                if paced { " (moderate)" } else { "" },
                r.throughput(),
                r.latency_ms(99.0),
                r.failed
            );
            let m = if paced {
                &mut path.moderate
            } else {
                &mut path.heavy
            };
            m.proxy_cpu += cpu;
            m.throughputs.push(r.throughput());
            m.load.merge(r);
        }
    }
    Ok(())
}

fn write(bench: &Bench, paths: &[Path], nginx_version: &str) -> (Section, Vec<Verdict>) {
    let s = &bench.settings;
    let [direct, ingress, nginx, own] = paths else {
        unreachable!("four paths are measured")
    };
    let mut sec = Section::new("2b. What the ingress costs");
    sec.text(format!(
        "First a heavy load: {c} clients, each on its own kept-alive HTTP/1.1 connection, send \
         `GET /` one after \
         another for {d} s to one instance of the example app, {r} round(s), each round \
         loading the four paths one after another in a rotating order (each load's first \
         {w} ms, while it connects, is not recorded; each is bounded at {maxr} requests): \
         **direct** — the instance's port as Slipway publishes it, on its app network's \
         gateway ({direct_addr}), which Docker's NAT rules forward to the container; \
         **Slipway's ingress** — `slipway_ingress::serve` on 127.0.0.1 routing by `Host` to \
         that same published port, each client connection with connections of its own to the \
         instance, kept alive, that carry one request at a time; **nginx** {nv}— Debian's \
         package, 2 worker processes, `proxy_pass` to the same port through an upstream with \
         `keepalive 64`, `proxy_http_version 1.1` and an empty `Connection` header, no access \
         log; **the container's own address** — the same instance at its address on the app's \
         network. The first three go through Docker's port publishing, as Slipway does: the \
         last is not a way Slipway reaches instances (Docker gives a freed container address \
         to the next container that starts, so a request that raced an instance's death could \
         reach another container), but the measure of what the publishing costs the others. \
         The load generator runs in the same process on \
         threads of its own, so every path shares the machine's {cores} cores with it. \
         Throughput is the median over the rounds of successful requests per second; \
         latencies (ms) pool every round's successful requests. *Proxy CPU* is the proxy's \
         own CPU time (user + system, read from `/proc`) during the measured loads divided by \
         the requests it served: for the ingress, its own threads (one per CPU) and the bench's \
         runtime threads (the engine is idle meanwhile; the load generator's threads are not \
         counted), for nginx its master and workers.",
        c = s.proxy_connections,
        direct_addr = direct
            .target
            .as_ref()
            .map(|t| t.addr.to_string())
            .unwrap_or_default(),
        d = s.proxy_duration.as_secs(),
        r = s.proxy_rounds,
        cores = cpu::cores(),
        w = WARM_UP.as_millis(),
        maxr = thousands(MAX_REQUESTS),
        nv = if nginx_version.is_empty() {
            String::new()
        } else {
            format!("({nginx_version}) ")
        },
    ));
    let mut t = Table::new(&COLUMNS);
    for p in paths {
        t.row(path_row(p, direct, |p| &p.heavy));
    }
    sec.table(t);
    let (moderate_count, moderate_duration) = moderate_rounds(bench);
    sec.text(format!(
        "Then a moderate load: {mc} clients, each sending one request every {iv:.0} ms \
         ({total:.0} requests per second in all, a fraction of what every path answers), so \
         that the latencies are the proxies' own and not time spent queueing for a CPU. It \
         loads each path for as long in all as the heavy load, but in {n} rounds of {rd} s, \
         the paths taking turns in a rotating order as above: a passing disturbance of the \
         machine then falls on every path alike, where in long rounds it would fall \
         whole on one path's tail. Latencies pool every round's successful requests.",
        n = moderate_count,
        rd = moderate_duration.as_secs_f64(),
        mc = MODERATE_CONNECTIONS,
        iv = 1000.0 / MODERATE_RATE,
        total = MODERATE_RATE * MODERATE_CONNECTIONS as f64,
    ));
    let mut t = Table::new(&COLUMNS);
    for p in paths {
        t.row(path_row(p, direct, |p| &p.moderate));
    }
    sec.table(t);

    let share = ingress.throughput() / direct.throughput();
    let added = ingress.moderate.p99() - direct.moderate.p99();
    let share_met = share >= MIN_SHARE;
    let added_met = added < MAX_ADDED_P99_MS;
    let ahead = nginx
        .measured()
        .then(|| ingress.throughput() > nginx.throughput());
    let nginx_text = match ahead {
        None => format!(
            "nginx could not be measured: {}",
            nginx.target.as_ref().err().cloned().unwrap_or_default()
        ),
        Some(a) => format!(
            "ahead of nginx (more requests per second under the heavy load) — {}: {:.0} \
             against {:.0} req/s; p99 {:.2} against {:.2} ms under the heavy load, {:.2} \
             against {:.2} ms under the moderate one",
            if a { "met" } else { "missed" },
            ingress.throughput(),
            nginx.throughput(),
            ingress.heavy.p99(),
            nginx.heavy.p99(),
            ingress.moderate.p99(),
            nginx.moderate.p99(),
        ),
    };
    sec.text(format!(
        "Targets: the ingress keeps at least {:.0}% of the direct throughput under the heavy \
         load — {}: {:.0}%; it adds less than {MAX_ADDED_P99_MS:.0} ms at p99 under the \
         moderate load — {}: {added:+.2} ms; {nginx_text}.",
        MIN_SHARE * 100.0,
        if share_met { "met" } else { "missed" },
        share * 100.0,
        if added_met { "met" } else { "missed" },
    ));
    if nginx.measured() {
        // What one request costs the whole machine on each path: its cores over the requests
        // it answered per second.
        let cores = cpu::cores() as f64;
        let machine = |p: &Path| cores * 1e6 / p.throughput();
        let direct_cost = machine(direct);
        let added = |p: &Path| machine(p) - direct_cost;
        let needed = direct_cost * (1.0 / MIN_SHARE - 1.0);
        let within = match (added(ingress) < needed, added(nginx) < needed) {
            (true, true) => "both do",
            (true, false) => "the ingress does, nginx does not",
            (false, true) => "nginx does, the ingress does not",
            (false, false) => "neither does",
        };
        sec.text(format!(
            "Under the heavy load the machine is bound by CPU: the load generator, the proxy \
             and the app share {cores:.0} cores, so a proxy keeps D / (D + A) of the direct \
             throughput, where D is what a request costs the machine directly and A what the \
             proxy adds to it. Directly a request costs about {direct_cost:.0} µs of CPU \
             ({cores:.0} cores over {direct_rps:.0} req/s); through the ingress {ci:.0} µs \
             ({ai:+.0}); through nginx {cn:.0} µs ({an:+.0}). Both give every request a \
             connection to the instance to itself while it is answered, so each adds a second \
             connection's kernel work to every request (two more sends and two more receives) \
             and the switches to and from the proxy's own threads: keeping {goal:.0}% that way \
             would take a proxy that adds under {needed:.0} µs in all, and {within}. The \
             ingress's own threads spend {pi:.1} µs per request, nginx's processes {pn:.1} µs; \
             that includes kernel work the direct path does too, elsewhere (delivering each \
             request to the app through Docker's NAT rules is done by whoever writes it: the \
             load generator directly, the proxy otherwise).",
            direct_rps = direct.throughput(),
            ci = machine(ingress),
            ai = added(ingress),
            cn = machine(nginx),
            an = added(nginx),
            pi = ingress.cpu_per_request_us(),
            pn = nginx.cpu_per_request_us(),
            goal = MIN_SHARE * 100.0,
        ));
        if own.measured() {
            let own_cost = machine(own);
            sec.text(format!(
                "At the container's own address a request costs the machine about \
                 {own_cost:.0} µs ({:.0} req/s): Docker's publishing of the port, which every \
                 path but that one crosses, takes {}.",
                own.throughput(),
                if direct_cost > own_cost {
                    format!(
                        "about {:.0} µs of the {direct_cost:.0}",
                        direct_cost - own_cost
                    )
                } else {
                    "nothing this run can tell apart".into()
                },
            ));
        }
    }
    let verdicts = vec![
        Verdict::new(
            "2b. Ingress throughput",
            &format!("≥ {:.0}% of direct", MIN_SHARE * 100.0),
            format!("{:.0}%", share * 100.0),
            Some(share_met),
        ),
        Verdict::new(
            "2b. Ingress added p99 latency",
            &format!("< {MAX_ADDED_P99_MS:.0} ms"),
            format!("{added:+.2} ms"),
            Some(added_met),
        ),
        Verdict::new(
            "2b. Ingress against nginx",
            "more req/s than nginx",
            if nginx.measured() {
                format!(
                    "{:.0} vs {:.0} req/s",
                    ingress.throughput(),
                    nginx.throughput()
                )
            } else {
                "not measured".into()
            },
            ahead,
        ),
    ];
    (sec, verdicts)
}

fn path_row(p: &Path, direct: &Path, which: fn(&Path) -> &Measured) -> Vec<String> {
    if let Err(why) = &p.target {
        let mut row = vec![p.name.into(), format!("not measured: {why}")];
        row.resize(COLUMNS.len(), String::new());
        return row;
    }
    let (m, d) = (which(p), which(direct));
    let min = m.throughputs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = m.throughputs.iter().copied().fold(0.0, f64::max);
    vec![
        p.name.into(),
        format!("{:.0} ({min:.0}–{max:.0})", m.throughput()),
        format!("{:.0}%", m.throughput() / d.throughput() * 100.0),
        format!("{:.2}", m.load.latency_ms(50.0)),
        format!("{:.2}", m.load.latency_ms(90.0)),
        format!("{:.2}", m.p99()),
        format!("{:+.2}", m.p99() - d.p99()),
        match p.meter {
            Meter::None => "—".into(),
            _ => format!("{:.1}", m.cpu_per_request_us()),
        },
        thousands(m.load.failed),
    ]
}
