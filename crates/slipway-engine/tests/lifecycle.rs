//! The deployment lifecycle against real Docker and a real store: what the store says is what
//! serves, when the store refuses the activation and when a cancel races the switch-over.

mod common;

use std::time::{Duration, Instant};

use common::{env, wait_ok};
use slipway_engine::EngineError;
use slipway_spec::{AppSpec, FailureCode, Phase, parse_spec};
use slipway_testkit::{build_hello_image, unique};

fn spec(name: &str, tag: &str, post_deploy: bool) -> AppSpec {
    let job = if post_deploy {
        format!(
            r#"
jobs:
  - name: notify
    kind: POST_DEPLOY
    image: {{repository: slipway-lifecycle, tag: "{tag}"}}
    envs: [{{key: ROLE, value: job}}, {{key: JOB_DURATION_MS, value: "3000"}}]
"#
        )
    } else {
        String::new()
    };
    parse_spec(&format!(
        r#"
name: {name}
services:
  - name: web
    image: {{repository: slipway-lifecycle, tag: "{tag}"}}
    health_check: {{http_path: /healthz, period_seconds: 0.1, failure_threshold: 50}}
{job}"#
    ))
    .unwrap()
    .spec
}

/// Two images of the example app under `slipway-lifecycle`, answering v1 and v2: their tags.
async fn two_versions(env: &common::Env, prefix: &str) -> (String, String) {
    let mut tags = Vec::new();
    for version in ["v1", "v2"] {
        let tag = format!("{prefix}-{version}-{}", env.daemon_id);
        let reference = format!("slipway-lifecycle:{tag}");
        build_hello_image(&env.docker, &reference, &env.daemon_id, version)
            .await
            .unwrap();
        tags.push(tag);
    }
    (tags.remove(0), tags.remove(0))
}

/// Follows deployment `id`'s announcements until its POST_DEPLOY job runs (the switch-over
/// has committed); returns the phases it was announced in.
async fn until_post_deploy(
    updates: &mut tokio::sync::broadcast::Receiver<slipway_engine::DeploymentUpdate>,
    id: &str,
) -> Vec<Phase> {
    let mut announced = Vec::new();
    loop {
        let u = tokio::time::timeout(Duration::from_secs(120), updates.recv())
            .await
            .expect("the deployment reaches its POST_DEPLOY job")
            .unwrap();
        if u.deployment.id != id {
            continue;
        }
        announced.push(u.deployment.phase);
        assert!(!u.deployment.phase.is_terminal(), "{:?}", u.deployment);
        if u.deployment
            .progress
            .running_path()
            .first()
            .is_some_and(|s| s == "post-deploy")
        {
            return announced;
        }
    }
}

