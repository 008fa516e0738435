//! What every benchmark runs on: the Docker engine, an embedded Slipway engine whose daemon ID
//! is the run's ID, its ingress on 127.0.0.1, the example app's image, and the clean-up.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bollard::Docker;
use slipway_engine::{Engine, EngineConfig};
use slipway_spec::{Deployment, Phase, parse_spec};
use slipway_testkit::Janitor;
use tokio_util::sync::CancellationToken;

/// How long a deployment may take before the run gives up on it.
const DEPLOYMENT_TIMEOUT: Duration = Duration::from_secs(240);

/// How many times each operation is repeated, and how long loads run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub quick: bool,
    /// Repetitions of each restart (Slipway, script, swarm).
    pub restart_reps: usize,
    /// Repetitions of each operation under heavy load.
    pub load_reps: usize,
    /// Connections of the heavy load.
    pub load_connections: usize,
    /// Rounds of the proxy-cost measurement, and how long each target is loaded per round.
    pub proxy_rounds: usize,
    pub proxy_duration: Duration,
    pub proxy_connections: usize,
    /// Repetitions of the build benchmarks.
    pub build_reps: usize,
    /// Repetitions of the one-commit fetch, and the files of its repository.
    pub fetch_reps: usize,
    pub fetch_files: usize,
    /// How long the daemon stays down after SIGKILL under load, and how long the steady load
    /// it is compared with runs.
    pub outlive_down: Duration,
    pub outlive_steady: Duration,
}

impl Settings {
    pub fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                quick,
                restart_reps: 2,
                load_reps: 1,
                load_connections: 200,
                proxy_rounds: 1,
                proxy_duration: Duration::from_secs(2),
                proxy_connections: 32,
                build_reps: 2,
                fetch_reps: 3,
                fetch_files: 10_000,
                outlive_down: Duration::from_secs(5),
                outlive_steady: Duration::from_secs(3),
            }
        } else {
            Settings {
                quick,
                restart_reps: 9,
                load_reps: 3,
                load_connections: 200,
                proxy_rounds: 3,
                proxy_duration: Duration::from_secs(5),
                proxy_connections: 32,
                build_reps: 5,
                fetch_reps: 10,
                fetch_files: 10_000,
                outlive_down: Duration::from_secs(60),
                outlive_steady: Duration::from_secs(10),
            }
        }
    }
}

/// The run's environment.
#[derive(Debug)]
pub struct Bench {
    pub docker: Docker,
    /// The run's ID: every Docker object it creates carries `slipway.daemon=<id>`.
    pub id: String,
    pub engine: Engine,
    /// Where Slipway's ingress listens (on 127.0.0.1).
    pub ingress: SocketAddr,
    pub settings: Settings,
    /// The example app's image, `repository:tag`.
    pub image: String,
    stop: CancellationToken,
    _data: tempfile::TempDir,
    /// Removes everything labelled with the run's ID when dropped, however the run ends.
    _janitor: Janitor,
}

/// The spec of the benchmarks' app: one service `web` of the example app from `source` (a
/// spec line, `git: …` or `image: …`), checked on `/healthz` every 50 ms, drained for at most
/// `drain_seconds` and given 5 s to stop.
pub fn web_spec(name: &str, source: &str, instances: usize, drain_seconds: u32) -> String {
    format!(
        r#"name: {name}
services:
  - name: web
    {source}
    instance_count: {instances}
    http_port: 8080
    health_check: {{http_path: /healthz, period_seconds: 0.05, failure_threshold: 200}}
    termination: {{drain_seconds: {drain_seconds}, grace_period_seconds: 5}}
"#
    )
}

/// A spec line for a git source on `main`.
pub fn git_source(url: &str) -> String {
    format!("git: {{repo_clone_url: \"{url}\", branch: main}}")
}

/// A spec line for a local image.
pub fn image_source(repository: &str, tag: &str) -> String {
    format!("image: {{repository: {repository}, tag: \"{tag}\"}}")
}

