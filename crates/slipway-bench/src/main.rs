//! `slipway-bench`: Slipway's benchmarks, each measured beside its baseline in the same run,
//! written as markdown (`--write docs/benchmarks.md`).
//!
//! What is measured, and how:
//! 1. **Restart speed** — `Engine::restart` of a 3-instance service until ACTIVE, beside a
//!    bash script doing the same replacements with the docker CLI, and beside Docker Swarm's
//!    `docker service update --force` of 3 replicas ([`restart`], [`swarm`]).
//! 2. **Traffic** — (a) failed requests and latencies of 200 kept-alive connections through
//!    the ingress during a restart, a force rebuild, and `docker restart` of the same
//!    containers ([`traffic`]); (b) throughput and latency of 32 connections to one instance
//!    directly, through the ingress and through nginx ([`proxy`], [`nginx`]); (c) failed
//!    requests and latencies of a steady paced load through the ingress process of the real
//!    `slipway` binary while the daemon is killed and down for a minute, stopped and started
//!    from another binary, killed in the middle of a rolling restart, and while the ingress
//!    hands over to a new process, each beside the steady p99, and beside the daemon with its
//!    ingress embedded killed and started again ([`outlive`], [`daemon`]); (d) the same
//!    instance through the ingress over plain HTTP and over HTTPS, on kept-alive connections
//!    and on a new connection per request with TLS session resumption and without ([`https`]).
//! 3. **Builds** — (a) a force rebuild of an unchanged commit against `docker build` plus a
//!    restart; (b) a deployment whose build is reused against a restart ([`rebuild`]); (c)
//!    fetching one new commit of a 10,000-file repository, libgit2 against the git CLI
//!    ([`fetch`]).
//!
//! Each operation is repeated (alternating with its baseline) and reported as a median with
//! its range, or as latency percentiles. The engine is embedded with the run's ID as its
//! daemon ID; every Docker object the run creates carries `slipway.daemon=<run ID>` (or
//! `<run ID>-…` for the daemons 2c runs as processes) and is removed at the end, however the
//! run ends, as is every process it started. Traffic goes only to addresses of this machine,
//! and every load is bounded in time and in requests. `--quick` runs fewer and shorter repetitions.

mod cmd;
mod cpu;
mod daemon;
mod fetch;
mod https;
mod load;
mod netstat;
mod nginx;
mod outlive;
mod proxy;
mod rebuild;
mod report;
mod restart;
mod setup;
mod stats;
mod swarm;
mod traffic;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use crate::report::{Report, Section, Verdict};
use crate::setup::{Bench, Settings};

#[derive(Debug, Parser)]
#[command(about = "Slipway's benchmarks, each beside its baseline in the same run")]
struct Args {
    /// Fewer repetitions and shorter loads (figures for a quick look, not for the docs).
    #[arg(long)]
    quick: bool,
    /// Writes the markdown report to this file (it is printed otherwise).
    #[arg(long, value_name = "FILE")]
    write: Option<PathBuf>,
    /// Runs only these benchmarks.
    #[arg(long, value_delimiter = ',', value_name = "BENCHMARK")]
    only: Vec<Which>,
}

/// The benchmarks, in the order they run and are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Restart,
    Load,
    Proxy,
    Outlive,
    Https,
    Build,
    Fetch,
}

impl Which {
    const ALL: [Which; 7] = [
        Which::Restart,
        Which::Load,
        Which::Proxy,
        Which::Outlive,
        Which::Https,
        Which::Build,
        Which::Fetch,
    ];

