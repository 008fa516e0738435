//! Benchmark 2a: requests through Slipway's ingress under heavy load (hundreds of kept-alive
//! connections) while a service is restarted and force-rebuilt, beside the same load while its
//! containers are restarted one by one with `docker restart` behind the same proxy.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use slipway_testkit::HelloRepo;

use crate::cmd::Cmd;
use crate::load::{self, LoadReport, LoadSpec, Target};
use crate::netstat;
use crate::report::{Section, Table, Verdict};
use crate::setup::{Bench, git_source, web_spec};
use crate::stats::{Timings, thousands};

/// How long the load runs unrecorded first, while its connections are made.
const WARM_UP: Duration = Duration::from_secs(1);
/// How long the recorded load runs before an operation starts and after it ends.
const MARGIN: Duration = Duration::from_millis(300);
/// The bounds of every load: it never runs longer, nor sends more.
const MAX_LOAD: Duration = Duration::from_secs(120);
const MAX_REQUESTS: u64 = 5_000_000;
/// How long the load runs with no operation, for reference.
const IDLE: Duration = Duration::from_secs(2);

/// One operation repeated under load: its durations, the pooled requests, and the SYNs the
/// host sent again meanwhile.
#[derive(Default)]
struct Measured {
    times: Timings,
    load: LoadReport,
    syn_retransmits: u64,
}

impl Measured {
    fn add(&mut self, (took, load, syns): (Duration, LoadReport, u64)) {
        self.times.push(took);
        self.load.merge(load);
        self.syn_retransmits += syns;
    }
}

struct Figures {
    idle: Measured,
    restart: Measured,
    rebuild: Measured,
    docker_restart: Measured,
}

pub async fn run(bench: &Bench) -> anyhow::Result<(Section, Vec<Verdict>)> {
    let figures = measure(bench).await?;
    Ok(write(bench, &figures))
}

async fn measure(bench: &Bench) -> anyhow::Result<Figures> {
    let repo = new_repo().await?;
    let name = slipway_testkit::unique("bench-load");
    let app = bench
        .create_app(&web_spec(&name, &git_source(&repo.url()), 3, 5))
        .await?;
    let target = Target::local(bench.ingress.port(), &bench.host(&name));
    let load = LoadSpec {
        target: target.clone(),
        connections: bench.settings.load_connections,
        warm_up: WARM_UP,
        max_duration: MAX_LOAD,
        max_requests: MAX_REQUESTS,
        rate_per_connection: None,
        reconnect: false,
    };
    let mut f = Figures {
        idle: Measured::default(),
        restart: Measured::default(),
        rebuild: Measured::default(),
        docker_restart: Measured::default(),
    };
    for rep in 0..bench.settings.load_reps {
        f.idle.add(under_load(&load, idle()).await?);

        let measured = under_load(&load, bench.timed_restart(&app)).await?;
        progress("restart", rep, &measured);
        f.restart.add(measured);

        let version = format!("v{}", rep + 2);
        commit(&repo, &version).await?;
        let rebuild = async {
            let started = Instant::now();
            bench.timed_deployment(&app, true).await?;
            Ok(started.elapsed())
        };
        let measured = under_load(&load, rebuild).await?;
        progress("force rebuild", rep, &measured);
        f.rebuild.add(measured);
        let body = load::get(&target).await?;
        if !body.starts_with(&format!("hello from {version} ")) {
            bail!("after the force rebuild the app answers {body:?}, not {version}");
        }

        let measured = under_load(&load, docker_restart(bench, &app)).await?;
        progress("docker restart", rep, &measured);
        f.docker_restart.add(measured);
    }
    Ok(f)
}

fn progress(what: &str, rep: usize, (took, r, syns): &(Duration, LoadReport, u64)) {
    println!(
        "    {what} {} under load: {:.2} s, {} requests, {} failed, p99 {:.1} ms, \
         max {:.0} ms, {syns} SYNs resent",
        rep + 1,
        took.as_secs_f64(),
        r.total,
        r.failed,
        r.latency_ms(99.0),
        r.max_latency_ms(),
    );
}

/// Commits a new `VERSION` to the repository.
pub async fn commit(repo: &Arc<HelloRepo>, version: &str) -> anyhow::Result<String> {
    let (repo, version) = (Arc::clone(repo), version.to_string());
    Ok(tokio::task::spawn_blocking(move || repo.commit_version(&version)).await??)
}

/// A new repository of the example app, with `VERSION` v1.
pub async fn new_repo() -> anyhow::Result<Arc<HelloRepo>> {
    let repo = tokio::task::spawn_blocking(|| HelloRepo::new("v1")).await??;
    Ok(Arc::new(repo))
}

/// No operation: the steady load's reference.
async fn idle() -> anyhow::Result<Duration> {
    tokio::time::sleep(IDLE).await;
    Ok(IDLE)
}

/// Runs `operation` while the load runs, recorded from `MARGIN` before it until `MARGIN`
/// after it; returns how long it took, the load's report and the SYNs the host sent again
/// meanwhile.
pub async fn under_load(
    spec: &LoadSpec,
    operation: impl Future<Output = anyhow::Result<Duration>>,
) -> anyhow::Result<(Duration, LoadReport, u64)> {
    let running = load::start(spec.clone());
    tokio::time::sleep(spec.warm_up).await;
    let syns = netstat::syn_retransmits();
    tokio::time::sleep(MARGIN).await;
    let result = operation.await;
    tokio::time::sleep(MARGIN).await;
    let report = running.finish().await?;
    Ok((
        result?,
        report,
        netstat::syn_retransmits().saturating_sub(syns),
    ))
}

