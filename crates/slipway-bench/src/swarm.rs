//! Docker Swarm's forced rolling update, for the restart benchmark: a service of the example
//! app's replicas (with an image HEALTHCHECK, so that start-first waits for health), created by
//! Slipway's Swarm runtime, updated with `docker service update --force --detach=false`, and,
//! taking turns with it on the same service, restarted by Slipway's Swarm runtime
//! (`slipway_swarm::Swarm::restart` and `wait`).
//!
//! Swarm is initialised (on 127.0.0.1) only when this node is not in a swarm, and left again
//! at the end only then; the service is removed at the end however the measurement ends.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::cmd::Cmd;
use crate::setup::Bench;
use crate::stats::Timings;

/// The network `docker swarm init` creates and `docker swarm leave` keeps.
const GWBRIDGE: &str = "docker_gwbridge";

/// The forced updates of one service: by the docker CLI, and by Slipway's Swarm runtime.
#[derive(Debug, Default)]
pub struct Updates {
    pub cli: Timings,
    pub slipway: Timings,
}

/// Times `reps` forced updates each way of a service of `replicas` replicas; `Err` says why
/// it could not be measured.
pub async fn measure(bench: &Bench, replicas: usize, reps: usize) -> Result<Updates, String> {
    let mut guard = match Swarm::join().await {
        Ok(g) => g,
        Err(e) => return Err(format!("{e:#}")),
    };
    let result = updates(bench, &mut guard, replicas, reps).await;
    guard.clean_up().await;
    result.map_err(|e| format!("{e:#}"))
}

