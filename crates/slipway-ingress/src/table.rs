//! The routing table: apps by host, routes by path, pools of ready instances.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use http::StatusCode;
use slipway_spec::AppSpec;
use tokio::sync::Notify;

use crate::control::{Snapshot, SnapshotApp, SnapshotInstance, SnapshotPool};
use crate::metrics::{self, AppMetrics, Global};
use crate::rules::{self, Cors, Domain};

/// How the ingress behaves.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// Apps are served at `<name>.<base_domain>`.
    pub base_domain: String,
    /// The scheme and port clients use, for the apps' live URLs.
    pub public_scheme: String,
    pub public_port: Option<u16>,
    /// How long a backend may take to answer with its headers.
    pub request_timeout: Duration,
    /// How long a client connection may take to send a request's headers.
    pub header_timeout: Duration,
    pub max_body_bytes: u64,
    /// Not used any more: a connection to an instance belongs to one client connection and
    /// carries its requests one at a time, so that no request is pipelined behind another
    /// client's. Kept so that configurations that set it still build.
    pub pipeline_depth: usize,
    /// How long one write to a client may wait for it to read: a client that reads nothing
    /// for this long loses its connection.
    pub client_write_timeout: Duration,
    /// The most client connections open at once; beyond it, a new connection is closed as
    /// soon as it is accepted.
    pub max_connections: usize,
    /// Where the answers to ACME's HTTP-01 challenges are (one file per token), served at
    /// `/.well-known/acme-challenge/<token>` on plain HTTP for every host.
    pub acme_challenges: Option<std::path::PathBuf>,
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            base_domain: "localhost".into(),
            public_scheme: "http".into(),
            public_port: Some(7480),
            request_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(30),
            max_body_bytes: 32 * 1024 * 1024,
            pipeline_depth: 16,
            client_write_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            acme_challenges: None,
        }
    }
}

/// One instance in a pool.
#[derive(Debug)]
pub(crate) struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    pub in_flight: AtomicUsize,
    pub draining: AtomicBool,
    /// Out of rotation: a connection to it could not be made, and none has been made since.
    pub(crate) out: AtomicBool,
    /// A probe of it is under way (at most one at a time).
    pub(crate) probing: AtomicBool,
    /// The pool it is in, for its component's health path.
    pub(crate) pool: Weak<Pool>,
    idle: Notify,
}

impl Backend {
    /// Whether it is still in a pool and not draining: a probe of one that left stops.
    pub(crate) fn in_pool(self: &Arc<Self>) -> bool {
        if self.draining.load(Ordering::SeqCst) {
            return false;
        }
        self.pool.upgrade().is_some_and(|p| {
            p.backends
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|b| Arc::ptr_eq(b, self))
        })
    }

    /// A connection to it was made: it is in rotation (again).
    pub(crate) fn connected(&self) {
        if self.out.load(Ordering::Relaxed) && self.out.swap(false, Ordering::SeqCst) {
            tracing::info!(instance = %self.id, addr = %self.addr, "an instance accepts connections again and is back in rotation");
        }
    }
}

/// Counts a request in flight to a backend for as long as it lives.
#[derive(Debug)]
pub(crate) struct InFlight(pub Arc<Backend>);

impl InFlight {
    pub(crate) fn new(b: Arc<Backend>) -> Self {
        b.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(b)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The ready instances of one component.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    /// The component's name, for the answers the ingress gives itself.
    pub(crate) component: String,
    /// The component's HTTP health path, when it has one on the port the ingress reaches:
    /// a probe of an instance out of rotation asks it, else a connect is the probe.
    pub(crate) health_path: Mutex<Option<String>>,
    backends: RwLock<Vec<Arc<Backend>>>,
    next: AtomicUsize,
}

impl Pool {
    /// The instance with the fewest requests in flight, not draining, in rotation, and not
    /// `exclude`; round robin among equals. When every instance is out of rotation, one of
    /// them is tried all the same: an answer from one that is back beats refusing the request.
    pub(crate) fn pick(&self, exclude: Option<&str>) -> Option<Arc<Backend>> {
        let backends = self.backends.read().unwrap_or_else(|e| e.into_inner());
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let usable = |b: &&Arc<Backend>, allow_down: bool| {
            !b.draining.load(Ordering::SeqCst)
                && Some(b.id.as_str()) != exclude
                && (allow_down || !b.out.load(Ordering::Relaxed))
        };
        for allow_down in [false, true] {
            let best = (0..n)
                .map(|i| &backends[(start + i) % n])
                .filter(|b| usable(b, allow_down))
                .min_by_key(|b| b.in_flight.load(Ordering::Relaxed));
            if let Some(b) = best {
                return Some(Arc::clone(b));
            }
        }
        None
    }

