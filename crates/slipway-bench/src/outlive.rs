//! Benchmark 2c: a steady load through the ingress process of the real `slipway` binary while
//! the control plane dies, restarts and upgrades — the daemon killed and down for a while, the
//! daemon stopped and started from another binary, the daemon killed in the middle of a rolling
//! restart, the ingress handed over to a new process — beside the same load through an ingress
//! embedded in the daemon while that daemon is killed and started again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::query_parameters::ListContainersOptionsBuilder;
use serde_json::Value;
use slipway_testkit::HelloRepo;

use crate::daemon::{self, Daemon, IngressMode};
use crate::load::{self, LoadReport, LoadSpec, Target};
use crate::report::{Section, Table, Verdict};
use crate::setup::Bench;
use crate::stats::thousands;
use crate::traffic;

const TITLE: &str = "2c. Traffic while the control plane dies, restarts and upgrades";
/// The load: this many kept-alive connections, each paced to this many requests per second.
const CONNECTIONS: usize = 20;
const RATE_PER_CONNECTION: f64 = 150.0;
const WARM_UP: Duration = Duration::from_secs(1);
/// The bounds of every load: it never runs longer, nor sends more.
const MAX_LOAD: Duration = Duration::from_secs(600);
const MAX_REQUESTS: u64 = 3_000_000;
/// How long the load goes on once the control plane is back, before it stops.
const SETTLE: Duration = Duration::from_secs(3);
/// How long the app's new instances take to listen: a rolling restart is slow enough to be
/// killed in the middle.
const READY_DELAY_MS: u64 = 2000;
/// How long the daemon killed in the middle of a rolling restart stays down.
const MID_ROLLOUT_DOWN: Duration = Duration::from_secs(2);
/// How long a handover, or the recovery of an interrupted rollout, may take.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// One scenario under load.
struct Row {
    what: String,
    /// How long the operation took until the control plane (or the ingress) was back.
    took: Option<Duration>,
    load: LoadReport,
    syn_retransmits: u64,
    /// The p99 of the same load with nothing happening, through the same ingress.
    steady_p99: f64,
}

impl Row {
    fn new(what: &str, (took, load, syns): (Duration, LoadReport, u64), steady: f64) -> Row {
        Row {
            what: what.to_string(),
            took: Some(took),
            load,
            syn_retransmits: syns,
            steady_p99: steady,
        }
    }

    fn steady((_, load, syns): (Duration, LoadReport, u64)) -> Row {
        let p99 = load.latency_ms(99.0);
        Row {
            what: "nothing (steady load)".into(),
            took: None,
            load,
            syn_retransmits: syns,
            steady_p99: p99,
        }
    }
}

/// What was measured: Slipway's rows, the embedded baseline's, and what was seen meanwhile.
struct Figures {
    version: String,
    slipway: Vec<Row>,
    embedded: Vec<Row>,
    notes: Vec<String>,
}

pub async fn run(bench: &Bench) -> anyhow::Result<(Section, Vec<Verdict>)> {
    let bin = daemon::binary().await?;
    let version = daemon::version(&bin).await;
    println!("    {version} at {}", bin.display());
    // A copy at another path: starting it is an exec of another program file, as an upgrade is.
    let bins = tempfile::Builder::new()
        .prefix("slipway-bench-next-")
        .tempdir()?;
    let next = bins.path().join("slipway-next");
    std::fs::copy(&bin, &next).context("cannot copy the slipway binary")?;
    let repo = traffic::new_repo().await?;
    let mut f = Figures {
        version,
        slipway: Vec::new(),
        embedded: Vec::new(),
        notes: Vec::new(),
    };

    let mut d = Daemon::start(&bin, &format!("{}-outlive", bench.id), IngressMode::Auto).await?;
    let measured = slipway(bench, &mut d, &bin, &next, &repo, &mut f).await;
    if measured.is_err() {
        println!("    daemon log: {}", d.log_tail("daemon.log"));
        println!("    ingress log: {}", d.log_tail("ingress.log"));
    }
    let removed = d.close(&bench.docker).await;
    println!("    stopped the daemon and its ingress process; {removed} Docker objects removed");
    f.slipway = measured?;

    let mut d = Daemon::start(
        &bin,
        &format!("{}-embedded", bench.id),
        IngressMode::Embedded,
    )
    .await?;
    let measured = embedded(bench, &mut d, &bin, &repo).await;
    if measured.is_err() {
        println!("    daemon log: {}", d.log_tail("daemon.log"));
    }
    let removed = d.close(&bench.docker).await;
    println!("    stopped the daemon; {removed} Docker objects removed");
    f.embedded = measured?;
    Ok(write(bench, &f))
}

