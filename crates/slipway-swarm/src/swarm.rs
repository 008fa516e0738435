//! The calls to a swarm manager.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    HealthStatusEnum, LocalNodeState, NetworkCreateRequest, Node, NodeState, Service, ServiceSpec,
    ServiceUpdateStatusStateEnum, Task, TaskState,
};
use bollard::query_parameters::{
    InspectServiceOptions, ListNodesOptions, ListServicesOptionsBuilder, ListTasksOptionsBuilder,
    LogsOptionsBuilder, UpdateServiceOptionsBuilder,
};
use futures::StreamExt;
use slipway_spec::labels;
use tokio::time::Instant;

use crate::error::SwarmError;
use crate::spec::{ServiceDef, network_name, service_name, service_spec};
use crate::wait::{self, TaskEvent, UpdateOutcome, Verdict};

/// The most bytes of a job's output [`Swarm::run_job`] returns (its last ones): what a
/// deployment's DEPLOY log keeps of it.
pub const JOB_OUTPUT_BYTES: usize = 1 << 20;

/// How often Swarm's state is read while waiting.
const POLL: Duration = Duration::from_millis(100);

/// A swarm manager that Slipway drives, as daemon `daemon_id`.
#[derive(Debug, Clone)]
pub struct Swarm {
    docker: Docker,
    daemon_id: String,
    node_id: String,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    pub exit_code: i64,
    /// Its output (stdout and stderr, interleaved), read before its service was removed.
    pub logs: String,
}

