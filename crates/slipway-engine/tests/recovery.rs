//! The reconciler, queued and canceled deployments, timeouts, and recovery of deployments a
//! stopped daemon left unfinished, against real Docker.

mod common;

use std::time::Duration;

use common::{containers, env, wait_ok};
use slipway_engine::{Engine, EngineConfig};
use slipway_spec::{AppSpec, Phase, parse_spec};
use slipway_testkit::{HelloRepo, Janitor, build_hello_image, unique};

async fn image(env: &common::Env, name: &str) -> (String, String) {
    build_hello_image(
        &env.docker,
        &format!("slipway-{name}:{}", env.daemon_id),
        &env.daemon_id,
        "v1",
    )
    .await
    .unwrap();
    (format!("slipway-{name}"), env.daemon_id.clone())
}

fn docker_cli(args: &[&str]) {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes a container that carries no Slipway label (the janitor would not) when dropped.
struct Unlabelled(String);
impl Drop for Unlabelled {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.0])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_replaces_what_crashed_or_was_removed_and_touches_nothing_else() {
    let Some(env) = env().await else { return };
    let (repo, tag) = image(&env, "rec").await;
    let name = unique("reconcile");
    let spec: AppSpec = parse_spec(&format!(
        r#"
name: {name}
services:
  - name: web
    image: {{repository: {repo}, tag: "{tag}"}}
    instance_count: 2
    health_check: {{http_path: /healthz, period_seconds: 0.1}}
workers:
  - name: worker
    image: {{repository: {repo}, tag: "{tag}"}}
    envs: [{{key: ROLE, value: worker}}]
    rollout: {{min_ready_seconds: 0.1}}
databases:
  - name: db
    image: {{repository: {repo}, tag: "{tag}"}}
    data_dir: /data
    envs: [{{key: ROLE, value: db}}, {{key: DATA_DIR, value: /data}}]
"#
    ))
    .unwrap()
    .spec;
    let (app, d) = env.engine.create_app(spec).await.unwrap();
    wait_ok(&env, &d).await;
    let before = containers(&env, &app.id).await;
    let stranger = Unlabelled(unique("not-slipway"));
    docker_cli(&["create", "--name", &stranger.0, &format!("{repo}:{tag}")]);

    // One web instance stopped by hand, the worker and the database removed by hand.
    docker_cli(&["stop", "-t", "0", &before["web"][0]]);
    docker_cli(&["rm", "-f", &before["worker"][0]]);
    docker_cli(&["rm", "-f", &before["db"][0]]);
    let done = env
        .engine
        .reconcile(&app.id)
        .await
        .unwrap()
        .expect("no deployment runs");
    assert_eq!(done.started, 2, "a web instance and the worker");
    assert_eq!(done.removed, 1, "the stopped web instance");