/// The app: two web instances of the example app that take `READY_DELAY_MS` to listen.
fn spec(name: &str, url: &str) -> String {
    format!(
        r#"name: {name}
services:
  - name: web
    git: {{repo_clone_url: "{url}", branch: main}}
    instance_count: 2
    http_port: 8080
    envs: [{{key: READY_DELAY_MS, value: "{READY_DELAY_MS}"}}]
    health_check: {{http_path: /healthz, period_seconds: 0.05, failure_threshold: 1200}}
"#
    )
}

/// Deploys the app and returns its ID and the load on it through `daemon`'s ingress.
async fn deploy(daemon: &Daemon, repo: &Arc<HelloRepo>) -> anyhow::Result<(String, LoadSpec)> {
    let name = slipway_testkit::unique("bench-outlive");
    let app = daemon.create_app(&spec(&name, &repo.url())).await?;
    let target = Target::at(daemon.ingress_addr().await?, &format!("{name}.localhost"));
    let body = load::get(&target).await?;
    if !body.starts_with("hello from") {
        bail!("the app answers {body:?} through the ingress");
    }
    let load = LoadSpec {
        target,
        connections: CONNECTIONS,
        warm_up: WARM_UP,
        max_duration: MAX_LOAD,
        max_requests: MAX_REQUESTS,
        rate_per_connection: Some(RATE_PER_CONNECTION),
        reconnect: false,
    };
    Ok((app, load))
}