    pub(crate) fn ready_count(&self) -> usize {
        self.backends
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|b| !b.draining.load(Ordering::SeqCst))
            .count()
    }
}

/// Where a request goes.
pub(crate) struct Routed {
    pub pool: Arc<Pool>,
    /// The path to send instead of the request's own, when the route changes it.
    pub path: Option<String>,
    /// The route's CORS policy.
    pub cors: Option<Cors>,
    /// Its app's counters.
    pub app: Arc<AppMetrics>,
}

/// The ingress's own answer to a request it has nowhere to send.
pub(crate) struct Unrouted {
    pub status: StatusCode,
    pub text: String,
    /// The counters of the app it is for, when its host names one.
    pub app: Option<Arc<AppMetrics>>,
    /// The redirect the answer is (its `status` is the redirect's).
    pub redirect: Option<slipway_spec::RedirectSpec>,
}

/// `host` without its `:port` (IPv6 literals keep their brackets).
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Route {
    pub prefix: String,
    /// The one host (without port) the route is for; every host of the app when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// The service; empty for a redirect.
    pub component: String,
    pub preserve_prefix: bool,
    pub rewrite: Option<String>,
    /// Requests are answered with this redirect instead of reaching a service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<slipway_spec::RedirectSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
}

/// Where a request for a path of an app goes.
pub(crate) enum Matched<'a, 'p> {
    /// To a service, with the path to send it (borrowed when it is the request's own).
    Service(&'a Route, Cow<'p, str>),
    /// Answered with a redirect.
    Redirect(&'a slipway_spec::RedirectSpec),
}

#[derive(Debug, Default)]
pub(crate) struct AppRoutes {
    pub name: String,
    /// Longest prefix first.
    pub routes: Vec<Route>,
    /// The hosts it is served at besides `<name>.<base domain>`.
    pub domains: Vec<Domain>,
    /// The components' HTTP health paths, for probes.
    pub health_paths: HashMap<String, String>,
    pub pools: RwLock<HashMap<String, Arc<Pool>>>,
    /// Kept from one spec of the app to the next; dropped with the app.
    pub metrics: Arc<AppMetrics>,
}

impl AppRoutes {
    pub(crate) fn pool(&self, component: &str) -> Option<Arc<Pool>> {
        self.pools
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(component)
            .cloned()
    }

    fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Where a request for `path` on `host` (lower-case, without port) goes.
    pub(crate) fn route<'p>(&self, host: &str, path: &'p str) -> Option<Matched<'_, 'p>> {
        for r in &self.routes {
            if r.authority.as_deref().is_some_and(|a| a != host) {
                continue;
            }
            let matches = path == r.prefix
                || r.prefix == "/"
                || (path.starts_with(&r.prefix)
                    && (r.prefix.ends_with('/')
                        || path.as_bytes().get(r.prefix.len()) == Some(&b'/')));
            if !matches {
                continue;
            }
            if let Some(redirect) = &r.redirect {
                return Some(Matched::Redirect(redirect));
            }
            let rest = &path[r.prefix.len().min(path.len())..];
            let forwarded = if let Some(rewrite) = &r.rewrite {
                Cow::Owned(join(rewrite, rest))
            } else if r.preserve_prefix || r.prefix == "/" {
                Cow::Borrowed(path)
            } else {
                Cow::Owned(join("/", rest))
            };
            return Some(Matched::Service(r, forwarded));
        }
        None
    }
}

fn join(base: &str, rest: &str) -> String {
    let base = base.trim_end_matches('/');
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        if base.is_empty() {
            "/".into()
        } else {
            base.to_string()
        }
    } else {
        format!("{base}/{rest}")
    }
}

