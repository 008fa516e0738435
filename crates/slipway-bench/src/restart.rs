//! Benchmark 1: restart speed. A 3-instance service of the example app, restarted by Slipway
//! (`Engine::restart` until the deployment is ACTIVE), beside a plain bash script that does
//! the same replacements with the docker CLI, and beside Docker Swarm's forced update.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cmd::Cmd;
use crate::report::{Section, Table, Verdict};
use crate::setup::{Bench, image_source, web_spec};
use crate::stats::{Timings, ratio};
use crate::swarm;

/// The target: Slipway's restart within this factor of the script's.
const TARGET: f64 = 1.15;
const INSTANCES: usize = 3;

/// The baseline: for each old container, start a new one from the same image with its port
/// published on loopback, poll `/healthz` until it answers 200, then stop and remove the old
/// one. Prints the new containers' IDs.
const SCRIPT: &str = r#"#!/usr/bin/env bash
# usage: replace.sh IMAGE LABEL OLD_CONTAINER...
set -euo pipefail
image="$1"; label="$2"; shift 2
for old in "$@"; do
  new=$(docker run -d --label "$label" -e PORT=8080 -p 127.0.0.1::8080 "$image")
  port=$(docker port "$new" 8080/tcp | head -n 1 | sed 's/.*://')
  ready=no
  for _ in $(seq 1 1000); do
    if curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz"; then
      ready=yes
      break
    fi
    sleep 0.015
  done
  if [ "$ready" != yes ]; then
    echo "container $new never answered on /healthz" >&2
    exit 1
  fi
  docker stop -t 5 "$old" > /dev/null
  docker rm "$old" > /dev/null
  echo "$new"
done
"#;

/// Measured figures of the three ways to restart.
struct Figures {
    slipway: Timings,
    script: Timings,
    swarm: Result<swarm::Updates, String>,
}

pub async fn run(bench: &Bench) -> anyhow::Result<(Section, Vec<Verdict>)> {
    let figures = measure(bench).await?;
    Ok(write(&figures))
}

async fn measure(bench: &Bench) -> anyhow::Result<Figures> {
    let (repository, tag) = bench.image_parts();
    let name = slipway_testkit::unique("bench-restart");
    let app = bench
        .create_app(&web_spec(
            &name,
            &image_source(repository, tag),
            INSTANCES,
            0,
        ))
        .await?;
    let dir = tempfile::tempdir().context("cannot make a directory for the script")?;
    let script = dir.path().join("replace.sh");
    std::fs::write(&script, SCRIPT).context("cannot write the script")?;
    let mut containers = start_script_containers(bench).await?;

    // One of each first, unmeasured: the first container on a new network is slower.
    bench.timed_restart(&app).await?;
    containers = run_script(bench, &script, &containers).await?.0;

    let mut slipway = Timings::default();
    let mut script_times = Timings::default();
    for rep in 0..bench.settings.restart_reps {
        let (slipway_took, script_took, next) =
            one_round(bench, &app, &script, &containers, rep % 2 == 0).await?;
        containers = next;
        slipway.push(slipway_took);
        script_times.push(script_took);
        println!(
            "    restart {}: slipway {:.2} s, script {:.2} s",
            rep + 1,
            slipway_took.as_secs_f64(),
            script_took.as_secs_f64()
        );
    }
    remove_containers(&containers).await;
    let swarm = swarm::measure(bench, INSTANCES, bench.settings.restart_reps).await;
    Ok(Figures {
        slipway,
        script: script_times,
        swarm,
    })
}

/// One restart each way, Slipway's first or second; returns both times and the script's new
/// containers.
async fn one_round(
    bench: &Bench,
    app: &str,
    script: &Path,
    containers: &[String],
    slipway_first: bool,
) -> anyhow::Result<(Duration, Duration, Vec<String>)> {
    let mut slipway_took = Duration::ZERO;
    if slipway_first {
        slipway_took = bench.timed_restart(app).await?;
    }
    let (next, script_took) = run_script(bench, script, containers).await?;
    if !slipway_first {
        slipway_took = bench.timed_restart(app).await?;
    }
    Ok((slipway_took, script_took, next))
}

/// Starts the script's first containers, the way it starts every later one.
async fn start_script_containers(bench: &Bench) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for _ in 0..INSTANCES {
        let out = Cmd::new("docker")
            .args(["run", "-d", "--label", &bench.label()])
            .args(["-e", "PORT=8080", "-p", "127.0.0.1::8080", &bench.image])
            .run()
            .await?;
        ids.push(out.stdout.trim().to_string());
    }
    Ok(ids)
}

