//! The app spec, with App Platform's field names.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A whole app: its components and what they share.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// The app's name, unique on the daemon.
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseSpec>,
    /// Envs every component gets; a component's own envs override them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub envs: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Ingress>,
    /// Hosts the app is served at besides `<app>.<base domain>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<DomainSpec>,
}

/// What kind of component a name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentKind {
    Service,
    Worker,
    Job,
    Database,
}

impl ComponentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Service => "service",
            ComponentKind::Worker => "worker",
            ComponentKind::Job => "job",
            ComponentKind::Database => "database",
        }
    }

    /// Services and workers are long-running and restartable; jobs and databases are not.
    pub fn is_restartable(self) -> bool {
        matches!(self, ComponentKind::Service | ComponentKind::Worker)
    }
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! component {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* pub $field:ident : $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub name: String,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub git: Option<GitSource>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub github: Option<HostedGitSource>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub gitlab: Option<HostedGitSource>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub image: Option<ImageSource>,
            /// The build context, relative to the repository root.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub source_dir: Option<String>,
            /// The Dockerfile, relative to the repository root (not to `source_dir`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub dockerfile_path: Option<String>,
            /// Replaces the image's command; run by the image's shell (`/bin/sh -c`).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub run_command: Option<String>,
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub envs: Vec<EnvVar>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub instance_count: Option<u32>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub termination: Option<Termination>,
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $name {
            /// The fields every buildable component shares.
            pub fn common(&self) -> ComponentRef<'_> {
                ComponentRef {
                    name: &self.name,
                    git: self.git.as_ref(),
                    github: self.github.as_ref(),
                    gitlab: self.gitlab.as_ref(),
                    image: self.image.as_ref(),
                    source_dir: self.source_dir.as_deref(),
                    dockerfile_path: self.dockerfile_path.as_deref(),
                    run_command: self.run_command.as_deref(),
                    envs: &self.envs,
                    instance_count: self.instance_count,
                    termination: self.termination.as_ref(),
                }
            }
        }
    };
}

component! {
    /// A long-running component that serves HTTP.
    ServiceSpec {
        /// The port the service listens on; `PORT` is set to it. Default 8080.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub http_port: Option<u16>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub internal_ports: Vec<u16>,
        /// The readiness check a new instance must pass before it takes traffic.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub health_check: Option<HealthCheck>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub liveness_health_check: Option<HealthCheck>,
        /// Slipway's extension: how the rollout replaces instances.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub rollout: Option<RolloutSpec>,
        /// The paths routed to this service (App Platform's older form of `ingress.rules`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub routes: Vec<RouteSpec>,
        /// The CORS policy of this service's `routes`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub cors: Option<CorsPolicy>,
    }
}

component! {
    /// A long-running component that serves no HTTP.
    WorkerSpec {
        /// Slipway's extension: how the rollout replaces instances.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub rollout: Option<RolloutSpec>,
    }
}

component! {
    /// A run-to-completion component, run around deployments.
    JobSpec {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub kind: Option<JobKind>,
    }
}

/// The fields every buildable component shares, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct ComponentRef<'a> {
    pub name: &'a str,
    pub git: Option<&'a GitSource>,
    pub github: Option<&'a HostedGitSource>,
    pub gitlab: Option<&'a HostedGitSource>,
    pub image: Option<&'a ImageSource>,
    pub source_dir: Option<&'a str>,
    pub dockerfile_path: Option<&'a str>,
    pub run_command: Option<&'a str>,
    pub envs: &'a [EnvVar],
    pub instance_count: Option<u32>,
    pub termination: Option<&'a Termination>,
}

