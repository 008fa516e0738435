//! Rollouts that fail, jobs, and the image's own HEALTHCHECK, against real Docker.

mod common;

use std::time::Duration;

use common::{answers, containers, env, wait_ok};
use slipway_engine::LogKind;
use slipway_spec::{AppSpec, EnvVar, Phase, parse_spec};
use slipway_testkit::{build_hello_image, build_hello_image_with, unique};

fn set_env(envs: &mut Vec<EnvVar>, key: &str, value: &str) {
    envs.retain(|e| e.key != key);
    envs.push(EnvVar {
        key: key.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    });
}

async fn image(env: &common::Env, name: &str, extra: &str) -> (String, String) {
    let tag = format!("slipway-{name}:{}", env.daemon_id);
    build_hello_image_with(&env.docker, &tag, &env.daemon_id, "v1", extra)
        .await
        .unwrap();
    (format!("slipway-{name}"), env.daemon_id.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_that_fails_its_check_is_rolled_back_everywhere() {
    let Some(env) = env().await else { return };
    let (repo, tag) = image(&env, "rb", "").await;
    let name = unique("rollback");
    let spec: AppSpec = parse_spec(&format!(
        r#"
name: {name}
services:
  - name: web
    image: {{repository: {repo}, tag: "{tag}"}}
    instance_count: 3
    health_check: {{http_path: /healthz, period_seconds: 0.1, failure_threshold: 15}}
workers:
  - name: worker
    image: {{repository: {repo}, tag: "{tag}"}}
    envs: [{{key: ROLE, value: worker}}]
    rollout: {{min_ready_seconds: 0.1}}
"#
    ))
    .unwrap()
    .spec;
    let (app, first) = env.engine.create_app(spec.clone()).await.unwrap();
    let first = wait_ok(&env, &first).await;
    let before = containers(&env, &app.id).await;

    // Only run-time envs change: the web's new instances answer 500 on /healthz; the
    // worker's new instance is fine but must go back too.
    let mut broken = spec;
    set_env(&mut broken.services[0].envs, "HEALTHZ_FAIL", "1");
    set_env(&mut broken.workers[0].envs, "NEW", "1");
    let (_, d) = env.engine.update_app(&app.id, broken).await.unwrap();
    let d = env.engine.wait(&app.id, &d.id).await.unwrap();
    assert_eq!(d.phase, Phase::Error);
    let (step, reason) = d.progress.first_error().unwrap();
    assert_eq!(step.component_name.as_deref(), Some("web"));
    assert_eq!(reason.code, "InstanceFailed");
    let (top, top_reason) = d
        .progress
        .steps
        .iter()
        .find(|s| s.name == "deploy")
        .and_then(|s| s.steps.iter().find(|c| c.name == "web"))
        .and_then(|s| Some((s, s.reason.as_ref()?)))
        .expect("the web step says why");
    assert_eq!(top.name, "web");
    assert_eq!(top_reason.code, "HealthCheckFailed");
    assert_eq!(
        d.error.as_ref().map(|e| e.code),
        Some(slipway_spec::FailureCode::HealthCheckFailed)
    );
    let message = &top_reason.message;
    assert!(message.contains("web: instance slipway-"), "{message}");
    assert!(message.contains("GET /healthz answered 500"), "{message}");
    assert!(message.contains("its last log lines"), "{message}");
    assert!(
        message.contains("the previous version keeps running"),
        "{message}"
    );

    assert_eq!(
        env.engine
            .deployment(&app.id, &first.id)
            .await
            .unwrap()
            .phase,
        Phase::Active
    );
    let after = containers(&env, &app.id).await;
    assert_eq!(
        after["web"], before["web"],
        "the old web instances never stopped"
    );
    assert_eq!(after["worker"].len(), 1);
    let worker = slipway_rollout::DockerRuntime::new(env.docker.clone())
        .list(&[
            ("slipway.app", app.id.as_str()),
            ("slipway.component", "worker"),
        ])
        .await
        .unwrap();
    assert_eq!(worker.len(), 1);
    assert_eq!(
        worker[0].deployment_id, first.id,
        "the worker runs the previous deployment's version again"
    );
    let answers = answers(&env, &app.id).await;
    assert_eq!(answers.len(), 3);
    assert!(answers.iter().all(|a| a.starts_with("hello from v1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pre_deploy_job_rolls_nothing_and_failed_deploy_jobs_run() {
    let Some(env) = env().await else { return };
    let (repo, tag) = image(&env, "jobs", "").await;
    let name = unique("jobs");
    let spec: AppSpec = parse_spec(&format!(
        r#"
name: {name}
services:
  - name: web
    image: {{repository: {repo}, tag: "{tag}"}}
    health_check: {{http_path: /healthz, period_seconds: 0.1}}
jobs:
  - name: migrate
    kind: PRE_DEPLOY
    image: {{repository: {repo}, tag: "{tag}"}}
    envs: [{{key: ROLE, value: job}}]
  - name: notify
    kind: FAILED_DEPLOY
    image: {{repository: {repo}, tag: "{tag}"}}
    envs: [{{key: ROLE, value: job}}]
"#
    ))
    .unwrap()
    .spec;
    let (app, first) = env.engine.create_app(spec.clone()).await.unwrap();
    let first = wait_ok(&env, &first).await;
    let log = env
        .engine
        .store()
        .read_log(&first.id, LogKind::Deploy, Some("migrate"), 0)
        .await
        .unwrap();
    assert!(
        log.iter().any(|l| l.line.contains("job done, exit code 0")),
        "{log:?}"
    );
    let before = containers(&env, &app.id).await;
    assert!(
        !before.contains_key("notify"),
        "FAILED_DEPLOY jobs run only after a failure"
    );

    let mut failing = spec;
    set_env(&mut failing.jobs[0].envs, "JOB_EXIT_CODE", "3");
    let (_, d) = env.engine.update_app(&app.id, failing).await.unwrap();
    let d = env.engine.wait(&app.id, &d.id).await.unwrap();
    assert_eq!(d.phase, Phase::Error);
    let (step, reason) = d.progress.first_error().unwrap();
    assert_eq!(step.name, "migrate");
    assert_eq!(reason.code, "JobFailed");
    assert!(
        reason.message.starts_with("job migrate exited with code 3"),
        "{}",
        reason.message
    );
    assert!(
        reason.message.contains("job done, exit code 3"),
        "its output: {}",
        reason.message
    );
    let after = containers(&env, &app.id).await;
    assert_eq!(after["web"], before["web"], "nothing was rolled out");
    let notify = env
        .engine
        .store()
        .read_log(&d.id, LogKind::Deploy, Some("notify"), 0)
        .await
        .unwrap();
    assert!(
        notify.iter().any(|l| l.line.contains("exited with code 0")),
        "{notify:?}"
    );
    assert!(d.progress.steps.iter().any(|s| s.name == "failed-deploy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_images_own_healthcheck_gates_readiness() {
    let Some(env) = env().await else { return };
    let (repo, tag) = image(
        &env,
        "hc",
        "HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD [\"/hello\", \"check\"]\n",
    )
    .await;
    let name = unique("healthcheck");
    let spec: AppSpec = parse_spec(&format!(
        "name: {name}\nservices:\n  - name: web\n    image: {{repository: {repo}, tag: \"{tag}\"}}\n"
    ))
    .unwrap()
    .spec;
    let (app, first) = env.engine.create_app(spec.clone()).await.unwrap();
    let first = wait_ok(&env, &first).await;
    let web = &first
        .progress
        .steps
        .iter()
        .find(|s| s.name == "deploy")
        .unwrap()
        .steps[0];
    let took = web
        .ended_at
        .unwrap()
        .duration_since(web.started_at.unwrap());
    assert!(
        took.as_secs_f64() >= 0.9,
        "ready only once Docker said healthy, after {took:?}"
    );

    let mut failing = spec;
    set_env(&mut failing.services[0].envs, "HEALTHZ_FAIL", "1");
    let (_, d) = env.engine.update_app(&app.id, failing).await.unwrap();
    let d = env.engine.wait(&app.id, &d.id).await.unwrap();
    assert_eq!(d.phase, Phase::Error);
    let (_, reason) = d.progress.first_error().unwrap();
    assert!(
        reason
            .message
            .contains("the image's HEALTHCHECK says unhealthy"),
        "{}",
        reason.message
    );
    assert_eq!(
        env.engine
            .deployment(&app.id, &first.id)
            .await
            .unwrap()
            .phase,
        Phase::Active
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_with_the_same_app_name_never_collide() {
    let Some(a) = env().await else { return };
    let Some(b) = env().await else { return };
    let tag = format!("slipway-collide:{}", a.daemon_id);
    build_hello_image(&a.docker, &tag, &a.daemon_id, "v1")
        .await
        .unwrap();
    let spec: AppSpec = parse_spec(&format!(
        "name: same-name\nservices:\n  - name: web\n    image: {{repository: slipway-collide, tag: \"{}\"}}\n    instance_count: 2\n",
        a.daemon_id
    ))
    .unwrap()
    .spec;
    let ((app_a, da), (app_b, db)) = tokio::join!(
        async { a.engine.create_app(spec.clone()).await.unwrap() },
        async { b.engine.create_app(spec.clone()).await.unwrap() },
    );
    wait_ok(&a, &da).await;
    wait_ok(&b, &db).await;
    let ca = containers(&a, &app_a.id).await;
    let cb = containers(&b, &app_b.id).await;
    assert_eq!(ca["web"].len(), 2);
    assert_eq!(cb["web"].len(), 2);
    assert!(ca["web"].iter().all(|id| !cb["web"].contains(id)));
    let (ra, rb) = tokio::join!(
        a.engine.restart(&app_a.id, &[]),
        b.engine.restart(&app_b.id, &[])
    );
    wait_ok(&a, &ra.unwrap()).await;
    wait_ok(&b, &rb.unwrap()).await;
    a.engine.delete_app(&app_a.id, true).await.unwrap();
    assert_eq!(
        containers(&b, &app_b.id).await["web"].len(),
        2,
        "deleting one app left the other alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_fails_its_liveness_check_is_taken_out_and_replaced() {
    let Some(env) = env().await else { return };
    let (repo, tag) = image(&env, "live", "").await;
    let name = unique("liveness");
    // Ready on `/` at once; `/healthz` starts failing 1.5 s after an instance starts.
    let spec: AppSpec = parse_spec(&format!(
        r#"
name: {name}
services:
  - name: web
    image: {{repository: {repo}, tag: "{tag}"}}
    instance_count: 2
    envs: [{{key: HEALTHZ_FAIL_AFTER_MS, value: "1500"}}]
    health_check: {{http_path: /, period_seconds: 0.1}}
    liveness_health_check: {{http_path: /healthz, period_seconds: 0.2, failure_threshold: 2}}
"#
    ))
    .unwrap()
    .spec;
    let (app, d) = env.engine.create_app(spec).await.unwrap();
    wait_ok(&env, &d).await;
    let first = containers(&env, &app.id).await["web"].clone();
    let mut replaced = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = containers(&env, &app.id).await;
        let web = now.get("web").cloned().unwrap_or_default();
        if first.iter().all(|id| !web.contains(id)) && !web.is_empty() {
            replaced = true;
            break;
        }
    }
    assert!(
        replaced,
        "both instances failed their liveness check and were replaced"
    );
    env.engine.delete_app(&app.id, true).await.unwrap();
}