    let after = containers(&env, &app.id).await;
    assert_eq!(after["web"].len(), 2);
    assert!(
        after["web"].contains(&before["web"][1]),
        "the healthy instance is kept"
    );
    assert!(!after["web"].contains(&before["web"][0]));
    assert_eq!(after["worker"].len(), 1);
    assert_ne!(after["worker"], before["worker"]);
    assert_eq!(after["db"].len(), 1);
    assert_eq!(
        common::read_file(&env.docker, &after["db"][0], "/data/boots")
            .await
            .lines()
            .count(),
        2,
        "the database came back on its volume"
    );
    assert_eq!(env.engine.ingress().ready_count(&app.id, "web"), 2);
    let out = std::process::Command::new("docker")
        .args(["inspect", &stranger.0])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "a container without Slipway's labels is never touched"
    );

    // Nothing to do: nothing changes.
    let done = env.engine.reconcile(&app.id).await.unwrap().unwrap();
    assert_eq!((done.started, done.removed), (0, 0));

    // A component the new spec drops is removed once the deployment is active.
    let mut spec = env.engine.app(&app.id).await.unwrap().spec;
    spec.workers.clear();
    let (_, d) = env.engine.update_app(&app.id, spec).await.unwrap();
    wait_ok(&env, &d).await;
    // The reconciler removes it just after the deployment became ACTIVE.
    let mut left = containers(&env, &app.id).await;
    for _ in 0..100 {
        if !left.contains_key("worker") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = containers(&env, &app.id).await;
    }
    assert!(!left.contains_key("worker"), "{left:?}");
    assert_eq!(left["web"].len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_deployments_are_superseded_and_cancel_works_in_every_phase() {
    let Some(env) = env().await else { return };
    let repo = HelloRepo::new("v1").unwrap();
    let name = unique("queue");
    let spec: AppSpec = parse_spec(&format!(
        "name: {name}\nservices:\n  - name: web\n    {}\n    instance_count: 2\n    {}\n",
        common::git(&repo),
        common::HEALTH
    ))
    .unwrap()
    .spec;
    let (app, d) = env.engine.create_app(spec.clone()).await.unwrap();
    wait_ok(&env, &d).await;
    let before = containers(&env, &app.id).await;

    // A build that never ends (its RUN step serves forever), canceled while it builds.
    repo.write(
        "Dockerfile",
        "FROM scratch\nCOPY hello /hello\nRUN [\"/hello\"]\n",
    )
    .unwrap();
    repo.commit("a build that hangs").unwrap();
    let building = env
        .engine
        .create_deployment(&app.id, true, false)
        .await
        .unwrap();
    for _ in 0..200 {
        let phase = env
            .engine
            .deployment(&app.id, &building.id)
            .await
            .unwrap()
            .phase;
        if phase == Phase::Building {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Queued behind it, one right after another: six more; only the newest of them will run,
    // whatever order their tasks happen to start in.
    let mut older = Vec::new();
    for _ in 0..5 {
        older.push(env.engine.restart(&app.id, &[]).await.unwrap());
    }
    let newest = env.engine.restart(&app.id, &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let canceled = env.engine.cancel(&app.id, &building.id).await.unwrap();
    assert_eq!(canceled.phase, Phase::Canceled);
    for (i, older) in older.iter().enumerate() {
        let older = env.engine.wait(&app.id, &older.id).await.unwrap();
        assert_eq!(
            older.phase,
            Phase::Superseded,
            "queued deployment {i} gives way to a newer one"
        );
        assert!(older.progress.steps.iter().any(|s| s.name == "superseded"));
    }
    let newest = wait_ok(&env, &newest).await;
    assert_eq!(newest.cause, "manual restart");

    // A restart whose new instances never become ready, canceled mid-rollout.
    let mut slow = spec.clone();
    slow.services[0].envs.push(slipway_spec::EnvVar {
        key: "READY_DELAY_MS".into(),
        value: Some("60000".into()),
        ..Default::default()
    });
    repo.write(
        "Dockerfile",
        &std::fs::read_to_string(
            slipway_testkit::workspace_root().join("examples/hello/Dockerfile"),
        )
        .unwrap(),
    )
    .unwrap();
    repo.commit("fix the build").unwrap();
    let mid = containers(&env, &app.id).await;
    let (_, rolling) = env.engine.update_app(&app.id, slow).await.unwrap();
    for _ in 0..400 {
        let d = env.engine.deployment(&app.id, &rolling.id).await.unwrap();
        if d.phase == Phase::Deploying {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let canceled = env.engine.cancel(&app.id, &rolling.id).await.unwrap();
    assert_eq!(canceled.phase, Phase::Canceled);
    assert_eq!(
        containers(&env, &app.id).await["web"],
        mid["web"],
        "the new instances are gone, the old ones run"
    );
    assert_eq!(
        env.engine
            .deployment(&app.id, &newest.id)
            .await
            .unwrap()
            .phase,
        Phase::Active
    );
    assert_ne!(mid["web"], before["web"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_never_ends_is_stopped_at_its_timeout() {
    let Some(docker) = slipway_testkit::docker().await else {
        return;
    };
    let daemon_id = unique("timeout");
    let _janitor = Janitor::new(&daemon_id);
    let data = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(data.path());
    config.allow_local_sources = true;
    config.daemon_id = daemon_id;
    config.build_timeout = Duration::from_secs(3);
    let engine = Engine::start(config, docker).await.unwrap();
    let repo = HelloRepo::new("v1").unwrap();
    repo.write(
        "Dockerfile",
        "FROM scratch\nCOPY hello /hello\nRUN [\"/hello\"]\n",
    )
    .unwrap();
    repo.commit("a build that hangs").unwrap();
    let spec = parse_spec(&format!(
        "name: {}\nservices:\n  - name: web\n    git: {{repo_clone_url: \"{}\", branch: main}}\n",
        unique("hang"),
        repo.url()
    ))
    .unwrap()
    .spec;
    let (app, d) = engine.create_app(spec).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(60), engine.wait(&app.id, &d.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.phase, Phase::Error);
    let (_, reason) = d.progress.first_error().unwrap();
    assert!(
        reason.message.contains("took longer than 3 s"),
        "{}",
        reason.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_serves_one_daemon_at_a_time() {
    let Some(docker) = slipway_testkit::docker().await else {
        return;
    };
    let daemon_id = unique("onedir");
    let _janitor = Janitor::new(&daemon_id);
    let data = tempfile::tempdir().unwrap();
    let first = engine_on(data.path(), &daemon_id, docker.clone()).await;

    let mut config = EngineConfig::new(data.path());
    config.daemon_id = daemon_id.clone();
    let err = Engine::start(config, docker.clone()).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains(&data.path().display().to_string())
            && message.contains(&format!("pid {}", std::process::id()))
            && message.contains("--data-dir"),
        "{message}"
    );

    first.shutdown().await;
    drop(first);
    let second = engine_on(data.path(), &daemon_id, docker).await;
    second.shutdown().await;
}

/// Starts an engine on an existing data dir and daemon ID.
async fn engine_on(data: &std::path::Path, daemon_id: &str, docker: bollard::Docker) -> Engine {
    let mut config = EngineConfig::new(data);
    config.allow_local_sources = true;
    config.daemon_id = daemon_id.to_string();
    Engine::start(config, docker).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_deployments_are_completed_when_proven_and_rolled_back_otherwise() {
    let Some(docker) = slipway_testkit::docker().await else {
        return;
    };
    let daemon_id = unique("recover");
    let _janitor = Janitor::new(&daemon_id);
    let tag = format!("slipway-recover:{daemon_id}");
    build_hello_image(&docker, &tag, &daemon_id, "v1")
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let spec = parse_spec(&format!(
        "name: {}\nservices:\n  - name: web\n    image: {{repository: slipway-recover, tag: \"{daemon_id}\"}}\n    instance_count: 2\n    health_check: {{http_path: /healthz, period_seconds: 0.1}}\n",
        unique("recover")
    ))
    .unwrap()
    .spec;

    let engine = engine_on(data.path(), &daemon_id, docker.clone()).await;
    let (app, first) = engine.create_app(spec).await.unwrap();
    let first = engine.wait(&app.id, &first.id).await.unwrap();
    let restart = engine.restart(&app.id, &[]).await.unwrap();
    let restart = engine.wait(&app.id, &restart.id).await.unwrap();
    assert_eq!(restart.phase, Phase::Active);
    engine.shutdown().await;
    drop(engine);

    // As if the daemon had stopped after every new instance was ready, before activation.
    let store = slipway_store::Store::open(&data.path().join("slipway.db"))
        .await
        .unwrap();
    let mut interrupted = restart.clone();
    interrupted.phase = Phase::Deploying;
    interrupted.ended_at = None;
    store.save_deployment(&interrupted).await.unwrap();
    let mut still_active = first.clone();
    still_active.phase = Phase::Active;
    store.save_deployment(&still_active).await.unwrap();
    drop(store);

    let engine = engine_on(data.path(), &daemon_id, docker.clone()).await;
    let completed = engine.deployment(&app.id, &restart.id).await.unwrap();
    assert_eq!(
        completed.phase,
        Phase::Active,
        "a proven rollout is completed"
    );
    assert!(
        completed
            .progress
            .steps
            .iter()
            .any(|s| s.name == "recovered")
    );
    assert_eq!(
        engine.deployment(&app.id, &first.id).await.unwrap().phase,
        Phase::Superseded
    );
    let web = || async {
        slipway_rollout::DockerRuntime::new(docker.clone())
            .list(&[
                ("slipway.app", app.id.as_str()),
                ("slipway.component", "web"),
            ])
            .await
            .unwrap()
    };
    let running = web().await;
    assert_eq!(running.len(), 2);
    assert!(running.iter().all(|i| i.deployment_id == restart.id));
    engine.shutdown().await;
    drop(engine);

    // As if the daemon had stopped mid-rollout: not proven, so it is rolled back.
    let store = slipway_store::Store::open(&data.path().join("slipway.db"))
        .await
        .unwrap();
    let mut half = completed.clone();
    half.phase = Phase::Deploying;
    half.ended_at = None;
    let deploy = half
        .progress
        .steps
        .iter_mut()
        .find(|s| s.name == "deploy")
        .unwrap();
    deploy.status = slipway_spec::StepStatus::Running;
    let web_step = deploy.steps.iter_mut().find(|s| s.name == "web").unwrap();
    web_step.status = slipway_spec::StepStatus::Running;
    web_step.steps[1].status = slipway_spec::StepStatus::Running;
    store.save_deployment(&half).await.unwrap();
    let mut back = first.clone();
    back.phase = Phase::Active;
    store.save_deployment(&back).await.unwrap();
    drop(store);

    let engine = engine_on(data.path(), &daemon_id, docker.clone()).await;
    let rolled_back = engine.deployment(&app.id, &restart.id).await.unwrap();
    assert_eq!(rolled_back.phase, Phase::Error);
    let (_, reason) = rolled_back.progress.first_error().unwrap();
    assert!(
        reason.message.contains("the previous version was restored"),
        "{}",
        reason.message
    );
    // The reconciler brings back two instances of the active deployment.
    let mut running = Vec::new();
    for _ in 0..100 {
        running = web().await;
        if running.len() == 2
            && running
                .iter()
                .all(|i| i.running && i.deployment_id == first.id)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(running.len(), 2, "{running:?}");
    assert!(
        running.iter().all(|i| i.deployment_id == first.id),
        "{running:?}"
    );
    engine.shutdown().await;
}

/// A Docker socket that can be cut: new connections are refused and open ones closed while it
/// is down.
struct FaultyDocker {
    path: std::path::PathBuf,
    up: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn docker_socket() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".into())
}

async fn faulty_docker() -> FaultyDocker {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docker.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let (up, watch) = tokio::sync::watch::channel(true);
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            if !*watch.borrow() {
                continue;
            }
            let mut watch = watch.clone();
            tokio::spawn(async move {
                let Ok(mut docker) = tokio::net::UnixStream::connect(docker_socket()).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut docker) => {}
                    _ = watch.wait_for(|up| !*up) => {}
                }
            });
        }
    });
    FaultyDocker {
        path,
        up,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_unreachable_fails_deployments_clearly_and_nothing_is_lost() {
    let Some(real) = slipway_testkit::docker().await else {
        return;
    };
    let daemon_id = unique("faulty");
    let _janitor = Janitor::new(&daemon_id);
    let tag = format!("slipway-faulty:{daemon_id}");
    build_hello_image(&real, &tag, &daemon_id, "v1")
        .await
        .unwrap();
    let faulty = faulty_docker().await;
    let docker = bollard::Docker::connect_with_unix(
        faulty.path.to_str().unwrap(),
        30,
        bollard::API_DEFAULT_VERSION,
    )
    .unwrap()
    .negotiate_version()
    .await
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let engine = engine_on(data.path(), &daemon_id, docker).await;
    let spec = parse_spec(&format!(
        "name: {}\nservices:\n  - name: web\n    image: {{repository: slipway-faulty, tag: \"{daemon_id}\"}}\n    health_check: {{http_path: /healthz, period_seconds: 0.1}}\n",
        unique("faulty")
    ))
    .unwrap()
    .spec;
    let (app, first) = engine.create_app(spec).await.unwrap();
    assert_eq!(
        engine.wait(&app.id, &first.id).await.unwrap().phase,
        Phase::Active
    );

    faulty.up.send_replace(false);
    let d = engine.restart(&app.id, &[]).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(120), engine.wait(&app.id, &d.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.phase, Phase::Error);
    let (_, reason) = d.progress.first_error().unwrap();
    assert!(
        reason.message.contains("Docker"),
        "the reason names Docker: {}",
        reason.message
    );
    // The store and the API's answers do not need Docker.
    let view = engine
        .app_view(&engine.app(&app.id).await.unwrap())
        .await
        .unwrap();
    assert_eq!(view.active_deployment.unwrap().id, first.id);

    faulty.up.send_replace(true);
    let d = engine.restart(&app.id, &[]).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(120), engine.wait(&app.id, &d.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.phase, Phase::Active, "{:?}", d.progress.first_error());
    engine.shutdown().await;
}

/// The ID of the image the app's `web` runs, and the labels Docker gives a container made
/// from it.
fn image_and_labels(container: &str) -> (String, serde_json::Value) {
    let out = std::process::Command::new("docker")
        .args(["inspect", container])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v[0]["Image"].as_str().unwrap().to_string(),
        v[0]["Config"]["Labels"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_started_by_hand_from_an_apps_image_are_not_the_apps() {
    let Some(env) = env().await else { return };
    let repo = HelloRepo::new("v1").unwrap();
    let name = unique("by-hand");
    let spec: AppSpec = parse_spec(&format!(
        "name: {name}\nservices:\n  - name: web\n    {}\n    instance_count: 2\n    health_check: {{http_path: /healthz, period_seconds: 0.1}}\n",
        common::git(&repo)
    ))
    .unwrap()
    .spec;
    let (app, d) = env.engine.create_app(spec).await.unwrap();
    wait_ok(&env, &d).await;
    let before = containers(&env, &app.id).await;
    let (image, labels) = image_and_labels(&before["web"][0]);
    // The image says whose it is under names of its own.
    assert_eq!(labels["slipway.image.app"], app.id.as_str(), "{labels}");
    assert_eq!(labels["slipway.image.daemon"], env.daemon_id.as_str());
    assert_eq!(labels["slipway.image.component"], "web");

    // An operator's `docker run` of the app's image, and one as it would be from an image an
    // earlier version of Slipway built (which carried the containers' label names).
    let debugging = Unlabelled(unique("debug"));
    docker_cli(&["run", "-d", "--name", &debugging.0, &image]);
    let older = Unlabelled(unique("older"));
    let app_label = format!("slipway.app={}", app.id);
    let daemon_label = format!("slipway.daemon={}", env.daemon_id);
    docker_cli(&[
        "run",
        "-d",
        "--name",
        &older.0,
        "--label",
        &app_label,
        "--label",
        &daemon_label,
        "--label",
        "slipway.component=web",
        &image,
    ]);
    let running = |name: &str| {
        let out = std::process::Command::new("docker")
            .args(["inspect", "-f", "{{.State.Running}}", name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "true"
    };

    let done = env.engine.reconcile(&app.id).await.unwrap().unwrap();
    assert_eq!(
        (done.started, done.removed),
        (0, 0),
        "the app's two instances run; nothing else is its"
    );
    assert_eq!(containers(&env, &app.id).await, before);

    let restart = env.engine.restart(&app.id, &[]).await.unwrap();
    wait_ok(&env, &restart).await;
    let after = containers(&env, &app.id).await;
    assert_eq!(after["web"].len(), 2, "{after:?}");
    assert!(after["web"].iter().all(|c| !before["web"].contains(c)));
    // The restart's task may still be ending (it holds the app's turn until then).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let done = loop {
        if let Some(done) = env.engine.reconcile(&app.id).await.unwrap() {
            break done;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restart never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((done.started, done.removed), (0, 0));
    assert!(running(&debugging.0), "the hand-started container runs on");
    assert!(running(&older.0), "the one from an older image runs on");

    // Deleting the app leaves them too (and its image, which they use).
    env.engine.delete_app(&app.id, false).await.unwrap();
    assert!(running(&debugging.0) && running(&older.0));
}