impl Bench {
    /// Connects to Docker, builds the example app's image and starts an engine and its ingress.
    pub async fn start(settings: Settings) -> anyhow::Result<Bench> {
        let docker = Docker::connect_with_local_defaults()
            .context("cannot connect to the Docker engine")?
            .negotiate_version()
            .await
            .context("cannot agree on an API version with the Docker engine")?;
        docker
            .ping()
            .await
            .context("the Docker engine does not answer")?;
        let id = slipway_testkit::unique("bench");
        let janitor = Janitor::new(&id);
        tokio::task::spawn_blocking(slipway_testkit::hello_binary)
            .await
            .context("the build task failed")??;
        let image = format!("slipway-bench-hello:{id}");
        slipway_testkit::build_hello_image(&docker, &image, &id, "v1")
            .await
            .context("cannot build the example app's image")?;
        let data = tempfile::Builder::new()
            .prefix("slipway-bench-")
            .tempdir()
            .context("cannot make a data directory")?;
        let mut config = EngineConfig::new(data.path());
        // The benchmarks build from repositories they make in temporary directories.
        config.allow_local_sources = true;
        config.daemon_id = id.clone();
        let engine = Engine::start(config, docker.clone())
            .await
            .context("cannot start the engine")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen for the ingress")?;
        let ingress = listener.local_addr()?;
        let stop = CancellationToken::new();
        tokio::spawn(slipway_ingress::serve(
            engine.ingress(),
            listener,
            stop.clone(),
        ));
        Ok(Bench {
            docker,
            id,
            engine,
            ingress,
            settings,
            image,
            stop,
            _data: data,
            _janitor: janitor,
        })
    }

    /// The repository and tag of the example app's image, for an `image:` component.
    pub fn image_parts(&self) -> (&str, &str) {
        self.image
            .split_once(':')
            .unwrap_or((&self.image, "latest"))
    }

    /// `--label slipway.daemon=<id>`'s value.
    pub fn label(&self) -> String {
        format!("{}={}", slipway_spec::labels::DAEMON, self.id)
    }

    /// Creates an app from a YAML spec and waits until its first deployment is active;
    /// returns the app's ID.
    pub async fn create_app(&self, yaml: &str) -> anyhow::Result<String> {
        let spec = parse_spec(yaml)
            .context("the bench's own spec is invalid")?
            .spec;
        let (app, first) = self.engine.create_app(spec).await?;
        self.wait_active(&first).await?;
        Ok(app.id)
    }

    /// Waits until a deployment has ended and fails unless it is ACTIVE.
    pub async fn wait_active(&self, d: &Deployment) -> anyhow::Result<Deployment> {
        let done = tokio::time::timeout(DEPLOYMENT_TIMEOUT, self.engine.wait(&d.app_id, &d.id))
            .await
            .with_context(|| {
                format!(
                    "deployment {} did not end within {} s",
                    d.id,
                    DEPLOYMENT_TIMEOUT.as_secs()
                )
            })??;
        if done.phase != Phase::Active {
            let why = done
                .progress
                .first_error()
                .map(|(_, r)| r.message.clone())
                .unwrap_or_default();
            bail!("deployment {} ended {}: {why}", done.id, done.phase);
        }
        Ok(done)
    }

    /// Restarts every component of an app and waits until the restart is ACTIVE; returns how
    /// long that took.
    pub async fn timed_restart(&self, app: &str) -> anyhow::Result<Duration> {
        Ok(self.restart(app).await?.0)
    }

    /// [`Bench::timed_restart`], with the deployment it made.
    pub async fn restart(&self, app: &str) -> anyhow::Result<(Duration, Deployment)> {
        let started = Instant::now();
        let d = self.engine.restart(app, &[]).await?;
        let d = self.wait_active(&d).await?;
        Ok((started.elapsed(), d))
    }

    /// Starts a build deployment (`force` rebuilds) and waits until it is ACTIVE.
    pub async fn timed_deployment(
        &self,
        app: &str,
        force: bool,
    ) -> anyhow::Result<(Duration, Deployment)> {
        let started = Instant::now();
        let d = self.engine.create_deployment(app, force, false).await?;
        let d = self.wait_active(&d).await?;
        Ok((started.elapsed(), d))
    }

    /// Where an app's `web` instances are published now, by container ID.
    pub async fn web_instances(&self, app: &str) -> anyhow::Result<Vec<(String, SocketAddr)>> {
        let mut out = Vec::new();
        for (component, _, instance) in self.engine.instances(app).await? {
            if component == "web"
                && let Some(addr) = instance.address(8080)
            {
                out.push((instance.id.clone(), addr));
            }
        }
        Ok(out)
    }

    /// The `Host` an app is served at through the ingress.
    pub fn host(&self, app_name: &str) -> String {
        format!("{app_name}.{}", self.engine.ingress().config().base_domain)
    }

    /// Stops the engine and the ingress and removes every Docker object of the run; returns
    /// how many objects were removed.
    pub async fn close(self) -> usize {
        self.stop.cancel();
        self.engine.shutdown().await;
        Janitor::sweep(&self.docker, &self.id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchmarks_specs_are_valid() {
        for source in [
            git_source("/tmp/repo"),
            image_source("slipway-bench-hello", "abc"),
        ] {
            let spec = parse_spec(&web_spec("bench-app", &source, 3, 5))
                .unwrap()
                .spec;
            let web = &spec.services[0];
            assert_eq!(web.instance_count, Some(3));
        }
    }
}
