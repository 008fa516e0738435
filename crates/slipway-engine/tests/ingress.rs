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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_domains_are_served_by_its_active_deployment_and_belong_to_it_alone() {
    let Some(env) = env().await else { return };
    let tag = format!("slipway-domains:{}", env.daemon_id);
    slipway_testkit::build_hello_image(&env.docker, &tag, &env.daemon_id, "v1")
        .await
        .unwrap();
    let (repository, tag) = tag.split_once(':').unwrap();
    let name = unique("domains");
    let domain = format!("{name}.example.com");
    let spec_with = |app: &str, domains: &str| {
        parse_spec(&format!(
            "name: {app}\n{domains}services:\n  - name: web\n    image: {{repository: {repository}, tag: \"{tag}\"}}\n    {HEALTH}\ningress:\n  rules:\n    - {{match: {{path: {{prefix: /old}}}}, redirect: {{uri: /, redirect_code: 301}}}}\n    - {{component: {{name: web}}}}\n"
        ))
        .unwrap()
        .spec
    };
    let (app, first) = env
        .engine
        .create_app(spec_with(
            &name,
            &format!("domains: [{{domain: {domain}, type: PRIMARY}}]\n"),
        ))
        .await
        .unwrap();
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
    let http = reqwest::Client::builder()
        .resolve(&domain, addr)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let get = |path: &str| {
        let url = format!("http://{domain}:{}{path}", addr.port());
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            let location = r
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_string());
            (r.status().as_u16(), location, r.text().await.unwrap())
        }
    };
    let (status, _, body) = get("/").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("hello from v1"), "{body}");
    let view = env
        .engine
        .app_view(&env.engine.app(&app.id).await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        view.live_url,
        Some(format!("http://{domain}:7480")),
        "the primary domain"
    );
    assert_eq!(
        view.default_ingress,
        Some(format!("http://{name}.localhost:7480"))
    );
    let (status, location, _) = get("/old/page").await;
    assert_eq!(status, 301);
    assert_eq!(location, Some(format!("https://{domain}/")));

    // Another app cannot take the domain, nor one under the base domain.
    let other = unique("thief");
    let refused = env
        .engine
        .create_app(spec_with(
            &other,
            &format!("domains: [{{domain: {domain}}}]\n"),
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(&format!(
            "domains[0].domain: \"{domain}\" is a domain of the app \"{name}\" already"
        )),
        "{refused}"
    );
    let refused = env
        .engine
        .create_app(spec_with(
            &other,
            &format!("domains: [{{domain: {other}.localhost}}]\n"),
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("domains[0].domain:") && refused.contains("is under localhost"),
        "{refused}"
    );
    // Its own app keeps it across an update.
    let (_, d) = env
        .engine
        .update_app(
            &app.id,
            spec_with(&name, &format!("domains: [{{domain: {domain}}}]\n")),
        )
        .await
        .unwrap();
    wait_ok(&env, &d).await;
    assert_eq!(get("/").await.0, 200);

    // Given up by its app, the domain is served no more, and another app may have it.
    let (_, d) = env
        .engine
        .update_app(&app.id, spec_with(&name, ""))
        .await
        .unwrap();
    wait_ok(&env, &d).await;
    assert_eq!(get("/").await.0, 404);
    let (_, d) = env
        .engine
        .create_app(spec_with(
            &other,
            &format!("domains: [{{domain: {domain}}}]\n"),
        ))
        .await
        .unwrap();
    wait_ok(&env, &d).await;
    let (status, _, body) = get("/").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("hello from v1"), "{body}");
}
