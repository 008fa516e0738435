//! Slipway's engine: it runs deployments through their phases.
//!
//! A deployment is created by an API call (create, update, restart, force rebuild) and saved
//! before anything happens; a task then runs it, one deployment per app at a time (the others
//! wait their turn), saving its phase and step tree on every transition:
//!
//! - a **build** deployment: `PENDING_BUILD → BUILDING` (fetch each git component's branch and
//!   build its image, or reuse the previous image when nothing that goes into the build changed
//!   and no force was asked) `→ PENDING_DEPLOY → DEPLOYING` (databases created if missing,
//!   PRE_DEPLOY jobs, then every service and worker rolled out concurrently, then POST_DEPLOY
//!   jobs) `→ ACTIVE`;
//! - a **restart**: `PENDING_DEPLOY → DEPLOYING → ACTIVE`, rolling out new containers of the
//!   chosen services and workers from the exact images of the active deployment; nothing is
//!   fetched or built, and jobs and databases are not touched.
//!
//! A deployment is all or nothing: when one component's rollout fails, the others stop, every
//! component is returned to the previous deployment's version, the deployment ends in ERROR
//! with a step and an `error` that say why (a stable [`slipway_spec::FailureCode`]), and the
//! previous deployment stays ACTIVE. When a deployment becomes ACTIVE, the previous ACTIVE one
//! becomes SUPERSEDED in the same transaction.
//!
//! The moves between phases are one table (`slipway_spec::lifecycle`), carried out in one
//! place (`run/drive.rs`): every phase is saved before it is announced, and a cancel is decided
//! against the switch-over's commit under one lock (the `lifecycle` module's cancel table).

mod build_key;
mod error;
mod lifecycle;
mod liveness;
mod reconcile;
mod run;
pub mod runlog;
mod secrets;
mod swarm;
mod templates;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use slipway_build::ImageBuilder;
use slipway_ingress::{Ingress, IngressConfig};
use slipway_rollout::{DockerRuntime, Instance};
use slipway_source::SourceCache;
use slipway_spec::{
    App, AppDomain, AppSpec, Cause, ComponentKind, Deployment, DeploymentKind, DomainPhase, Phase,
    error_chain, labels, new_id, now,
};
use slipway_store::{AppRecord, Store};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use build_key::BuildKeySecret;
pub use error::EngineError;
pub use reconcile::Reconciled;
pub use slipway_rollout::Publish;
pub use slipway_source::GitCredentials;
pub use slipway_store::{LogKind, LogLine};
pub use swarm::SwarmConfig;

/// Log targets whose debug output quotes Docker requests whole: their URLs and bodies carry
/// build arguments and container environments, SECRET values among them. A subscriber keeps
/// them at `info` whatever it is asked (`slipway serve` does).
pub const QUIET_TARGETS: &[&str] = &["bollard"];

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where the store, the git mirrors and the keys live.
    pub data_dir: PathBuf,
    /// Every Docker object the engine creates carries `slipway.daemon=<daemon_id>`.
    pub daemon_id: String,
    pub fetch_timeout: Duration,
    pub build_timeout: Duration,
    pub job_timeout: Duration,
    /// How long a worker must run without exiting to count as ready, unless its spec says.
    pub worker_min_ready: Duration,
    /// How apps are served through the ingress (their host names, limits).
    pub ingress: IngressConfig,
    /// The control socket of the ingress process that serves the apps, when the requests
    /// are served by one (`slipway ingress`) rather than from [`Engine::ingress`]: the
    /// routing table is sent there once it has converged after the start, and on every change;
    /// drains wait for that process too.
    pub ingress_socket: Option<std::path::PathBuf>,
    /// Certificates for the apps' domains from an ACME server, when set.
    pub acme: Option<slipway_acme::AcmeConfig>,
    /// How many of each component's most recent built images are kept (so that an older
    /// deployment can be deployed again); older ones are removed unless a container uses them.
    pub image_retention: usize,
    /// The operator's git credentials, each scoped to a host (and path prefix): offered only
    /// to the remotes their scopes cover, tokens only over `https://`.
    pub git_credentials: GitCredentials,
    /// Certificate authorities (PEM) trusted for `https://` remotes besides the system's.
    pub git_ca_cert: Option<PathBuf>,
    /// Whether a spec's `repo_clone_url` may name a path on this host or a `file://` URL
    /// (which reads whatever the daemon can read). Off unless the operator says so.
    pub allow_local_sources: bool,
    /// How often the reconciler converges every app to its active deployment (it also runs
    /// at start-up and after each deployment).
    pub reconcile_interval: Duration,
    /// Run apps as Docker Swarm services on the swarm the engine manages, instead of as
    /// containers on this one engine.
    pub swarm: Option<SwarmConfig>,
    /// Where instance ports are published on this host (the ingress reaches them there).
    pub publish: Publish,
    /// The key of the build keys on image labels (HMAC-SHA256): the daemon keeps it in the
    /// data directory (`build.key`); [`EngineConfig::new`] makes a random one.
    pub build_key_secret: BuildKeySecret,
    /// The most bytes of each followed instance's RUN log held in memory for its followers
    /// (at least [`runlog::MIN_BUFFER_BYTES`]); a follower that falls further behind skips
    /// lines, with a line saying so. See [`runlog`].
    pub log_buffer_bytes: usize,
}