#[derive(Debug, Default)]
struct Table {
    /// By app ID.
    apps: HashMap<String, Arc<AppRoutes>>,
    /// App name to app ID.
    names: HashMap<String, String>,
    /// An app's domains to its ID: a domain to the app served there, and a wildcard domain's
    /// name to the app served at its subdomains.
    hosts: HashMap<String, String>,
    wildcards: HashMap<String, String>,
}

impl Table {
    /// Forgets where `app` was served, but its ID.
    fn unlist(&mut self, app_id: &str, app: &AppRoutes) {
        self.names.remove(&app.name);
        for d in &app.domains {
            let list = if d.wildcard {
                &mut self.wildcards
            } else {
                &mut self.hosts
            };
            if list.get(&d.name).is_some_and(|id| id == app_id) {
                list.remove(&d.name);
            }
            // A wildcard domain serves its own name too.
            if d.wildcard && self.hosts.get(&d.name).is_some_and(|id| id == app_id) {
                self.hosts.remove(&d.name);
            }
        }
    }

    fn list(&mut self, app_id: &str, app: &AppRoutes) {
        self.names.insert(app.name.clone(), app_id.to_string());
        for d in &app.domains {
            self.hosts.insert(d.name.clone(), app_id.to_string());
            if d.wildcard {
                self.wildcards.insert(d.name.clone(), app_id.to_string());
            }
        }
    }
}

/// What the ingress's health check reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// At least one of its threads accepts client connections.
    pub accepting: bool,
    /// Apps served.
    pub apps: u64,
    /// Instances in rotation: ready, not draining, accepting connections.
    pub in_rotation: u64,
    /// Instances out of rotation because connecting to them failed.
    pub out_of_rotation: u64,
}

/// The ingress as its servers see it: its table, and the scheme its clients use.
pub(crate) struct Proxy {
    pub(crate) ingress: Arc<Ingress>,
    pub(crate) scheme: http::HeaderValue,
    /// Whether its clients reach it over TLS that the ingress terminates.
    pub(crate) tls: bool,
}

/// The ingress's state: which app is served where, and its ready instances. Cheap to share.
#[derive(Debug)]
pub struct Ingress {
    pub(crate) config: IngressConfig,
    /// `.<base domain>`, for matching hosts without formatting it on every request.
    host_suffix: String,
    table: RwLock<Table>,
    pub(crate) global: Global,
    /// Bumped on every change of the table, for a follower (the link to an ingress process).
    changes: tokio::sync::watch::Sender<u64>,
    /// Where drains are sent on, when the requests are served by an ingress process: a drain
    /// returns once that process has drained the instance too.
    relay: OnceLock<tokio::sync::mpsc::UnboundedSender<RemoteDrain>>,
    /// Where HTTPS is served, once it is.
    https: OnceLock<crate::tls::Https>,
}

/// A drain for the ingress process, answered on `done` when it is over there.
#[derive(Debug)]
pub(crate) struct RemoteDrain {
    pub app: String,
    pub component: String,
    pub instance: String,
    pub max: Duration,
    pub done: tokio::sync::oneshot::Sender<()>,
}

impl Ingress {
    pub fn new(config: IngressConfig) -> Arc<Ingress> {
        Arc::new(Ingress {
            host_suffix: format!(".{}", config.base_domain),
            config,
            table: RwLock::new(Table::default()),
            global: Global::default(),
            changes: tokio::sync::watch::Sender::new(0),
            relay: OnceLock::new(),
            https: OnceLock::new(),
        })
    }

    /// Tells followers that the table changed.
    fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A receiver that sees every change of the table (coalesced).
    pub(crate) fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Sends every drain on to `relay` too (once; later calls are ignored).
    pub(crate) fn set_relay(&self, relay: tokio::sync::mpsc::UnboundedSender<RemoteDrain>) {
        let _ = self.relay.set(relay);
    }

    /// The names of every app's domains (a wildcard domain's own name).
    pub fn domains(&self) -> std::collections::BTreeSet<String> {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table
            .apps
            .values()
            .flat_map(|a| a.domains.iter().map(|d| d.name.clone()))
            .collect()
    }

    /// Says that HTTPS is served on `port` with `certs` (once; later calls are ignored).
    pub(crate) fn set_https(&self, port: u16, certs: Arc<crate::tls::Certificates>) {
        let _ = self.https.set(crate::tls::Https { port, certs });
    }

