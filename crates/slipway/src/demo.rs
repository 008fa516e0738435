//! `slipway demo`: the main job end to end, on a throwaway daemon.
//!
//! Builds the example app, makes a local git repository of it, deploys it, shows it
//! answering, restarts it (new containers, same image), commits a change, force-rebuilds,
//! shows the new version answering, prints every deployment, and removes all it created.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;
use slipway_spec::{Deployment, Phase};
use slipway_testkit::{HelloRepo, Janitor};

use crate::client::{Client, field};
use crate::output::{self, Format, OutputArgs};
use crate::serve::{Daemon, ServeArgs};
use crate::{paths, wait};

#[derive(Debug, Clone, Args)]
pub(crate) struct DemoArgs {
    /// Instances of the example service.
    #[arg(long, default_value_t = 3)]
    instances: u32,
}

/// Ctrl-C stopped the demo.
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the demo was interrupted")
    }
}

impl std::error::Error for Interrupted {}

fn say(text: &str) {
    println!("\n==> {text}");
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.instances == 0 {
        bail!("--instances must be at least 1");
    }
    println!(
        "Slipway demo: deploy, restart and force-rebuild examples/hello on a throwaway daemon."
    );
    say(
        "Building the example app as a static binary (its image is FROM scratch: no registry needed)",
    );
    let binary = tokio::task::spawn_blocking(slipway_testkit::hello_binary)
        .await
        .context("the build task failed")??;
    println!("    {}", binary.display());

    let data = tempfile::Builder::new()
        .prefix("slipway-demo-")
        .tempdir()
        .context("cannot make a temporary data directory")?;
    let daemon_id = format!("demo-{}", paths::random_hex(4));
    // Removes everything labelled with this daemon's ID when the demo ends, however it ends.
    let janitor = Janitor::new(&daemon_id);
    let serve = ServeArgs {
        data_dir: Some(data.path().to_path_buf()),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        token: Some(paths::random_hex(16)),
        ingress: SocketAddr::from(([127, 0, 0, 1], 0)),
        ingress_admin_address: None,
        // As in production: the ingress is a process of its own.
        ingress_process: crate::serve::IngressProcessArg::Auto,
        base_domain: "localhost".into(),
        https: crate::ingress::HttpsArgs::default(),
        acme_directory: None,
        acme_email: None,
        acme_ca_cert: None,
        acme_challenge: crate::serve::AcmeChallengeArg::Http01,
        git_credentials: Vec::new(),
        git_ssh_keys: Vec::new(),
        git_ca_cert: None,
        // The demo builds from a repository it makes in a temporary directory.
        allow_local_sources: true,
        tls_cert: None,
        tls_key: None,
        tls: None,
        runtime: crate::serve::RuntimeArg::Docker,
        registry: None,
        publish_on: crate::serve::PublishArg::Gateway,
        ingress_pipeline_depth: slipway_ingress::IngressConfig::default().pipeline_depth as u16,
        ingress_max_connections: slipway_ingress::IngressConfig::default().max_connections as u32,
        api_max_connections: slipway_api::server::ServerConfig::default().max_connections as u32,
        api_header_timeout_seconds: slipway_api::server::ServerConfig::default()
            .header_timeout
            .as_secs(),
        api_idle_timeout_seconds: slipway_api::server::ServerConfig::default()
            .idle_timeout
            .as_secs(),
        log_url_seconds: slipway_api::SIGNED_URL_SECONDS as u64,
        log_buffer_bytes: slipway_engine::EngineConfig::new(data.path()).log_buffer_bytes,
    };
    say("Starting a daemon (and its ingress process) on a temporary data directory");
    let daemon = Daemon::start(&serve, Some(daemon_id.clone())).await?;
    println!(
        "    API {}  ingress {}  data {}  daemon ID {daemon_id}",
        daemon.url(),
        daemon.ingress_addr,
        data.path().display()
    );
    let client = Client::new(&daemon.url(), &daemon.token)?;
    // Ctrl-C stops the demo wherever it is, and everything it made is removed all the same.
    let mut interrupted = false;
    let result = tokio::select! {
        result = scenario(&client, &daemon, args.instances) => result,
        _ = tokio::signal::ctrl_c() => {
            println!("\n\nInterrupted: removing everything the demo made (Ctrl-C again cannot stop the clean-up)");
            interrupted = true;
            Err(Interrupted.into())
        }
    };
    let refuse = tokio::spawn(async {
        while tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "    still cleaning up; the demo ends as soon as everything it made is removed"
            );
        }
    });
    say("Cleaning up: deleting the app and stopping the daemon and its ingress");
    if let Ok(apps) = client.get("/v2/apps").await {
        for app in apps["apps"].as_array().into_iter().flatten() {
            if let Some(id) = app["id"].as_str() {
                client
                    .delete(&format!("/v2/apps/{id}?purge=true"))
                    .await
                    .ok();
            }
        }
    }
    let stopped = daemon.stop_with_ingress().await;
    drop(janitor);
    drop(data);
    refuse.abort();
    stopped?;
    match &result {
        Ok(()) => println!("\nDone: everything the demo created has been removed."),
        Err(e) if interrupted || e.chain().any(|c| c.is::<Interrupted>()) => {
            println!("\nInterrupted: everything the demo created has been removed.")
        }
        Err(_) => println!("\nThe demo failed; everything it created has been removed."),
    }
    result
}

