//! The deployment model, serialized as App Platform's API serializes it.

use jiff::{Timestamp, Unit};
use serde::{Deserialize, Serialize};

use crate::spec::AppSpec;

/// A new random ID in App Platform's form (a UUID).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Now, at millisecond precision (what the API and the store keep).
pub fn now() -> Timestamp {
    Timestamp::now()
        .round(Unit::Millisecond)
        .unwrap_or_else(|_| Timestamp::now())
}

/// A deployment's phase, App Platform's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    #[default]
    Unknown,
    PendingBuild,
    Building,
    PendingDeploy,
    Deploying,
    Active,
    Superseded,
    Error,
    Canceled,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Unknown => "UNKNOWN",
            Phase::PendingBuild => "PENDING_BUILD",
            Phase::Building => "BUILDING",
            Phase::PendingDeploy => "PENDING_DEPLOY",
            Phase::Deploying => "DEPLOYING",
            Phase::Active => "ACTIVE",
            Phase::Superseded => "SUPERSEDED",
            Phase::Error => "ERROR",
            Phase::Canceled => "CANCELED",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }

    /// A deployment in this phase will not change phase again (except ACTIVE, which a later
    /// deployment supersedes).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Active | Phase::Superseded | Phase::Error | Phase::Canceled
        )
    }

    pub fn is_in_progress(self) -> bool {
        matches!(
            self,
            Phase::PendingBuild | Phase::Building | Phase::PendingDeploy | Phase::Deploying
        )
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepStatus {
    #[default]
    Pending,
    Running,
    Error,
    Success,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StepReason {
    pub code: String,
    pub message: String,
}

/// One step of a deployment's progress; steps nest.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub status: StepStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<StepReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_base: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
}

impl Step {
    pub fn new(name: impl Into<String>) -> Self {
        Step {
            name: name.into(),
            ..Step::default()
        }
    }

    pub fn component(mut self, component: impl Into<String>) -> Self {
        self.component_name = Some(component.into());
        self
    }

    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message_base = Some(message.into());
        self
    }

    pub fn child(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// The step at `path` below this one.
    pub fn find_mut(&mut self, path: &[&str]) -> Option<&mut Step> {
        match path.split_first() {
            None => Some(self),
            Some((first, rest)) => self
                .steps
                .iter_mut()
                .find(|s| s.name == *first)?
                .find_mut(rest),
        }
    }

    /// Marks every step still pending or running below this one as failed with `reason`.
    fn fail_open(&mut self, at: Timestamp, code: &str, message: &str) {
        for s in &mut self.steps {
            s.fail_open(at, code, message);
        }
        if matches!(self.status, StepStatus::Running) {
            self.status = StepStatus::Error;
            self.ended_at = Some(at);
            if self.reason.is_none() {
                self.reason = Some(StepReason {
                    code: code.into(),
                    message: message.into(),
                });
            }
        }
    }
}

/// A deployment's progress: App Platform's step tree and its counts (of top-level steps).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Progress {
    pub pending_steps: u32,
    pub running_steps: u32,
    pub success_steps: u32,
    pub error_steps: u32,
    pub total_steps: u32,
    pub steps: Vec<Step>,
    #[serde(default)]
    pub summary_steps: Vec<Step>,
}

impl Progress {
    pub fn new(steps: Vec<Step>) -> Self {
        let mut p = Progress {
            steps,
            ..Progress::default()
        };
        p.recount();
        p
    }

    pub fn find_mut(&mut self, path: &[&str]) -> Option<&mut Step> {
        let (first, rest) = path.split_first()?;
        self.steps
            .iter_mut()
            .find(|s| s.name == *first)?
            .find_mut(rest)
    }

    /// Appends `step` below the step at `parent` (at the top when `parent` is empty).
    pub fn push(&mut self, parent: &[&str], step: Step) {
        if parent.is_empty() {
            self.steps.push(step);
        } else if let Some(p) = self.find_mut(parent) {
            p.steps.push(step);
        }
        self.recount();
    }

    /// Marks the step at `path` running, and its ancestors too.
    pub fn start(&mut self, path: &[&str], at: Timestamp) {
        for depth in 1..=path.len() {
            if let Some(s) = self.find_mut(&path[..depth])
                && s.status == StepStatus::Pending
            {
                s.status = StepStatus::Running;
                s.started_at = Some(at);
            }
        }
        self.recount();
    }

