//! Benchmarks 3a and 3b: what a force rebuild of an unchanged commit costs against
//! `docker build` plus the same rollout, and what a deployment whose build is reused costs
//! against a restart.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use slipway_spec::Deployment;

use crate::cmd::Cmd;
use crate::report::{Section, Table, Verdict};
use crate::setup::{Bench, git_source, web_spec};
use crate::stats::{Timings, ratio};
use crate::traffic::new_repo;

/// Targets: a force rebuild within this factor of `docker build` + restart; a reused build
/// within this factor of a restart.
const REBUILD_TARGET: f64 = 1.2;
const REUSE_TARGET: f64 = 1.1;
/// The files of the example app's repository (besides `.git`).
const FILES: [&str; 3] = ["Dockerfile", "hello", "VERSION"];

#[derive(Default)]
struct Figures {
    rebuild: Timings,
    /// The force rebuild's build step (fetch and build) and deploy step, from its step tree.
    rebuild_build_step: Timings,
    rebuild_deploy_step: Timings,
    docker_build: Timings,
    restart: Timings,
    restart_deploy_step: Timings,
    reuse: Timings,
    reuse_build_step: Timings,
    reuse_deploy_step: Timings,
}

pub async fn run(bench: &Bench) -> anyhow::Result<(Section, Vec<Verdict>)> {
    let f = measure(bench).await?;
    Ok(write(&f))
}

/// The four operations, measured in a rotating order.
#[derive(Clone, Copy)]
enum Op {
    ForceRebuild,
    DockerBuild,
    Restart,
    Reuse,
}

const OPS: [Op; 4] = [Op::ForceRebuild, Op::DockerBuild, Op::Restart, Op::Reuse];

async fn measure(bench: &Bench) -> anyhow::Result<Figures> {
    let repo = new_repo().await?;
    let name = slipway_testkit::unique("bench-build");
    let app = bench
        .create_app(&web_spec(&name, &git_source(&repo.url()), 3, 0))
        .await?;
    let context = tempfile::tempdir().context("cannot make the build context's directory")?;
    for file in FILES {
        std::fs::copy(repo.path().join(file), context.path().join(file))
            .with_context(|| format!("cannot copy {file}"))?;
    }
    let tag = format!("slipway-bench-context:{}", bench.id);
    let mut f = Figures::default();
    // Once each, unmeasured: every cache is warm afterwards.
    for op in OPS {
        once(
            bench,
            &app,
            context.path(),
            &tag,
            op,
            &mut Figures::default(),
        )
        .await?;
    }
    for rep in 0..bench.settings.build_reps {
        for i in 0..OPS.len() {
            let op = OPS[(i + rep) % OPS.len()];
            once(bench, &app, context.path(), &tag, op, &mut f).await?;
        }
        println!(
            "    builds {}: force rebuild {:.2} s, docker build {:.2} s, restart {:.2} s, \
             reused build {:.2} s",
            rep + 1,
            last(&f.rebuild),
            last(&f.docker_build),
            last(&f.restart),
            last(&f.reuse),
        );
    }
    Ok(f)
}

fn last(t: &Timings) -> f64 {
    t.latest().as_secs_f64()
}

async fn once(
    bench: &Bench,
    app: &str,
    context: &Path,
    tag: &str,
    op: Op,
    f: &mut Figures,
) -> anyhow::Result<()> {
    match op {
        Op::ForceRebuild => {
            let (took, d) = bench.timed_deployment(app, true).await?;
            expect_reused(&d, false)?;
            f.rebuild.push(took);
            f.rebuild_build_step.push(step_time(&d, "build"));
            f.rebuild_deploy_step.push(step_time(&d, "deploy"));
        }
        Op::DockerBuild => f
            .docker_build
            .push(docker_build(bench, context, tag).await?),
        Op::Restart => {
            let (took, d) = bench.restart(app).await?;
            f.restart.push(took);
            f.restart_deploy_step.push(step_time(&d, "deploy"));
        }
        Op::Reuse => {
            let (took, d) = bench.timed_deployment(app, false).await?;
            expect_reused(&d, true)?;
            f.reuse.push(took);
            f.reuse_build_step.push(step_time(&d, "build"));
            f.reuse_deploy_step.push(step_time(&d, "deploy"));
        }
    }
    Ok(())
}

fn expect_reused(d: &Deployment, reused: bool) -> anyhow::Result<()> {
    let web = d.component("web").context("the deployment has no web")?;
    if web.build_reused != reused {
        bail!(
            "deployment {}: build_reused is {}, expected {reused}",
            d.id,
            web.build_reused
        );
    }
    Ok(())
}