impl EngineConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            data_dir: data_dir.into(),
            daemon_id: "default".into(),
            fetch_timeout: Duration::from_secs(600),
            build_timeout: Duration::from_secs(1800),
            job_timeout: Duration::from_secs(1800),
            worker_min_ready: Duration::from_secs(1),
            ingress: IngressConfig::default(),
            ingress_socket: None,
            acme: None,
            image_retention: 5,
            git_credentials: GitCredentials::default(),
            git_ca_cert: None,
            allow_local_sources: false,
            reconcile_interval: Duration::from_secs(30),
            swarm: None,
            publish: Publish::default(),
            build_key_secret: BuildKeySecret::random(),
            log_buffer_bytes: 1 << 20,
        }
    }
}

/// What the engine tells its watchers: a deployment changed (its phase or its steps).
#[derive(Debug, Clone)]
pub struct DeploymentUpdate {
    pub deployment: Deployment,
}

/// Takes the data directory for this process: its store, git mirrors and secret key must
/// have one writer. The lock file names the holder's pid; the lock itself ends with the
/// process, however it ends.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, EngineError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("daemon.lock");
    let err = |source| EngineError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(EngineError::DataDirInUse {
                path: dir.to_path_buf(),
                holder: pid.trim().parse().ok(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(err(e)),
    }
    file.set_len(0).map_err(err)?;
    file.rewind().map_err(err)?;
    write!(file, "{}", std::process::id()).map_err(err)?;
    Ok(file)
}

/// Runs apps' deployments. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: EngineConfig,
    store: Store,
    runtime: DockerRuntime,
    /// Set when apps run on a swarm.
    swarm: Option<swarm::SwarmMode>,
    builder: ImageBuilder,
    sources: SourceCache,
    secrets: secrets::Secrets,
    ingress: Arc<Ingress>,
    slots: Mutex<HashMap<String, Arc<AppSlot>>>,
    /// The RUN logs being followed.
    taps: runlog::Taps,
    updates: broadcast::Sender<DeploymentUpdate>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Held until the engine shuts down: one daemon per data directory.
    data_dir_lock: Mutex<Option<std::fs::File>>,
    /// Held while a spec is checked against the other apps' and stored, so that two apps
    /// never take the same domain at once.
    admission: tokio::sync::Mutex<()>,
    /// The ACME client, when certificates come from an ACME server.
    acme: Option<Arc<slipway_acme::Acme>>,
}

/// One app's turn-taking: one deployment runs at a time, in the order they were queued.
#[derive(Debug)]
struct AppSlot {
    turn: tokio::sync::Mutex<()>,
    /// The ticket the next queued deployment gets.
    tickets: std::sync::atomic::AtomicU64,
    /// The ticket whose turn it is. A deployment's task waits for its ticket before it takes
    /// the turn: tasks spawned one after another may start in any order on a runtime of
    /// several threads, and a newer deployment must never run before an older one.
    serving: tokio::sync::watch::Sender<u64>,
    running: Mutex<Option<String>>,
    /// The cancel and commit of each deployment not yet ended.
    controls: Mutex<HashMap<String, Arc<lifecycle::Control>>>,
}

impl Default for AppSlot {
    fn default() -> Self {
        AppSlot {
            turn: tokio::sync::Mutex::new(()),
            tickets: std::sync::atomic::AtomicU64::new(0),
            serving: tokio::sync::watch::Sender::new(0),
            running: Mutex::new(None),
            controls: Mutex::new(HashMap::new()),
        }
    }
}

