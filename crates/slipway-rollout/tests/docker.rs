//! The bollard runtime and the rollout against a real Docker engine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use slipway_rollout::{
    Bounds, ComponentPlan, DockerRuntime, Instance, InstanceSpec, JOB_OUTPUT_BYTES, NoTraffic,
    Probe, ProbeResult, Publish, Readiness, Runtime, roll,
};
use slipway_spec::labels;
use slipway_testkit::{Janitor, build_hello_image, unique};
use tokio_util::sync::CancellationToken;

struct Env {
    rt: DockerRuntime,
    image: String,
    app_id: String,
    daemon_id: String,
    _janitor: Janitor,
}

async fn env() -> Option<Env> {
    let docker = slipway_testkit::docker().await?;
    let daemon_id = unique("rollout");
    let janitor = Janitor::new(&daemon_id);
    let image = build_hello_image(
        &docker,
        &format!("slipway-rollout-test:{daemon_id}"),
        &daemon_id,
        "v1",
    )
    .await
    .unwrap();
    Some(Env {
        rt: DockerRuntime::new(docker),
        image,
        app_id: unique("app"),
        daemon_id: daemon_id.clone(),
        _janitor: janitor,
    })
}

impl Env {
    fn spec(&self, env: &[(&str, &str)]) -> InstanceSpec {
        InstanceSpec {
            app_id: self.app_id.clone(),
            app_name: "rt".into(),
            component: "web".into(),
            kind: Some(slipway_spec::ComponentKind::Service),
            deployment_id: "d1".into(),
            image: self.image.clone(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            run_command: None,
            ports: vec![8080],
            network: None,
            labels: BTreeMap::from([(labels::DAEMON.to_string(), self.daemon_id.clone())]),
        }
    }
}

/// Probes `started` (which listens after 1.5 s) until it is ready, then stops it with SIGTERM.
async fn probe_until_ready_then_stop(env: &Env, started: Instance) {
    // Nothing listens yet: not ready, and the probe says so.
    let probe = Probe::Tcp { port: 8080 };
    match env.rt.probe(&started, &probe, Duration::from_secs(1)).await {
        ProbeResult::NotReady(why) => assert!(why.contains("nothing listens"), "{why}"),
        other => panic!("expected not ready, got {other:?}"),
    }
    let http = Probe::Http {
        port: 8080,
        path: "/healthz".into(),
    };
    assert!(matches!(
        env.rt.probe(&started, &http, Duration::from_secs(1)).await,
        ProbeResult::NotReady(_)
    ));
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(
        env.rt.probe(&started, &probe, Duration::from_secs(1)).await,
        ProbeResult::Ready
    );
    assert_eq!(
        env.rt.probe(&started, &http, Duration::from_secs(1)).await,
        ProbeResult::Ready
    );
    let logs = env.rt.last_logs(&started, 5).await;
    assert!(logs.contains("listening on port 8080"), "{logs}");

    // SIGTERM ends it promptly.
    let t = Instant::now();
    env.rt
        .stop(&started, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stopped in {:?}",
        t.elapsed()
    );
    assert!(
        env.rt
            .list(&[(labels::APP, &env.app_id)])
            .await
            .unwrap()
            .is_empty(),
        "stopped and removed"
    );
}

/// The gateway of a network, as Docker reports it.
async fn gateway(docker: &bollard::Docker, network: &str) -> std::net::IpAddr {
    let inspect = docker.inspect_network(network, None).await.unwrap();
    let config = inspect.ipam.and_then(|i| i.config).unwrap_or_default();
    let gateway = config.iter().find_map(|c| c.gateway.clone());
    gateway
        .expect("a bridge network has a gateway")
        .parse()
        .unwrap()
}

/// On an app's network, ports are published on the network's gateway: this host reaches them
/// through Docker's NAT rules, past its port proxy, and a probe of a port nothing listens on
/// yet is refused outright. Asked to, the runtime publishes on 127.0.0.1 instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_on_its_apps_network_is_reached_at_the_networks_gateway() {
    let Some(env) = env().await else { return };
    let network = format!("slipway-{}", env.app_id);
    let labels = BTreeMap::from([(labels::DAEMON.to_string(), env.daemon_id.clone())]);
    env.rt.ensure_network(&network, &labels).await.unwrap();
    let mut spec = env.spec(&[("READY_DELAY_MS", "1500")]);
    spec.network = Some(network.clone());
    let started = env.rt.start(&spec).await.unwrap();
    let addr = started.address(8080).unwrap();
    assert_eq!(addr.ip(), gateway(env.rt.docker(), &network).await);
    assert!(!addr.ip().is_loopback());
    let listed = env.rt.list(&[(labels::APP, &env.app_id)]).await.unwrap();
    assert_eq!(listed[0].address(8080), Some(addr), "list reads it back");
    probe_until_ready_then_stop(&env, started).await;
    // Once its container is gone, the port names nothing: a connection is refused, not
    // answered by whichever container came next.
    let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );

    let on_loopback = env.rt.clone().with_publish(Publish::Loopback);
    let started = on_loopback.start(&spec).await.unwrap();
    let addr = started.address(8080).unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");
    probe_until_ready_then_stop(&env, started).await;
}