    /// Marks the step at `path` successful.
    pub fn succeed(&mut self, path: &[&str], at: Timestamp) {
        if let Some(s) = self.find_mut(path) {
            if s.started_at.is_none() {
                s.started_at = Some(at);
            }
            s.status = StepStatus::Success;
            s.ended_at = Some(at);
        }
        self.recount();
    }

    /// Marks the step at `path` successful with a message (e.g. "previous build reused").
    pub fn succeed_with(&mut self, path: &[&str], at: Timestamp, message: &str) {
        if let Some(s) = self.find_mut(path) {
            s.message_base = Some(message.to_string());
        }
        self.succeed(path, at);
    }

    /// Marks the step at `path` failed with a reason, and every running step around it too.
    pub fn fail(&mut self, path: &[&str], at: Timestamp, code: &str, message: &str) {
        if let Some(s) = self.find_mut(path) {
            if s.started_at.is_none() {
                s.started_at = Some(at);
            }
            s.status = StepStatus::Error;
            s.ended_at = Some(at);
            s.reason = Some(StepReason {
                code: code.into(),
                message: message.into(),
            });
        }
        for s in &mut self.steps {
            s.fail_open(at, code, message);
        }
        self.recount();
    }

    /// Closes the top-level steps once every child has succeeded.
    pub fn succeed_finished(&mut self, at: Timestamp) {
        for s in &mut self.steps {
            if s.status == StepStatus::Running
                && s.steps.iter().all(|c| c.status == StepStatus::Success)
            {
                s.status = StepStatus::Success;
                s.ended_at = Some(at);
            }
        }
        self.recount();
    }

    fn recount(&mut self) {
        let count = |st: StepStatus| self.steps.iter().filter(|s| s.status == st).count() as u32;
        self.pending_steps = count(StepStatus::Pending);
        self.running_steps = count(StepStatus::Running);
        self.success_steps = count(StepStatus::Success);
        self.error_steps = count(StepStatus::Error);
        self.total_steps = self.steps.len() as u32;
        self.summary_steps = self
            .steps
            .iter()
            .map(|s| Step {
                steps: Vec::new(),
                ..s.clone()
            })
            .collect();
    }

    /// The innermost running step's path, for progress displays.
    pub fn running_path(&self) -> Vec<String> {
        fn walk(steps: &[Step], out: &mut Vec<String>) {
            if let Some(s) = steps.iter().find(|s| s.status == StepStatus::Running) {
                out.push(s.name.clone());
                walk(&s.steps, out);
            }
        }
        let mut out = Vec::new();
        walk(&self.steps, &mut out);
        out
    }

    /// The first error reason in the tree, depth first.
    pub fn first_error(&self) -> Option<(&Step, &StepReason)> {
        fn walk(steps: &[Step]) -> Option<(&Step, &StepReason)> {
            for s in steps {
                if let Some(found) = walk(&s.steps) {
                    return Some(found);
                }
                if s.status == StepStatus::Error
                    && let Some(r) = &s.reason
                {
                    return Some((s, r));
                }
            }
            None
        }
        walk(&self.steps)
    }
}

/// Why a deployment exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentKind {
    /// Fetches, builds (or reuses a build) and rolls out.
    Build,
    /// Rolls out new containers from the exact images of the active deployment.
    Restart,
}

/// Human causes, as App Platform words them.
#[derive(Debug, Clone, Copy)]
pub struct Cause;

impl Cause {
    pub const APP_CREATED: &'static str = "app created";
    pub const SPEC_UPDATED: &'static str = "app spec updated";
    pub const MANUAL: &'static str = "manual";
    pub const MANUAL_RESTART: &'static str = "manual restart";
    pub const MANUAL_FORCE_REBUILD: &'static str = "manual force rebuild";
}

/// The image a component runs in a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ComponentImage {
    /// Docker's image ID (`sha256:...`): what containers are created from.
    pub id: String,
    /// The tag or reference it was known by.
    pub reference: String,
    /// On a swarm: the reference, pinned by digest, it was pushed to the registry as, which
    /// every node pulls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed: Option<String>,
}