async fn updates(
    bench: &Bench,
    swarm: &mut Swarm,
    replicas: usize,
    reps: usize,
) -> anyhow::Result<Updates> {
    let image = format!("slipway-bench-hello-hc:{}", bench.id);
    slipway_testkit::build_hello_image_with(
        &bench.docker,
        &image,
        &bench.id,
        "v1",
        "HEALTHCHECK --interval=50ms --timeout=1s CMD [\"/hello\", \"check\"]\n",
    )
    .await
    .context("cannot build the image with a HEALTHCHECK")?;
    let runtime = slipway_swarm::Swarm::connect(bench.docker.clone(), &bench.id)
        .await
        .context("Slipway's Swarm runtime cannot use this swarm")?;
    // The service as Slipway's runtime makes it: start-first one task at a time, the health
    // check's period (that of the image's HEALTHCHECK) as the monitor period.
    let def = slipway_swarm::ServiceDef {
        daemon_id: bench.id.clone(),
        app_id: bench.id.clone(),
        component: "web".into(),
        kind: Some(slipway_spec::ComponentKind::Service),
        deployment_id: bench.id.clone(),
        image: image.clone(),
        env: [("PORT".to_string(), "8080".to_string())].into(),
        replicas: u32::try_from(replicas).unwrap_or(u32::MAX),
        health_check: Some(slipway_spec::HealthCheck {
            period_seconds: Some(0.05),
            timeout_seconds: Some(1.0),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        termination: Some(slipway_spec::Termination {
            grace_period_seconds: Some(5.0),
            ..Default::default()
        }),
        ..Default::default()
    };
    let name = slipway_swarm::service_name(&def.app_id, &def.component);
    swarm.service = Some(name.clone());
    runtime.apply(&def).await?;
    runtime
        .wait(&name, "web", Duration::from_secs(120), |_| {})
        .await?;
    update(&name).await?;
    runtime_restart(&runtime, &def).await?;
    let mut times = Updates::default();
    for rep in 0..reps {
        // Taking turns to go first.
        let (cli, slipway) = if rep % 2 == 0 {
            let cli = update(&name).await?;
            (cli, runtime_restart(&runtime, &def).await?)
        } else {
            let slipway = runtime_restart(&runtime, &def).await?;
            (update(&name).await?, slipway)
        };
        println!(
            "    swarm update {}: docker CLI {:.2} s, Slipway's Swarm runtime {:.2} s",
            rep + 1,
            cli.as_secs_f64(),
            slipway.as_secs_f64()
        );
        times.cli.push(cli);
        times.slipway.push(slipway);
    }
    Ok(times)
}

/// One restart by Slipway's Swarm runtime, timed until every task runs the new spec.
async fn runtime_restart(
    runtime: &slipway_swarm::Swarm,
    def: &slipway_swarm::ServiceDef,
) -> anyhow::Result<Duration> {
    let started = std::time::Instant::now();
    let name = runtime.restart(def).await?;
    runtime
        .wait(&name, "web", Duration::from_secs(120), |_| {})
        .await?;
    Ok(started.elapsed())
}

/// One forced update, timed; fails unless Swarm says it completed.
async fn update(name: &str) -> anyhow::Result<Duration> {
    let out = Cmd::new("docker")
        .args([
            "service",
            "update",
            "--force",
            "--detach=false",
            "--quiet",
            name,
        ])
        .run()
        .await?;
    let state = Cmd::new("docker")
        .args([
            "service",
            "inspect",
            "--format",
            "{{.UpdateStatus.State}}",
            name,
        ])
        .run()
        .await?
        .stdout;
    if state.trim() != "completed" {
        bail!("the forced update of {name} ended {}", state.trim());
    }
    Ok(out.elapsed)
}

/// This node's part in a swarm for the time of the measurement.
#[derive(Debug)]
struct Swarm {
    /// This run initialised the swarm, and leaves it at the end.
    initialised: bool,
    gwbridge_existed: bool,
    service: Option<String>,
    cleaned: bool,
}

impl Swarm {
    /// Uses the swarm this node manages, or initialises one on 127.0.0.1.
    async fn join() -> anyhow::Result<Swarm> {
        let state = info("{{.Swarm.LocalNodeState}}").await?;
        let gwbridge_existed = Cmd::new("docker")
            .args(["network", "inspect", GWBRIDGE])
            .run()
            .await
            .is_ok();
        let mut swarm = Swarm {
            initialised: false,
            gwbridge_existed,
            service: None,
            cleaned: false,
        };
        match state.as_str() {
            "inactive" => {
                Cmd::new("docker")
                    .args(["swarm", "init", "--advertise-addr", "127.0.0.1"])
                    .run()
                    .await
                    .context("Swarm could not be initialised")?;
                swarm.initialised = true;
            }
            "active" if info("{{.Swarm.ControlAvailable}}").await? == "true" => {}
            "active" => bail!("this node is a Swarm worker, not a manager"),
            other => bail!("this node's Swarm state is {other}"),
        }
        Ok(swarm)
    }

    /// Removes the service and, when this run initialised the swarm, leaves it.
    async fn clean_up(&mut self) {
        if let Some(name) = self.service.take() {
            let _ = Cmd::new("docker")
                .args(["service", "rm", &name])
                .run()
                .await;
            wait_for_tasks_gone(&name).await;
        }
        if self.initialised {
            let _ = Cmd::new("docker")
                .args(["swarm", "leave", "--force"])
                .run()
                .await;
            if !self.gwbridge_existed {
                let _ = Cmd::new("docker")
                    .args(["network", "rm", GWBRIDGE])
                    .run()
                    .await;
            }
        }
        self.cleaned = true;
    }
}

impl Drop for Swarm {
    /// The clean-up of a measurement that did not end normally (a panic or an interruption).
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let run = |args: &[&str]| {
            let _ = std::process::Command::new("docker")
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        };
        if let Some(name) = self.service.take() {
            run(&["service", "rm", &name]);
        }
        if self.initialised {
            run(&["swarm", "leave", "--force"]);
            if !self.gwbridge_existed {
                run(&["network", "rm", GWBRIDGE]);
            }
        }
    }
}

async fn info(format: &str) -> anyhow::Result<String> {
    Ok(Cmd::new("docker")
        .args(["info", "--format", format])
        .run()
        .await?
        .stdout
        .trim()
        .to_string())
}

/// Waits (at most 30 s) until a removed service's containers are gone.
async fn wait_for_tasks_gone(name: &str) {
    let filter = format!("label=com.docker.swarm.service.name={name}");
    for _ in 0..150 {
        let left = Cmd::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .run()
            .await
            .map(|o| o.stdout.trim().to_string());
        if left.is_ok_and(|l| l.is_empty()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