async fn scenario(client: &Client, daemon: &Daemon, instances: u32) -> anyhow::Result<()> {
    say("Making a local git repository of examples/hello (VERSION = v1)");
    let repo = HelloRepo::new("v1")?;
    println!("    {}", repo.path().display());

    let spec = json!({
        "name": "hello-demo",
        "services": [{
            "name": "web",
            "git": {"repo_clone_url": repo.url(), "branch": "main"},
            "instance_count": instances,
            "http_port": 8080,
            "health_check": {"http_path": "/healthz", "period_seconds": 0.5, "failure_threshold": 40},
            "termination": {"drain_seconds": 0, "grace_period_seconds": 10},
        }],
    });
    say(&format!(
        "Creating app hello-demo: build the image, start {instances} instances"
    ));
    let v = client.post("/v2/apps", &json!({"spec": spec})).await?;
    let app_id: String = v["app"]["id"]
        .as_str()
        .context("the API returned no app ID")?
        .to_string();
    let first: Deployment = field(v["app"].clone(), "in_progress_deployment")
        .or_else(|_| field(v["app"].clone(), "pending_deployment"))?;
    let first = finish(client, &app_id, first).await?;
    let before = show(daemon, &app_id).await?;

    say("Restarting: new containers from the exact same image, no fetch, no build");
    let live = daemon.engine.ingress().live_url("hello-demo");
    let load = Load::start(daemon, &live)?;
    let v = client
        .post(&format!("/v2/apps/{app_id}/restart"), &json!({}))
        .await?;
    let restart = finish(client, &app_id, field(v, "deployment")?).await?;
    load.report("the restart").await?;
    let after = show(daemon, &app_id).await?;
    let replaced = after.keys().filter(|id| !before.contains_key(*id)).count();
    let same_image = after
        .values()
        .all(|(img, _)| before.values().any(|(b, _)| b == img));
    println!(
        "    {replaced} of {} containers replaced; image unchanged: {}",
        after.len(),
        if same_image { "yes" } else { "NO" }
    );
    if replaced != after.len() || !same_image {
        bail!("the restart did not replace every container with the same image");
    }

    say("Committing VERSION = v2 and force-rebuilding: fetch, build, roll out");
    let commit = repo.commit_version("v2")?;
    println!("    commit {}", &commit[..12]);
    let load = Load::start(daemon, &live)?;
    let v = client
        .post(
            &format!("/v2/apps/{app_id}/deployments"),
            &json!({"force_build": true}),
        )
        .await?;
    let rebuild = finish(client, &app_id, field(v, "deployment")?).await?;
    load.report("the force rebuild").await?;
    let rebuilt = show(daemon, &app_id).await?;
    if !rebuilt.values().all(|(_, answer)| answer.contains("v2")) {
        bail!("after the force rebuild not every instance answers with v2");
    }

    say("Deployments");
    let v = client
        .get(&format!("/v2/apps/{app_id}/deployments"))
        .await?;
    let list: Vec<Deployment> = field(v.clone(), "deployments")?;
    let out = OutputArgs {
        output: Format::Text,
        format: ["ID", "Cause", "Phase", "Duration"]
            .map(String::from)
            .to_vec(),
        no_header: false,
    };
    output::deployments(&out, &v, &list)?;
    for d in [&first, &restart, &rebuild] {
        if !matches!(d.phase, Phase::Active | Phase::Superseded) {
            bail!("deployment {} ended {}", d.id, d.phase);
        }
    }
    Ok(())
}