    fn title(self) -> &'static str {
        match self {
            Which::Restart => "1. Restart speed",
            Which::Load => "2a. No dropped request under heavy load",
            Which::Proxy => "2b. What the ingress costs",
            Which::Outlive => "2c. Traffic while the control plane dies, restarts and upgrades",
            Which::Https => "2d. What HTTPS costs at the ingress",
            Which::Build => "3a–b. Force rebuild and build reuse",
            Which::Fetch => "3c. Fetching one new commit of a large repository",
        }
    }

    async fn run(self, bench: &Bench) -> anyhow::Result<(Section, Vec<Verdict>)> {
        match self {
            Which::Restart => restart::run(bench).await,
            Which::Load => traffic::run(bench).await,
            Which::Proxy => proxy::run(bench).await,
            Which::Outlive => outlive::run(bench).await,
            Which::Https => https::run(bench).await,
            Which::Build => rebuild::run(bench).await,
            Which::Fetch => fetch::run(bench).await,
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // Named threads, so that the ingress's CPU time can be told from the load generator's.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name(cpu::BENCH_THREADS)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(run(args)),
        Err(e) => Err(anyhow::Error::new(e).context("cannot start the runtime")),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("slipway-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the chosen benchmarks and writes the report; `Ok(false)` when one of them failed.
async fn run(args: Args) -> anyhow::Result<bool> {
    let started = Instant::now();
    let chosen: Vec<Which> = Which::ALL
        .into_iter()
        .filter(|w| args.only.is_empty() || args.only.contains(w))
        .collect();
    println!("==> Starting: the example app's image, an embedded engine and its ingress");
    let bench = Bench::start(Settings::new(args.quick)).await?;
    println!(
        "    run ID {} (the label of every Docker object it creates)",
        bench.id
    );
    let mut report = Report {
        facts: machine_facts(&bench).await,
        ..Report::default()
    };
    let outcome = tokio::select! {
        all_ok = run_benchmarks(&bench, &chosen, &mut report) => Ok(all_ok),
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    println!("==> Cleaning up");
    let removed = bench.close().await;
    println!("    {removed} Docker objects removed");
    let all_ok = outcome?;
    report.facts.push((
        "the whole run".into(),
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    ));
    let text = report.render();
    match &args.write {
        Some(path) => {
            std::fs::write(path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("==> Written to {}", path.display());
        }
        None => println!("\n{text}"),
    }
    print_verdicts(&report);
    Ok(all_ok)
}

/// Runs each benchmark; one that fails is written as not measured, with why.
async fn run_benchmarks(bench: &Bench, chosen: &[Which], report: &mut Report) -> bool {
    let mut all_ok = true;
    for which in chosen {
        println!("==> {}", which.title());
        let started = Instant::now();
        match which.run(bench).await {
            Ok((section, verdicts)) => {
                report.sections.push(section);
                report.verdicts.extend(verdicts);
            }
            Err(e) => {
                all_ok = false;
                eprintln!("    failed: {e:#}");
                let mut section = Section::new(which.title());
                section.text(format!("Not measured: the benchmark failed: {e:#}"));
                report.sections.push(section);
                report
                    .verdicts
                    .push(Verdict::new(which.title(), "", "failed".into(), None));
            }
        }
        println!("    ({:.0} s)", started.elapsed().as_secs_f64());
    }
    all_ok
}

fn print_verdicts(report: &Report) {
    println!("==> Targets");
    for v in &report.verdicts {
        println!(
            "    {:<12} {}: {} (target {})",
            report::met_word(v.met),
            v.benchmark,
            v.measured,
            v.target
        );
    }
}

/// The machine: CPUs, memory, kernel, Docker, the date and the run's settings.
async fn machine_facts(bench: &Bench) -> Vec<(String, String)> {
    let cpus = crate::cpu::cores();
    let model = read_field("/proc/cpuinfo", "model name").unwrap_or_default();
    let memory = read_field("/proc/meminfo", "MemTotal")
        .and_then(|kb| kb.trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or_else(String::new, |kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let docker = match bench.docker.version().await {
        Ok(v) => format!(
            "Engine {} (API {}), {} {}",
            v.version.unwrap_or_default(),
            v.api_version.unwrap_or_default(),
            v.os.unwrap_or_default(),
            v.arch.unwrap_or_default()
        ),
        Err(e) => format!("unknown ({e})"),
    };
    let s = &bench.settings;
    let mode = format!(
        "{}: restarts ×{}, loads ×{} with {} connections, proxy {} round(s) of {} s, \
         daemon down {} s under load, builds ×{}, fetches ×{}",
        if s.quick { "quick" } else { "default" },
        s.restart_reps,
        s.load_reps,
        s.load_connections,
        s.proxy_rounds,
        s.proxy_duration.as_secs(),
        s.outlive_down.as_secs(),
        s.build_reps,
        s.fetch_reps,
    );
    let others = bench
        .docker
        .list_containers(None::<bollard::query_parameters::ListContainersOptions>)
        .await
        .map_or(0, |l| l.len());
    vec![
        ("CPUs".into(), format!("{cpus} ({model})")),
        ("memory".into(), memory),
        ("kernel".into(), kernel.trim().to_string()),
        ("Docker".into(), docker),
        (
            "date".into(),
            jiff::Timestamp::now()
                .strftime("%Y-%m-%d %H:%M UTC")
                .to_string(),
        ),
        (
            "Slipway".into(),
            format!(
                "{} ({} build)",
                env!("CARGO_PKG_VERSION"),
                if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                }
            ),
        ),
        ("settings".into(), mode),
        ("load average at the start".into(), load_average()),
        ("containers already running".into(), others.to_string()),
    ]
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The value of the first `key: value` line of a `/proc` file.
fn read_field(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
}