impl Engine {
    /// Opens the store in `config.data_dir` and starts the engine on `docker` (a swarm manager
    /// when `config.swarm` is set). Deployments that a previous run of the daemon left
    /// unfinished are settled.
    pub async fn start(config: EngineConfig, docker: Docker) -> Result<Engine, EngineError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| EngineError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        // A lock released a moment ago can still be held for an instant by a child process
        // forked before it was released and not yet started (it shares the descriptor until
        // its exec closes it): a taken lock is tried again for up to a second.
        let mut tries = 0;
        let data_dir_lock = loop {
            match lock_data_dir(&config.data_dir) {
                Err(EngineError::DataDirInUse { .. }) if tries < 10 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                locked => break locked?,
            }
        };
        let store = Store::open(&config.data_dir.join("slipway.db")).await?;
        let mut sources = SourceCache::new(config.data_dir.join("git"))
            .with_timeout(config.fetch_timeout)
            .with_credentials(config.git_credentials.clone())
            .allow_local_sources(config.allow_local_sources);
        if let Some(ca) = &config.git_ca_cert {
            sources = sources.with_ca_certs(ca).map_err(EngineError::Sources)?;
        }
        // Where images with SECRET build arguments are written again; what a stopped daemon
        // left there (an export naming such values) is removed.
        let scratch = config.data_dir.join("scratch");
        if let Err(e) = std::fs::remove_dir_all(&scratch)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(EngineError::DataDir {
                path: scratch,
                source: e,
            });
        }
        let builder = ImageBuilder::new(docker.clone())
            .with_timeout(config.build_timeout)
            .with_scratch_dir(scratch);
        let (updates, _) = broadcast::channel(1024);
        let ingress = Ingress::new(config.ingress.clone());
        let shutdown = CancellationToken::new();
        // Drains go to the ingress process from the start (recovery stops instances too); the
        // table only once it has converged, below.
        let link = config.ingress_socket.clone().map(|socket| {
            slipway_ingress::control::Link::start(Arc::clone(&ingress), socket, shutdown.clone())
        });
        let secrets = secrets::Secrets::load_or_create(&config.data_dir.join("secret.key"))?;
        let swarm = match &config.swarm {
            Some(swarm_config) => {
                let swarm =
                    slipway_swarm::Swarm::connect(docker.clone(), &config.daemon_id).await?;
                if let Err(e) = swarm.check_nodes(None).await {
                    tracing::warn!(error = %e, "a node of the swarm is not ready; Swarm runs tasks on the others");
                }
                Some(swarm::SwarmMode::new(swarm, swarm_config.clone()))
            }
            None => None,
        };
        let acme = config
            .acme
            .clone()
            .map(|acme| slipway_acme::Acme::start(acme, shutdown.clone()));
        let engine = Engine {
            inner: Arc::new(Inner {
                acme,
                runtime: DockerRuntime::new(docker).with_publish(config.publish),
                swarm,
                ingress,
                secrets,
                taps: runlog::Taps::new(config.log_buffer_bytes),
                config,
                store,
                builder,
                sources,
                slots: Mutex::new(HashMap::new()),
                updates,
                tasks: TaskTracker::new(),
                shutdown,
                data_dir_lock: Mutex::new(Some(data_dir_lock)),
                admission: tokio::sync::Mutex::new(()),
            }),
        };
        engine.recover().await?;
        engine.restore_routes().await?;
        engine.refresh_domains();
        if let Some(link) = link {
            if engine.inner.swarm.is_some() {
                // On a swarm, running tasks join the table as their followers find them
                // ready: it is sent once every service has some (or 10 s on), not before.
                let waiting = engine.clone();
                engine.inner.tasks.spawn(async move {
                    waiting.until_swarm_routes(Duration::from_secs(10)).await;
                    link.follow();
                });
            } else {
                link.follow();
            }
        }
        // On a swarm, Swarm restarts crashed tasks and runs the health checks, and the
        // ingress's followers see tasks come and go.
        if engine.inner.swarm.is_none() {
            let liveness = engine.clone();
            engine
                .inner
                .tasks
                .spawn(async move { liveness.watch_liveness().await });
            let watcher = engine.clone();
            engine
                .inner
                .tasks
                .spawn(async move { watcher.watch_crashes().await });
        }
        let reconciler = engine.clone();
        let interval = engine.inner.config.reconcile_interval;
        engine.inner.tasks.spawn(async move {
            reconciler.reconcile_all().await;
            reconciler.reconcile_forever(interval).await;
        });
        Ok(engine)
    }

    /// The ingress's routing table, which the engine keeps in step with every rollout.
    pub fn ingress(&self) -> Arc<Ingress> {
        Arc::clone(&self.inner.ingress)
    }

    /// Routes every app with an active deployment to the service instances that run now.
    async fn restore_routes(&self) -> Result<(), EngineError> {
        let (apps, _) = self.inner.store.apps(0, u64::MAX >> 1).await?;
        for app in apps {
            let Some(active) = self.inner.store.active_deployment(&app.id).await? else {
                continue;
            };
            self.inner.ingress.set_app(&app.id, &active.spec);
            if let Some(mode) = &self.inner.swarm {
                for service in &active.spec.services {
                    self.follow_service(mode, &app.id, &active.spec, &service.name);
                }
                continue;
            }
            let running = self
                .inner
                .runtime
                .list(&[
                    (labels::APP, app.id.as_str()),
                    (labels::DAEMON, self.inner.config.daemon_id.as_str()),
                ])
                .await?;
            for instance in running {
                if let Some(service) = active.spec.service(&instance.component)
                    && let Some(addr) = instance.address(service.http_port.unwrap_or(8080))
                {
                    self.inner
                        .ingress
                        .add(&app.id, &instance.component, &instance.id, addr);
                }
            }
        }
        Ok(())
    }

    /// Returns once every service of every app with an active deployment has an instance in
    /// the table, or `max` has passed.
    async fn until_swarm_routes(&self, max: Duration) {
        let deadline = tokio::time::Instant::now() + max;
        let Ok((apps, _)) = self.inner.store.apps(0, u64::MAX >> 1).await else {
            return;
        };
        let mut wanted = Vec::new();
        for app in apps {
            if let Ok(Some(active)) = self.inner.store.active_deployment(&app.id).await {
                for service in &active.spec.services {
                    wanted.push((app.id.clone(), service.name.clone()));
                }
            }
        }
        while tokio::time::Instant::now() < deadline
            && wanted
                .iter()
                .any(|(app, component)| self.inner.ingress.ready_count(app, component) == 0)
        {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = self.inner.shutdown.cancelled() => return,
            }
        }
    }

    /// Takes instances that die out of the ingress at once, from Docker's event stream.
    async fn watch_crashes(&self) {
        use futures::StreamExt;
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["die".to_string()]),
            (
                "label".to_string(),
                vec![
                    format!("{}={}", labels::DAEMON, self.inner.config.daemon_id),
                    labels::DEPLOYMENT.to_string(),
                ],
            ),
        ]);
        let mut backoff = Duration::from_millis(200);
        while !self.inner.shutdown.is_cancelled() {
            let options = bollard::query_parameters::EventsOptions {
                filters: Some(filters.clone()),
                ..Default::default()
            };
            let mut events = self.inner.runtime.docker().events(Some(options));
            loop {
                let next = tokio::select! {
                    n = events.next() => n,
                    () = self.inner.shutdown.cancelled() => return,
                };
                match next {
                    Some(Ok(event)) => {
                        backoff = Duration::from_millis(200);
                        if let Some(id) = event.actor.and_then(|a| a.id) {
                            tracing::debug!(container = %id, "an instance died");
                            self.inner.ingress.eject(&id);
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "Docker's event stream failed; watching again");
                        break;
                    }
                    None => break,
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.inner.shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Every change of every deployment, as it is saved.
    pub fn subscribe(&self) -> broadcast::Receiver<DeploymentUpdate> {
        self.inner.updates.subscribe()
    }

    /// Settles the deployments a previous daemon left unfinished. One whose every new instance
    /// had become ready is completed (it becomes ACTIVE); any other ends in ERROR and the
    /// containers it had started are removed. The reconciler then brings every app back to
    /// exactly its active deployment.
    async fn recover(&self) -> Result<(), EngineError> {
        let open = self
            .inner
            .store
            .deployments_in(&[
                Phase::PendingBuild,
                Phase::Building,
                Phase::PendingDeploy,
                Phase::Deploying,
            ])
            .await?;
        for mut d in open {
            if run::settle_interrupted(&mut d) == run::Settled::Completed {
                tracing::warn!(deployment.id = %d.id, app = %d.app_id, "completing a deployment the daemon stopped after its new version was ready");
                self.inner.store.activate(&d).await?;
                continue;
            }
            tracing::warn!(deployment.id = %d.id, app = %d.app_id, "rolling back a deployment the daemon stopped");
            self.inner.store.save_deployment(&d).await?;
            if self.inner.swarm.is_some() {
                // Swarm's services are returned to the active deployment by the reconciler.
                continue;
            }
            // Its new instances and job containers.
            let started = self
                .inner
                .runtime
                .list(&[
                    (labels::DEPLOYMENT, d.id.as_str()),
                    (labels::DAEMON, self.inner.config.daemon_id.as_str()),
                ])
                .await?;
            for instance in started {
                // An ingress process that kept serving while the daemon was down may route
                // to it: out of its rotation first, its requests under way finished.
                self.inner
                    .ingress
                    .drain(
                        &d.app_id,
                        &instance.component,
                        &instance.id,
                        Duration::from_secs(10),
                    )
                    .await;
                if let Err(e) = slipway_rollout::Runtime::stop(
                    &self.inner.runtime,
                    &instance,
                    Duration::from_secs(10),
                )
                .await
                {
                    tracing::warn!(instance = %instance.name, error = %e, "removing an interrupted deployment's container failed");
                }
            }
        }
        Ok(())
    }

    /// A deployment with its SECRET values opened, for use only (never stored or returned).
    pub(crate) fn opened(&self, d: &Deployment) -> Result<Deployment, EngineError> {
        let mut d = d.clone();
        d.spec = self.inner.secrets.open_spec(&d.spec)?;
        Ok(d)
    }

    fn slot(&self, app_id: &str) -> Arc<AppSlot> {
        let mut slots = self.inner.slots.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(slots.entry(app_id.to_string()).or_default())
    }

    /// An app by ID or name.
    pub async fn app(&self, id_or_name: &str) -> Result<AppRecord, EngineError> {
        self.inner
            .store
            .app(id_or_name)
            .await?
            .ok_or_else(|| EngineError::NotFound {
                what: "app",
                id: id_or_name.to_string(),
            })
    }

    /// The API's view of an app: its spec and its active, in-progress and pending deployments.
    pub async fn app_view(&self, record: &AppRecord) -> Result<App, EngineError> {
        let (recent, _) = self.inner.store.deployments(&record.id, 0, 50).await?;
        let running = self
            .slot(&record.id)
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let active = recent.iter().find(|d| d.phase == Phase::Active).cloned();
        let in_progress = recent
            .iter()
            .find(|d| Some(&d.id) == running.as_ref() && d.phase.is_in_progress())
            .cloned();
        let pending = recent
            .iter()
            .rfind(|d| d.phase.is_in_progress() && Some(&d.id) != running.as_ref())
            .cloned();
        let url =
            (!record.spec.services.is_empty()).then(|| self.inner.ingress.live_url(&record.name));
        // As App Platform: the live URL is the primary domain's once a deployment serves it.
        let primary = active.as_ref().and_then(|d| {
            d.spec
                .domains
                .iter()
                .find(|d| d.kind == Some(slipway_spec::DomainType::Primary))
        });
        let live_url = match (&url, primary) {
            (Some(_), Some(d)) => Some(self.inner.ingress.url_of(&d.domain)),
            _ => url.clone(),
        };
        Ok(App {
            id: record.id.clone(),
            domains: self.domains_view(&record.spec, active.as_ref()),
            spec: record.spec.clone(),
            default_ingress: url,
            live_url,
            created_at: record.created_at,
            updated_at: record.updated_at,
            last_deployment_created_at: recent.first().map(|d| d.created_at),
            active_deployment: active,
            in_progress_deployment: in_progress,
            pending_deployment: pending,
        })
    }

    /// What this daemon refuses in a spec that passed validation: a repository on the
    /// daemon's own disk, unless `allow_local_sources`.
    pub fn check_spec(&self, spec: &AppSpec) -> Result<(), EngineError> {
        if self.inner.config.allow_local_sources {
            return Ok(());
        }
        slipway_spec::check_local_sources(spec).map_err(EngineError::InvalidSpec)
    }

    /// Tells the ACME client which domains the apps are served at now.
    pub(crate) fn refresh_domains(&self) {
        if let Some(acme) = &self.inner.acme {
            acme.want(self.inner.ingress.domains());
        }
    }

    /// The domains of an app's spec, each with where its certificate is, as App Platform
    /// shows them: PENDING until a deployment serves it; then, with an ACME server, its
    /// certificate's phase (CONFIGURING while one is obtained, ERROR with the server's words
    /// when that failed); without one, ACTIVE (its certificate, if any, is the operator's).
    fn domains_view(&self, spec: &AppSpec, active: Option<&Deployment>) -> Vec<AppDomain> {
        spec.domains
            .iter()
            .map(|d| {
                let served =
                    active.is_some_and(|a| a.spec.domains.iter().any(|o| o.domain == d.domain));
                let (phase, error, expires) = match (&self.inner.acme, served) {
                    (_, false) => (DomainPhase::Pending, None, None),
                    (None, true) => (DomainPhase::Active, None, None),
                    (Some(acme), true) => match acme.state(&d.domain) {
                        None => (DomainPhase::Pending, None, None),
                        Some(s) => (
                            match s.phase {
                                slipway_acme::DomainPhase::Pending => DomainPhase::Pending,
                                slipway_acme::DomainPhase::Configuring => DomainPhase::Configuring,
                                slipway_acme::DomainPhase::Active => DomainPhase::Active,
                                slipway_acme::DomainPhase::Error => DomainPhase::Error,
                            },
                            s.error,
                            s.expires_at,
                        ),
                    },
                };
                AppDomain {
                    id: d.domain.clone(),
                    spec: d.clone(),
                    phase,
                    error,
                    certificate_expires_at: expires.and_then(|t| jiff::Timestamp::try_from(t).ok()),
                }
            })
            .collect()
    }

    /// Refuses a domain that is under the base domain (where apps are served by name) or
    /// that another app is served at.
    async fn check_domains(&self, spec: &AppSpec, own: Option<&str>) -> Result<(), EngineError> {
        if spec.domains.is_empty() {
            return Ok(());
        }
        let base = &self.inner.ingress.config().base_domain;
        let (others, _) = self.inner.store.apps(0, u64::MAX).await?;
        let mut problems = Vec::new();
        for (i, d) in spec.domains.iter().enumerate() {
            let path = format!("domains[{i}].domain");
            if d.domain == *base || d.domain.ends_with(&format!(".{base}")) {
                problems.push(slipway_spec::Problem {
                    path,
                    message: format!(
                        "\"{}\" is under {base}, where this daemon serves every app at <app name>.{base}: name the app instead, or give a domain outside it",
                        d.domain
                    ),
                });
                continue;
            }
            if let Some(other) = others.iter().find(|a| {
                Some(a.id.as_str()) != own && a.spec.domains.iter().any(|o| o.domain == d.domain)
            }) {
                problems.push(slipway_spec::Problem {
                    path,
                    message: format!(
                        "\"{}\" is a domain of the app \"{}\" already: remove it there first",
                        d.domain, other.name
                    ),
                });
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(EngineError::InvalidSpec(slipway_spec::SpecError::Invalid(
                problems,
            )))
        }
    }

    /// Creates an app and starts its first deployment.
    pub async fn create_app(
        &self,
        mut spec: AppSpec,
    ) -> Result<(AppRecord, Deployment), EngineError> {
        self.check_spec(&spec)?;
        let admitted = self.inner.admission.lock().await;
        self.check_domains(&spec, None).await?;
        self.inner.secrets.seal_spec(&mut spec);
        let at = now();
        let record = AppRecord {
            id: new_id(),
            name: spec.name.clone(),
            spec,
            created_at: at,
            updated_at: at,
        };
        self.inner.store.insert_app(&record).await?;
        drop(admitted);
        let d = Deployment::new(
            &record.id,
            record.spec.clone(),
            DeploymentKind::Build,
            Cause::APP_CREATED,
        );
        let d = self.enqueue(d).await?;
        Ok((record, d))
    }

    /// Replaces an app's spec and starts a deployment of it.
    pub async fn update_app(
        &self,
        id: &str,
        spec: AppSpec,
    ) -> Result<(AppRecord, Deployment), EngineError> {
        self.check_spec(&spec)?;
        let mut record = self.app(id).await?;
        let admitted = self.inner.admission.lock().await;
        self.check_domains(&spec, Some(&record.id)).await?;
        record.name = spec.name.clone();
        let mut spec = spec;
        self.inner.secrets.seal_spec(&mut spec);
        record.spec = spec;
        record.updated_at = now();
        self.inner.store.update_app(&record).await?;
        drop(admitted);
        let d = Deployment::new(
            &record.id,
            record.spec.clone(),
            DeploymentKind::Build,
            Cause::SPEC_UPDATED,
        );
        let d = self.enqueue(d).await?;
        Ok((record, d))
    }

    /// Starts a deployment of the app's current spec. With `force_build` every git component
    /// is fetched and built again; with `clear_build_cache` too, without the layer cache.
    pub async fn create_deployment(
        &self,
        id: &str,
        force_build: bool,
        clear_build_cache: bool,
    ) -> Result<Deployment, EngineError> {
        let record = self.app(id).await?;
        let cause = if force_build {
            Cause::MANUAL_FORCE_REBUILD
        } else {
            Cause::MANUAL
        };
        let mut d = Deployment::new(
            &record.id,
            record.spec.clone(),
            DeploymentKind::Build,
            cause,
        );
        d.force_build = force_build;
        d.clear_build_cache = force_build && clear_build_cache;
        self.enqueue(d).await
    }

    /// Starts a rolling restart of the named services and workers (all of them when
    /// `components` is empty), from the exact images of the active deployment.
    pub async fn restart(
        &self,
        id: &str,
        components: &[String],
    ) -> Result<Deployment, EngineError> {
        let record = self.app(id).await?;
        let active = self
            .inner
            .store
            .active_deployment(&record.id)
            .await?
            .ok_or_else(|| EngineError::NothingToRestart {
                app: record.name.clone(),
            })?;
        let spec = &active.spec;
        let unknown: Vec<String> = components
            .iter()
            .filter(|c| spec.kind_of(c).is_none())
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(EngineError::UnknownComponents {
                app: record.name.clone(),
                names: unknown,
                known: spec
                    .components()
                    .into_iter()
                    .filter(|(_, k)| k.is_restartable())
                    .map(|(n, _)| n.to_string())
                    .collect(),
            });
        }
        if let Some((name, kind)) = components
            .iter()
            .filter_map(|c| spec.kind_of(c).map(|k| (c, k)))
            .find(|(_, k)| !k.is_restartable())
        {
            return Err(EngineError::NotRestartable {
                name: name.clone(),
                kind,
            });
        }
        let mut names: Vec<String> = Vec::new();
        for c in components {
            if !names.contains(c) {
                names.push(c.clone());
            }
        }
        let restartable = spec
            .components()
            .into_iter()
            .any(|(_, k)| k.is_restartable());
        if !restartable {
            return Err(EngineError::NothingToRestart {
                app: record.name.clone(),
            });
        }
        let mut d = Deployment::new(
            &record.id,
            active.spec.clone(),
            DeploymentKind::Restart,
            Cause::MANUAL_RESTART,
        );
        d.phase = Phase::PendingDeploy;
        d.services = active.services.clone();
        d.workers = active.workers.clone();
        d.jobs = active.jobs.clone();
        for c in d
            .services
            .iter_mut()
            .chain(&mut d.workers)
            .chain(&mut d.jobs)
        {
            c.build_reused = false;
        }
        d.restart_components = names;
        self.enqueue(d).await
    }

    /// Cancels a deployment that has not ended, as the cancel table in [`lifecycle`] says: a
    /// queued one ends CANCELED at once; a running one stops, its new instances are removed and
    /// the previous version keeps serving (this returns once it has ended); one whose
    /// switch-over has begun committing is refused.
    pub async fn cancel(
        &self,
        app_id: &str,
        deployment_id: &str,
    ) -> Result<Deployment, EngineError> {
        let record = self.app(app_id).await?;
        let d = self.deployment(&record.id, deployment_id).await?;
        let ended = |d: &Deployment| EngineError::AlreadyEnded {
            id: d.id.clone(),
            phase: d.phase,
        };
        if d.phase.is_terminal() {
            return Err(ended(&d));
        }
        let control = self
            .slot(&record.id)
            .controls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(deployment_id)
            .cloned();
        let Some(control) = control else {
            // Its task has just ended: it is ended, or about to be.
            let d = self.wait(&record.id, deployment_id).await?;
            return Err(ended(&d));
        };
        let mut canceled = d.clone();
        canceled
            .progress
            .push(&[], slipway_spec::Step::new("canceled"));
        canceled.progress.fail(
            &["canceled"],
            now(),
            slipway_spec::FailureCode::Canceled.as_str(),
            "canceled before it started",
        );
        canceled.error = Some(slipway_spec::DeploymentError {
            code: slipway_spec::FailureCode::Canceled,
            message: "canceled before it started".into(),
        });
        let to = lifecycle::next(d.phase, lifecycle::Event::Cancel).map_err(|_| ended(&d))?;
        canceled.set_phase(to);
        let store = &self.inner.store;
        let outcome = control
            .cancel_queued(store.save_deployment(&canceled))
            .await?;
        match outcome {
            Ok(lifecycle::Canceled::Queued) => {
                self.announce(canceled.clone());
                Ok(canceled)
            }
            Ok(lifecycle::Canceled::Running) => self.wait(&record.id, deployment_id).await,
            Err(lifecycle::CancelRefused::Committing) => Err(EngineError::CancelRefused {
                id: d.id.clone(),
                reason: "every new instance is ready and the switch-over to them has begun committing; the deployment will end ACTIVE".into(),
            }),
            Err(lifecycle::CancelRefused::Ended) => {
                let d = self.wait(&record.id, deployment_id).await?;
                Err(ended(&d))
            }
        }
    }

    /// Tells every watcher of a deployment's change: only ever after the change is saved.
    pub(crate) fn announce(&self, deployment: Deployment) {
        let _ = self.inner.updates.send(DeploymentUpdate { deployment });
    }

    pub async fn deployment(&self, app_id: &str, id: &str) -> Result<Deployment, EngineError> {
        self.inner
            .store
            .deployment(app_id, id)
            .await?
            .ok_or_else(|| EngineError::NotFound {
                what: "deployment",
                id: id.to_string(),
            })
    }

    /// Waits until a deployment has ended, and returns it.
    pub async fn wait(&self, app_id: &str, id: &str) -> Result<Deployment, EngineError> {
        let mut updates = self.subscribe();
        loop {
            let d = self.deployment(app_id, id).await?;
            if d.phase.is_terminal() {
                return Ok(d);
            }
            let _ = tokio::time::timeout(Duration::from_millis(250), updates.recv()).await;
        }
    }

    /// Deletes an app: its deployments are canceled, its containers, network and built images
    /// removed, and with `purge` its databases' volumes too.
    pub async fn delete_app(&self, id: &str, purge: bool) -> Result<String, EngineError> {
        let record = self.app(id).await?;
        let slot = self.slot(&record.id);
        for control in slot
            .controls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            control.token().cancel();
        }
        let _turn = slot.turn.lock().await;
        if let Some(mode) = &self.inner.swarm {
            mode.unfollow(&record.id, None);
            for name in mode.swarm.services(Some(&record.id)).await? {
                mode.swarm.remove(&name).await?;
            }
            // Its images in the registry: of every component it has had, as far back as its
            // recent deployments tell. A registry that refuses does not keep the app.
            let mut components: BTreeSet<String> = record
                .spec
                .components()
                .into_iter()
                .map(|(name, _)| name.to_string())
                .collect();
            if let Ok((deployments, _)) = self.inner.store.deployments(&record.id, 0, 200).await {
                for d in &deployments {
                    components.extend(d.spec.components().into_iter().map(|(n, _)| n.to_string()));
                }
            }
            match mode
                .unpush_app(&record.id, components.iter().map(String::as_str))
                .await
            {
                Ok(n) => {
                    tracing::info!(app = %record.id, images = n, "removed the app's images from the registry")
                }
                Err(e) => tracing::warn!(
                    app = %record.id,
                    error = %error_chain(&e),
                    "removing the app's images from the registry failed"
                ),
            }
        }
        let filter = [
            (labels::APP, record.id.as_str()),
            (labels::DAEMON, self.inner.config.daemon_id.as_str()),
        ];
        self.inner.runtime.remove_labelled(&filter, purge).await?;
        for filter in templates::image_filters(&self.inner.config.daemon_id, &record.id) {
            self.inner.builder.remove_labelled(&filter).await?;
        }
        self.inner.ingress.remove_app(&record.id);
        self.refresh_domains();
        self.inner.store.delete_app(&record.id).await?;
        self.inner
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&record.id);
        Ok(record.id)
    }

    /// The containers of an app now, by component (on a swarm: the running tasks' containers
    /// on this node).
    pub async fn instances(
        &self,
        app_id: &str,
    ) -> Result<Vec<(String, ComponentKind, Instance)>, EngineError> {
        let record = self.app(app_id).await?;
        let list = self
            .inner
            .runtime
            .list(&[
                (labels::APP, record.id.as_str()),
                (labels::DAEMON, self.inner.config.daemon_id.as_str()),
            ])
            .await?;
        // Swarm keeps the stopped containers of replaced tasks as history: they are not
        // instances.
        let on_swarm = self.inner.swarm.is_some();
        Ok(list
            .into_iter()
            .filter(|i| i.running || !on_swarm)
            .filter_map(|i| {
                let kind = record.spec.kind_of(&i.component)?;
                Some((i.component.clone(), kind, i))
            })
            .collect())
    }

    /// The state Docker reports for each container of an app (`running`, `exited`,
    /// `restarting`, ...), by container ID.
    pub async fn container_states(
        &self,
        app_id: &str,
    ) -> Result<HashMap<String, String>, EngineError> {
        let record = self.app(app_id).await?;
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{}={}", labels::APP, record.id),
                format!("{}={}", labels::DAEMON, self.inner.config.daemon_id),
                labels::DEPLOYMENT.to_string(),
            ],
        )]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .inner
            .runtime
            .docker()
            .list_containers(Some(options))
            .await
            .map_err(|source| slipway_rollout::RuntimeError::Docker {
                action: "list",
                object: "containers".into(),
                source,
            })?;
        Ok(list
            .into_iter()
            .filter_map(|c| Some((c.id?, c.state.map(|s| s.to_string()).unwrap_or_default())))
            .collect())
    }

    /// The RUN log of an app: what its service, worker and job containers write, each line
    /// prefixed with its instance, as chunks of whole lines (each ending with `\n`): without
    /// `follow`, Docker's log of each instance (its last `tail` lines, or all) merged in time
    /// order as it is read; with `follow`, the last `tail` lines each instance's buffer holds
    /// (default none), then what they write next, until the stream is dropped, a slow reader
    /// skipping lines with a line saying so (see [`runlog`]).
    pub async fn run_logs(
        &self,
        app_id: &str,
        component: Option<&str>,
        follow: bool,
        tail: Option<usize>,
    ) -> Result<futures::stream::BoxStream<'static, String>, EngineError> {
        use futures::StreamExt;
        if let Some(mode) = &self.inner.swarm {
            return self
                .run_logs_on_swarm(mode, app_id, component, follow, tail)
                .await;
        }
        let instances: Vec<Instance> = self
            .instances(app_id)
            .await?
            .into_iter()
            .filter(|(c, kind, _)| {
                *kind != ComponentKind::Database && component.is_none_or(|want| want == c)
            })
            .map(|(_, _, i)| i)
            .collect();
        if follow {
            let streams: Vec<_> = instances
                .iter()
                .map(|i| {
                    self.inner
                        .taps
                        .follow(&self.inner.runtime, i, tail.unwrap_or(0))
                })
                .collect();
            return Ok(futures::stream::select_all(streams).boxed());
        }
        let streams: Vec<_> = instances
            .iter()
            .map(|i| {
                self.inner
                    .runtime
                    .log_records(i, false, tail)
                    .map(|r| (r.at.clone(), runlog::format_record(&r)))
                    .boxed()
            })
            .collect();
        Ok(runlog::chunked(runlog::merge_by_time(streams)))
    }

    /// Saves a new deployment and starts its task.
    async fn enqueue(&self, d: Deployment) -> Result<Deployment, EngineError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        self.inner.store.save_deployment(&d).await?;
        self.announce(d.clone());
        let control = Arc::new(lifecycle::Control::new(self.inner.shutdown.child_token()));
        let slot = self.slot(&d.app_id);
        slot.controls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(d.id.clone(), Arc::clone(&control));
        let ticket = slot
            .tickets
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let engine = self.clone();
        let (app_id, id) = (d.app_id.clone(), d.id.clone());
        self.inner.tasks.spawn(async move {
            run::execute(engine, app_id, id, ticket, control).await;
        });
        Ok(d)
    }

    /// Stops the engine: no new deployment starts, running ones are canceled, and this returns
    /// when their tasks have finished, with the data directory free for another engine.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        if let Some(mode) = &self.inner.swarm {
            mode.unfollow_all();
        }
        // The data directory is free for another engine at once, even while clones of this
        // one are still being dropped.
        drop(
            self.inner
                .data_dir_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    }

    /// Whether apps run on a swarm.
    pub fn on_swarm(&self) -> bool {
        self.inner.swarm.is_some()
    }

    /// Feeds the ingress with the tasks of a service component on the swarm.
    fn follow_service(
        &self,
        mode: &swarm::SwarmMode,
        app_id: &str,
        spec: &AppSpec,
        component: &str,
    ) {
        let Some(service) = spec.service(component) else {
            return;
        };
        let (drain, _) = templates::termination(spec, component);
        mode.follow(
            &self.inner.ingress,
            app_id,
            component,
            service.http_port.unwrap_or(8080),
            service
                .health_check
                .as_ref()
                .and_then(|h| h.http_path.clone()),
            drain,
        );
    }
}