/// Follows a deployment to its end with live progress.
async fn finish(client: &Client, app: &str, d: Deployment) -> anyhow::Result<Deployment> {
    let d = match wait::follow(client, app, d, false, None).await? {
        wait::Followed::Ended(d, _) => d,
        // Ctrl-C, seen first by the wait.
        wait::Followed::Interrupted(_) => return Err(Interrupted.into()),
    };
    println!(
        "    {}  {}  {}  {}",
        d.id,
        d.cause,
        d.phase,
        output::duration(&d)
    );
    if d.phase != Phase::Active {
        bail!("{}", wait::summary(&d));
    }
    Ok(d)
}

/// Clients sending requests through the ingress while a deployment runs.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(u64, u64, Vec<String>)>>,
}

impl Load {
    fn start(daemon: &Daemon, live_url: &str) -> anyhow::Result<Load> {
        let host = "hello-demo.localhost";
        let http = reqwest::Client::builder()
            .resolve(host, daemon.ingress_addr)
            .timeout(Duration::from_secs(10))
            .build()?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..4)
            .map(|_| {
                let (http, stop, url) = (http.clone(), stop.clone(), live_url.to_string());
                tokio::spawn(async move {
                    let (mut ok, mut failed, mut errors) = (0u64, 0u64, Vec::new());
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        match http.get(&url).send().await {
                            Ok(r) if r.status().is_success() => ok += 1,
                            Ok(r) => {
                                failed += 1;
                                errors.push(r.status().to_string());
                            }
                            Err(e) => {
                                failed += 1;
                                errors.push(e.to_string());
                            }
                        }
                    }
                    (ok, failed, errors)
                })
            })
            .collect();
        Ok(Load { stop, tasks })
    }

    async fn report(self, during: &str) -> anyhow::Result<()> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ok, mut failed, mut errors) = (0, 0, Vec::new());
        for t in self.tasks {
            let (o, f, e) = t.await?;
            ok += o;
            failed += f;
            errors.extend(e);
        }
        println!(
            "    {} requests through the ingress during {during}: {ok} answered, {failed} failed",
            ok + failed
        );
        if failed > 0 {
            bail!(
                "{failed} requests failed during {during}: {}",
                errors.join("; ")
            );
        }
        Ok(())
    }
}

/// Prints every instance of `web` and its answer; returns container ID to (image, answer).
async fn show(daemon: &Daemon, app: &str) -> anyhow::Result<BTreeMap<String, (String, String)>> {
    let http = reqwest::Client::builder()
        .resolve("hello-demo.localhost", daemon.ingress_addr)
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut out = BTreeMap::new();
    for (component, _, instance) in daemon.engine.instances(app).await? {
        let Some(addr) = instance.address(8080) else {
            continue;
        };
        let answer = http
            .get(format!("http://{addr}/"))
            .send()
            .await
            .with_context(|| format!("{} does not answer", instance.name))?
            .text()
            .await?;
        println!(
            "    {component} {}  image {}  {addr} -> {}",
            &instance.id[..12],
            &instance.image.trim_start_matches("sha256:")[..12],
            answer.trim()
        );
        out.insert(instance.id.clone(), (instance.image.clone(), answer));
    }
    let live = daemon.engine.ingress().live_url("hello-demo");
    let through = http
        .get(&live)
        .send()
        .await
        .context("the ingress does not answer")?
        .text()
        .await?;
    println!("    {live} -> {}", through.trim());
    Ok(out)
}
