//! A swarm and a registry for tests on the one local engine: [`LocalSwarm`] initialises a
//! single-node swarm when the engine is in none (and leaves it again only then), and
//! [`Registry`] runs Debian's `docker-registry` on loopback as the registry every node pulls
//! from.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::SwarmInitRequest;
use bollard::query_parameters::{
    InspectNetworkOptions, LeaveSwarmOptionsBuilder, ListContainersOptionsBuilder,
    ListServicesOptionsBuilder,
};

use crate::in_ci;

/// The swarm is shared by every test of a binary: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The network Docker creates when a node joins a swarm.
const GWBRIDGE: &str = "docker_gwbridge";

/// Debian's `docker-registry` on a free loopback port, storing in a temp dir; stopped when
/// dropped.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; `read_only` makes one in maintenance mode, which refuses every push.
    /// Without the `docker-registry` program it returns `None` after printing why (a failure
    /// in CI).
    pub fn start(read_only: bool) -> Option<Registry> {
        if Command::new("docker-registry")
            .arg("--version")
            .output()
            .is_err()
        {
            let why = "the `docker-registry` program is missing (apt-get install docker-registry)";
            assert!(!in_ci(), "{why}");
            eprintln!("skipping: {why}");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("slipway-registry-")
            .tempdir()
            .expect("a temp dir for the registry");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    readonly:\n      enabled: {read_only}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .expect("the registry's config is written");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry starts");
        let registry = Registry {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(registry)
    }
}

impl Registry {
    /// The status this registry answers for the manifest of `repository:tag` (200 when it has
    /// it, 404 when not).
    pub async fn manifest_status(&self, repository: &str, tag: &str) -> u16 {
        reqwest::Client::new()
            .get(format!(
                "http://{}/v2/{repository}/manifests/{tag}",
                self.addr
            ))
            .header(
                "accept",
                "application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()
            .await
            .expect("the registry answers")
            .status()
            .as_u16()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The engine's swarm, held by one test at a time. When dropped it removes the services
/// labelled with the daemon IDs given to [`LocalSwarm::clean_up`], and leaves the swarm if it
/// initialised it.
#[derive(Debug)]
pub struct LocalSwarm {
    docker: Docker,
    /// This test initialised the swarm (the engine was in none), and leaves it.
    pub initialised: bool,
    gwbridge_existed: bool,
    daemon_ids: Vec<String>,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl LocalSwarm {
    /// The engine's swarm state (`inactive`, `active`, ...).
    pub async fn state(docker: &Docker) -> String {
        let info = docker.info().await.expect("the engine's info");
        info.swarm
            .and_then(|s| s.local_node_state)
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    /// Waits for the swarm to be free, then makes sure the engine is a swarm manager:
    /// initialises a single-node swarm on loopback when the engine is in none.
    pub async fn join(docker: &Docker) -> LocalSwarm {
        let serial = SERIAL.lock().await;
        let gwbridge_existed = docker
            .inspect_network(GWBRIDGE, None::<InspectNetworkOptions>)
            .await
            .is_ok();
        let initialised = match LocalSwarm::state(docker).await.as_str() {
            "inactive" => {
                docker
                    .init_swarm(SwarmInitRequest {
                        listen_addr: Some("127.0.0.1:2377".into()),
                        advertise_addr: Some("127.0.0.1".into()),
                        ..Default::default()
                    })
                    .await
                    .expect("a single-node swarm can be initialised");
                true
            }
            "active" => false,
            other => panic!("this engine's swarm state is {other}: cannot test on a swarm"),
        };
        LocalSwarm {
            docker: docker.clone(),
            initialised,
            gwbridge_existed,
            daemon_ids: Vec::new(),
            _serial: serial,
        }
    }

    /// Removes, when dropped, every service labelled `slipway.daemon=<daemon_id>` and then
    /// everything a [`crate::Janitor`] removes.
    pub fn clean_up(&mut self, daemon_id: &str) {
        self.daemon_ids.push(daemon_id.to_string());
    }

    /// Removes the services labelled with `daemon_id` and waits (at most 30 s) until their
    /// containers are gone.
    pub async fn remove_services(docker: &Docker, daemon_id: &str) {
        let label = format!("{}={daemon_id}", slipway_spec::labels::DAEMON);
        let filters = HashMap::from([("label", vec![label])]);
        let services = docker
            .list_services(Some(
                ListServicesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap_or_default();
        for s in services {
            let _ = docker
                .delete_service(s.id.as_deref().unwrap_or_default())
                .await;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let left = docker
                .list_containers(Some(
                    ListContainersOptionsBuilder::default()
                        .all(true)
                        .filters(&filters)
                        .build(),
                ))
                .await
                .map(|l| l.len())
                .unwrap_or(0);
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for LocalSwarm {
    fn drop(&mut self) {
        let docker = self.docker.clone();
        let daemon_ids = std::mem::take(&mut self.daemon_ids);
        let (initialised, gwbridge_existed) = (self.initialised, self.gwbridge_existed);
        // A thread of its own, so that this works inside and outside a tokio runtime.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for clean-up");
            rt.block_on(async {
                for id in &daemon_ids {
                    LocalSwarm::remove_services(&docker, id).await;
                    crate::Janitor::sweep(&docker, id).await;
                }
                if initialised {
                    let _ = docker
                        .leave_swarm(Some(
                            LeaveSwarmOptionsBuilder::default().force(true).build(),
                        ))
                        .await;
                    if !gwbridge_existed {
                        let _ = docker.remove_network(GWBRIDGE).await;
                    }
                }
            });
        });
        let _ = done.join();
    }
}
