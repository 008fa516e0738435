//! The engine on a swarm (`EngineConfig::swarm`), against the real Docker engine: a
//! single-node swarm (initialised for the test only when the engine is in none, and left again
//! only then) and Debian's `docker-registry` on loopback as the registry.
//!
//! One app is deployed, restarted and force-rebuilt under steady traffic through the ingress,
//! then given a version whose health check fails: its canary never passes, the deployment ends
//! in ERROR, and the previous version keeps serving. The same holds for an image without a
//! `HEALTHCHECK`, which Swarm alone would roll out unchecked. Another app checks that image retention and
//! the app's deletion reach the registry. Clean-up (services, containers, networks,
//! volumes, images, the swarm, the registry) runs from `Drop`, so also when an assertion fails.

mod common;

use std::time::{Duration, Instant};

use slipway_engine::{Engine, EngineConfig, LogKind, SwarmConfig};
use slipway_spec::{Deployment, Phase, StepStatus, parse_spec};
use slipway_testkit::{HelloRepo, LocalSwarm, Registry, Traffic, unique};
use tokio_util::sync::CancellationToken;

const UPDATE_TIMEOUT: Duration = Duration::from_secs(180);

async fn wait_for(engine: &Engine, d: &Deployment) -> Deployment {
    tokio::time::timeout(Duration::from_secs(300), engine.wait(&d.app_id, &d.id))
        .await
        .expect("the deployment ends within 5 minutes")
        .unwrap()
}

fn assert_active(d: &Deployment) {
    assert_eq!(
        d.phase,
        Phase::Active,
        "deployment failed: {:?}",
        d.progress.first_error()
    );
}

