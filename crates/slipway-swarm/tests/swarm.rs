//! The Swarm runtime against the real Docker engine: a single-node swarm (initialised for the
//! test only when the engine is in none, and left again only then) and Debian's
//! `docker-registry` on loopback as the registry every node pulls from.
//!
//! The scenarios run one at a time (they share the swarm); each has its own daemon ID, app ID
//! and names, and its clean-up (services, containers, volumes, networks, images, the swarm,
//! the registry) runs from `Drop`, so also when an assertion fails.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener as StdListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use slipway_ingress::{Ingress, IngressConfig};
use slipway_spec::{AppSpec, ComponentKind, HealthCheck, ServiceSpec, labels};
use slipway_swarm::{
    EndpointEvent, ServiceDef, Swarm, SwarmError, TaskEvent, follow_endpoints, push, unpush,
    unpush_repository,
};
use slipway_testkit::{
    HELLO_HEALTHCHECK, Janitor, LocalSwarm, Registry, Traffic, build_hello_image_with, unique,
};
use tokio_util::sync::CancellationToken;

const UPDATE_TIMEOUT: Duration = Duration::from_secs(120);

/// One scenario's world: the swarm, the registry, a daemon ID that labels everything. The
/// scenarios run one at a time ([`LocalSwarm`] is held by one test at a time).
struct Fixture {
    docker: Docker,
    swarm: Swarm,
    daemon_id: String,
    app_id: String,
    registry: Registry,
    _local: LocalSwarm,
}

async fn fixture() -> Option<Fixture> {
    let docker = slipway_testkit::docker().await?;
    let registry = Registry::start(false)?;
    if LocalSwarm::state(&docker).await == "inactive" {
        // Outside a swarm, the runtime refuses clearly.
        let err = Swarm::connect(docker.clone(), "none").await.unwrap_err();
        assert!(
            matches!(&err, SwarmError::NotInSwarm { state } if state == "inactive"),
            "{err:?}"
        );
        assert!(err.to_string().contains("docker swarm init"), "{err}");
    }
    let mut local = LocalSwarm::join(&docker).await;
    let daemon_id = unique("swarm-test");
    local.clean_up(&daemon_id);
    let swarm = Swarm::connect(docker.clone(), &daemon_id).await.unwrap();
    swarm.check_nodes(None).await.unwrap();
    Some(Fixture {
        swarm,
        docker,
        app_id: unique("app"),
        daemon_id,
        registry,
        _local: local,
    })
}

impl Fixture {
    fn registry(&self) -> &str {
        &self.registry.addr
    }

    /// Builds the hello image at `version` (with a HEALTHCHECK), pushes it, and returns the
    /// reference pinned by digest.
    async fn image(&self, version: &str) -> String {
        self.image_with(version, HELLO_HEALTHCHECK).await
    }

    /// [`Fixture::image`] with `extra` Dockerfile lines instead of the HEALTHCHECK.
    async fn image_with(&self, version: &str, extra: &str) -> String {
        let tag = format!("slipway-swarm-test/{}:{version}", self.app_id);
        build_hello_image_with(&self.docker, &tag, &self.daemon_id, version, extra)
            .await
            .unwrap();
        push(
            &self.docker,
            &tag,
            self.registry(),
            &format!("slipway/{}-web", self.app_id),
            version,
        )
        .await
        .unwrap()
    }