    /// Whether `host` (lower-case, without port) is a domain whose clients must speak TLS 1.3.
    pub(crate) fn requires_tls13(&self, host: &str) -> bool {
        self.app_for_host(host)
            .is_some_and(|app| app.domains.iter().any(|d| d.tls13 && d.serves(host)))
    }

    pub fn config(&self) -> &IngressConfig {
        &self.config
    }

    /// The URL an app is served at by its name.
    pub fn live_url(&self, app_name: &str) -> String {
        self.url_of(&format!("{app_name}.{}", self.config.base_domain))
    }

    /// The URL of `host` on the ingress: the public scheme, and the public port unless it is
    /// the scheme's own.
    pub fn url_of(&self, host: &str) -> String {
        let c = &self.config;
        let default_port = match c.public_scheme.as_str() {
            "https" => 443,
            _ => 80,
        };
        match c.public_port {
            Some(p) if p != default_port => format!("{}://{host}:{p}", c.public_scheme),
            _ => format!("{}://{host}", c.public_scheme),
        }
    }

    /// Sets (or replaces) an app's name, hosts and routes from its spec; its pools are kept.
    pub fn set_app(&self, app_id: &str, spec: &AppSpec) {
        let routes = rules::routes_of(spec);
        let domains = rules::domains_of(spec);
        // A health path asked on another port than the one the ingress reaches says nothing
        // of that one.
        let health_paths: HashMap<String, String> = spec
            .services
            .iter()
            .filter_map(|s| {
                let hc = s.health_check.as_ref()?;
                let path = hc.http_path.clone()?;
                (hc.port.is_none() || hc.port == s.http_port).then(|| (s.name.clone(), path))
            })
            .collect();
        self.set_routes(app_id, &spec.name, routes, domains, health_paths);
    }

    /// Sets an app's name, routes (longest prefix first), domains and health paths; its pools
    /// are kept.
    pub(crate) fn set_routes(
        &self,
        app_id: &str,
        name: &str,
        routes: Vec<Route>,
        domains: Vec<Domain>,
        health_paths: HashMap<String, String>,
    ) {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        let (pools, metrics) = match table.apps.get(app_id) {
            Some(a) => (
                a.pools.read().unwrap_or_else(|e| e.into_inner()).clone(),
                Arc::clone(&a.metrics),
            ),
            None => Default::default(),
        };
        for (component, pool) in &pools {
            *pool.health_path.lock().unwrap_or_else(|e| e.into_inner()) =
                health_paths.get(component).cloned();
        }
        if let Some(old) = table.apps.get(app_id).cloned() {
            table.unlist(app_id, &old);
        }
        let app = Arc::new(AppRoutes {
            name: name.to_string(),
            routes,
            domains,
            health_paths,
            pools: RwLock::new(pools),
            metrics,
        });
        table.list(app_id, &app);
        table.apps.insert(app_id.to_string(), app);
        drop(table);
        self.changed();
    }

    /// Forgets an app and its pools.
    pub fn remove_app(&self, app_id: &str) {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        if let Some(app) = table.apps.remove(app_id) {
            table.unlist(app_id, &app);
        }
        drop(table);
        self.changed();
    }

    /// The pool of a component, made (with its app) when missing: instances may become ready
    /// before their app's routes are set.
    fn pool(&self, app_id: &str, component: &str) -> Arc<Pool> {
        let app = {
            let table = self.table.read().unwrap_or_else(|e| e.into_inner());
            table.apps.get(app_id).cloned()
        };
        let app = match app {
            Some(a) => a,
            None => {
                let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
                Arc::clone(table.apps.entry(app_id.to_string()).or_default())
            }
        };
        let mut pools = app.pools.write().unwrap_or_else(|e| e.into_inner());
        let pool = pools.entry(component.to_string()).or_insert_with(|| {
            Arc::new(Pool {
                component: component.to_string(),
                health_path: Mutex::new(app.health_paths.get(component).cloned()),
                ..Pool::default()
            })
        });
        Arc::clone(pool)
    }