async fn slipway(
    bench: &Bench,
    d: &mut Daemon,
    bin: &Path,
    next: &Path,
    repo: &Arc<HelloRepo>,
    f: &mut Figures,
) -> anyhow::Result<Vec<Row>> {
    let s = &bench.settings;
    let (app, load) = deploy(d, repo).await?;
    let ingress = d.ingress().await?;
    println!(
        "    the ingress process (pid {}) serves on {}",
        ingress.pid, ingress.listen
    );
    let mut rows = Vec::new();

    let steady = Row::steady(traffic::under_load(&load, idle(s.outlive_steady)).await?);
    progress(&steady);
    let steady_p99 = steady.steady_p99;
    rows.push(steady);

    // 1. SIGKILL, down for a while, started again.
    let down = s.outlive_down;
    let mut answered_in = Duration::ZERO;
    let op = async {
        let started = Instant::now();
        d.kill()?;
        tokio::time::sleep(down).await;
        let spawned = Instant::now();
        d.spawn_from(bin).await?;
        d.wait_app(&app).await?;
        answered_in = spawned.elapsed();
        let took = started.elapsed();
        tokio::time::sleep(SETTLE).await;
        Ok(took)
    };
    let row = Row::new(
        &format!("daemon SIGKILLed, down {} s, started again", down.as_secs()),
        traffic::under_load(&load, op).await?,
        steady_p99,
    );
    progress(&row);
    rows.push(row);
    f.notes.push(format!(
        "the daemon started again after SIGKILL answered for the app {:.2} s after it was started",
        answered_in.as_secs_f64()
    ));
    same_ingress(d, ingress.pid).await?;

    // 2. An upgrade: SIGTERM, then the daemon from another program file.
    let (mut exited_in, mut answered_in) = (Duration::ZERO, Duration::ZERO);
    let op = async {
        let started = Instant::now();
        let status = d.terminate().await?;
        if !status.success() {
            bail!("the daemon exited {status} on SIGTERM");
        }
        exited_in = started.elapsed();
        let spawned = Instant::now();
        d.spawn_from(next).await?;
        d.wait_app(&app).await?;
        answered_in = spawned.elapsed();
        let took = started.elapsed();
        let pid = d.pid().context("the daemon is not running")?;
        if !daemon::runs(pid, next) {
            bail!("the new daemon does not run {}", next.display());
        }
        tokio::time::sleep(SETTLE).await;
        Ok(took)
    };
    let row = Row::new(
        "daemon SIGTERMed, started from another binary (upgrade)",
        traffic::under_load(&load, op).await?,
        steady_p99,
    );
    progress(&row);
    rows.push(row);
    f.notes.push(format!(
        "on the upgrade, the daemon exited {:.2} s after SIGTERM and the new one answered {:.2} s \
         after it was started",
        exited_in.as_secs_f64(),
        answered_in.as_secs_f64()
    ));
    same_ingress(d, ingress.pid).await?;

    // 3. SIGKILL in the middle of a rolling restart; the new daemon reverts it.
    let mut ended = Value::Null;
    let op = async {
        let dep = d.restart(&app).await?;
        let before = d
            .wait_for(&app, &dep, |v| first_replaced(v) || ended_phase(v))
            .await?;
        if ended_phase(&before) {
            bail!(
                "the restart ended {} before it could be killed in the middle",
                before["phase"]
            );
        }
        let started = Instant::now();
        d.kill()?;
        tokio::time::sleep(MID_ROLLOUT_DOWN).await;
        d.spawn_from(next).await?;
        ended = d.wait_ended(&app, &dep).await?;
        wait_running(bench, &app, 2).await?;
        let took = started.elapsed();
        tokio::time::sleep(SETTLE).await;
        Ok(took)
    };
    let measured = traffic::under_load(&load, op).await?;
    let row = Row::new(
        "daemon SIGKILLed mid rolling restart, started again, recovered",
        measured,
        steady_p99,
    );
    progress(&row);
    rows.push(row);
    f.notes.push(format!(
        "the rolling restart interrupted by SIGKILL ended {} after the daemon started again",
        ended["phase"].as_str().unwrap_or("unknown")
    ));
    same_ingress(d, ingress.pid).await?;

    // 4. The ingress handed over to a new process from the other binary.
    let mut successor = 0;
    let op = async {
        let started = Instant::now();
        successor = d.start_ingress(next)?;
        let deadline = Instant::now() + RECOVERY_TIMEOUT;
        loop {
            let now = d.ingress().await.ok();
            if !daemon::alive(ingress.pid) && now.as_ref().is_some_and(|h| h.pid == successor) {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the handover did not end within {} s: {}",
                    RECOVERY_TIMEOUT.as_secs(),
                    d.log_tail("ingress.log")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = started.elapsed();
        tokio::time::sleep(SETTLE).await;
        Ok(took)
    };
    let row = Row::new(
        "ingress handed over to a new process (upgrade)",
        traffic::under_load(&load, op).await?,
        steady_p99,
    );
    progress(&row);
    rows.push(row);
    let now = d.ingress().await?;
    if now.listen != ingress.listen || !daemon::runs(successor, next) {
        bail!(
            "after the handover the ingress is pid {} on {} (was {})",
            now.pid,
            now.listen,
            ingress.listen
        );
    }
    Ok(rows)
}

async fn embedded(
    bench: &Bench,
    d: &mut Daemon,
    bin: &Path,
    repo: &Arc<HelloRepo>,
) -> anyhow::Result<Vec<Row>> {
    let (app, load) = deploy(d, repo).await?;
    let mut rows = Vec::new();
    let steady =
        Row::steady(traffic::under_load(&load, idle(bench.settings.outlive_steady)).await?);
    progress(&steady);
    let steady_p99 = steady.steady_p99;
    rows.push(steady);

    let target = load.target.clone();
    let op = async {
        let started = Instant::now();
        d.kill()?;
        d.spawn_from(bin).await?;
        d.wait_app(&app).await?;
        let deadline = Instant::now() + RECOVERY_TIMEOUT;
        while load::get(&target).await.is_err() {
            if Instant::now() > deadline {
                bail!(
                    "the app is not served again within {} s",
                    RECOVERY_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = started.elapsed();
        tokio::time::sleep(SETTLE).await;
        Ok(took)
    };
    let row = Row::new(
        "daemon SIGKILLed, started again at once",
        traffic::under_load(&load, op).await?,
        steady_p99,
    );
    progress(&row);
    rows.push(row);
    Ok(rows)
}

/// No operation: the steady load's reference.
async fn idle(how_long: Duration) -> anyhow::Result<Duration> {
    tokio::time::sleep(how_long).await;
    Ok(how_long)
}

/// Fails unless the same ingress process still serves.
async fn same_ingress(d: &Daemon, pid: u32) -> anyhow::Result<()> {
    let now = d.ingress().await?;
    if now.pid != pid {
        bail!("the ingress process changed (pid {pid}, now {})", now.pid);
    }
    Ok(())
}

/// Whether a deployment has ended, whichever way.
fn ended_phase(d: &Value) -> bool {
    !matches!(
        d["phase"].as_str(),
        Some("PENDING_BUILD" | "BUILDING" | "PENDING_DEPLOY" | "DEPLOYING")
    )
}

/// Whether a restart's first instance has been replaced (its first step succeeded): the
/// middle of the rolling restart.
fn first_replaced(d: &Value) -> bool {
    d["progress"]["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "deploy"))
        .is_some_and(|deploy| deploy["steps"][0]["steps"][0]["status"] == "SUCCESS")
}

/// Waits until the app runs `count` web containers.
async fn wait_running(bench: &Bench, app: &str, count: usize) -> anyhow::Result<()> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![
            format!("{}={app}", slipway_spec::labels::APP),
            format!("{}=web", slipway_spec::labels::COMPONENT),
        ],
    )]);
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    loop {
        let running = bench
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await?
            .len();
        if running == count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the app runs {running} web containers, not {count}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn progress(row: &Row) {
    let r = &row.load;
    println!(
        "    {}: {}{} requests, {} failed, p99 {:.1} ms (steady {:.1}), max {:.0} ms",
        row.what,
        row.took
            .map(|t| format!("{:.2} s, ", t.as_secs_f64()))
            .unwrap_or_default(),
        r.total,
        r.failed,
        r.latency_ms(99.0),
        row.steady_p99,
        r.max_latency_ms(),
    );
}

fn cells(row: &Row) -> Vec<String> {
    let r = &row.load;
    vec![
        row.what.clone(),
        row.took
            .map_or_else(|| "—".into(), |t| format!("{:.2} s", t.as_secs_f64())),
        thousands(r.total),
        thousands(r.failed),
        format!("{:.0}", r.throughput()),
        format!("{:.2}", r.latency_ms(50.0)),
        format!("{:.2}", r.latency_ms(99.0)),
        format!("{:.1}", r.max_latency_ms()),
        format!("{:.2}", row.steady_p99),
        thousands(row.syn_retransmits),
    ]
}

const COLUMNS: [&str; 10] = [
    "during",
    "back after",
    "requests",
    "failed",
    "req/s",
    "p50 ms",
    "p99 ms",
    "max ms",
    "steady p99 ms",
    "SYNs resent",
];

fn write(bench: &Bench, f: &Figures) -> (Section, Vec<Verdict>) {
    let s = &bench.settings;
    let mut sec = Section::new(TITLE);
    sec.text(format!(
        "The real `slipway` binary ({version}), run as processes: `slipway serve \
         --allow-local-sources` on a data directory of its own, whose ingress runs as a \
         process of its own (`--ingress-process auto`, the default: the daemon starts \
         `slipway ingress`, which outlives it). An app of 2 instances of the example app, \
         deployed through the API from a git repository, whose new instances take {delay} s \
         to listen (`READY_DELAY_MS`), so that a rolling restart is slow enough to be \
         interrupted. {c} clients, each on its own kept-alive HTTP/1.1 connection to the \
         ingress on 127.0.0.1, each paced to {rate} requests per second ({total} req/s in \
         all), send `GET /`; each scenario has a load of its own, which makes its \
         connections during an unrecorded {warm} s, is recorded from 300 ms before the \
         operation until 300 ms after it, and stops. Every failure counts: a refused or \
         reset connection, an error, a status other than 2xx, an answer that takes more than \
         10 s. A client whose answer comes after its next request was due sends that one at \
         once and skips the sends it missed: *req/s* under {total} means the clients fell \
         behind. Latencies are those of the successful requests, in milliseconds; *steady p99* \
         is the p99 of the same load through the same ingress with nothing happening \
         ({steady} s, the first row of each table). *Back after* is how long the operation \
         took until the control plane (or the ingress) was back: each scenario's load then \
         goes on for {settle} s more, while the daemon reconciles and sends the ingress its \
         table.",
        version = f.version,
        delay = READY_DELAY_MS as f64 / 1000.0,
        c = CONNECTIONS,
        rate = RATE_PER_CONNECTION,
        total = thousands((CONNECTIONS as f64 * RATE_PER_CONNECTION) as u64),
        warm = WARM_UP.as_secs(),
        steady = s.outlive_steady.as_secs(),
        settle = SETTLE.as_secs(),
    ));
    sec.text(format!(
        "The scenarios, one after another on the same daemon and ingress process. **SIGKILLed, \
         down {down} s**: the daemon is killed, stays down {down} s, and is started again from \
         the same binary; back when its API answers. **SIGTERMed, started from another \
         binary**: the daemon stops cleanly and is started at once from a copy of the binary \
         at another path (an upgrade: the new process is checked to run that file). \
         **SIGKILLed mid rolling restart**: `POST /v2/apps/{{id}}/restart`, and once its first \
         instance has been replaced, the daemon is killed, stays down {mid} s and is started \
         again; back when the restart has ended (the new daemon reverts an interrupted \
         rollout) and the app runs 2 instances again. **Ingress handed over**: a new \
         `slipway ingress --data-dir D` from the copied binary takes the running one's \
         listening socket (`SCM_RIGHTS` over the control socket) and table over, and the old \
         one finishes its requests and exits (its next answer on each kept-alive connection \
         says `Connection: close`, and the client connects again, to the new process); back \
         when it has exited. After each daemon scenario the same ingress process (same pid) is \
         checked to serve.",
        down = s.outlive_down.as_secs(),
        mid = MID_ROLLOUT_DOWN.as_secs(),
    ));
    let mut t = Table::new(&COLUMNS);
    for r in &f.slipway {
        t.row(cells(r));
    }
    sec.table(t);
    sec.text(
        "**Baseline: the ingress inside the daemon.** The same daemon, app and load with \
         `--ingress-process embedded`, which serves the apps from the daemon's own process, \
         as a proxy that lives in the control plane does. The daemon is killed and started \
         again at once (its best case: it listens on the same port again, reconciles and \
         routes); back when a request through the ingress is answered again. Its failures \
         grow with the time it is down.",
    );
    let mut t = Table::new(&COLUMNS);
    for r in &f.embedded {
        t.row(cells(r));
    }
    sec.table(t);
    let errors: Vec<String> = f
        .slipway
        .iter()
        .chain(&f.embedded)
        .filter(|r| !r.load.errors.is_empty())
        .map(|r| format!("{}: {}", r.what, r.load.errors.join("; ")))
        .collect();
    if !errors.is_empty() {
        sec.text(format!("First failures seen: {}.", errors.join(" — ")));
    }
    if !f.notes.is_empty() {
        sec.text(format!("Also seen: {}.", f.notes.join("; ")));
    }
    let scenarios = &f.slipway[1..];
    let failed: u64 = scenarios.iter().map(|r| r.load.failed).sum();
    let total: u64 = scenarios.iter().map(|r| r.load.total).sum();
    let embedded_failed: u64 = f.embedded[1..].iter().map(|r| r.load.failed).sum();
    let embedded_total: u64 = f.embedded[1..].iter().map(|r| r.load.total).sum();
    let met = failed == 0;
    let worst = scenarios
        .iter()
        .map(|r| r.load.latency_ms(99.0))
        .fold(0.0, f64::max);
    sec.text(format!(
        "Target: no failed request in any of Slipway's scenarios — {}: {} of {} requests \
         failed; the highest p99 of a scenario was {worst:.2} ms against a steady {:.2} ms. \
         With the ingress in the daemon, {} of {} requests failed while it was killed and \
         started again.",
        if met { "met" } else { "missed" },
        thousands(failed),
        thousands(total),
        f.slipway[0].steady_p99,
        thousands(embedded_failed),
        thousands(embedded_total),
    ));
    let verdict = Verdict::new(
        "2c. Failed requests, daemon killed, down, upgraded, killed mid-rollout; ingress handover",
        "0",
        format!("{} of {}", thousands(failed), thousands(total)),
        Some(met),
    );
    (sec, vec![verdict])
}
