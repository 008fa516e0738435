//! `slipway serve --runtime swarm`: the daemon on a swarm, driven by the CLI as on one engine.
//! A single-node swarm is initialised for the test only when the engine is in none (and left
//! again only then), with Debian's `docker-registry` on loopback as the registry.

use std::process::{Command, Output};

use common::{BIN, Daemon, free_port};
use serde_json::Value;
use slipway_testkit::{HelloRepo, LocalSwarm, Registry, unique};

mod common;

fn cli(daemon: &Daemon, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("SLIPWAY_API_URL", &daemon.url)
        .env("SLIPWAY_TOKEN", &daemon.token)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `slipway serve` on a fresh data directory with `args`, expected to refuse to start.
fn serve_refused(args: &[&str]) -> Output {
    let data = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    Command::new(BIN)
        .args(["serve", "--listen", &listen, "--ingress", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data.path())
        .args(args)
        .env_remove("SLIPWAY_RUNTIME")
        .env_remove("SLIPWAY_REGISTRY")
        .output()
        .unwrap()
}

#[test]
fn serve_on_a_swarm_deploys_and_restarts_through_the_cli() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let Some(docker) = rt.block_on(slipway_testkit::docker()) else {
        return;
    };

    // A swarm needs a registry every node pulls from.
    let out = serve_refused(&["--runtime", "swarm"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--registry"),
        "{}",
        text(&out.stderr)
    );

    let Some(registry) = Registry::start(false) else {
        return;
    };
    // An engine outside a swarm is refused, with the way out.
    if rt.block_on(LocalSwarm::state(&docker)) == "inactive" {
        let out = serve_refused(&["--runtime", "swarm", "--registry", &registry.addr]);
        assert_eq!(out.status.code(), Some(1));
        let err = text(&out.stderr);
        assert!(
            err.contains("not in a swarm") && err.contains("docker swarm init"),
            "{err}"
        );
    }

    let mut local = rt.block_on(LocalSwarm::join(&docker));
    let mut daemon = Daemon::start(
        "cli-swarm",
        &["--runtime", "swarm", "--registry", &registry.addr],
    );
    local.clean_up(&daemon.daemon_id);

    let repo = HelloRepo::with_healthcheck("v1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("cli-swarm");
    let spec = dir.path().join("app.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: {name}\nservices:\n  - name: web\n    git: {{repo_clone_url: \"{}\", branch: main}}\n    instance_count: 2\n    health_check: {{http_path: /healthz, period_seconds: 0.2, failure_threshold: 3}}\n",
            repo.url()
        ),
    )
    .unwrap();

    // Create and wait: the same phases and steps as on one engine.
    let out = cli(
        &daemon,
        &["apps", "create", "--spec", spec.to_str().unwrap(), "--wait"],
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{}{err}", text(&out.stdout));
    assert!(err.contains("phase BUILDING"), "{err}");
    assert!(err.contains("deploy/web/instance 2/2 SUCCESS"), "{err}");

    // The build log says where the image went.
    let out = cli(&daemon, &["apps", "logs", &name, "web", "--type", "build"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let build_log = text(&out.stdout);
    assert!(
        build_log.contains(&format!(
            "the image is in the registry as {}/",
            registry.addr
        )),
        "{build_log}"
    );

    // A restart, as JSON: ACTIVE, and the DEPLOY log follows Swarm's tasks.
    let out = cli(&daemon, &["apps", "restart", &name, "--wait", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(v["deployment"]["phase"], "ACTIVE");
    let out = cli(&daemon, &["apps", "logs", &name, "web", "--type", "deploy"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deploy_log = text(&out.stdout);
    assert!(
        deploy_log.contains("web: new task web.") && deploy_log.contains("is running"),
        "{deploy_log}"
    );

    // The RUN log: what the tasks write, read from Swarm.
    let out = cli(&daemon, &["apps", "logs", &name, "web", "--type", "run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run_log = text(&out.stdout);
    assert!(
        run_log
            .lines()
            .any(|l| l.starts_with("web hello v1 listening on port 8080")),
        "{run_log}"
    );

    // The daemon killed and started again: the ingress process serves on with the table it
    // had, and the new daemon sends its own only once Swarm's tasks are back in it.
    let listen: std::net::SocketAddr = daemon.ingress()["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let host = format!("{name}.localhost");
    let http = reqwest::Client::builder()
        .resolve(&host, listen)
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    let traffic = {
        let _guard = rt.enter();
        slipway_testkit::Traffic::start(
            &http,
            &format!("http://{host}:{}/", listen.port()),
            8,
            10_000_000,
            std::time::Duration::from_secs(300),
        )
    };
    std::thread::sleep(std::time::Duration::from_secs(1));
    daemon.kill();
    std::thread::sleep(std::time::Duration::from_secs(3));
    daemon.spawn();
    std::thread::sleep(std::time::Duration::from_secs(5));
    let tally = rt.block_on(traffic.finish());
    tally.assert_none_failed("a restart of the daemon on a swarm");
    assert!(tally.ok > 0);

    // Deleting the app removes its Swarm services.
    let out = cli(&daemon, &["apps", "delete", &name, "--purge"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let left = rt.block_on(async {
        docker
            .list_services(None::<bollard::query_parameters::ListServicesOptions>)
            .await
            .unwrap()
            .into_iter()
            .filter(|s| {
                s.spec
                    .as_ref()
                    .and_then(|s| s.labels.as_ref())
                    .and_then(|l| l.get(slipway_spec::labels::DAEMON))
                    == Some(&daemon.daemon_id)
            })
            .count()
    });
    assert_eq!(left, 0);
}
