//! Benchmark 3c: fetching one new commit of a repository of many files into its mirror, by
//! Slipway's source cache (libgit2) beside `git fetch` into an equivalent bare mirror.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use slipway_source::SourceCache;
use tokio_util::sync::CancellationToken;

use crate::cmd::Cmd;
use crate::report::{Section, Table, Verdict};
use crate::setup::Bench;
use crate::stats::{Timings, ratio, thousands};

/// The target: Slipway's fetch within this factor of git's.
const TARGET: f64 = 1.5;
const FILES_PER_DIR: usize = 100;

#[derive(Default)]
struct Figures {
    files: usize,
    git_version: String,
    first_slipway: Duration,
    first_git: Duration,
    slipway: Timings,
    git: Timings,
}

pub async fn run(bench: &Bench) -> anyhow::Result<(Section, Vec<Verdict>)> {
    let f = measure(bench).await?;
    Ok(write(&f))
}

/// Runs git in `dir`, as a fixed author.
fn git(dir: &Path) -> Cmd {
    Cmd::new("git").dir(dir).args([
        "-c",
        "user.name=Slipway Bench",
        "-c",
        "user.email=bench@slipway.invalid",
    ])
}

async fn measure(bench: &Bench) -> anyhow::Result<Figures> {
    let dir = tempfile::Builder::new()
        .prefix("slipway-bench-git-")
        .tempdir()
        .context("cannot make a directory for the repositories")?;
    let origin = dir.path().join("origin");
    let files = bench.settings.fetch_files;
    make_repository(&origin, files).await?;
    let url = origin.display().to_string();
    let cache = SourceCache::new(dir.path().join("cache")).allow_local_sources(true);
    let cancel = CancellationToken::new();
    let mirror = dir.path().join("mirror.git");

    let started = Instant::now();
    cache.fetch(&url, "main", &cancel).await?;
    let first_slipway = started.elapsed();
    let first_git = Cmd::new("git")
        .args(["clone", "--mirror", "--no-local", "--quiet", &url])
        .args([mirror.as_os_str()])
        .timeout(Duration::from_secs(300))
        .run()
        .await?
        .elapsed;

    let git_version = Cmd::new("git").args(["--version"]).run().await?.stdout;
    let mut f = Figures {
        files,
        git_version: git_version
            .trim()
            .trim_start_matches("git version ")
            .to_string(),
        first_slipway,
        first_git,
        ..Figures::default()
    };
    for rep in 0..bench.settings.fetch_reps {
        let head = commit_one_change(&origin, rep).await?;
        let slipway_first = rep % 2 == 0;
        if slipway_first {
            f.slipway
                .push(slipway_fetch(&cache, &url, &head, &cancel).await?);
        }
        f.git.push(git_fetch(&mirror, &head).await?);
        if !slipway_first {
            f.slipway
                .push(slipway_fetch(&cache, &url, &head, &cancel).await?);
        }
        println!(
            "    fetch {}: slipway {:.1} ms, git {:.1} ms",
            rep + 1,
            f.slipway.latest().as_secs_f64() * 1000.0,
            f.git.latest().as_secs_f64() * 1000.0
        );
    }
    Ok(f)
}

/// A repository of `files` small files in directories of 100, in one commit on `main`.
async fn make_repository(origin: &Path, files: usize) -> anyhow::Result<()> {
    for i in 0..files {
        let sub = origin.join(format!("d{:03}", i / FILES_PER_DIR));
        if i % FILES_PER_DIR == 0 {
            std::fs::create_dir_all(&sub)?;
        }
        let name = sub.join(format!("f{:03}.txt", i % FILES_PER_DIR));
        std::fs::write(name, format!("file {i}\n"))?;
    }
    git(origin)
        .args(["init", "--quiet", "--initial-branch", "main"])
        .run()
        .await?;
    git(origin).args(["add", "--all"]).run().await?;
    git(origin)
        .args(["commit", "--quiet", "--message", "many files"])
        .run()
        .await?;
    Ok(())
}

