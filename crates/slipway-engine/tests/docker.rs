//! The engine against a real Docker engine, real git repositories and a real SQLite store.

mod common;

use common::{HEALTH, answers, containers, env, git, images, wait_ok};
use slipway_engine::{EngineError, LogKind};
use slipway_spec::{Phase, StepStatus, parse_spec};
use slipway_testkit::{HelloRepo, build_hello_image, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_restart_and_force_rebuild() {
    let Some(env) = env().await else { return };
    let repo = HelloRepo::new("v1").unwrap();
    let db_image = format!("slipway-test-db:{}", env.daemon_id);
    build_hello_image(&env.docker, &db_image, &env.daemon_id, "db")
        .await
        .unwrap();
    let name = unique("shop");
    let spec = parse_spec(&format!(
        r#"
name: {name}
services:
  - name: web
    {git}
    instance_count: 2
    {HEALTH}
    termination: {{grace_period_seconds: 5}}
workers:
  - name: worker
    {git}
    envs: [{{key: ROLE, value: worker}}]
databases:
  - name: db
    image: {{repository: slipway-test-db, tag: "{tag}"}}
    data_dir: /data
    envs: [{{key: ROLE, value: db}}, {{key: DATA_DIR, value: /data}}]
jobs:
  - name: migrate
    kind: PRE_DEPLOY
    {git}
    envs: [{{key: ROLE, value: job}}]
"#,
        git = git(&repo),
        tag = env.daemon_id,
    ))
    .unwrap()
    .spec;

    // Create: builds, starts everything, ACTIVE, answers.
    let (app, first) = env.engine.create_app(spec).await.unwrap();
    assert_eq!(first.cause, "app created");
    let first = wait_ok(&env, &first).await;
    let web = first.component("web").unwrap();
    assert_eq!(web.source_commit_hash.as_deref().map(str::len), Some(40));
    let answers_v1 = answers(&env, &app.id).await;
    assert_eq!(answers_v1.len(), 2);
    assert!(
        answers_v1.iter().all(|a| a.starts_with("hello from v1")),
        "{answers_v1:?}"
    );
    let before = containers(&env, &app.id).await;
    let images_before = images(&env, &app.id).await;
    // No extra privileges, no host mounts: only the database's own volume.
    for ids in before.values() {
        for id in ids {
            let inspect = env.docker.inspect_container(id, None).await.unwrap();
            let host = inspect.host_config.unwrap();
            assert_ne!(host.privileged, Some(true));
            assert!(host.binds.unwrap_or_default().is_empty(), "no bind mounts");
            assert!(
                host.cap_add.unwrap_or_default().is_empty(),
                "no added capabilities"
            );
            for m in inspect.mounts.unwrap_or_default() {
                assert_eq!(m.typ.as_deref(), Some("volume"), "only volumes");
            }
        }
    }
    assert_eq!(before["web"].len(), 2);
    assert_eq!(before["worker"].len(), 1);
    assert_eq!(
        before["migrate"].len(),
        1,
        "the job's container is kept for its logs"
    );
    assert_eq!(before["db"].len(), 1);
    let job_log = env
        .engine
        .store()
        .read_log(&first.id, LogKind::Deploy, Some("migrate"), 0)
        .await
        .unwrap();
    assert!(
        job_log
            .iter()
            .any(|l| l.line.contains("exited with code 0")),
        "{job_log:?}"
    );

    // Restart with the source gone: nothing is fetched or built.
    let away = repo.path().with_extension("away");
    std::fs::rename(repo.path(), &away).unwrap();
    let restart = env.engine.restart(&app.id, &[]).await.unwrap();
    assert_eq!(restart.cause, "manual restart");
    assert_eq!(
        restart.phase,
        Phase::PendingDeploy,
        "a restart skips the build phases"
    );
    let restart = wait_ok(&env, &restart).await;
    std::fs::rename(&away, repo.path()).unwrap();
    assert!(restart.progress.steps.iter().all(|s| s.name != "build"));
    let build_log = env
        .engine
        .store()
        .read_log(&restart.id, LogKind::Build, None, 0)
        .await
        .unwrap();
    assert!(
        build_log.is_empty(),
        "a restart builds nothing: {build_log:?}"
    );
    let after = containers(&env, &app.id).await;
    let images_after = images(&env, &app.id).await;
    for c in ["web", "worker"] {
        assert_eq!(after[c].len(), before[c].len());
        assert!(
            after[c].iter().all(|id| !before[c].contains(id)),
            "{c}: every container is new"
        );
        assert_eq!(
            images_after[c], images_before[c],
            "{c}: the exact same image"
        );
    }
    assert_eq!(
        after["migrate"], before["migrate"],
        "jobs are not restarted"
    );
    assert_eq!(after["db"], before["db"], "databases are not restarted");
    let db = &after["db"][0];
    assert_eq!(
        common::read_file(&env.docker, db, "/data/boots")
            .await
            .lines()
            .count(),
        1,
        "the database booted once and kept its data"
    );
    let first_now = env.engine.deployment(&app.id, &first.id).await.unwrap();
    assert_eq!(first_now.phase, Phase::Superseded);
    assert!(
        answers(&env, &app.id)
            .await
            .iter()
            .all(|a| a.starts_with("hello from v1"))
    );

    // Force rebuild after a new commit: the new version answers.
    let commit = repo.commit_version("v2").unwrap();
    let rebuild = env
        .engine
        .create_deployment(&app.id, true, false)
        .await
        .unwrap();
    assert_eq!(rebuild.cause, "manual force rebuild");
    let rebuild = wait_ok(&env, &rebuild).await;
    assert_eq!(
        rebuild
            .component("web")
            .unwrap()
            .source_commit_hash
            .as_deref(),
        Some(commit.as_str())
    );
    let answers_v2 = answers(&env, &app.id).await;
    assert_eq!(answers_v2.len(), 2);
    assert!(
        answers_v2.iter().all(|a| a.starts_with("hello from v2")),
        "{answers_v2:?}"
    );
    let rebuilt = containers(&env, &app.id).await;
    assert_eq!(
        rebuilt["db"], before["db"],
        "the database keeps its container"
    );
    assert_ne!(images(&env, &app.id).await["web"], images_before["web"]);
    let log = env
        .engine
        .store()
        .read_log(&rebuild.id, LogKind::Build, Some("web"), 0)
        .await
        .unwrap();
    assert!(log.len() > 2, "the build's output is kept: {log:?}");

    assert_eq!(
        common::read_file(&env.docker, &rebuilt["db"][0], "/data/boots")
            .await
            .lines()
            .count(),
        1,
        "the rebuild did not restart the database"
    );

    // Every network and volume carries the app, component and deployment labels.
    let net = env
        .docker
        .inspect_network(&format!("slipway-{}", &app.id.replace('-', "")[..12]), None)
        .await
        .unwrap();
    let net_labels = net.labels.unwrap_or_default();
    assert_eq!(net_labels.get("slipway.app"), Some(&app.id));
    assert_eq!(net_labels.get("slipway.deployment"), Some(&first.id));
    assert!(net_labels.contains_key("slipway.component"));
    let volume_name = format!("slipway-{}-db", &app.id.replace('-', "")[..12]);
    let volume = env.docker.inspect_volume(&volume_name).await.unwrap();
    assert_eq!(
        volume.labels.get("slipway.component").map(String::as_str),
        Some("db")
    );
    assert_eq!(volume.labels.get("slipway.deployment"), Some(&first.id));

    // Delete: nothing of the app is left in Docker but the database's volume, kept without
    // --purge.
    env.engine.delete_app(&app.id, false).await.unwrap();
    assert!(
        env.docker.inspect_volume(&volume_name).await.is_ok(),
        "the data is kept"
    );
    assert!(env.engine.instances(&app.id).await.is_err());
    let left = slipway_rollout::DockerRuntime::new(env.docker.clone())
        .list(&[(slipway_spec::labels::APP, app.id.as_str())])
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_of_one_component_leaves_the_others_alone() {
    let Some(env) = env().await else { return };
    let repo = HelloRepo::new("v1").unwrap();
    let name = unique("pair");
    let spec = parse_spec(&format!(
        "name: {name}\nservices:\n  - name: web\n    {git}\n    {HEALTH}\n  - name: api\n    {git}\n    {HEALTH}\nworkers:\n  - name: worker\n    {git}\n    envs: [{{key: ROLE, value: worker}}]\n",
        git = git(&repo)
    ))
    .unwrap()
    .spec;
    let (app, first) = env.engine.create_app(spec).await.unwrap();
    wait_ok(&env, &first).await;
    let before = containers(&env, &app.id).await;

    let d = env
        .engine
        .restart(&name, &["web".to_string()])
        .await
        .unwrap();
    assert_eq!(d.restart_components, ["web"]);
    let d = wait_ok(&env, &d).await;
    let deployed: Vec<&str> = d
        .progress
        .steps
        .iter()
        .find(|s| s.name == "deploy")
        .unwrap()
        .steps
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(deployed, ["web"]);
    assert!(
        d.progress
            .steps
            .iter()
            .all(|s| s.status == StepStatus::Success)
    );
    let after = containers(&env, &app.id).await;
    assert_ne!(after["web"], before["web"]);
    assert_eq!(after["api"], before["api"]);
    assert_eq!(after["worker"], before["worker"]);

    // Unknown and unrestartable components are refused and nothing changes.
    let (_, count_before) = env
        .engine
        .store()
        .deployments(&app.id, 0, 100)
        .await
        .unwrap();
    match env
        .engine
        .restart(&app.id, &["web".into(), "nope".into()])
        .await
    {
        Err(EngineError::UnknownComponents { names, .. }) => assert_eq!(names, ["nope"]),
        other => panic!("expected an unknown component error, got {other:?}"),
    }
    let (_, count_after) = env
        .engine
        .store()
        .deployments(&app.id, 0, 100)
        .await
        .unwrap();
    assert_eq!(count_before, count_after, "no deployment was created");
    assert_eq!(containers(&env, &app.id).await, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_build_keeps_the_running_version() {
    let Some(env) = env().await else { return };
    let repo = HelloRepo::new("v1").unwrap();
    let name = unique("broken");
    let spec = parse_spec(&format!(
        "name: {name}\nservices:\n  - name: web\n    {git}\n    {HEALTH}\njobs:\n  - name: setup\n    image: {{repository: slipway-test-job, tag: \"{tag}\"}}\n    kind: POST_DEPLOY\n    envs: [{{key: ROLE, value: job}}]\n",
        git = git(&repo),
        tag = env.daemon_id,
    ))
    .unwrap()
    .spec;
    build_hello_image(
        &env.docker,
        &format!("slipway-test-job:{}", env.daemon_id),
        &env.daemon_id,
        "job",
    )
    .await
    .unwrap();
    let (app, first) = env.engine.create_app(spec).await.unwrap();
    let first = wait_ok(&env, &first).await;
    let before = containers(&env, &app.id).await;

    repo.write("Dockerfile", "FROM scratch\nTHIS IS NOT AN INSTRUCTION\n")
        .unwrap();
    repo.commit("break the Dockerfile").unwrap();
    let d = env
        .engine
        .create_deployment(&app.id, true, false)
        .await
        .unwrap();
    let d = env.engine.wait(&app.id, &d.id).await.unwrap();
    assert_eq!(d.phase, Phase::Error);
    let (step, reason) = d.progress.first_error().expect("an error step");
    assert_eq!(step.name, "web");
    assert_eq!(reason.code, "BuildFailed");
    assert!(
        reason
            .message
            .to_lowercase()
            .contains("unknown instruction"),
        "{}",
        reason.message
    );
    assert_eq!(
        env.engine
            .deployment(&app.id, &first.id)
            .await
            .unwrap()
            .phase,
        Phase::Active,
        "the previous deployment stays active"
    );
    assert_eq!(containers(&env, &app.id).await, before);
    assert!(
        answers(&env, &app.id)
            .await
            .iter()
            .all(|a| a.starts_with("hello from v1"))
    );

    // A branch that does not exist: a clear fetch error.
    let mut spec = env.engine.app(&app.id).await.unwrap().spec;
    spec.services[0].git.as_mut().unwrap().branch = Some("nope".into());
    let (_, d) = env.engine.update_app(&app.id, spec).await.unwrap();
    let d = env.engine.wait(&app.id, &d.id).await.unwrap();
    assert_eq!(d.phase, Phase::Error);
    let (_, reason) = d.progress.first_error().unwrap();
    assert_eq!(reason.code, "SourceFetchFailed");
    assert!(
        reason.message.contains("branch \"nope\" does not exist"),
        "{}",
        reason.message
    );
    assert_eq!(containers(&env, &app.id).await, before);
}