/// Restarts the app's containers one by one with `docker restart`; after each, routes the
/// ingress to the address Docker published it on this time (the die event took it out).
async fn docker_restart(bench: &Bench, app: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let ingress = bench.engine.ingress();
    for (id, _) in bench.web_instances(app).await? {
        Cmd::new("docker")
            .args(["restart", "-t", "5", &id])
            .run()
            .await?;
        let (_, addr) = bench
            .web_instances(app)
            .await?
            .into_iter()
            .find(|(i, _)| *i == id)
            .with_context(|| format!("container {id} publishes no port for 8080"))?;
        ingress.eject(&id);
        ingress.add(app, "web", &id, addr);
    }
    Ok(started.elapsed())
}

fn row(what: &str, m: &Measured, timed: bool) -> Vec<String> {
    let r = &m.load;
    vec![
        what.to_string(),
        if timed {
            m.times.summary_secs()
        } else {
            "—".to_string()
        },
        thousands(r.total),
        thousands(r.failed),
        format!("{:.0}", r.throughput()),
        format!("{:.1}", r.latency_ms(50.0)),
        format!("{:.1}", r.latency_ms(90.0)),
        format!("{:.1}", r.latency_ms(99.0)),
        format!("{:.1}", r.max_latency_ms()),
        thousands(m.syn_retransmits),
    ]
}

fn write(bench: &Bench, f: &Figures) -> (Section, Vec<Verdict>) {
    let s = &bench.settings;
    let mut sec = Section::new("2a. No dropped request under heavy load");
    sec.text(format!(
        "{c} clients, each on its own kept-alive HTTP/1.1 connection to Slipway's ingress on \
         127.0.0.1, send `GET /` one after another to a service of 3 instances of the example \
         app (checked every 50 ms, drained for at most 5 s before a 5 s grace period). Each \
         load makes its connections during an unrecorded {warm} s, is recorded from {margin} \
         ms before the operation until {margin} ms after it ends, then stops (every load is \
         also bounded at {max} s and {maxr} requests); each operation is \
         repeated {n} times and the requests of its repetitions are pooled. A request fails \
         when it gets no answer, an error, or a status other than 2xx. Latencies are those of \
         the successful requests, in milliseconds. **Slipway restart**: `Engine::restart` \
         until ACTIVE. **Slipway force rebuild**: a new commit (a new `VERSION`), then \
         `Engine::create_deployment(app, force_build = true)` until ACTIVE — fetch, build, \
         roll out; the new version is checked to answer afterwards. **docker restart**: the \
         same containers restarted one by one with `docker restart -t 5`, behind the same \
         ingress; Slipway takes a container out of the pool when Docker reports it died, and \
         the bench puts it back on the port Docker published it on after the restart. The \
         first row is the same load with nothing happening for {idle} s. *SYNs resent* is the \
         host's count of connection attempts sent again while the load was recorded \
         (`TCPSynRetrans`): TCP resends an unanswered SYN after 1 s, so a request that waited \
         for one takes just over a second.",
        c = s.load_connections,
        warm = WARM_UP.as_secs(),
        margin = MARGIN.as_millis(),
        max = MAX_LOAD.as_secs(),
        idle = IDLE.as_secs(),
        maxr = thousands(MAX_REQUESTS),
        n = s.load_reps,
    ));
    let mut t = Table::new(&[
        "during",
        "operation time, median (min–max)",
        "requests",
        "failed",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "SYNs resent",
    ]);
    t.row(row("nothing (steady load)", &f.idle, false));
    t.row(row("Slipway restart", &f.restart, true));
    t.row(row("Slipway force rebuild", &f.rebuild, true));
    t.row(row("`docker restart`, one by one", &f.docker_restart, true));
    sec.table(t);
    let errors: Vec<String> = [
        ("restart", &f.restart.load),
        ("force rebuild", &f.rebuild.load),
        ("docker restart", &f.docker_restart.load),
    ]
    .iter()
    .filter(|(_, r)| !r.errors.is_empty())
    .map(|(what, r)| format!("{what}: {}", r.errors.join("; ")))
    .collect();
    if !errors.is_empty() {
        sec.text(format!("Failures seen: {}.", errors.join(" — ")));
    }
    sec.text(
        "The ingress hides most of what `docker restart` does to requests: it sends a request \
         that could not be sent, or whose connection closed before any answer, once more to \
         another instance (idempotent methods, small bodies), and it takes an instance out of \
         the pool as soon as Docker reports that it died. What it cannot hide is an answer cut \
         off half-way when the app exits on SIGTERM with requests in flight, and the pool \
         being one instance short while a container restarts. Slipway's rollout drains an \
         instance (no new requests, the ones in flight finish) before its stop signal, and \
         starts its replacement before that.",
    );
    let failed = f.restart.load.failed + f.rebuild.load.failed;
    let met = failed == 0;
    sec.text(format!(
        "Target: no failed request during Slipway's restarts and force rebuilds — {}: {} of \
         {} requests failed. With `docker restart` behind the same proxy, {} of {} failed.",
        if met { "met" } else { "missed" },
        thousands(failed),
        thousands(f.restart.load.total + f.rebuild.load.total),
        thousands(f.docker_restart.load.failed),
        thousands(f.docker_restart.load.total),
    ));
    let verdict = Verdict::new(
        "2a. Failed requests, restart and force rebuild under heavy load",
        "0",
        format!(
            "{} of {}",
            thousands(failed),
            thousands(f.restart.load.total + f.rebuild.load.total)
        ),
        Some(met),
    );
    (sec, vec![verdict])
}