    /// Adds a ready instance to its component's pool.
    pub fn add(&self, app_id: &str, component: &str, instance_id: &str, addr: SocketAddr) {
        let pool = self.pool(app_id, component);
        let mut backends = pool.backends.write().unwrap_or_else(|e| e.into_inner());
        if backends.iter().any(|b| b.id == instance_id) {
            return;
        }
        backends.push(Arc::new(Backend {
            id: instance_id.to_string(),
            addr,
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            out: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            pool: Arc::downgrade(&pool),
            idle: Notify::new(),
        }));
        drop(backends);
        self.changed();
    }

    /// Has the ingress process, when there is one, drain the instance too; returns when it
    /// has, or at `deadline`.
    async fn relay_drain(
        &self,
        app_id: &str,
        component: &str,
        instance_id: &str,
        deadline: tokio::time::Instant,
    ) {
        let Some(relay) = self.relay.get() else {
            return;
        };
        let (done, over) = tokio::sync::oneshot::channel();
        let sent = relay.send(RemoteDrain {
            app: app_id.to_string(),
            component: component.to_string(),
            instance: instance_id.to_string(),
            max: deadline.saturating_duration_since(tokio::time::Instant::now()),
            done,
        });
        if sent.is_ok() {
            let _ = tokio::time::timeout_at(deadline, over).await;
        }
    }