impl ComponentRef<'_> {
    /// How many sources the component names (exactly one is valid).
    pub(crate) fn source_count(&self) -> usize {
        [
            self.git.is_some(),
            self.github.is_some(),
            self.gitlab.is_some(),
            self.image.is_some(),
        ]
        .into_iter()
        .filter(|s| *s)
        .count()
    }

    /// The component's one source, resolved. `None` only for a spec that failed validation.
    pub fn source(&self) -> Option<Source> {
        if let Some(git) = self.git {
            return Some(Source::Git {
                url: git.repo_clone_url.clone(),
                branch: git.branch.clone().unwrap_or_else(|| "main".into()),
            });
        }
        if let Some(gh) = self.github {
            return Some(Source::Git {
                url: format!("https://github.com/{}.git", gh.repo),
                branch: gh.branch.clone().unwrap_or_else(|| "main".into()),
            });
        }
        if let Some(gl) = self.gitlab {
            return Some(Source::Git {
                url: format!("https://gitlab.com/{}.git", gl.repo),
                branch: gl.branch.clone().unwrap_or_else(|| "main".into()),
            });
        }
        self.image.map(|i| Source::Image {
            reference: i.reference(),
        })
    }

    /// The build context directory, relative to the repository root, without leading or
    /// trailing slashes (`""` is the root).
    pub fn source_dir(&self) -> String {
        normalize_rel(self.source_dir.unwrap_or(""))
    }

    /// The Dockerfile's path relative to the repository root.
    pub fn dockerfile_path(&self) -> String {
        match self.dockerfile_path {
            Some(p) => normalize_rel(p),
            None => {
                let dir = self.source_dir();
                if dir.is_empty() {
                    "Dockerfile".into()
                } else {
                    format!("{dir}/Dockerfile")
                }
            }
        }
    }

    pub fn instance_count(&self) -> u32 {
        self.instance_count.unwrap_or(1)
    }
}

