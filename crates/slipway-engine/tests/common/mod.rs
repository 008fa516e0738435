//! What the engine's Docker tests share.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use slipway_engine::{Engine, EngineConfig};
use slipway_spec::{ComponentKind, Deployment, Phase};
use slipway_testkit::{HelloRepo, Janitor, unique};

pub struct Env {
    pub engine: Engine,
    pub docker: bollard::Docker,
    pub daemon_id: String,
    _data: tempfile::TempDir,
    _janitor: Janitor,
}

pub async fn env() -> Option<Env> {
    let docker = slipway_testkit::docker().await?;
    let daemon_id = unique("test");
    let janitor = Janitor::new(&daemon_id);
    let data = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(data.path());
    config.allow_local_sources = true;
    config.daemon_id = daemon_id.clone();
    config.worker_min_ready = Duration::from_millis(300);
    let engine = Engine::start(config, docker.clone()).await.unwrap();
    Some(Env {
        engine,
        docker,
        daemon_id,
        _data: data,
        _janitor: janitor,
    })
}

pub const HEALTH: &str =
    "health_check: {http_path: /healthz, period_seconds: 0.2, failure_threshold: 50}";

pub fn git(repo: &HelloRepo) -> String {
    format!("git: {{repo_clone_url: \"{}\", branch: main}}", repo.url())
}

/// Container IDs by component.
pub async fn containers(env: &Env, app: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (component, _, instance) in env.engine.instances(app).await.unwrap() {
        out.entry(component).or_default().push(instance.id);
    }
    for ids in out.values_mut() {
        ids.sort();
    }
    out
}

/// Image IDs by component.
pub async fn images(env: &Env, app: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (component, _, instance) in env.engine.instances(app).await.unwrap() {
        out.entry(component).or_default().push(instance.image);
    }
    out
}

/// GETs `/` from every instance of the service `web`.
pub async fn answers(env: &Env, app: &str) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for (component, kind, instance) in env.engine.instances(app).await.unwrap() {
        if component != "web" || kind != ComponentKind::Service {
            continue;
        }
        let addr = instance.address(8080).expect("web publishes 8080");
        let body = client
            .get(format!("http://{addr}/"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        out.push(body);
    }
    out
}

pub async fn wait_ok(env: &Env, d: &Deployment) -> Deployment {
    let d = tokio::time::timeout(Duration::from_secs(240), env.engine.wait(&d.app_id, &d.id))
        .await
        .expect("the deployment ends within 4 minutes")
        .unwrap();
    assert_eq!(
        d.phase,
        Phase::Active,
        "deployment failed: {:?}",
        d.progress.first_error()
    );
    d
}

/// Reads a file out of a container (through Docker's archive API).
pub async fn read_file(docker: &bollard::Docker, container: &str, path: &str) -> String {
    use futures::StreamExt;
    use std::io::Read;
    let options = bollard::query_parameters::DownloadFromContainerOptions { path: path.into() };
    let mut stream = docker.download_from_container(container, Some(options));
    let mut tar = Vec::new();
    while let Some(chunk) = stream.next().await {
        tar.extend_from_slice(&chunk.unwrap());
    }
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
    let mut out = String::new();
    entry.read_to_string(&mut out).unwrap();
    out
}