    /// Takes an instance out of its pool at once, and returns when the requests in flight to
    /// it have finished or `max` has passed (whichever is first).
    pub async fn drain(&self, app_id: &str, component: &str, instance_id: &str, max: Duration) {
        let pool = {
            let table = self.table.read().unwrap_or_else(|e| e.into_inner());
            table.apps.get(app_id).and_then(|a| a.pool(component))
        };
        let backend = pool.as_ref().and_then(|pool| {
            let backends = pool.backends.read().unwrap_or_else(|e| e.into_inner());
            backends.iter().find(|b| b.id == instance_id).cloned()
        });
        let (Some(pool), Some(backend)) = (pool, backend) else {
            // Not in this table (a daemon that just started), but the ingress process may
            // still route to it with the table it kept.
            let deadline = tokio::time::Instant::now() + max;
            self.relay_drain(app_id, component, instance_id, deadline)
                .await;
            return;
        };
        backend.draining.store(true, Ordering::SeqCst);
        self.changed();
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let idle = backend.idle.notified();
            if backend.in_flight.load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::select! {
                () = idle => {}
                () = tokio::time::sleep_until(deadline) => {
                    tracing::info!(instance = %instance_id, in_flight = backend.in_flight.load(Ordering::SeqCst), "drain time is up");
                    break;
                }
            }
        }
        // The ingress process, when there is one, serves the requests: it drains the
        // instance too, within what is left of the time.
        self.relay_drain(app_id, component, instance_id, deadline)
            .await;
        pool.backends
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|b| !Arc::ptr_eq(b, &backend));
        self.changed();
    }

    /// Removes an instance (a crashed one) from every pool at once.
    pub fn eject(&self, instance_id: &str) {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        for app in table.apps.values() {
            for pool in app.pools() {
                pool.backends
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|b| b.id != instance_id);
            }
        }
        drop(table);
        self.changed();
    }

    /// The table as an ingress process is given it: every app's routes and the instances in
    /// its pools that take requests (not the draining ones, which are on their way out).
    pub(crate) fn snapshot(&self) -> Snapshot {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let mut apps: Vec<SnapshotApp> = table
            .apps
            .iter()
            .map(|(id, app)| {
                let mut pools: Vec<SnapshotPool> = app
                    .pools()
                    .iter()
                    .map(|pool| SnapshotPool {
                        component: pool.component.clone(),
                        instances: pool
                            .backends
                            .read()
                            .unwrap_or_else(|e| e.into_inner())
                            .iter()
                            .filter(|b| !b.draining.load(Ordering::SeqCst))
                            .map(|b| SnapshotInstance {
                                id: b.id.clone(),
                                addr: b.addr,
                            })
                            .collect(),
                    })
                    .collect();
                pools.sort_by(|a, b| a.component.cmp(&b.component));
                SnapshotApp {
                    id: id.clone(),
                    name: app.name.clone(),
                    routes: app.routes.clone(),
                    domains: app.domains.clone(),
                    health_paths: app.health_paths.clone().into_iter().collect(),
                    pools,
                }
            })
            .collect();
        apps.sort_by(|a, b| a.id.cmp(&b.id));
        Snapshot { apps }
    }

    /// Makes the table `snapshot`'s: apps and routes are set, instances added; an instance
    /// that is not in it any more is drained (out of rotation at once, gone when its requests
    /// have finished, within `drain`), never cut off; an app that is not is forgotten.
    /// Instances already in the table keep their state (out of rotation or not).
    pub(crate) fn apply(self: &Arc<Self>, snapshot: &Snapshot, drain: Duration) {
        let wanted: HashMap<&str, &SnapshotApp> =
            snapshot.apps.iter().map(|a| (a.id.as_str(), a)).collect();
        let gone: Vec<String> = {
            let table = self.table.read().unwrap_or_else(|e| e.into_inner());
            table
                .apps
                .keys()
                .filter(|id| !wanted.contains_key(id.as_str()))
                .cloned()
                .collect()
        };
        for app in &snapshot.apps {
            let current = {
                let table = self.table.read().unwrap_or_else(|e| e.into_inner());
                table.apps.get(&app.id).cloned()
            };
            let health: HashMap<String, String> = app.health_paths.iter().cloned().collect();
            let same = current.as_ref().is_some_and(|c| {
                c.name == app.name
                    && c.routes == app.routes
                    && c.domains == app.domains
                    && c.health_paths == health
            });
            if !app.name.is_empty() && !same {
                self.set_routes(
                    &app.id,
                    &app.name,
                    app.routes.clone(),
                    app.domains.clone(),
                    health,
                );
            }
            let mut listed: HashMap<&str, Vec<&SnapshotInstance>> = HashMap::new();
            for pool in &app.pools {
                listed
                    .entry(pool.component.as_str())
                    .or_default()
                    .extend(&pool.instances);
                for instance in &pool.instances {
                    self.add(&app.id, &pool.component, &instance.id, instance.addr);
                }
            }
            let Some(current) = current else { continue };
            for pool in current.pools() {
                let leaving: Vec<String> = pool
                    .backends
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .filter(|b| !b.draining.load(Ordering::SeqCst))
                    .filter(|b| {
                        !listed
                            .get(pool.component.as_str())
                            .is_some_and(|l| l.iter().any(|i| i.id == b.id))
                    })
                    .map(|b| b.id.clone())
                    .collect();
                for instance in leaving {
                    let (ingress, app_id, component) =
                        (Arc::clone(self), app.id.clone(), pool.component.clone());
                    tokio::spawn(async move {
                        ingress.drain(&app_id, &component, &instance, drain).await;
                    });
                }
            }
        }
        for app_id in gone {
            self.remove_app(&app_id);
        }
    }

    /// How many instances of a component take requests now.
    pub fn ready_count(&self, app_id: &str, component: &str) -> usize {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        table
            .apps
            .get(app_id)
            .and_then(|a| a.pool(component))
            .map_or(0, |p| p.ready_count())
    }

    /// Where a request for `host` (with its port or not) and `path` goes: the pool of the
    /// component its app's routes pick. When it has nowhere to go, the ingress's own answer.
    /// Where a request for `path` on `host` goes; `secure` when it came over TLS.
    pub(crate) fn route(&self, host: &str, path: &str, secure: bool) -> Result<Routed, Unrouted> {
        if let Some(answer) = self.acme_answer(path) {
            return Err(answer);
        }
        let host = without_port(host);
        let Some(app) = self.app_for_host(host) else {
            self.global
                .unknown_host
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(Unrouted {
                status: StatusCode::NOT_FOUND,
                text: format!("no app is served at {host}\n"),
                app: None,
                redirect: None,
            });
        };
        let host = host.trim_end_matches('.');
        let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        // A domain with a certificate is served over HTTPS only (but for ACME's challenges).
        if !secure
            && let Some(https) = self.https.get()
            && !path.starts_with(crate::tls::ACME_CHALLENGE_PREFIX)
            && app.domains.iter().any(|d| d.serves(&host))
            && https.certs.covers(&host)
        {
            return Err(Unrouted {
                status: StatusCode::PERMANENT_REDIRECT,
                text: String::new(),
                app: Some(Arc::clone(&app.metrics)),
                redirect: Some(slipway_spec::RedirectSpec {
                    scheme: Some("https".into()),
                    port: (https.port != 443).then_some(https.port),
                    ..slipway_spec::RedirectSpec::default()
                }),
            });
        }
        let (route, forwarded_path) = match app.route(&host, path) {
            Some(Matched::Service(route, forwarded)) => (route, forwarded),
            Some(Matched::Redirect(redirect)) => {
                return Err(Unrouted {
                    status: rules::redirect_status(redirect),
                    text: String::new(),
                    app: Some(Arc::clone(&app.metrics)),
                    redirect: Some(redirect.clone()),
                });
            }
            None => {
                return Err(Unrouted {
                    status: StatusCode::NOT_FOUND,
                    text: format!("app {} has no route for {path}\n", app.name),
                    app: Some(Arc::clone(&app.metrics)),
                    redirect: None,
                });
            }
        };
        let component = route.component.as_str();
        let Some(pool) = app.pool(component) else {
            return Err(Unrouted {
                status: StatusCode::SERVICE_UNAVAILABLE,
                text: format!("no instance of {component} is ready\n"),
                app: Some(Arc::clone(&app.metrics)),
                redirect: None,
            });
        };
        let path = match forwarded_path {
            Cow::Borrowed(_) => None,
            Cow::Owned(p) => Some(p),
        };
        Ok(Routed {
            pool,
            path,
            cors: route.cors.clone(),
            app: Arc::clone(&app.metrics),
        })
    }

    /// The answer to an ACME HTTP-01 challenge for `path`, when it is one the ACME client
    /// is waiting on.
    fn acme_answer(&self, path: &str) -> Option<Unrouted> {
        let token = path.strip_prefix(crate::tls::ACME_CHALLENGE_PREFIX)?;
        let dir = self.config.acme_challenges.as_ref()?;
        // The base64url alphabet only: never a path out of the directory.
        let valid = !token.is_empty()
            && token.len() <= 256
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return None;
        }
        let text = std::fs::read_to_string(dir.join(token)).ok()?;
        Some(Unrouted {
            status: StatusCode::OK,
            text,
            app: None,
            redirect: None,
        })
    }

    /// What `/healthz` tells: whether the ingress accepts connections, and how much it
    /// routes.
    pub fn health(&self) -> Health {
        let (apps, in_rotation, out_of_rotation) = self.counts();
        Health {
            accepting: self.global.accepting.load(Ordering::SeqCst) > 0,
            apps,
            in_rotation,
            out_of_rotation,
        }
    }

    /// Apps served (those with a name), instances in rotation and out of it.
    fn counts(&self) -> (u64, u64, u64) {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let (mut apps, mut in_rotation, mut out_of_rotation) = (0, 0, 0);
        for app in table.apps.values().filter(|a| !a.name.is_empty()) {
            apps += 1;
            for pool in app.pools() {
                for b in pool
                    .backends
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                {
                    if b.draining.load(Ordering::Relaxed) {
                        continue;
                    }
                    if b.out.load(Ordering::Relaxed) {
                        out_of_rotation += 1;
                    } else {
                        in_rotation += 1;
                    }
                }
            }
        }
        (apps, in_rotation, out_of_rotation)
    }

    /// The ingress's metrics in Prometheus's text exposition format (version 0.0.4): every
    /// app's requests by status class, 5xx answers by who gave them, connections to its
    /// instances that failed, and its latency histogram; connections open and instances
    /// routed. Served as `text/plain; version=0.0.4`.
    pub fn metrics_text(&self) -> String {
        let (apps, in_rotation, out_of_rotation) = self.counts();
        let totals = metrics::Totals {
            open_connections: self.global.open_connections.load(Ordering::Relaxed),
            apps,
            in_rotation,
            out_of_rotation,
            unknown_host: self.global.unknown_host.load(Ordering::Relaxed),
        };
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let mut views: Vec<metrics::AppView<'_>> = table
            .apps
            .iter()
            .filter(|(_, a)| !a.name.is_empty())
            .map(|(id, a)| metrics::AppView {
                id,
                name: &a.name,
                metrics: &a.metrics,
            })
            .collect();
        views.sort_by(|a, b| (a.name, a.id).cmp(&(b.name, b.id)));
        metrics::render(&views, &totals)
    }

    /// The app served at `host` (without its port).
    pub(crate) fn app_for_host(&self, host: &str) -> Option<Arc<AppRoutes>> {
        let host = host.trim_end_matches('.');
        let host: Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let id = match host.strip_suffix(self.host_suffix.as_str()) {
            Some(name) => table.names.get(name),
            None => None,
        }
        .or_else(|| table.hosts.get(host.as_ref()))
        .or_else(|| {
            // The nearest wildcard domain above the host.
            let mut rest = host.as_ref();
            while let Some((_, parent)) = rest.split_once('.') {
                if let Some(id) = table.wildcards.get(parent) {
                    return Some(id);
                }
                rest = parent;
            }
            None
        })?;
        table.apps.get(id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_spec::parse_spec;

    /// The service and forwarded path of a request for `path` on the app's default host.
    fn served<'a>(app: &'a AppRoutes, path: &'a str) -> Option<(&'a str, Cow<'a, str>)> {
        match app.route("shop.localhost", path)? {
            Matched::Service(r, p) => Some((r.component.as_str(), p)),
            Matched::Redirect(_) => None,
        }
    }

    fn ingress_for(spec: &str) -> (Arc<Ingress>, Arc<AppRoutes>) {
        let ingress = Ingress::new(IngressConfig::default());
        let spec = parse_spec(spec).unwrap().spec;
        ingress.set_app("id1", &spec);
        let app = ingress
            .app_for_host(&format!("{}.localhost", spec.name))
            .unwrap();
        (ingress, app)
    }

    #[test]
    fn the_first_service_takes_every_path_without_rules() {
        let (ingress, app) = ingress_for(
            "name: shop\nservices:\n  - {name: web, image: {repository: a}}\n  - {name: api, image: {repository: a}}\n",
        );
        assert_eq!(served(&app, "/x/y?z"), Some(("web", "/x/y?z".into())));
        assert!(ingress.app_for_host("SHOP.localhost.").is_some());
        assert!(ingress.app_for_host("other.localhost").is_none());
        assert_eq!(ingress.live_url("shop"), "http://shop.localhost:7480");
    }

    #[test]
    fn rules_route_by_longest_prefix_and_trim_it_unless_asked() {
        let (_, app) = ingress_for(
            r#"
name: shop
services:
  - {name: web, image: {repository: a}}
  - {name: api, image: {repository: a}}
  - {name: admin, image: {repository: a}}
ingress:
  rules:
    - {match: {path: {prefix: /}}, component: {name: web}}
    - {match: {path: {prefix: /api}}, component: {name: api}}
    - {match: {path: {prefix: /api/admin}}, component: {name: admin, preserve_path_prefix: true}}
"#,
        );
        assert_eq!(served(&app, "/"), Some(("web", "/".into())));
        assert_eq!(served(&app, "/apiary"), Some(("web", "/apiary".into())));
        assert_eq!(served(&app, "/api"), Some(("api", "/".into())));
        assert_eq!(served(&app, "/api/users"), Some(("api", "/users".into())));
        assert_eq!(
            served(&app, "/api/admin/x"),
            Some(("admin", "/api/admin/x".into()))
        );
    }

    #[tokio::test]
    async fn least_outstanding_picks_and_drain_waits_for_in_flight_requests() {
        let ingress = Ingress::new(IngressConfig::default());
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        ingress.add("a", "web", "i1", addr);
        ingress.add("a", "web", "i2", addr);
        let pool = ingress.pool("a", "web");
        let first = InFlight::new(pool.pick(None).unwrap());
        let second = pool.pick(None).unwrap();
        assert_ne!(first.0.id, second.id, "the idle instance is picked");
        assert_eq!(ingress.ready_count("a", "web"), 2);

        let busy = first.0.id.clone();
        let ing = Arc::clone(&ingress);
        let drain =
            tokio::spawn(async move { ing.drain("a", "web", &busy, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            ingress.ready_count("a", "web"),
            1,
            "a draining instance takes no new request"
        );
        assert!(
            !drain.is_finished(),
            "the drain waits for the request in flight"
        );
        for _ in 0..10 {
            assert_ne!(pool.pick(None).unwrap().id, first.0.id);
        }
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), drain)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ingress.ready_count("a", "web"), 1);

        ingress.eject(&second.id);
        assert!(pool.pick(None).is_none());
    }
}