async fn deploy_log(engine: &Engine, d: &Deployment) -> Vec<String> {
    engine
        .store()
        .read_log(&d.id, LogKind::Deploy, None, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect()
}

/// The image and force-update counter of a component's Swarm service.
async fn service(docker: &bollard::Docker, app_id: &str, component: &str) -> (String, u64) {
    let name = slipway_swarm::service_name(app_id, component);
    let spec = docker
        .inspect_service(&name, None)
        .await
        .unwrap()
        .spec
        .unwrap();
    let task = spec.task_template.unwrap();
    (
        task.container_spec.unwrap().image.unwrap(),
        task.force_update.unwrap_or(0),
    )
}

/// An app of one `web` service from `repo` with `instances` tasks, a fast `/healthz` check,
/// a drain that Swarm honours (it serves for a second after its stop signal:
/// `STOP_DELAY_MS`), and `extra_env` lines appended to its envs.
fn checked_web(name: &str, repo: &HelloRepo, instances: u32, extra_env: &str) -> String {
    format!(
        "name: {name}\nservices:\n  - name: web\n    {git}\n    instance_count: {instances}\n    health_check: {{http_path: /healthz, period_seconds: 0.2, timeout_seconds: 1, failure_threshold: 3}}\n    termination: {{drain_seconds: 5, grace_period_seconds: 5}}\n    envs:\n      - {{key: STOP_DELAY_MS, value: \"1000\"}}\n{extra_env}",
        git = common::git(repo)
    )
}

/// Waits until `ready` tasks of the app's `web` serve through the engine's ingress, and serves
/// the ingress on loopback: a client that reaches the app by its name, the app's URL, and what
/// stops the ingress when dropped.
async fn through_ingress(
    engine: &Engine,
    app_id: &str,
    name: &str,
    ready: usize,
) -> (reqwest::Client, String, tokio_util::sync::DropGuard) {
    let ingress = engine.ingress();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ingress.ready_count(app_id, "web") < ready {
        assert!(
            Instant::now() < deadline,
            "the tasks never joined the ingress"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(slipway_ingress::serve(ingress, listener, stop.clone()));
    let host = format!("{name}.localhost");
    let http = reqwest::Client::builder()
        .resolve(&host, addr)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://{host}:{}/", addr.port());
    (http, url, stop.drop_guard())
}

/// An engine on the local swarm, and what it needs; the fields drop in order (the engine's
/// store first, the swarm's clean-up last).
struct World {
    engine: Engine,
    config: EngineConfig,
    docker: bollard::Docker,
    daemon_id: String,
    registry: Registry,
    _data: tempfile::TempDir,
    _local: LocalSwarm,
}

async fn world() -> Option<World> {
    world_with(false, |_| {}).await
}

/// [`world`], with a registry that refuses every push when `read_only`, and the engine's
/// settings changed by `configure`.
async fn world_with(read_only: bool, configure: impl FnOnce(&mut EngineConfig)) -> Option<World> {
    let docker = slipway_testkit::docker().await?;
    let registry = Registry::start(read_only)?;
    let mut local = LocalSwarm::join(&docker).await;
    let daemon_id = unique("swarm-engine");
    local.clean_up(&daemon_id);
    let data = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(data.path());
    config.allow_local_sources = true;
    config.daemon_id = daemon_id.clone();
    let mut swarm = SwarmConfig::new(&registry.addr);
    swarm.update_timeout = UPDATE_TIMEOUT;
    config.swarm = Some(swarm);
    configure(&mut config);
    let engine = Engine::start(config.clone(), docker.clone()).await.unwrap();
    assert!(engine.on_swarm());
    Some(World {
        engine,
        config,
        docker,
        daemon_id,
        registry,
        _data: data,
        _local: local,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_swarm_restart_and_rebuild_drop_no_request_and_a_failing_version_is_rolled_back() {
    let Some(world) = world().await else { return };
    let (engine, docker, daemon_id, registry) = (
        &world.engine,
        &world.docker,
        &world.daemon_id,
        &world.registry,
    );
    // It serves for a second after its stop signal, as Swarm needs (STOP_DELAY_MS).
    let repo = HelloRepo::with_healthcheck("v1").unwrap();
    let name = unique("swarm");
    let spec_yaml = |extra_env: &str| checked_web(&name, &repo, 3, extra_env);
    let spec = parse_spec(&spec_yaml("")).unwrap().spec;
    let (app, first) = engine.create_app(spec).await.unwrap();
    let first = wait_for(engine, &first).await;
    assert_active(&first);

    // The image was pushed, and the service runs it by digest, with 3 instance steps done.
    let image = first.services[0].image.clone().unwrap();
    let pushed = image.pushed.clone().expect("the image was pushed");
    assert!(
        pushed.starts_with(&format!("{}/slipway/", registry.addr)) && pushed.contains("@sha256:"),
        "{pushed}"
    );
    assert_eq!(service(docker, &app.id, "web").await, (pushed.clone(), 0));
    let mut progress = first.progress.clone();
    let web = progress.find_mut(&["deploy", "web"]).unwrap();
    assert_eq!(web.steps.len(), 3);
    assert!(
        web.steps.iter().all(|s| s.status == StepStatus::Success),
        "{web:?}"
    );
    let log = deploy_log(engine, &first).await;
    assert!(
        log.iter()
            .any(|l| l.starts_with("web: new task web.") && l.contains("is running")),
        "{log:?}"
    );
    // The tasks' containers carry the daemon's labels, and are the app's instances.
    let instances = engine.instances(&app.id).await.unwrap();
    assert_eq!(instances.len(), 3, "{instances:?}");

    // The ingress, fed with the tasks.
    let ingress = engine.ingress();
    let (http, url, _stop) = through_ingress(engine, &app.id, &name, 3).await;

    // Restart under load: the same image digest, every task replaced, no request failed.
    let running = Traffic::start(&http, &url, 4, 100_000, Duration::from_secs(180));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = engine.restart(&app.id, &[]).await.unwrap();
    let d = wait_for(engine, &d).await;
    assert_active(&d);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tally = running.finish().await;
    tally.assert_none_failed("the restart");
    eprintln!("restart: {} requests, none failed", tally.ok);
    assert!(tally.ok > 50, "the load ran: {} requests", tally.ok);
    assert!(tally.every_body_starts_with("hello from v1"));
    assert_eq!(service(docker, &app.id, "web").await, (pushed.clone(), 1));
    // The replaced tasks' stopped containers, which Swarm keeps, are not instances (once the
    // old tasks have stopped: they serve a second after their stop signal).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let after = engine.instances(&app.id).await.unwrap();
        if after.len() == 3 {
            assert!(after.iter().all(|(_, _, i)| i.running));
            break;
        }
        assert!(Instant::now() < deadline, "{after:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !d.progress.steps.iter().any(|s| s.name == "build"),
        "a restart builds nothing"
    );

    // Force rebuild of a new commit under load.
    repo.commit_version("v2").unwrap();
    let running = Traffic::start(&http, &url, 4, 100_000, Duration::from_secs(180));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = engine
        .create_deployment(&app.id, true, false)
        .await
        .unwrap();
    let rebuilt = wait_for(engine, &d).await;
    assert_active(&rebuilt);
    let v2 = rebuilt.services[0].image.clone().unwrap().pushed.unwrap();
    assert_ne!(v2, pushed);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = http.get(&url).send().await.unwrap().text().await.unwrap();
        if body.starts_with("hello from v2") && ingress.ready_count(&app.id, "web") == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "v2 never served alone: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tally = running.finish().await;
    tally.assert_none_failed("the rebuild");
    eprintln!("rebuild: {} requests, none failed", tally.ok);
    assert!(tally.ok > 50, "the load ran: {} requests", tally.ok);
    for _ in 0..30 {
        let body = http.get(&url).send().await.unwrap().text().await.unwrap();
        assert!(body.starts_with("hello from v2"), "{body}");
    }

    // A new version whose health check fails: its canary never passes, so the service is not
    // touched, the deployment is ERROR, and v2 serves throughout.
    let running = Traffic::start(&http, &url, 2, 100_000, Duration::from_secs(180));
    let broken = parse_spec(&spec_yaml("      - {key: HEALTHZ_FAIL, value: \"1\"}\n"))
        .unwrap()
        .spec;
    let (_, d) = engine.update_app(&app.id, broken).await.unwrap();
    let d = wait_for(engine, &d).await;
    assert_eq!(d.phase, Phase::Error, "{:?}", d.progress);
    // The component's step says why: the health check's answer, with the reason code.
    let (step, reason) = d.progress.first_error().expect("the failure is in a step");
    assert_eq!(step.name, "web", "{step:?}");
    assert_eq!(reason.code, "HealthCheckFailed", "{step:?}");
    assert!(
        reason
            .message
            .starts_with("web: the new version did not pass its health check")
            && reason.message.contains("500")
            && reason
                .message
                .contains("the previous version keeps running"),
        "{}",
        reason.message
    );
    eprintln!("the failed update: {}", reason.message);
    let tally = running.finish().await;
    tally.assert_none_failed("the failed update");
    assert!(tally.every_body_starts_with("hello from v2"));
    assert_eq!(service(docker, &app.id, "web").await.0, v2);
    let active = engine.store().active_deployment(&app.id).await.unwrap();
    assert_eq!(active.map(|a| a.id), Some(rebuilt.id));

    // Deleting the app removes its services.
    engine.delete_app(&app.id, true).await.unwrap();
    let left = docker
        .list_services(None::<bollard::query_parameters::ListServicesOptions>)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|s| s.labels.as_ref())
                .and_then(|l| l.get(slipway_spec::labels::DAEMON))
                == Some(daemon_id)
        })
        .count();
    assert_eq!(left, 0);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_swarm_jobs_databases_and_workers_run_and_a_restart_touches_only_what_it_names() {
    let Some(world) = world().await else { return };
    // Bound in this order so that the engine goes first and the swarm's clean-up last.
    let World {
        _local,
        _data,
        registry: _registry,
        docker,
        config,
        daemon_id,
        engine: first_engine,
    } = world;
    let (engine, docker, daemon_id) = (&first_engine, &docker, &daemon_id);
    let repo = HelloRepo::with_healthcheck("v1").unwrap();
    let db_image = format!("slipway-test-db:{daemon_id}");
    slipway_testkit::build_hello_image(docker, &db_image, daemon_id, "db")
        .await
        .unwrap();
    let name = unique("swarm-shop");
    // The app, with extra envs for web and for the worker, and extra components.
    let shop = |web_envs: &str, worker_envs: &str, more: &str| {
        parse_spec(&format!(
            r#"
name: {name}
services:
  - name: web
    {git}
    health_check: {{http_path: /healthz, period_seconds: 0.2, failure_threshold: 3}}
    envs: [{web_envs}]
workers:
  - name: worker
    {git}
    envs: [{{key: ROLE, value: worker}}{worker_envs}]
{more}databases:
  - name: db
    image: {{repository: slipway-test-db, tag: "{daemon_id}"}}
    data_dir: /data
    envs: [{{key: ROLE, value: db}}, {{key: DATA_DIR, value: /data}}]
jobs:
  - name: migrate
    kind: PRE_DEPLOY
    {git}
    envs: [{{key: ROLE, value: job}}]
"#,
            git = common::git(&repo),
        ))
        .unwrap()
        .spec
    };
    let spec = shop("", "", "");
    let (app, first) = engine.create_app(spec).await.unwrap();
    let first = wait_for(engine, &first).await;
    assert_active(&first);

    // The job ran to completion as a Swarm job, and its service is gone.
    let job_log = engine
        .store()
        .read_log(&first.id, LogKind::Deploy, Some("migrate"), 0)
        .await
        .unwrap();
    assert!(
        job_log.iter().any(|l| l.line.contains("job done"))
            && job_log
                .iter()
                .any(|l| l.line.contains("exited with code 0")),
        "{job_log:?}"
    );
    let short = slipway_swarm::short_id(&app.id);
    assert_eq!(
        app_services(docker, &app.id).await,
        ["db", "web", "worker"]
            .map(|c| format!("slipway-{short}-{c}"))
            .to_vec()
    );
    // The database is pinned to this node, with its labelled volume.
    let db = docker
        .inspect_service(&slipway_swarm::service_name(&app.id, "db"), None)
        .await
        .unwrap()
        .spec
        .unwrap();
    let constraints = db
        .task_template
        .unwrap()
        .placement
        .unwrap()
        .constraints
        .unwrap();
    assert_eq!(constraints.len(), 1);
    assert!(constraints[0].starts_with("node.id=="), "{constraints:?}");
    assert!(
        app_volumes(docker, &app.id).await == ["db"],
        "the database's volume carries the app's labels"
    );

    // A restart of the worker only: its tasks are replaced; web and db are not touched.
    let (web_image, web_force) = service(docker, &app.id, "web").await;
    let (worker_image, worker_force) = service(docker, &app.id, "worker").await;
    let db_before = db_version(docker, &app.id).await;
    let d = engine
        .restart(&app.id, &["worker".to_string()])
        .await
        .unwrap();
    let d = wait_for(engine, &d).await;
    assert_active(&d);
    assert_eq!(
        service(docker, &app.id, "worker").await,
        (worker_image, worker_force + 1)
    );
    assert_eq!(
        service(docker, &app.id, "web").await,
        (web_image.clone(), web_force)
    );
    assert_eq!(db_version(docker, &app.id).await, db_before);
    let log = deploy_log(engine, &d).await;
    assert!(
        log.iter().any(|l| l.starts_with("worker: new task"))
            && log
                .iter()
                .all(|l| !l.starts_with("web:") && !l.starts_with("migrate:")),
        "{log:?}"
    );

    // A deployment in which web fails while the worker changes and a second worker is new:
    // Swarm rolls web back, the engine returns the worker to its previous version and removes
    // the new worker. Nothing is left half-updated; the database is not touched.
    let broken = shop(
        r#"{key: HEALTHZ_FAIL, value: "1"}"#,
        r#", {key: EXTRA, value: "1"}"#,
        &format!(
            "  - name: worker2\n    {git}\n    envs: [{{key: ROLE, value: worker}}]\n",
            git = common::git(&repo)
        ),
    );
    let (_, failed) = engine.update_app(&app.id, broken).await.unwrap();
    let failed = wait_for(engine, &failed).await;
    assert_eq!(failed.phase, Phase::Error, "{:?}", failed.progress);
    let worker_env = |docker: &bollard::Docker| {
        let name = slipway_swarm::service_name(&app.id, "worker");
        let docker = docker.clone();
        async move {
            docker
                .inspect_service(&name, None)
                .await
                .unwrap()
                .spec
                .unwrap()
                .task_template
                .unwrap()
                .container_spec
                .unwrap()
                .env
                .unwrap_or_default()
        }
    };
    let env = worker_env(docker).await;
    assert!(
        env.contains(&"ROLE=worker".to_string()) && !env.iter().any(|e| e.starts_with("EXTRA=")),
        "the worker is back to its previous version: {env:?}"
    );
    assert_eq!(
        app_services(docker, &app.id).await,
        ["db", "web", "worker"]
            .map(|c| format!("slipway-{short}-{c}"))
            .to_vec(),
        "the new worker was removed"
    );
    assert_eq!(
        service(docker, &app.id, "web").await,
        (web_image, web_force)
    );
    assert_eq!(db_version(docker, &app.id).await, db_before);
    let active = engine.store().active_deployment(&app.id).await.unwrap();
    assert_eq!(active.map(|a| a.id), Some(d.id.clone()));

    // The daemon stops and starts again on the same data directory: the ingress follows the
    // tasks again, and the reconciler leaves the services as they are.
    engine.shutdown().await;
    drop(first_engine);
    let web_version = service_version(docker, &app.id, "web").await;
    let engine = &Engine::start(config, docker.clone()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine.ingress().ready_count(&app.id, "web") < 1 {
        assert!(
            Instant::now() < deadline,
            "the restarted engine never routed to the task"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(engine.reconcile(&app.id).await.unwrap().is_some());
    assert_eq!(service_version(docker, &app.id, "web").await, web_version);
    assert_eq!(db_version(docker, &app.id).await, db_before);

    // A service removed behind Slipway's back is created again by the reconciler, with the
    // active deployment's image.
    let (worker_image, _) = service(docker, &app.id, "worker").await;
    docker
        .delete_service(&slipway_swarm::service_name(&app.id, "worker"))
        .await
        .unwrap();
    let reconciled = engine.reconcile(&app.id).await.unwrap().unwrap();
    assert_eq!(reconciled.started, 1, "{reconciled:?}");
    assert_eq!(service(docker, &app.id, "worker").await.0, worker_image);

    // Deleting the app with purge removes its services and its database's volume.
    engine.delete_app(&app.id, true).await.unwrap();
    assert!(app_services(docker, &app.id).await.is_empty());
    assert!(
        app_volumes(docker, &app.id).await.is_empty(),
        "the volume was purged"
    );
    engine.shutdown().await;
}

/// The names of an app's Swarm services, sorted.
async fn app_services(docker: &bollard::Docker, app_id: &str) -> Vec<String> {
    let prefix = format!("slipway-{}-", slipway_swarm::short_id(app_id));
    let mut names: Vec<String> = docker
        .list_services(None::<bollard::query_parameters::ListServicesOptions>)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|s| s.spec.and_then(|s| s.name))
        .filter(|n| n.starts_with(&prefix))
        .collect();
    names.sort();
    names
}

/// The components of an app's volumes.
async fn app_volumes(docker: &bollard::Docker, app_id: &str) -> Vec<String> {
    docker
        .list_volumes(None::<bollard::query_parameters::ListVolumesOptions>)
        .await
        .unwrap()
        .volumes
        .unwrap_or_default()
        .into_iter()
        .filter(|v| v.labels.get(slipway_spec::labels::APP).map(String::as_str) == Some(app_id))
        .filter_map(|v| v.labels.get(slipway_spec::labels::COMPONENT).cloned())
        .collect()
}

/// The version (update counter) of the database's service.
async fn db_version(docker: &bollard::Docker, app_id: &str) -> u64 {
    service_version(docker, app_id, "db").await
}

/// The version (update counter) of a component's service.
async fn service_version(docker: &bollard::Docker, app_id: &str, component: &str) -> u64 {
    docker
        .inspect_service(&slipway_swarm::service_name(app_id, component), None)
        .await
        .unwrap()
        .version
        .and_then(|v| v.index)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_swarm_a_push_the_registry_refuses_fails_the_build_with_the_registrys_words() {
    let Some(world) = world_with(true, |_| {}).await else {
        return;
    };
    let (engine, docker) = (&world.engine, &world.docker);
    let repo = HelloRepo::with_healthcheck("v1").unwrap();
    let name = unique("swarm-refused");
    let spec = parse_spec(&format!(
        "name: {name}\nservices:\n  - name: web\n    {git}\n",
        git = common::git(&repo)
    ))
    .unwrap()
    .spec;
    let (app, d) = engine.create_app(spec).await.unwrap();
    let d = wait_for(engine, &d).await;
    assert_eq!(d.phase, Phase::Error);
    let (step, reason) = d.progress.first_error().expect("the failure is in a step");
    assert_eq!(step.name, "web", "{step:?}");
    assert_eq!(reason.code, "PushFailed");
    assert!(
        reason
            .message
            .contains(&format!("to the registry {} failed", world.registry.addr))
            && reason.message.contains("405"),
        "{}",
        reason.message
    );
    // Nothing was rolled out.
    assert!(app_services(docker, &app.id).await.is_empty());
    engine.shutdown().await;
}

/// The status `registry` answers for the manifest a pushed reference names
/// (`<registry>/<repository>:<tag>@<digest>`), asked by its tag.
async fn pushed_status(registry: &Registry, pushed: &str) -> u16 {
    let name = pushed
        .strip_prefix(&format!("{}/", registry.addr))
        .and_then(|rest| rest.split('@').next())
        .unwrap_or_else(|| panic!("{pushed} is not in {}", registry.addr));
    let (repository, tag) = name.rsplit_once(':').unwrap();
    registry.manifest_status(repository, tag).await
}

/// Image retention on a swarm reaches the registry: an image beyond `image_retention` is
/// deleted there as on the engine, and a deleted app leaves nothing in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_swarm_old_images_and_a_deleted_apps_images_leave_the_registry() {
    let Some(world) = world_with(false, |c| c.image_retention = 1).await else {
        return;
    };
    let (engine, docker) = (&world.engine, &world.docker);
    let repo = HelloRepo::with_healthcheck("v1").unwrap();
    let spec = parse_spec(&format!(
        "name: {}\nservices:\n  - name: web\n    {}\n    envs:\n      - {{key: STOP_DELAY_MS, value: \"1000\"}}\n",
        unique("swarm-keep"),
        common::git(&repo)
    ))
    .unwrap()
    .spec;
    let (app, first) = engine.create_app(spec).await.unwrap();
    let first = wait_for(engine, &first).await;
    assert_active(&first);
    let v1 = first.services[0].image.clone().unwrap();
    let v1_pushed = v1.pushed.clone().expect("the image was pushed");
    assert_eq!(pushed_status(&world.registry, &v1_pushed).await, 200);

    repo.commit_version("v2").unwrap();
    let second = engine
        .create_deployment(&app.id, true, false)
        .await
        .unwrap();
    let second = wait_for(engine, &second).await;
    assert_active(&second);
    let v2_pushed = second.services[0].image.clone().unwrap().pushed.unwrap();
    assert_ne!(v1_pushed, v2_pushed);
    // Old images go just after the deployment became ACTIVE.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pushed_status(&world.registry, &v1_pushed).await != 404 {
        assert!(
            Instant::now() < deadline,
            "v1 is still in the registry: {v1_pushed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // On the engine, the image loses the name the push gave it. Swarm keeps the containers of
    // replaced tasks as history, so the image itself goes at a later clean-up.
    let tagged = v1_pushed.split('@').next().unwrap();
    if let Ok(image) = docker.inspect_image(&v1.id).await {
        let tags = image.repo_tags.unwrap_or_default();
        assert!(!tags.iter().any(|t| t == tagged), "{tags:?}");
    }
    assert_eq!(
        pushed_status(&world.registry, &v2_pushed).await,
        200,
        "the image kept stays"
    );

    engine.delete_app(&app.id, false).await.unwrap();
    assert_eq!(
        pushed_status(&world.registry, &v2_pushed).await,
        404,
        "a deleted app's images leave the registry"
    );
    engine.shutdown().await;
}

/// The env of a component's Swarm service, as `KEY=value` entries.
async fn service_env(docker: &bollard::Docker, app_id: &str, component: &str) -> Vec<String> {
    let name = slipway_swarm::service_name(app_id, component);
    docker
        .inspect_service(&name, None)
        .await
        .unwrap()
        .spec
        .and_then(|s| s.task_template)
        .and_then(|t| t.container_spec)
        .and_then(|c| c.env)
        .unwrap_or_default()
}

/// When one component's update fails, the others are not waited for: they are returned to the
/// previous version at once, as on one engine, and the deployment fails without waiting for
/// the slowest of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_swarm_a_failing_component_stops_the_others_at_once() {
    let Some(world) = world().await else { return };
    let (engine, docker) = (&world.engine, &world.docker);
    let repo = HelloRepo::with_healthcheck("v1").unwrap();
    let name = unique("swarm-stop");
    // `slow`'s new version is ready only after 170 s, so its update alone would take that
    // long (its health check does not count failures until then).
    let spec_yaml = |web_env: &str, slow_env: &str, slow_delay: u32| {
        format!(
            "name: {name}\nservices:\n  - name: web\n    {git}\n    health_check: {{http_path: /healthz, period_seconds: 0.2, timeout_seconds: 1, failure_threshold: 3}}\n    envs:\n      - {{key: STOP_DELAY_MS, value: \"1000\"}}\n{web_env}  - name: slow\n    {git}\n    health_check: {{http_path: /healthz, period_seconds: 0.2, timeout_seconds: 1, failure_threshold: 3, initial_delay_seconds: {slow_delay}}}\n    envs:\n      - {{key: STOP_DELAY_MS, value: \"1000\"}}\n{slow_env}",
            git = common::git(&repo)
        )
    };
    let spec = parse_spec(&spec_yaml("", "", 0)).unwrap().spec;
    let (app, first) = engine.create_app(spec).await.unwrap();
    let first = wait_for(engine, &first).await;
    assert_active(&first);
    let slow_before = service(docker, &app.id, "slow").await.0;

    let broken = parse_spec(&spec_yaml(
        "      - {key: HEALTHZ_FAIL, value: \"1\"}\n",
        "      - {key: READY_DELAY_MS, value: \"170000\"}\n",
        170,
    ))
    .unwrap()
    .spec;
    let started = Instant::now();
    let (_, d) = engine.update_app(&app.id, broken).await.unwrap();
    let d = wait_for(engine, &d).await;
    let took = started.elapsed();
    assert_eq!(d.phase, Phase::Error, "{:?}", d.progress);
    let (_, reason) = d.progress.first_error().unwrap();
    let mut progress = d.progress.clone();
    let web = progress.find_mut(&["deploy", "web"]).unwrap();
    assert_eq!(
        web.reason.as_ref().map(|r| r.code.as_str()),
        Some("HealthCheckFailed"),
        "{reason:?}"
    );
    // Waiting for `slow` would have taken 170 s at least.
    assert!(
        took < Duration::from_secs(120),
        "the deployment waited for the slow component: {took:?}"
    );
    let log = deploy_log(engine, &d).await;
    assert!(
        log.iter()
            .any(|l| l == "slow: returning to the previous version"),
        "{log:?}"
    );
    // `slow` runs its previous spec again, without the delay.
    assert_eq!(service(docker, &app.id, "slow").await.0, slow_before);
    let env = service_env(docker, &app.id, "slow").await;
    assert!(
        !env.iter().any(|e| e.starts_with("READY_DELAY_MS=")),
        "{env:?}"
    );
    let active = engine.store().active_deployment(&app.id).await.unwrap();
    assert_eq!(active.map(|a| a.id), Some(first.id));
    engine.delete_app(&app.id, true).await.unwrap();
    engine.shutdown().await;
}

/// The spec's health check gates a Swarm rollout even when the image has no `HEALTHCHECK` of
/// its own (Swarm then knows of no check at all): a version whose `/healthz` answers 500 is
/// never served, the deployment fails with `HealthCheckFailed`, and the previous version keeps
/// serving every request. A restart's new tasks are checked too before it is ACTIVE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_swarm_the_specs_health_check_gates_a_version_whose_image_has_no_healthcheck() {
    let Some(world) = world().await else { return };
    let (engine, docker) = (&world.engine, &world.docker);
    let repo = HelloRepo::new("v1").unwrap();
    let name = unique("swarm-gate");
    let spec_yaml = |extra_env: &str| checked_web(&name, &repo, 2, extra_env);
    let spec = parse_spec(&spec_yaml("")).unwrap().spec;
    let (app, first) = engine.create_app(spec).await.unwrap();
    let first = wait_for(engine, &first).await;
    assert_active(&first);
    let v1 = first.services[0].image.clone().unwrap().pushed.unwrap();

    let (http, url, _stop) = through_ingress(engine, &app.id, &name, 2).await;

    // A new version whose /healthz answers 500, under load.
    let running = Traffic::start(&http, &url, 4, 100_000, Duration::from_secs(180));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let broken = parse_spec(&spec_yaml("      - {key: HEALTHZ_FAIL, value: \"1\"}\n"))
        .unwrap()
        .spec;
    let (_, d) = engine.update_app(&app.id, broken).await.unwrap();
    let d = wait_for(engine, &d).await;
    // The traffic goes on a moment after the end, in case a failed version was left serving.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = running.finish().await;
    assert_eq!(d.phase, Phase::Error, "{:?}", d.progress);
    let mut progress = d.progress.clone();
    let web = progress.find_mut(&["deploy", "web"]).unwrap();
    let reason = web.reason.clone().expect("the component's step failed");
    assert_eq!(reason.code, "HealthCheckFailed", "{}", reason.message);
    assert!(
        reason.message.starts_with("web: ")
            && reason.message.contains("GET /healthz answered 500")
            && reason
                .message
                .contains("the previous version keeps running"),
        "{}",
        reason.message
    );
    eprintln!("the failed update: {}", reason.message);
    tally.assert_none_failed("the failed update");
    eprintln!("failed update: {} requests, none failed", tally.ok);
    assert!(tally.ok > 50, "the load ran: {} requests", tally.ok);
    assert!(
        tally.every_body_starts_with("hello from v1"),
        "{:?}",
        tally.bodies.keys().take(5).collect::<Vec<_>>()
    );
    assert_eq!(service(docker, &app.id, "web").await.0, v1);
    let env = service_env(docker, &app.id, "web").await;
    assert!(
        !env.iter().any(|e| e.starts_with("HEALTHZ_FAIL=")),
        "{env:?}"
    );
    let active = engine.store().active_deployment(&app.id).await.unwrap();
    assert_eq!(active.map(|a| a.id), Some(first.id.clone()));
    // The canary is gone.
    assert_eq!(
        app_services(docker, &app.id).await,
        vec![slipway_swarm::service_name(&app.id, "web")]
    );

    // A restart: every new task answers its health check before the deployment is ACTIVE.
    let running = Traffic::start(&http, &url, 4, 100_000, Duration::from_secs(180));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = engine.restart(&app.id, &[]).await.unwrap();
    let d = wait_for(engine, &d).await;
    assert_active(&d);
    let tally = running.finish().await;
    tally.assert_none_failed("the restart");
    assert!(tally.every_body_starts_with("hello from v1"));
    let log = deploy_log(engine, &d).await;
    let passed = log
        .iter()
        .filter(|l| {
            l.starts_with("web: new task web.")
                && l.contains("passed its health check (GET /healthz answered 200")
        })
        .count();
    assert_eq!(passed, 2, "{log:?}");
    assert_eq!(service(docker, &app.id, "web").await, (v1, 1));

    engine.delete_app(&app.id, true).await.unwrap();
    engine.shutdown().await;
}