/// Runs the script on `old`; returns the new containers and how long the script took.
async fn run_script(
    bench: &Bench,
    script: &Path,
    old: &[String],
) -> anyhow::Result<(Vec<String>, Duration)> {
    let out = Cmd::new("bash")
        .args([script.as_os_str()])
        .args([bench.image.as_str(), &bench.label()])
        .args(old)
        .timeout(Duration::from_secs(120))
        .run()
        .await?;
    let new: Vec<String> = out.stdout.lines().map(str::to_string).collect();
    if new.len() != old.len() {
        bail!(
            "the script replaced {} of {} containers",
            new.len(),
            old.len()
        );
    }
    Ok((new, out.elapsed))
}

async fn remove_containers(ids: &[String]) {
    let _ = Cmd::new("docker").args(["rm", "-f"]).args(ids).run().await;
}

fn write(f: &Figures) -> (Section, Vec<Verdict>) {
    let r = ratio(f.slipway.median(), f.script.median());
    let met = r <= TARGET;
    let mut s = Section::new("1. Restart speed");
    s.text(format!(
        "A service of {INSTANCES} instances of the example app (it listens within a few \
         milliseconds of its start), checked on `GET /healthz` every 50 ms, with no drain and \
         a 5 s grace period, is restarted {n} times each way (Slipway and the script taking \
         turns to go first; Swarm's updates follow): **Slipway** — `Engine::restart` timed \
         until the deployment is ACTIVE (a new container starts and passes its check before \
         an old one is stopped and removed, one instance at a time); **plain script** — a \
         bash script run with `bash` that does the same with the docker CLI for each of the \
         {INSTANCES} containers (`docker run -d` from the same image with \
         `-p 127.0.0.1::8080`, `docker port`, `curl` on `/healthz` every 15 ms until 200, \
         `docker stop -t 5` and `docker rm` of the old one), timed as a whole; \
         **Docker Swarm** — `docker service update --force --detach=false` of a service of \
         {INSTANCES} replicas of the same app, made by Slipway's Swarm runtime as it makes a \
         service (update parallelism 1, start-first, no delay, a monitor period of 50 ms, \
         the health check's period; the image adds \
         `HEALTHCHECK --interval=50ms CMD [\"/hello\", \"check\"]`, which Swarm runs inside \
         the container), taking turns on that same service with \
         **Slipway's Swarm runtime** — `slipway_swarm::Swarm::restart` (the service's \
         force-update counter bumped, nothing else changed) and `Swarm::wait` until every task \
         runs the new spec, read from the service's update status and its tasks every 100 ms. \
         One unmeasured restart of each comes first.",
        n = f.slipway.len(),
    ));
    let mut t = Table::new(&["", "median (min–max)", "vs the script"]);
    t.row(vec![
        "Slipway restart".into(),
        f.slipway.summary_secs(),
        format!("{r:.2}x"),
    ]);
    t.row(vec![
        "plain script (docker CLI)".into(),
        f.script.summary_secs(),
        "1.00x".into(),
    ]);
    match &f.swarm {
        Ok(swarm) => {
            t.row(vec![
                "Docker Swarm forced update".into(),
                swarm.cli.summary_secs(),
                format!("{:.2}x", ratio(swarm.cli.median(), f.script.median())),
            ]);
            t.row(vec![
                "Slipway's Swarm runtime restart, same service".into(),
                swarm.slipway.summary_secs(),
                format!(
                    "{:.2}x ({:.2}x the forced update)",
                    ratio(swarm.slipway.median(), f.script.median()),
                    ratio(swarm.slipway.median(), swarm.cli.median())
                ),
            ]);
        }
        Err(why) => t.row(vec![
            "Docker Swarm forced update".into(),
            format!("not measured: {why}"),
            String::new(),
        ]),
    }
    s.table(t);
    s.text(format!(
        "Target: Slipway within {TARGET:.2}x of the script — {}: {r:.2}x ({} against {}).{}",
        if met { "met" } else { "missed" },
        fmt_secs(f.slipway.median()),
        fmt_secs(f.script.median()),
        if met {
            String::new()
        } else {
            format!(
                " Slipway's median is {:.0} ms over the target; the script's own repetitions \
                 spread over {:.0} ms.",
                (f.slipway.median().as_secs_f64() - f.script.median().as_secs_f64() * TARGET)
                    * 1000.0,
                (f.script.max() - f.script.min()).as_secs_f64() * 1000.0
            )
        }
    ));
    let verdict = Verdict::new(
        "1. Restart, 3 instances",
        &format!("≤ {TARGET:.2}x the plain script"),
        format!(
            "{r:.2}x ({} vs {})",
            fmt_secs(f.slipway.median()),
            fmt_secs(f.script.median())
        ),
        Some(met),
    );
    (s, vec![verdict])
}

fn fmt_secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