/// A component of a deployment, as App Platform lists them (`services[]`, `workers[]`, `jobs[]`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeploymentComponent {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_commit_hash: Option<String>,
    /// Slipway's addition: the image the component runs in this deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ComponentImage>,
    /// Slipway's addition: the image was the previous deployment's, reused without a build.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub build_reused: bool,
    /// Slipway's addition: the digest of every input of the build, for reuse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_key: Option<String>,
}

/// A deployment: App Platform's fields, then Slipway's additions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub spec: AppSpec,
    pub cause: String,
    pub phase: Phase,
    pub phase_last_updated_at: Timestamp,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub progress: Progress,
    #[serde(default)]
    pub services: Vec<DeploymentComponent>,
    #[serde(default)]
    pub workers: Vec<DeploymentComponent>,
    #[serde(default)]
    pub jobs: Vec<DeploymentComponent>,
    /// Slipway's addition: the app this deployment belongs to.
    pub app_id: String,
    /// Slipway's addition: a build deployment or a restart.
    pub kind: DeploymentKind,
    /// Slipway's addition: the build was forced even if a previous one could be reused.
    #[serde(default)]
    pub force_build: bool,
    /// Slipway's addition: the build ran without the layer cache.
    #[serde(default)]
    pub clear_build_cache: bool,
    /// Slipway's addition: for a restart, the components it restarts (all services and
    /// workers when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_components: Vec<String>,
    /// Slipway's addition: when the deployment reached its final phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Timestamp>,
    /// Slipway's addition: why a deployment ended in ERROR or CANCELED, as a stable code and
    /// one sentence (the failing step's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<DeploymentError>,
}

/// Why a deployment failed: a stable [`FailureCode`] and what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentError {
    pub code: crate::FailureCode,
    pub message: String,
}

impl Deployment {
    pub fn new(app_id: &str, spec: AppSpec, kind: DeploymentKind, cause: &str) -> Self {
        let at = now();
        Deployment {
            id: new_id(),
            spec,
            cause: cause.to_string(),
            phase: Phase::PendingBuild,
            phase_last_updated_at: at,
            created_at: at,
            updated_at: at,
            progress: Progress::default(),
            services: Vec::new(),
            workers: Vec::new(),
            jobs: Vec::new(),
            app_id: app_id.to_string(),
            kind,
            force_build: false,
            clear_build_cache: false,
            restart_components: Vec::new(),
            ended_at: None,
            error: None,
        }
    }

    pub fn set_phase(&mut self, phase: Phase) {
        let at = now();
        self.phase = phase;
        self.phase_last_updated_at = at;
        self.updated_at = at;
        if phase.is_terminal() && self.ended_at.is_none() {
            self.ended_at = Some(at);
        }
    }

    pub fn touch(&mut self) {
        self.updated_at = now();
    }

    /// The deployment's component record by name, in whichever list it is.
    pub fn component(&self, name: &str) -> Option<&DeploymentComponent> {
        self.services
            .iter()
            .chain(&self.workers)
            .chain(&self.jobs)
            .find(|c| c.name == name)
    }

    pub fn component_mut(&mut self, name: &str) -> Option<&mut DeploymentComponent> {
        self.services
            .iter_mut()
            .chain(&mut self.workers)
            .chain(&mut self.jobs)
            .find(|c| c.name == name)
    }

    /// How long it ran, when it has ended.
    pub fn duration(&self) -> Option<jiff::SignedDuration> {
        self.ended_at.map(|e| e.duration_since(self.created_at))
    }
}

/// A domain of an app, as App Platform shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppDomain {
    /// The domain's name.
    pub id: String,
    pub spec: crate::spec::DomainSpec,
    pub phase: DomainPhase,
    /// Why its certificate could not be obtained, with the ACME server's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expires_at: Option<Timestamp>,
}

/// Where an app's domain is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DomainPhase {
    Unknown,
    /// Not served yet: a deployment of the spec that names it must become active.
    Pending,
    /// Served; its certificate is being obtained.
    Configuring,
    Active,
    /// Its certificate could not be obtained (see `error`); it is tried again.
    Error,
}

/// An app as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    pub id: String,
    pub spec: AppSpec,
    /// Its spec's domains, each with where its certificate is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<AppDomain>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_ingress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_url: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deployment: Option<Deployment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress_deployment: Option<Deployment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_deployment: Option<Deployment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_deployment_created_at: Option<Timestamp>,
}