/// On Docker's default bridge, which names no gateway, ports are published on 127.0.0.1, where
/// Docker's port proxy accepts a connection before anything listens behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_probe_and_stop_a_real_container() {
    let Some(env) = env().await else { return };
    let started = env
        .rt
        .start(&env.spec(&[("READY_DELAY_MS", "1500")]))
        .await
        .unwrap();
    let addr = started.address(8080).unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");
    probe_until_ready_then_stop(&env, started).await;

    // A process that ignores SIGTERM is killed after the grace period, and no sooner.
    let stubborn = env
        .rt
        .start(&env.spec(&[("IGNORE_SIGTERM", "1")]))
        .await
        .unwrap();
    let t = Instant::now();
    env.rt
        .stop(&stubborn, Duration::from_secs(2))
        .await
        .unwrap();
    let took = t.elapsed();
    assert!(took >= Duration::from_secs(2), "killed too soon: {took:?}");
    assert!(took < Duration::from_secs(6), "killed too late: {took:?}");

    // An instance that exits is reported with its code.
    let crashing = env
        .rt
        .start(&env.spec(&[("EXIT_AFTER_MS", "100"), ("READY_DELAY_MS", "5000")]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let http = Probe::Http {
        port: 8080,
        path: "/healthz".into(),
    };
    assert_eq!(
        env.rt.probe(&crashing, &http, Duration::from_secs(1)).await,
        ProbeResult::Exited(1)
    );
    env.rt.stop(&crashing, Duration::ZERO).await.unwrap();
}

/// Counts, every 20 ms while a rollout runs, the component's containers and those answering.
fn watch(env: &Env, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, usize)> {
    let rt = env.rt.clone();
    let app_id = env.app_id.clone();
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let (mut max_total, mut min_ready) = (0, usize::MAX);
        while !done.load(Ordering::SeqCst) {
            let list = rt.list(&[(labels::APP, &app_id)]).await.unwrap();
            let mut ready = 0;
            for i in &list {
                if let Some(addr) = i.address(8080)
                    && http
                        .get(format!("http://{addr}/healthz"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                {
                    ready += 1;
                }
            }
            max_total = max_total.max(list.len());
            min_ready = min_ready.min(ready);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (max_total, min_ready)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_instance_rollout_keeps_its_bounds_as_docker_sees_them() {
    let Some(env) = env().await else { return };
    let readiness = Readiness {
        period: Duration::from_millis(100),
        failure_threshold: 100,
        ..Readiness::with_defaults(Probe::Http {
            port: 8080,
            path: "/healthz".into(),
        })
    };
    let spec = env.spec(&[("READY_DELAY_MS", "300")]);
    let mut old = Vec::new();
    for _ in 0..3 {
        old.push(env.rt.start(&spec).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(700)).await;

    for (surge, unavailable, max_total, min_ready) in [(1, 0, 4, 3), (0, 1, 3, 2)] {
        let done = Arc::new(AtomicBool::new(false));
        let watcher = watch(&env, Arc::clone(&done));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let plan = ComponentPlan {
            component: "web".into(),
            bounds: Bounds::new(3, surge, unavailable),
            old: old.clone(),
            template: spec.clone(),
            readiness: readiness.clone(),
            drain: Duration::ZERO,
            grace: Duration::from_secs(5),
        };
        let new = roll(
            &env.rt,
            plan,
            Arc::new(NoTraffic),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        done.store(true, Ordering::SeqCst);
        let (seen_total, seen_ready) = watcher.await.unwrap();
        assert_eq!(new.len(), 3);
        assert!(
            seen_total <= max_total,
            "surge {surge}: saw {seen_total} containers"
        );
        assert!(
            seen_ready >= min_ready,
            "surge {surge}: saw only {seen_ready} ready"
        );
        let now = env.rt.list(&[(labels::APP, &env.app_id)]).await.unwrap();
        let mut ids: Vec<_> = now.iter().map(|i| i.id.clone()).collect();
        let mut new_ids: Vec<_> = new.iter().map(|i| i.id.clone()).collect();
        ids.sort();
        new_ids.sort();
        assert_eq!(ids, new_ids, "only the new instances remain");
        old = new;
    }

    // A new version that never becomes ready: the rollout fails, names the instance and why,
    // removes it, and the old instances keep answering.
    let bad = env.spec(&[("HEALTHZ_FAIL", "1")]);
    let plan = ComponentPlan {
        component: "web".into(),
        bounds: Bounds::new(3, 1, 0),
        old: old.clone(),
        template: bad,
        readiness: Readiness {
            failure_threshold: 5,
            ..readiness.clone()
        },
        drain: Duration::ZERO,
        grace: Duration::from_secs(5),
    };
    let err = roll(
        &env.rt,
        plan,
        Arc::new(NoTraffic),
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        err.reason.starts_with("instance slipway-rt-web-"),
        "{}",
        err.reason
    );
    assert!(
        err.reason.contains("GET /healthz answered 500"),
        "{}",
        err.reason
    );
    assert!(err.logs.contains("listening on port 8080"), "{}", err.logs);
    assert!(err.new_ready.is_empty());
    assert_eq!(err.old_running.len(), 3);
    let now = env.rt.list(&[(labels::APP, &env.app_id)]).await.unwrap();
    assert_eq!(now.len(), 3, "the failed instance is gone");
    assert!(now.iter().all(|i| old.iter().any(|o| o.id == i.id)));
}

/// A job that prints far more than a DEPLOY log keeps (about 10 MB a second for 2 s): its
/// outcome holds only the last `JOB_OUTPUT_BYTES` of its output, after a line saying how many
/// lines were left out, and the daemon never held the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_jobs_output_is_kept_to_its_last_mebibyte() {
    let Some(env) = env().await else { return };
    let mut spec = env.spec(&[
        ("ROLE", "job"),
        ("JOB_DURATION_MS", "2000"),
        ("LOG_BYTES_PER_SEC", "10000000"),
    ]);
    spec.component = "migrate".into();
    spec.kind = Some(slipway_spec::ComponentKind::Job);
    spec.ports = Vec::new();
    let outcome = env
        .rt
        .run_job(&spec, Duration::from_secs(60), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome.exit_code, 0);
    let output = &outcome.output;
    assert!(
        output.len() <= JOB_OUTPUT_BYTES + 200,
        "{} bytes of output kept",
        output.len()
    );
    let first = output.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("... ")
            && first.contains(" earlier lines not kept: only the last 1024 KiB"),
        "{first}"
    );
    assert!(
        output.contains("job done, exit code 0"),
        "its own last lines are kept"
    );
}