/// What each running web instance answers on `/`.
async fn answers(env: &common::Env, app: &str) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for (component, _, instance) in env.engine.instances(app).await.unwrap() {
        let Some(addr) = instance
            .address(8080)
            .filter(|_| component == "web" && instance.running)
        else {
            continue;
        };
        let answer = client
            .get(format!("http://{addr}/"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        out.push(match answer {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => format!("no answer: {e}"),
        });
    }
    out
}

/// The deployment labels of the web instances that run.
async fn web_deployments(env: &common::Env, app: &str) -> Vec<String> {
    env.engine
        .instances(app)
        .await
        .unwrap()
        .into_iter()
        .filter(|(c, _, i)| c == "web" && i.running)
        .map(|(_, _, i)| i.deployment_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_the_activation_never_claims_it_and_the_previous_version_serves() {
    let Some(env) = env().await else { return };
    let (v1, v2) = two_versions(&env, "ro").await;
    let name = unique("readonly");
    let (app, first) = env.engine.create_app(spec(&name, &v1, true)).await.unwrap();
    let first = wait_ok(&env, &first).await;

    let mut updates = env.engine.subscribe();
    let (_, d) = env
        .engine
        .update_app(&app.id, spec(&name, &v2, true))
        .await
        .unwrap();
    // Every new instance is ready and the switch-over committed: the POST_DEPLOY job runs.
    // The store refuses every write from now on.
    let mut announced = until_post_deploy(&mut updates, &d.id).await;
    env.engine.store().set_read_only(true).await.unwrap();
    assert!(
        answers(&env, &app.id).await[0].starts_with("hello from v2"),
        "v2 serves during its POST_DEPLOY job"
    );

    // The activation is refused: v1 is back, and the store still says DEPLOYING.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let serving = web_deployments(&env, &app.id).await;
        if serving == [first.id.clone()]
            && answers(&env, &app.id)
                .await
                .iter()
                .all(|a| a.starts_with("hello from v1"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "v1 never came back: {serving:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = env.engine.deployment(&app.id, &d.id).await.unwrap();
    assert_eq!(stored.phase, Phase::Deploying, "{:?}", stored.progress);
    let active = env.engine.store().active_deployment(&app.id).await.unwrap();
    assert_eq!(active.map(|a| a.id), Some(first.id.clone()));
    while let Ok(u) = updates.try_recv() {
        if u.deployment.id == d.id {
            announced.push(u.deployment.phase);
        }
    }
    assert!(
        !announced.contains(&Phase::Active) && !announced.contains(&Phase::Error),
        "nothing the store did not take was announced: {announced:?}"
    );

    // The store takes writes again: the deployment ends in ERROR, saying why.
    env.engine.store().set_read_only(false).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), env.engine.wait(&app.id, &d.id))
        .await
        .expect("the final phase is written once the store takes it")
        .unwrap();
    assert_eq!(ended.phase, Phase::Error);
    let error = ended.error.expect("an ERROR deployment says why");
    assert_eq!(error.code, FailureCode::StoreFailed);
    assert!(
        error
            .message
            .contains("the store did not save the deployment as ACTIVE")
            && error.message.contains("the previous version was restored"),
        "{}",
        error.message
    );
    let active = env.engine.store().active_deployment(&app.id).await.unwrap();
    assert_eq!(active.map(|a| a.id), Some(first.id.clone()));
    assert_eq!(web_deployments(&env, &app.id).await, [first.id]);
    assert!(answers(&env, &app.id).await[0].starts_with("hello from v1"));
    env.engine.delete_app(&app.id, true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_the_switch_over_either_wins_or_is_refused_and_the_store_agrees() {
    let Some(env) = env().await else { return };
    let tag = format!("race-{}", env.daemon_id);
    build_hello_image(
        &env.docker,
        &format!("slipway-lifecycle:{tag}"),
        &env.daemon_id,
        "v1",
    )
    .await
    .unwrap();
    let (app, first) = env
        .engine
        .create_app(spec(&unique("race"), &tag, false))
        .await
        .unwrap();
    wait_ok(&env, &first).await;

    // How long a restart takes here, to spread the cancels over all of it.
    let started = Instant::now();
    let d = env.engine.restart(&app.id, &[]).await.unwrap();
    wait_ok(&env, &d).await;
    let restart = started.elapsed();
    eprintln!("one restart takes {restart:?}");

    const RUNS: u32 = 200;
    let (mut won, mut refused, mut ended) = (0, 0, 0);
    for i in 0..RUNS {
        let d = env.engine.restart(&app.id, &[]).await.unwrap();
        // From at once to a little after the restart would have ended.
        tokio::time::sleep(restart.mul_f64(f64::from(i % 40) / 32.0)).await;
        let answer = env.engine.cancel(&app.id, &d.id).await;
        let after = env.engine.wait(&app.id, &d.id).await.unwrap();
        match &answer {
            Ok(c) => {
                won += 1;
                assert_eq!((c.phase, after.phase), (Phase::Canceled, Phase::Canceled));
                assert_eq!(
                    after.error.as_ref().map(|e| e.code),
                    Some(FailureCode::Canceled)
                );
            }
            Err(EngineError::CancelRefused { .. }) => {
                refused += 1;
                assert_eq!(
                    after.phase,
                    Phase::Active,
                    "run {i}: refused, so it ends ACTIVE"
                );
            }
            Err(EngineError::AlreadyEnded { phase, .. }) => {
                ended += 1;
                assert_eq!((*phase, after.phase), (Phase::Active, Phase::Active));
            }
            Err(e) => panic!("run {i}: the cancel failed: {e}"),
        }
        // What serves is the ACTIVE deployment's instance, and only it.
        let active = env
            .engine
            .store()
            .active_deployment(&app.id)
            .await
            .unwrap()
            .expect("one deployment is ACTIVE");
        let expected = if after.phase == Phase::Active {
            after.id.clone()
        } else {
            active.id.clone()
        };
        assert_eq!(active.id, expected, "run {i}: {answer:?}");
        let serving = web_deployments(&env, &app.id).await;
        assert_eq!(
            serving,
            std::slice::from_ref(&active.id),
            "run {i}: {answer:?}"
        );
    }
    eprintln!("{RUNS} cancels: {won} won, {refused} refused while committing, {ended} too late");
    assert!(won > 0 && ended > 0, "the cancels came at every stage");
    env.engine.delete_app(&app.id, true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_once_the_switch_over_commits_is_refused_and_the_new_version_stays() {
    let Some(env) = env().await else { return };
    let (v1, v2) = two_versions(&env, "commit").await;
    let name = unique("committed");
    let (app, first) = env.engine.create_app(spec(&name, &v1, true)).await.unwrap();
    wait_ok(&env, &first).await;
    let mut updates = env.engine.subscribe();
    let (_, d) = env
        .engine
        .update_app(&app.id, spec(&name, &v2, true))
        .await
        .unwrap();
    // During its POST_DEPLOY job the switch-over has committed.
    until_post_deploy(&mut updates, &d.id).await;
    match env.engine.cancel(&app.id, &d.id).await {
        Err(EngineError::CancelRefused { reason, .. }) => {
            assert!(reason.contains("switch-over"), "{reason}")
        }
        other => panic!("a committed deployment's cancel answered {other:?}"),
    }
    let ended = wait_ok(&env, &d).await;
    assert!(ended.error.is_none());
    assert_eq!(
        web_deployments(&env, &app.id).await,
        std::slice::from_ref(&ended.id)
    );
    assert!(answers(&env, &app.id).await[0].starts_with("hello from v2"));
    env.engine.delete_app(&app.id, true).await.unwrap();
}
