//! Zero dropped requests through the ingress while a service is restarted and force-rebuilt,
//! against real Docker. The load is modest and lasts as long as the deployment; it is bounded
//! in time and count, and the test fails if it reached a bound before the deployment ended.

mod common;

use std::time::Duration;

use common::{HEALTH, env, git, wait_ok};
use slipway_spec::parse_spec;
use slipway_testkit::{HelloRepo, Traffic, unique};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_during_a_restart_or_a_force_rebuild() {
    let Some(env) = env().await else { return };
    let repo = HelloRepo::new("v1").unwrap();
    let name = unique("steady");
    let spec = parse_spec(&format!(
        "name: {name}\nservices:\n  - name: web\n    {git}\n    instance_count: 3\n    {HEALTH}\n    termination: {{drain_seconds: 5, grace_period_seconds: 5}}\n",
        git = git(&repo)
    ))
    .unwrap()
    .spec;
    let (app, first) = env.engine.create_app(spec).await.unwrap();
    wait_ok(&env, &first).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(slipway_ingress::serve(
        env.engine.ingress(),
        listener,
        stop.clone(),
    ));
    let _stop = stop.drop_guard();
    let host = format!("{name}.localhost");
    let http = reqwest::Client::builder()
        .resolve(&host, addr)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://{host}:{}/", addr.port());
    let view = env
        .engine
        .app_view(&env.engine.app(&app.id).await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        view.live_url.as_deref(),
        Some(format!("http://{host}:7480").as_str())
    );

    // Restart under load.
    let running = Traffic::start(&http, &url, 8, 50_000, Duration::from_secs(120));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = env.engine.restart(&app.id, &[]).await.unwrap();
    wait_ok(&env, &d).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tally = running.finish().await;
    tally.assert_none_failed("the restart");
    let ok = tally.ok;
    assert!(ok > 100, "the load ran: {ok} requests");

    // Force rebuild of a new commit under load.
    repo.commit_version("v2").unwrap();
    let running = Traffic::start(&http, &url, 8, 50_000, Duration::from_secs(120));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = env
        .engine
        .create_deployment(&app.id, true, false)
        .await
        .unwrap();
    wait_ok(&env, &d).await;
    let tally = running.finish().await;
    tally.assert_none_failed("the rebuild");
    assert!(
        tally.any_body_starts_with("hello from v1"),
        "{:?}",
        tally.bodies
    );
    assert!(
        tally.any_body_starts_with("hello from v2"),
        "the new version served during the load: {:?}",
        tally.bodies
    );
    for _ in 0..20 {
        let body = http.get(&url).send().await.unwrap().text().await.unwrap();
        assert!(
            body.starts_with("hello from v2"),
            "after the rebuild every answer is the new version: {body}"
        );
    }
    let r = http
        .get(format!("http://{host}:{}/headers", addr.port()))
        .send()
        .await
        .unwrap();
    let headers = r.text().await.unwrap().to_ascii_lowercase();
    assert!(headers.contains("x-forwarded-for: 127.0.0.1"), "{headers}");
}