/// How long a top-level step of a deployment took.
fn step_time(d: &Deployment, name: &str) -> Duration {
    d.progress
        .steps
        .iter()
        .find(|s| s.name == name)
        .and_then(|s| Some(s.ended_at?.duration_since(s.started_at?)))
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default()
}

/// `docker build` of the context with Docker's classic builder and its layer cache.
async fn docker_build(bench: &Bench, context: &Path, tag: &str) -> anyhow::Result<Duration> {
    let out = Cmd::new("docker")
        .args(["build", "--quiet", "--tag", tag, "--label", &bench.label()])
        .args([context.as_os_str()])
        .env("DOCKER_BUILDKIT", "0")
        .timeout(Duration::from_secs(300))
        .run()
        .await?;
    Ok(out.elapsed)
}

fn write(f: &Figures) -> (Section, Vec<Verdict>) {
    let baseline = f.docker_build.median() + f.restart.median();
    let rebuild_ratio = ratio(f.rebuild.median(), baseline);
    let reuse_ratio = ratio(f.reuse.median(), f.restart.median());
    let rebuild_met = rebuild_ratio <= REBUILD_TARGET;
    let reuse_met = reuse_ratio <= REUSE_TARGET;
    let mut s = Section::new("3a–b. Force rebuild and build reuse");
    s.text(format!(
        "A service of 3 instances of the example app built from a local git repository \
         (checked every 50 ms, no drain, 5 s grace). Four operations, {n} times each in a \
         rotating order, after one unmeasured run of each so that every cache is warm: \
         **force rebuild** — `Engine::create_deployment(app, force_build = true)` of the \
         unchanged commit until ACTIVE (fetch, context from the commit's tree, classic build \
         with the warm layer cache, rollout); **docker build** — `DOCKER_BUILDKIT=0 docker \
         build` of a directory holding the same files, with the same warm cache; \
         **restart** — `Engine::restart` until ACTIVE, the same rollout without a build; \
         **reused build** — `Engine::create_deployment(app, force_build = false)` with nothing \
         changed until ACTIVE (fetch, the previous image reused: `build_reused: true`, checked, \
         then the rollout). The baseline of the force rebuild is docker build + restart. The \
         steps' times come from each deployment's step tree (`started_at` to `ended_at`).",
        n = f.rebuild.len(),
    ));
    let mut t = Table::new(&["", "median (min–max)"]);
    t.row(vec!["force rebuild".into(), f.rebuild.summary_secs()]);
    t.row(vec![
        "… of which its build step (fetch + build)".into(),
        f.rebuild_build_step.summary_secs(),
    ]);
    t.row(vec![
        "… of which its deploy step (rollout)".into(),
        f.rebuild_deploy_step.summary_secs(),
    ]);
    t.row(vec![
        "docker build (CLI, classic builder)".into(),
        f.docker_build.summary_secs(),
    ]);
    t.row(vec!["restart".into(), f.restart.summary_secs()]);
    t.row(vec![
        "… of which its deploy step (rollout)".into(),
        f.restart_deploy_step.summary_secs(),
    ]);
    t.row(vec!["reused build".into(), f.reuse.summary_secs()]);
    t.row(vec![
        "… of which its build step (fetch, build reused)".into(),
        f.reuse_build_step.summary_secs(),
    ]);
    t.row(vec![
        "… of which its deploy step (rollout)".into(),
        f.reuse_deploy_step.summary_secs(),
    ]);
    s.table(t);
    s.text(format!(
        "Targets: a force rebuild within {REBUILD_TARGET:.1}x of docker build + restart — {}: \
         {rebuild_ratio:.2}x ({:.2} s against {:.2} s + {:.2} s); a deployment whose build is \
         reused within restart + {:.0}% — {}: {reuse_ratio:.2}x ({:.2} s against {:.2} s).",
        met(rebuild_met),
        f.rebuild.median().as_secs_f64(),
        f.docker_build.median().as_secs_f64(),
        f.restart.median().as_secs_f64(),
        (REUSE_TARGET - 1.0) * 100.0,
        met(reuse_met),
        f.reuse.median().as_secs_f64(),
        f.restart.median().as_secs_f64(),
    ));
    let verdicts = vec![
        Verdict::new(
            "3a. Force rebuild, unchanged commit, warm cache",
            &format!("≤ {REBUILD_TARGET:.1}x docker build + restart"),
            format!("{rebuild_ratio:.2}x"),
            Some(rebuild_met),
        ),
        Verdict::new(
            "3b. Deployment with its build reused",
            &format!("≤ restart + {:.0}%", (REUSE_TARGET - 1.0) * 100.0),
            format!("{reuse_ratio:.2}x restart"),
            Some(reuse_met),
        ),
    ];
    (s, verdicts)
}

fn met(m: bool) -> &'static str {
    if m { "met" } else { "missed" }
}