/// Changes one file, commits it and returns the commit's hash.
async fn commit_one_change(origin: &Path, rep: usize) -> anyhow::Result<String> {
    let file = origin.join("d000/f000.txt");
    let mut text = std::fs::read_to_string(&file)?;
    text.push_str(&format!("change {rep}\n"));
    std::fs::write(&file, text)?;
    git(origin)
        .args([
            "commit",
            "--quiet",
            "--all",
            "--message",
            &format!("change {rep}"),
        ])
        .run()
        .await?;
    Ok(git(origin)
        .args(["rev-parse", "HEAD"])
        .run()
        .await?
        .stdout
        .trim()
        .to_string())
}

async fn slipway_fetch(
    cache: &SourceCache,
    url: &str,
    head: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let fetched = cache.fetch(url, "main", cancel).await?;
    let took = started.elapsed();
    if fetched.commit != head {
        bail!("the source cache fetched {}, not {head}", fetched.commit);
    }
    Ok(took)
}

async fn git_fetch(mirror: &Path, head: &str) -> anyhow::Result<Duration> {
    let took = Cmd::new("git")
        .args(["-C"])
        .args([mirror.as_os_str()])
        .args(["fetch", "--quiet"])
        .run()
        .await?
        .elapsed;
    let fetched = Cmd::new("git")
        .args(["-C"])
        .args([mirror.as_os_str()])
        .args(["rev-parse", "refs/heads/main"])
        .run()
        .await?
        .stdout;
    if fetched.trim() != head {
        bail!("git fetched {}, not {head}", fetched.trim());
    }
    Ok(took)
}

fn write(f: &Figures) -> (Section, Vec<Verdict>) {
    let r = ratio(f.slipway.median(), f.git.median());
    let met = r <= TARGET;
    let mut s = Section::new("3c. Fetching one new commit of a large repository");
    s.text(format!(
        "A local git repository of {files} small files ({dirs} directories of \
         {FILES_PER_DIR}) in one commit is mirrored once by Slipway's source cache \
         (`SourceCache::fetch`: a bare mirror, only the branch fetched, with libgit2) and once \
         by `git clone --mirror --no-local` (git {git}). Then, {n} times, one file is changed \
         and committed, and the new commit is fetched into both mirrors, the two taking turns \
         to go first: `SourceCache::fetch` of `main` beside `git fetch` in the bare mirror \
         (a process started each time, as a script would). Both are checked to hold the new \
         commit.",
        files = thousands(f.files as u64),
        dirs = f.files.div_ceil(FILES_PER_DIR),
        git = f.git_version,
        n = f.slipway.len(),
    ));
    let mut t = Table::new(&["", "Slipway (libgit2)", "git CLI", "ratio"]);
    t.row(vec![
        "first mirror, once".into(),
        format!("{:.1} ms", f.first_slipway.as_secs_f64() * 1000.0),
        format!("{:.1} ms", f.first_git.as_secs_f64() * 1000.0),
        format!("{:.2}x", ratio(f.first_slipway, f.first_git)),
    ]);
    t.row(vec![
        "one new commit, median (min–max)".into(),
        f.slipway.summary_ms(),
        f.git.summary_ms(),
        format!("{r:.2}x"),
    ]);
    s.table(t);
    s.text(format!(
        "Target: within {TARGET:.1}x of git — {}: {r:.2}x.",
        if met { "met" } else { "missed" }
    ));
    let verdict = Verdict::new(
        &format!(
            "3c. Fetch one new commit, {} files",
            thousands(f.files as u64)
        ),
        &format!("≤ {TARGET:.1}x git fetch"),
        format!(
            "{r:.2}x ({:.1} vs {:.1} ms)",
            f.slipway.median().as_secs_f64() * 1000.0,
            f.git.median().as_secs_f64() * 1000.0
        ),
        Some(met),
    );
    (s, vec![verdict])
}