fn normalize_rel(p: &str) -> String {
    p.split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Where a component's image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// Built from a Dockerfile in a git repository.
    Git { url: String, branch: String },
    /// An existing image, by reference (`repository:tag`).
    Image { reference: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    /// `https://`, `ssh://`, scp-style `git@host:path`, `git://` or `http://` (no credential
    /// is ever sent over it); a local path or `file://` only on a daemon started with
    /// `--allow-local-sources`.
    pub repo_clone_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
}

/// App Platform's `github` and `gitlab` sources: `repo` is `owner/name`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostedGitSource {
    pub repo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    pub repository: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl ImageSource {
    /// The reference Docker resolves: `[registry/]repository` then `@digest` or `:tag`
    /// (`latest` when neither is given).
    pub fn reference(&self) -> String {
        let repo = match (self.registry_type.as_deref(), self.registry.as_deref()) {
            (Some("DOCR"), Some(reg)) => {
                format!("registry.digitalocean.com/{reg}/{}", self.repository)
            }
            (Some("GHCR"), Some(reg)) => format!("ghcr.io/{reg}/{}", self.repository),
            (_, Some(reg)) if !reg.is_empty() => format!("{reg}/{}", self.repository),
            _ => self.repository.clone(),
        };
        match (&self.digest, &self.tag) {
            (Some(d), _) => format!("{repo}@{d}"),
            (None, Some(t)) => format!("{repo}:{t}"),
            (None, None) => format!("{repo}:latest"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EnvScope {
    RunTime,
    BuildTime,
    #[default]
    RunAndBuildTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EnvType {
    #[default]
    General,
    Secret,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvVar {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<EnvScope>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<EnvType>,
}

impl EnvVar {
    pub fn scope(&self) -> EnvScope {
        self.scope.unwrap_or_default()
    }
    pub fn at_run_time(&self) -> bool {
        matches!(self.scope(), EnvScope::RunTime | EnvScope::RunAndBuildTime)
    }
    pub fn at_build_time(&self) -> bool {
        matches!(
            self.scope(),
            EnvScope::BuildTime | EnvScope::RunAndBuildTime
        )
    }
}

/// App Platform's health check. Seconds may be fractional, so that fast apps roll fast.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// An HTTP GET to this path must answer 2xx or 3xx; without it a TCP connect is the check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Termination {
    /// How long an instance taken out of the pool may finish in-flight requests (default 15).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_seconds: Option<f64>,
    /// How long after the stop signal the instance is killed (default 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_seconds: Option<f64>,
}

impl Termination {
    pub const DEFAULT_DRAIN_SECONDS: f64 = 15.0;
    pub const DEFAULT_GRACE_SECONDS: f64 = 120.0;
}

/// Slipway's extension: the bounds of a rolling replacement.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// Instances allowed above `instance_count` during the rollout: a count or `"N%"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<Amount>,
    /// Ready instances allowed below `instance_count`: a count or `"N%"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<Amount>,
    /// How long a worker must run without exiting to count as ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<f64>,
}

/// A count of instances, absolute or as a percentage of `instance_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

impl Amount {
    /// Resolves against `total`: percentages of surge round up, of unavailability down, as
    /// Kubernetes does.
    pub fn resolve(self, total: u32, round_up: bool) -> u32 {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => {
                let scaled = u64::from(total) * u64::from(p);
                let v = if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                };
                u32::try_from(v).unwrap_or(u32::MAX)
            }
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Amount::Count(n) => s.serialize_u32(*n),
            Amount::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number of instances or a percentage like \"25%\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Amount, E> {
                u32::try_from(v)
                    .map(Amount::Count)
                    .map_err(|_| E::custom("number too large"))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Amount, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("must not be negative"))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Amount, E> {
                let digits = v.strip_suffix('%').ok_or_else(|| {
                    E::custom(format!("\"{v}\" is not a percentage like \"25%\""))
                })?;
                let p: u32 = digits
                    .trim()
                    .parse()
                    .map_err(|_| E::custom(format!("\"{v}\" is not a percentage like \"25%\"")))?;
                if p > 100 {
                    return Err(E::custom(format!("\"{v}\" is over 100%")));
                }
                Ok(Amount::Percent(p))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobKind {
    Unspecified,
    /// Runs after the build and before the rollout; its failure fails the deployment.
    PreDeploy,
    /// Runs after a successful rollout (the default).
    #[default]
    PostDeploy,
    /// Runs after a failed deployment.
    FailedDeploy,
}

impl JobSpec {
    pub fn kind(&self) -> JobKind {
        match self.kind {
            None | Some(JobKind::Unspecified) => JobKind::PostDeploy,
            Some(k) => k,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DatabaseEngine {
    Unset,
    Pg,
    Mysql,
    Redis,
    Mongodb,
    Kafka,
    Opensearch,
    Valkey,
}

impl DatabaseEngine {
    /// The image a registry would give for this engine, and where it keeps its data.
    pub fn default_image(self, version: Option<&str>) -> Option<(String, &'static str)> {
        let (repo, dir) = match self {
            DatabaseEngine::Unset => return None,
            DatabaseEngine::Pg => ("postgres", "/var/lib/postgresql/data"),
            DatabaseEngine::Mysql => ("mysql", "/var/lib/mysql"),
            DatabaseEngine::Redis => ("redis", "/data"),
            DatabaseEngine::Valkey => ("valkey/valkey", "/data"),
            DatabaseEngine::Mongodb => ("mongo", "/data/db"),
            DatabaseEngine::Kafka => ("apache/kafka", "/var/lib/kafka/data"),
            DatabaseEngine::Opensearch => {
                ("opensearchproject/opensearch", "/usr/share/opensearch/data")
            }
        };
        Some((format!("{repo}:{}", version.unwrap_or("latest")), dir))
    }
}

/// A database: one container with a named volume, created once and never recreated by a
/// restart or a rebuild.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<DatabaseEngine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Slipway's extension: run this local image instead of the engine's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSource>,
    /// Slipway's extension: where the volume is mounted in the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// Slipway's extension: envs for the database container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub envs: Vec<EnvVar>,
}

impl DatabaseSpec {
    /// The image reference and data directory this database runs with.
    pub fn image_and_data_dir(&self) -> Option<(String, String)> {
        let engine_default = self
            .engine
            .and_then(|e| e.default_image(self.version.as_deref()));
        let image = match &self.image {
            Some(i) => i.reference(),
            None => engine_default.as_ref()?.0.clone(),
        };
        let dir = match &self.data_dir {
            Some(d) => d.clone(),
            None => engine_default.map_or("/data", |(_, d)| d).to_string(),
        };
        Some((image, dir))
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingress {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<IngressRule>,
}

/// One rule of `ingress.rules`: requests it matches go to a service, or are redirected.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressRule {
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub matcher: Option<IngressMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<IngressComponent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsPolicy>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<IngressPath>,
    /// The host (without port) the rule is for; every host of the app when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<ExactMatch>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExactMatch {
    pub exact: String,
}

/// Where a rule sends its requests instead of a service. What is not given is kept from the
/// request, but the scheme, which is `https` unless given.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectSpec {
    /// The whole path and query to redirect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// The host (without port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// 300, 301, 302 (the default), 303, 304, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_code: Option<u16>,
}

/// The codes a redirect may answer with.
pub const REDIRECT_CODES: [u16; 7] = [300, 301, 302, 303, 304, 307, 308];

/// A Cross-Origin Resource Sharing policy: which origins may read answers, and what the
/// ingress answers to their preflight requests.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsPolicy {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// How long a browser may keep a preflight's answer: a duration such as `24h`, `30m`,
    /// `1h30m` or `600s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
}

/// One of `exact`, `prefix` or `regex` (RE2 syntax, matching the whole string).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A path routed to a service, in App Platform's older form.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_path_prefix: Option<bool>,
}

/// A domain an app is served at.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSpec {
    /// The host name, e.g. `shop.example.com`.
    pub domain: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<DomainType>,
    /// Whether every subdomain of `domain` is served too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wildcard: Option<bool>,
    /// The DNS zone the domain is in (App Platform manages DNS records there; Slipway does
    /// not manage DNS, and keeps the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// `1.2` or `1.3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_tls_version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DomainType {
    #[default]
    Unspecified,
    Default,
    Primary,
    Alias,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressPath {
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressComponent {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preserve_path_prefix: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
}

impl AppSpec {
    /// Every component's name and kind, in spec order.
    pub fn components(&self) -> Vec<(&str, ComponentKind)> {
        let mut out = Vec::new();
        out.extend(
            self.services
                .iter()
                .map(|s| (s.name.as_str(), ComponentKind::Service)),
        );
        out.extend(
            self.workers
                .iter()
                .map(|s| (s.name.as_str(), ComponentKind::Worker)),
        );
        out.extend(
            self.jobs
                .iter()
                .map(|s| (s.name.as_str(), ComponentKind::Job)),
        );
        out.extend(
            self.databases
                .iter()
                .map(|s| (s.name.as_str(), ComponentKind::Database)),
        );
        out
    }

    pub fn kind_of(&self, name: &str) -> Option<ComponentKind> {
        self.components()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, k)| k)
    }

    /// The buildable components (services, workers, jobs) with their kind.
    pub fn buildable(&self) -> Vec<(ComponentKind, ComponentRef<'_>)> {
        let mut out = Vec::new();
        out.extend(
            self.services
                .iter()
                .map(|s| (ComponentKind::Service, s.common())),
        );
        out.extend(
            self.workers
                .iter()
                .map(|s| (ComponentKind::Worker, s.common())),
        );
        out.extend(self.jobs.iter().map(|s| (ComponentKind::Job, s.common())));
        out
    }

    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }
    pub fn worker(&self, name: &str) -> Option<&WorkerSpec> {
        self.workers.iter().find(|s| s.name == name)
    }

    /// The env that holds a token for fetching a private repository over https. It is used
    /// by the fetcher only: never set in containers nor passed to builds.
    pub const GIT_TOKEN_ENV: &'static str = "SLIPWAY_GIT_TOKEN";

    /// The token for fetching a component's repository: its own `SLIPWAY_GIT_TOKEN` env, else
    /// the app's.
    pub fn git_token(&self, component: ComponentRef<'_>) -> Option<String> {
        component
            .envs
            .iter()
            .chain(&self.envs)
            .find(|e| e.key == Self::GIT_TOKEN_ENV)
            .and_then(|e| e.value.clone())
    }

    /// The run-time environment of a component: the app's envs, then the component's own.
    pub fn run_envs(&self, component: ComponentRef<'_>) -> BTreeMap<String, String> {
        self.envs
            .iter()
            .chain(component.envs)
            .filter(|e| e.key != Self::GIT_TOKEN_ENV)
            .filter(|e| e.at_run_time())
            .map(|e| (e.key.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    /// The build arguments of a component: BUILD_TIME and RUN_AND_BUILD_TIME envs.
    pub fn build_args(&self, component: ComponentRef<'_>) -> BTreeMap<String, String> {
        self.envs
            .iter()
            .chain(component.envs)
            .filter(|e| e.key != Self::GIT_TOKEN_ENV)
            .filter(|e| e.at_build_time())
            .map(|e| (e.key.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }
}