    fn web(&self, image: &str, replicas: u32) -> ServiceDef {
        ServiceDef {
            daemon_id: self.daemon_id.clone(),
            app_id: self.app_id.clone(),
            component: "web".into(),
            kind: Some(ComponentKind::Service),
            deployment_id: unique("dep"),
            image: image.into(),
            // hello keeps serving for a second after its stop signal, as Swarm requires.
            env: BTreeMap::from([("STOP_DELAY_MS".into(), "1000".into())]),
            replicas,
            http_port: Some(8080),
            health_check: Some(HealthCheck {
                http_path: Some("/healthz".into()),
                period_seconds: Some(0.2),
                timeout_seconds: Some(1.0),
                failure_threshold: Some(3),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn running_tasks(events: &[TaskEvent]) -> BTreeMap<String, TaskEvent> {
    let mut last = BTreeMap::new();
    for e in events {
        last.insert(e.task_id.clone(), e.clone());
    }
    last.retain(|_, e| e.state == "running" && e.desired == "running");
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_rebuild_of_three_replicas_under_traffic_drop_no_request() {
    let Some(f) = fixture().await else { return };
    let v1 = f.image("v1").await;
    assert!(v1.contains("@sha256:"), "{v1}");
    let def = f.web(&v1, 3);
    let name = f.swarm.apply(&def).await.unwrap();
    let mut events = Vec::new();
    f.swarm
        .wait(&name, "web", UPDATE_TIMEOUT, |e| events.push(e.clone()))
        .await
        .unwrap();
    let first = running_tasks(&events);
    assert_eq!(first.len(), 3, "{events:?}");

    // Labels on the service and on its containers.
    let service = f.docker.inspect_service(&name, None).await.unwrap();
    let spec = service.spec.unwrap();
    assert_eq!(spec.labels.unwrap()[labels::DAEMON], f.daemon_id);
    let filters = HashMap::from([(
        "label",
        vec![format!("com.docker.swarm.service.name={name}")],
    )]);
    let containers = f
        .docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap();
    assert_eq!(containers.len(), 3);
    for c in &containers {
        let l = c.labels.clone().unwrap();
        assert_eq!(l[labels::DAEMON], f.daemon_id);
        assert_eq!(l[labels::APP], f.app_id);
        assert_eq!(l[labels::COMPONENT], "web");
        assert_eq!(l[labels::KIND], "service");
    }

    // The ingress, fed by the tasks' endpoints on 127.0.0.1.
    let ingress = Ingress::new(IngressConfig::default());
    let app_name = unique("swarm");
    ingress.set_app(
        &f.app_id,
        &AppSpec {
            name: app_name.clone(),
            services: vec![ServiceSpec {
                name: "web".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    let feed = Arc::clone(&ingress);
    let app_id = f.app_id.clone();
    let _follower = follow_endpoints(
        f.swarm.clone(),
        name.clone(),
        8080,
        Some("/healthz".into()),
        move |e| match e {
            EndpointEvent::Ready { task_id, addr } => {
                assert!(addr.ip().is_loopback(), "{addr}");
                feed.add(&app_id, "web", &task_id, addr);
            }
            EndpointEvent::Leaving { task_id } => {
                let (feed, app_id) = (Arc::clone(&feed), app_id.clone());
                tokio::spawn(async move {
                    feed.drain(&app_id, "web", &task_id, Duration::from_secs(5))
                        .await;
                });
            }
        },
    );
    wait_until("3 tasks are in the ingress", || {
        ingress.ready_count(&f.app_id, "web") == 3
    })
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(slipway_ingress::serve(
        Arc::clone(&ingress),
        listener,
        stop.clone(),
    ));
    let _stop = stop.drop_guard();
    let host = format!("{app_name}.localhost");
    let http = reqwest::Client::builder()
        .resolve(&host, addr)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://{host}:{}/", addr.port());

    // Restart under load: every task replaced, from the same image digest.
    let running = Traffic::start(&http, &url, 4, 100_000, Duration::from_secs(120));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.swarm.restart(&def).await.unwrap(), name);
    let mut events = Vec::new();
    let outcome = f
        .swarm
        .wait(&name, "web", UPDATE_TIMEOUT, |e| events.push(e.clone()))
        .await
        .unwrap();
    assert_eq!(outcome.running, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tally = running.finish().await;
    tally.assert_none_failed("the restart");
    let ok = tally.ok;
    assert!(ok > 50, "the load ran: {ok} requests");
    assert!(tally.every_body_starts_with("hello from v1"));
    let after = running_tasks(&events);
    assert_eq!(after.len(), 3, "{events:?}");
    assert!(
        after.keys().all(|t| !first.contains_key(t)),
        "every task was replaced"
    );
    let spec = f
        .docker
        .inspect_service(&name, None)
        .await
        .unwrap()
        .spec
        .unwrap();
    let task = spec.task_template.unwrap();
    assert_eq!(task.force_update, Some(1));
    assert_eq!(task.container_spec.unwrap().image.as_deref(), Some(&*v1));

    // Force rebuild under load: a new image, pushed, and the service updated to it.
    let running = Traffic::start(&http, &url, 4, 100_000, Duration::from_secs(120));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v2 = f.image("v2").await;
    f.swarm.apply(&f.web(&v2, 3)).await.unwrap();
    f.swarm
        .wait(&name, "web", UPDATE_TIMEOUT, |_| {})
        .await
        .unwrap();
    wait_until("only the new tasks are in the ingress", || {
        ingress.ready_count(&f.app_id, "web") == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = running.finish().await;
    tally.assert_none_failed("the rebuild");
    let ok = tally.ok;
    assert!(ok > 50, "the load ran: {ok} requests");
    for _ in 0..30 {
        let body = http.get(&url).send().await.unwrap().text().await.unwrap();
        assert!(body.starts_with("hello from v2"), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_new_version_is_rolled_back_by_swarm_and_reported() {
    let Some(f) = fixture().await else { return };
    let v1 = f.image("v1").await;
    let name = f.swarm.apply(&f.web(&v1, 2)).await.unwrap();
    f.swarm
        .wait(&name, "web", UPDATE_TIMEOUT, |_| {})
        .await
        .unwrap();

    let mut broken = f.web(&v1, 2);
    broken.env.insert("HEALTHZ_FAIL".into(), "1".into());
    f.swarm.apply(&broken).await.unwrap();
    let mut events = Vec::new();
    let err = f
        .swarm
        .wait(&name, "web", UPDATE_TIMEOUT, |e| events.push(e.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SwarmError::RolledBack { component, .. } if component == "web"),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("web: "), "{err}");
    // The new tasks were seen failing (their health check), and taken down by the rollback.
    assert!(
        events.iter().any(
            |e| matches!(e.state.as_str(), "failed" | "shutdown" | "complete")
                && !e.message.is_empty()
        ),
        "{events:?}"
    );

    // The previous version runs, untouched.
    let spec = f
        .docker
        .inspect_service(&name, None)
        .await
        .unwrap()
        .spec
        .unwrap();
    let env = spec
        .task_template
        .unwrap()
        .container_spec
        .unwrap()
        .env
        .unwrap();
    assert!(
        !env.iter().any(|e| e.starts_with("HEALTHZ_FAIL")),
        "{env:?}"
    );
    f.swarm
        .wait(&name, "web", UPDATE_TIMEOUT, |_| {})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_to_completion_and_databases_keep_a_pinned_volume() {
    let Some(f) = fixture().await else { return };
    let v1 = f.image("v1").await;
    let job = |code: &str| ServiceDef {
        daemon_id: f.daemon_id.clone(),
        app_id: f.app_id.clone(),
        component: "migrate".into(),
        kind: Some(ComponentKind::Job),
        deployment_id: unique("dep"),
        image: v1.clone(),
        env: BTreeMap::from([
            ("ROLE".into(), "job".into()),
            ("JOB_EXIT_CODE".into(), code.into()),
        ]),
        replicas: 1,
        ..Default::default()
    };
    let ok = f
        .swarm
        .run_job(&job("0"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(ok.exit_code, 0);
    assert!(ok.logs.contains("job done"), "{}", ok.logs);
    let err = f
        .swarm
        .run_job(&job("3"), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SwarmError::JobFailed { component, reason } if component == "migrate" && reason.contains("exit code 3")),
        "{err:?}"
    );

    let network = f.swarm.ensure_network(&f.app_id, "dep0").await.unwrap();
    let volume = format!("slipway-{}-db", f.app_id);
    let db = ServiceDef {
        daemon_id: f.daemon_id.clone(),
        app_id: f.app_id.clone(),
        component: "db".into(),
        kind: Some(ComponentKind::Database),
        deployment_id: "dep0".into(),
        // A database serves no HTTP: its image has no HTTP health check.
        image: f.image_with("db", "").await,
        env: BTreeMap::from([("ROLE".into(), "db".into())]),
        replicas: 1,
        network: Some(network.clone()),
        volume: Some((volume.clone(), "/data".into())),
        ..Default::default()
    };
    let name = f.swarm.ensure_database(&db).await.unwrap();
    f.swarm
        .wait(&name, "db", UPDATE_TIMEOUT, |_| {})
        .await
        .unwrap();
    let spec = f
        .docker
        .inspect_service(&name, None)
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(
        spec.task_template
            .unwrap()
            .placement
            .unwrap()
            .constraints
            .unwrap(),
        vec![format!("node.id=={}", f.swarm.node_id())]
    );
    let v = f.docker.inspect_volume(&volume).await.unwrap();
    assert_eq!(v.labels[labels::DAEMON], f.daemon_id);
    assert_eq!(v.labels[labels::COMPONENT], "db");
    let n = f
        .docker
        .inspect_network(
            &network,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .unwrap();
    assert_eq!(n.labels.unwrap()[labels::DAEMON], f.daemon_id);
    // Ensuring it again changes nothing.
    assert_eq!(f.swarm.ensure_database(&db).await.unwrap(), name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_the_registry_refuses_is_a_clear_error() {
    let Some(f) = fixture().await else { return };
    let tag = format!("slipway-swarm-test/{}:v1", f.app_id);
    build_hello_image_with(&f.docker, &tag, &f.daemon_id, "v1", "")
        .await
        .unwrap();
    // Nothing listens there.
    let closed = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let registry = format!("127.0.0.1:{closed}");
    let err = push(&f.docker, &tag, &registry, "slipway/refused", "v1")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SwarmError::Push { registry: r, .. } if *r == registry),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&registry), "{text}");
    assert!(text.contains("connection refused"), "{text}");

    // A registry that answers but refuses (read-only): its answer is in the error.
    let read_only = Registry::start(true).unwrap();
    let err = push(&f.docker, &tag, &read_only.addr, "slipway/refused", "v1")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SwarmError::Push { registry: r, .. } if *r == read_only.addr),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("405"), "{text}");
}

/// What `push` put in the registry is deleted again: one image by the reference `push`
/// returned, or a component's whole repository; a registry that cannot delete says so. No
/// swarm is needed for this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_images_are_deleted_from_the_registry_and_refusals_are_clear() {
    let Some(docker) = slipway_testkit::docker().await else {
        return;
    };
    let Some(registry) = Registry::start(false) else {
        return;
    };
    let daemon_id = unique("unpush");
    let _janitor = Janitor::new(&daemon_id);
    let repository = format!("slipway/{}-web", unique("app"));
    let mut pushed = Vec::new();
    for version in ["v1", "v2"] {
        let tag = format!("slipway-unpush-test/{daemon_id}:{version}");
        build_hello_image_with(&docker, &tag, &daemon_id, version, "")
            .await
            .unwrap();
        pushed.push(
            push(&docker, &tag, &registry.addr, &repository, version)
                .await
                .unwrap(),
        );
    }
    assert_eq!(registry.manifest_status(&repository, "v1").await, 200);
    assert_eq!(registry.manifest_status(&repository, "v2").await, 200);

    // One image, by its pinned reference; v2 stays.
    assert!(unpush(&docker, &pushed[0]).await.unwrap());
    assert_eq!(registry.manifest_status(&repository, "v1").await, 404);
    assert_eq!(registry.manifest_status(&repository, "v2").await, 200);
    assert!(
        !unpush(&docker, &pushed[0]).await.unwrap(),
        "an image already deleted is reported as not there"
    );

    // The whole repository: what is left of it (v2).
    assert_eq!(
        unpush_repository(&docker, &registry.addr, &repository)
            .await
            .unwrap(),
        1
    );
    assert_eq!(registry.manifest_status(&repository, "v2").await, 404);
    assert_eq!(
        unpush_repository(&docker, &registry.addr, &repository)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        unpush_repository(&docker, &registry.addr, "slipway/never-pushed")
            .await
            .unwrap(),
        0
    );

    // A registry that does not delete (this one is read-only) answers 405, and says so.
    let read_only = Registry::start(true).unwrap();
    let digest = pushed[1].split_once('@').unwrap().1;
    let reference = format!("{}/{repository}:v2@{digest}", read_only.addr);
    let err = unpush(&docker, &reference).await.unwrap_err();
    assert!(
        matches!(&err, SwarmError::Unpush { image, .. } if *image == reference),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("405") && text.contains("does not allow deleting"),
        "{text}"
    );
    // A reference that is not pinned by digest, and a registry nothing listens at.
    let err = unpush(&docker, &format!("{}/{repository}:v2", registry.addr))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not pinned by digest"), "{err}");
    let closed = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = unpush(
        &docker,
        &format!("127.0.0.1:{closed}/{repository}:v2@{digest}"),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{closed}"))
            && err.to_lowercase().contains("connection refused"),
        "{err}"
    );
}