impl Swarm {
    /// Connects to the engine's swarm; refuses an engine that is not a swarm manager.
    pub async fn connect(docker: Docker, daemon_id: &str) -> Result<Swarm, SwarmError> {
        let info = docker
            .info()
            .await
            .map_err(SwarmError::docker("reading the engine's info"))?;
        let swarm = info.swarm.unwrap_or_default();
        let state = swarm.local_node_state.unwrap_or(LocalNodeState::EMPTY);
        if state != LocalNodeState::ACTIVE {
            return Err(SwarmError::NotInSwarm {
                state: state.to_string(),
            });
        }
        if swarm.control_available != Some(true) {
            return Err(SwarmError::NotManager);
        }
        Ok(Swarm {
            docker,
            daemon_id: daemon_id.to_string(),
            node_id: swarm.node_id.unwrap_or_default(),
        })
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    pub fn daemon_id(&self) -> &str {
        &self.daemon_id
    }

    /// The ID of the manager node Slipway talks to.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Fails naming the first node that is not ready (down, disconnected or unknown), or
    /// `node` only when given.
    pub async fn check_nodes(&self, node: Option<&str>) -> Result<(), SwarmError> {
        let nodes = self
            .docker
            .list_nodes(None::<ListNodesOptions>)
            .await
            .map_err(SwarmError::docker("listing the swarm's nodes"))?;
        if let Some(wanted) = node
            && !nodes.iter().any(|n| n.id.as_deref() == Some(wanted))
        {
            return Err(SwarmError::NodeDown {
                node: wanted.to_string(),
                state: "not in the swarm".into(),
                message: String::new(),
            });
        }
        match nodes.iter().find_map(|n| not_ready(n, node)) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Creates the app's overlay network (attachable, labelled) when missing; returns its name.
    pub async fn ensure_network(
        &self,
        app_id: &str,
        deployment_id: &str,
    ) -> Result<String, SwarmError> {
        let name = network_name(app_id);
        if self
            .docker
            .inspect_network(
                &name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .is_ok()
        {
            return Ok(name);
        }
        let labels = HashMap::from([
            (labels::DAEMON.to_string(), self.daemon_id.clone()),
            (labels::APP.to_string(), app_id.to_string()),
            (labels::COMPONENT.to_string(), String::new()),
            (labels::DEPLOYMENT.to_string(), deployment_id.to_string()),
        ]);
        self.docker
            .create_network(NetworkCreateRequest {
                name: name.clone(),
                driver: Some("overlay".into()),
                attachable: Some(true),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map_err(SwarmError::docker(format!("creating the network {name}")))?;
        Ok(name)
    }

    /// A service as Swarm has it now; `None` when there is no such service.
    pub async fn service(&self, name: &str) -> Result<Option<Service>, SwarmError> {
        self.inspect(name).await
    }

    async fn inspect(&self, name: &str) -> Result<Option<Service>, SwarmError> {
        match self
            .docker
            .inspect_service(name, None::<InspectServiceOptions>)
            .await
        {
            Ok(s) => Ok(Some(s)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(SwarmError::docker(format!("inspecting the service {name}"))(e)),
        }
    }

    async fn update(
        &self,
        name: &str,
        current: &Service,
        spec: ServiceSpec,
    ) -> Result<(), SwarmError> {
        let version = current
            .version
            .as_ref()
            .and_then(|v| v.index)
            .unwrap_or_default();
        let options = UpdateServiceOptionsBuilder::default()
            .version(i32::try_from(version).unwrap_or(i32::MAX))
            .build();
        self.docker
            .update_service(name, spec, options, None)
            .await
            .map_err(SwarmError::docker(format!("updating the service {name}")))?;
        Ok(())
    }

    /// Creates the component's service, or updates it to `def` (a rolling update when the
    /// image, the envs or the command changed; nothing happens when nothing did). Returns the
    /// service's name; follow the update with [`Swarm::wait`].
    pub async fn apply(&self, def: &ServiceDef) -> Result<String, SwarmError> {
        let name = service_name(&def.app_id, &def.component);
        let span =
            tracing::info_span!("swarm.apply", app = %def.app_id, component = %def.component);
        let _enter = span.enter();
        match self.inspect(&name).await? {
            None => {
                tracing::info!(service = %name, image = %def.image, "creating the service");
                self.docker
                    .create_service(service_spec(def, 0), None)
                    .await
                    .map_err(SwarmError::docker(format!("creating the service {name}")))?;
            }
            Some(current) => {
                let force = current
                    .spec
                    .as_ref()
                    .and_then(|s| s.task_template.as_ref())
                    .and_then(|t| t.force_update)
                    .unwrap_or(0);
                tracing::info!(service = %name, image = %def.image, "updating the service");
                self.update(&name, &current, service_spec(def, force))
                    .await?;
            }
        }
        Ok(name)
    }

    /// Restarts every task of a component's service from the same image digest: writes the
    /// spec of `def` (the running version's definition) again with the force-update counter
    /// bumped, so that nothing else changes; the deployment that made the running version
    /// stays in its labels. Returns the service's name; follow it with [`Swarm::wait`].
    ///
    /// The spec is rendered from `def` rather than read back and written again: the engine
    /// reports a container's health check as `Healthcheck`, which bollard's model does not
    /// read, so a read-back spec would lose it.
    pub async fn restart(&self, def: &ServiceDef) -> Result<String, SwarmError> {
        let name = service_name(&def.app_id, &def.component);
        let current = self
            .inspect(&name)
            .await?
            .ok_or_else(|| SwarmError::Invalid {
                component: def.component.clone(),
                reason: format!("there is no service {name} to restart"),
            })?;
        let spec = current.spec.as_ref();
        let mut def = def.clone();
        if let Some(made_by) = spec
            .and_then(|s| s.labels.as_ref())
            .and_then(|l| l.get(labels::DEPLOYMENT))
        {
            def.deployment_id = made_by.clone();
        }
        let force = spec
            .and_then(|s| s.task_template.as_ref())
            .and_then(|t| t.force_update)
            .unwrap_or(0)
            + 1;
        tracing::info!(service = %name, force_update = force, "restarting the service");
        self.update(&name, &current, service_spec(&def, force))
            .await?;
        Ok(name)
    }

    async fn tasks(&self, name: &str) -> Result<Vec<Task>, SwarmError> {
        let filters = HashMap::from([("service", vec![name.to_string()])]);
        self.docker
            .list_tasks(Some(
                ListTasksOptionsBuilder::default().filters(&filters).build(),
            ))
            .await
            .map_err(SwarmError::docker(format!("listing the tasks of {name}")))
    }

    /// Waits until the update just written to `name` is finished: every replica runs the new
    /// spec and no old task is wanted any more. Each task transition is passed to `progress`.
    /// Swarm's rollback of a failed update is [`SwarmError::RolledBack`] (returned once the
    /// rollback completed: the previous version runs); a paused update is
    /// [`SwarmError::Paused`]. `component` names the component in errors.
    ///
    /// Cancel-safe: dropping the future stops only the waiting; Swarm carries on.
    pub async fn wait(
        &self,
        name: &str,
        component: &str,
        timeout: Duration,
        mut progress: impl FnMut(&TaskEvent),
    ) -> Result<UpdateOutcome, SwarmError> {
        let started = Instant::now();
        let first = self
            .inspect(name)
            .await?
            .ok_or_else(|| SwarmError::Invalid {
                component: component.to_string(),
                reason: format!("the service {name} is gone"),
            })?;
        let intended = wait::template(&first);
        let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
        // Swarm keeps the tasks of earlier versions for a while: they are history, not news.
        for t in self.tasks(name).await? {
            let e = wait::event(intended.as_ref(), &t);
            if !e.current && e.desired != "running" {
                seen.insert(e.task_id, (e.state, e.desired));
            }
        }
        // Why Swarm started rolling back, as it said then (once done, it says only that).
        let mut rollback_reason: Option<String> = None;
        loop {
            let service = self
                .inspect(name)
                .await?
                .ok_or_else(|| SwarmError::Invalid {
                    component: component.to_string(),
                    reason: format!("the service {name} was removed during the update"),
                })?;
            let tasks = self.tasks(name).await?;
            for t in &tasks {
                let e = wait::event(intended.as_ref(), t);
                let now = (e.state.clone(), e.desired.clone());
                if seen.get(&e.task_id) != Some(&now) {
                    tracing::debug!(task = %e.task_id, state = %e.state, desired = %e.desired, "task");
                    progress(&e);
                    seen.insert(e.task_id.clone(), now);
                }
            }
            if let Some(status) = &service.update_status
                && matches!(
                    status.state,
                    Some(
                        ServiceUpdateStatusStateEnum::ROLLBACK_STARTED
                            | ServiceUpdateStatusStateEnum::PAUSED
                    )
                )
                && let Some(m) = status.message.clone().filter(|m| !m.is_empty())
            {
                rollback_reason.get_or_insert(m);
            }
            match wait::judge(intended.as_ref(), &service, &tasks) {
                Verdict::Done(outcome) => return Ok(outcome),
                Verdict::RolledBack(message) => {
                    return Err(SwarmError::RolledBack {
                        component: component.to_string(),
                        message: rollback_reason.unwrap_or(message),
                    });
                }
                Verdict::NeverStarted(message) => {
                    return Err(SwarmError::NeverStarted {
                        component: component.to_string(),
                        message,
                    });
                }
                Verdict::Paused(message) => {
                    return Err(SwarmError::Paused {
                        component: component.to_string(),
                        message,
                    });
                }
                Verdict::Wait(state) => {
                    if started.elapsed() > timeout {
                        return Err(SwarmError::Timeout {
                            component: component.to_string(),
                            seconds: timeout.as_secs(),
                            state,
                        });
                    }
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Runs a job (`def.kind` is `Job`) as a `replicated-job` service to completion, reads its
    /// exit code and output from its task, and removes the service. A job that exits non-zero
    /// or cannot start is [`SwarmError::JobFailed`].
    pub async fn run_job(
        &self,
        def: &ServiceDef,
        timeout: Duration,
    ) -> Result<JobOutcome, SwarmError> {
        let name = service_name(&def.app_id, &def.component);
        if self.inspect(&name).await?.is_some() {
            self.remove(&name).await?;
        }
        self.docker
            .create_service(service_spec(def, 0), None)
            .await
            .map_err(SwarmError::docker(format!("creating the job {name}")))?;
        let result = self.follow_job(&name, &def.component, timeout).await;
        let logs = self.logs(&name).await;
        let removed = self.remove(&name).await;
        let exit_code = result.map_err(|e| match e {
            SwarmError::JobFailed { component, reason } if !logs.is_empty() => {
                SwarmError::JobFailed {
                    component,
                    reason: format!("{reason}; its last output: {}", last_line(&logs)),
                }
            }
            e => e,
        })?;
        removed?;
        Ok(JobOutcome { exit_code, logs })
    }

    async fn follow_job(
        &self,
        name: &str,
        component: &str,
        timeout: Duration,
    ) -> Result<i64, SwarmError> {
        let started = Instant::now();
        loop {
            for t in self.tasks(name).await? {
                let status = t.status.unwrap_or_default();
                let code = status
                    .container_status
                    .as_ref()
                    .and_then(|c| c.exit_code)
                    .unwrap_or(-1);
                match status.state {
                    Some(TaskState::COMPLETE) => return Ok(code),
                    Some(TaskState::FAILED | TaskState::REJECTED | TaskState::ORPHANED) => {
                        return Err(SwarmError::JobFailed {
                            component: component.to_string(),
                            reason: format!(
                                "exit code {code} ({}{})",
                                status.message.unwrap_or_default(),
                                status.err.map(|e| format!(": {e}")).unwrap_or_default()
                            ),
                        });
                    }
                    _ => {}
                }
            }
            if started.elapsed() > timeout {
                return Err(SwarmError::JobFailed {
                    component: component.to_string(),
                    reason: format!("it did not finish within {} s", timeout.as_secs()),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// What the last run of a task container's health check said, when the container is on
    /// this node and its check failed: `unhealthy: <the check's output>`.
    pub async fn failed_health_check(&self, container_id: &str) -> Option<String> {
        let state = self
            .docker
            .inspect_container(
                container_id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()?
            .state?;
        let health = state.health?;
        let log = health.log.unwrap_or_default();
        let failed = |r: &&bollard::models::HealthcheckResult| r.exit_code.is_some_and(|c| c != 0);
        // The last failure that said something: a check cut short as the container stops
        // (killed, exit code 137) says nothing.
        let said = log
            .iter()
            .rev()
            .filter(failed)
            .find(|r| r.output.as_deref().is_some_and(|o| !o.trim().is_empty()))
            .or_else(|| log.iter().rev().find(failed));
        let Some(result) = said else {
            return (health.status == Some(HealthStatusEnum::UNHEALTHY))
                .then(|| "its health check failed".to_string());
        };
        Some(format!(
            "its health check failed (exit code {}): {}",
            result.exit_code.unwrap_or(-1),
            result.output.as_deref().unwrap_or_default().trim()
        ))
    }

    /// What the tasks of a service write, from every node, as `(time, line)`, the time as
    /// Docker stamps it (RFC 3339). With `follow`, the stream goes on with what they write next
    /// until it is dropped.
    pub fn log_lines(
        &self,
        name: &str,
        follow: bool,
        tail: Option<usize>,
    ) -> futures::stream::BoxStream<'static, (String, String)> {
        let tail = tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .follow(follow)
            .tail(&tail)
            .build();
        self.docker
            .service_logs(name, Some(options))
            .filter_map(|chunk| async move {
                let text = chunk.ok()?.to_string();
                let lines: Vec<(String, String)> = text
                    .lines()
                    .map(|l| {
                        let (at, line) = l.split_once(' ').unwrap_or(("", l));
                        (at.to_string(), line.to_string())
                    })
                    .collect();
                Some(futures::stream::iter(lines))
            })
            .flatten()
            .boxed()
    }

    /// A service's output (all its tasks), as text: its last [`JOB_OUTPUT_BYTES`], as on one
    /// engine.
    pub async fn logs(&self, name: &str) -> String {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(false)
            .build();
        let mut tail = slipway_spec::OutputTail::new(JOB_OUTPUT_BYTES);
        let mut stream = self.docker.service_logs(name, Some(options));
        while let Some(Ok(chunk)) = stream.next().await {
            tail.push(String::from_utf8_lossy(&chunk.into_bytes()).into_owned());
        }
        tail.finish()
    }

    /// Creates a database's service when missing (never updates it: its volume and data are
    /// kept), pinned to `def.pin_node` or else to the manager's own node, which must be up.
    pub async fn ensure_database(&self, def: &ServiceDef) -> Result<String, SwarmError> {
        let name = service_name(&def.app_id, &def.component);
        if def.volume.is_none() {
            return Err(SwarmError::Invalid {
                component: def.component.clone(),
                reason: "a database needs a volume".into(),
            });
        }
        if self.inspect(&name).await?.is_some() {
            return Ok(name);
        }
        let mut def = def.clone();
        let node = def
            .pin_node
            .get_or_insert_with(|| self.node_id.clone())
            .clone();
        self.check_nodes(Some(&node)).await?;
        self.docker
            .create_service(service_spec(&def, 0), None)
            .await
            .map_err(SwarmError::docker(format!("creating the database {name}")))?;
        Ok(name)
    }

    /// Removes a service and waits (at most 30 s) until its containers are gone.
    pub async fn remove(&self, name: &str) -> Result<(), SwarmError> {
        match self.docker.delete_service(name).await {
            Ok(()) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Ok(()),
            Err(e) => {
                return Err(SwarmError::docker(format!("removing the service {name}"))(
                    e,
                ));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let filters = HashMap::from([(
            "label",
            vec![format!("com.docker.swarm.service.name={name}")],
        )]);
        while Instant::now() < deadline {
            let left = self
                .docker
                .list_containers(Some(
                    bollard::query_parameters::ListContainersOptionsBuilder::default()
                        .all(true)
                        .filters(&filters)
                        .build(),
                ))
                .await
                .map_err(SwarmError::docker("listing containers"))?;
            if left.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// The names of the services this daemon made for an app (every app with `None`).
    pub async fn services(&self, app_id: Option<&str>) -> Result<Vec<String>, SwarmError> {
        Ok(self
            .services_with_specs(app_id)
            .await?
            .into_iter()
            .filter_map(|s| s.spec.and_then(|s| s.name))
            .collect())
    }

    /// The services this daemon made for an app (every app with `None`), as Swarm has them,
    /// in one call.
    pub async fn services_with_specs(
        &self,
        app_id: Option<&str>,
    ) -> Result<Vec<Service>, SwarmError> {
        let mut label = vec![format!("{}={}", labels::DAEMON, self.daemon_id)];
        if let Some(app) = app_id {
            label.push(format!("{}={app}", labels::APP));
        }
        let filters = HashMap::from([("label", label)]);
        self.docker
            .list_services(Some(
                ListServicesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(SwarmError::docker("listing services"))
    }

    /// The node a task runs on and the host port it published for `target_port`.
    pub(crate) async fn endpoints(
        &self,
        name: &str,
        target_port: u16,
    ) -> Result<Vec<(Task, Option<u16>)>, SwarmError> {
        let tasks = self.tasks(name).await?;
        Ok(tasks
            .into_iter()
            .map(|t| {
                let port = t
                    .status
                    .as_ref()
                    .and_then(|s| s.port_status.as_ref())
                    .and_then(|p| p.ports.as_ref())
                    .and_then(|ports| {
                        ports
                            .iter()
                            .find(|p| p.target_port == Some(i64::from(target_port)))
                            .and_then(|p| p.published_port)
                            .and_then(|p| u16::try_from(p).ok())
                    });
                (t, port)
            })
            .collect())
    }

    /// The address of a node, as other nodes reach it (`None` for this manager's own node).
    pub(crate) async fn node_addr(&self, node_id: &str) -> Option<String> {
        if node_id == self.node_id {
            return None;
        }
        self.docker
            .inspect_node(node_id)
            .await
            .ok()
            .and_then(|n| n.status)
            .and_then(|s| s.addr)
    }
}

/// Why node `n` cannot run tasks, when it is the node asked about (any node with `None`).
fn not_ready(n: &Node, node: Option<&str>) -> Option<SwarmError> {
    let id = n.id.clone().unwrap_or_default();
    if node.is_some_and(|w| w != id) {
        return None;
    }
    let status = n.status.clone().unwrap_or_default();
    let state = status.state.unwrap_or(NodeState::UNKNOWN);
    if state == NodeState::READY {
        return None;
    }
    let name = n
        .description
        .as_ref()
        .and_then(|d| d.hostname.clone())
        .map_or(id.clone(), |h| format!("{h} ({id})"));
    Some(SwarmError::NodeDown {
        node: name,
        state: state.to_string(),
        message: status.message.unwrap_or_default(),
    })
}

fn last_line(logs: &str) -> &str {
    logs.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{NodeDescription, NodeStatus};

    fn node(id: &str, state: NodeState) -> Node {
        Node {
            id: Some(id.into()),
            description: Some(NodeDescription {
                hostname: Some(format!("host-{id}")),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                state: Some(state),
                message: Some("heartbeat failure".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_node_that_is_down_is_named_with_its_state() {
        assert!(not_ready(&node("a", NodeState::READY), None).is_none());
        let down = node("b", NodeState::DOWN);
        assert!(
            not_ready(&down, Some("a")).is_none(),
            "only the node asked about"
        );
        let err = not_ready(&down, None).unwrap();
        assert_eq!(
            err.to_string(),
            "swarm node host-b (b) is down (heartbeat failure)"
        );
    }
}
