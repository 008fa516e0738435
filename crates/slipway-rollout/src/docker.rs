//! The bollard implementation of [`Runtime`], and the Docker work around rollouts: networks,
//! volumes, databases and run-to-completion jobs.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, ContainerUpdateBody, EndpointSettings,
    HealthStatusEnum, HostConfig, Mount, MountType, NetworkCreateRequest, NetworkingConfig,
    PortBinding, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    ListVolumesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use rand::Rng;
use slipway_spec::labels;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

use crate::runtime::{Instance, InstanceSpec, Probe, ProbeResult, Runtime, RuntimeError};

/// Connects to the local Docker engine and agrees on an API version with it (engines as old as
/// API 1.41 work).
pub async fn connect() -> Result<Docker, RuntimeError> {
    let docker = Docker::connect_with_local_defaults().map_err(|source| RuntimeError::Docker {
        action: "connect to",
        object: "the local engine".into(),
        source,
    })?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|source| RuntimeError::Docker {
            action: "agree on an API version with",
            object: "the local engine".into(),
            source,
        })?;
    docker.ping().await.map_err(|source| RuntimeError::Docker {
        action: "reach",
        object: "the local engine".into(),
        source,
    })?;
    Ok(docker)
}

fn docker_err(
    action: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(DockerError) -> RuntimeError {
    let object = object.into();
    move |source| RuntimeError::Docker {
        action,
        object,
        source,
    }
}

/// Where this host reaches a port Docker published on `host_ip`: IPv4 only (Docker lists an
/// IPv6 twin of a port published on every address), and every address's at 127.0.0.1.
fn reachable(host_ip: Option<&str>, port: u16) -> Option<SocketAddr> {
    let ip = match host_ip {
        None | Some("") => Ipv4Addr::LOCALHOST,
        Some(ip) => ip.parse::<Ipv4Addr>().ok()?,
    };
    let ip = if ip.is_unspecified() {
        Ipv4Addr::LOCALHOST
    } else {
        ip
    };
    Some(SocketAddr::from((ip, port)))
}

fn is_status(e: &DockerError, codes: &[u16]) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code, .. } if codes.contains(status_code))
}

/// The most bytes of a job's output [`DockerRuntime::run_job`] returns (its last ones): what
/// a deployment's DEPLOY log keeps of it.
pub const JOB_OUTPUT_BYTES: usize = 1 << 20;

/// One line a container wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub at: String,
    pub instance: String,
    pub component: String,
    pub line: String,
}

/// The result of a run-to-completion job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    pub container_id: String,
    pub container_name: String,
    pub exit_code: i64,
    /// Its stdout and stderr, interleaved.
    pub output: String,
}

/// Where instance ports are published on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Publish {
    /// On the gateway of the instance's network, an address of this host: connections from
    /// this host reach the container through Docker's NAT rules in the kernel. Containers of
    /// other networks on this host can reach the port too, as they can any port Docker
    /// publishes on an address of the host.
    #[default]
    Gateway,
    /// On 127.0.0.1: only this host's own processes reach the port, through Docker's port
    /// proxy, a process that copies every byte (benchmark 2b measures what that costs).
    Loopback,
}

/// Runs Slipway's containers on one Docker engine.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    http: reqwest::Client,
    publish: Publish,
}

impl DockerRuntime {
    pub fn new(docker: Docker) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        DockerRuntime {
            docker,
            http,
            publish: Publish::default(),
        }
    }

    /// Publishes instance ports as `publish` says (on the network's gateway by default).
    pub fn with_publish(mut self, publish: Publish) -> Self {
        self.publish = publish;
        self
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    fn container_labels(spec: &InstanceSpec) -> HashMap<String, String> {
        let mut l: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        l.insert(labels::APP.into(), spec.app_id.clone());
        l.insert(labels::COMPONENT.into(), spec.component.clone());
        l.insert(labels::DEPLOYMENT.into(), spec.deployment_id.clone());
        if let Some(kind) = spec.kind {
            l.insert(labels::KIND.into(), kind.as_str().into());
        }
        l
    }

    /// The host address an instance on `network` publishes its ports on.
    ///
    /// With [`Publish::Gateway`], that is the network's gateway when it is an address of this
    /// host: a connection from this host to a port published there is forwarded to the
    /// container by Docker's NAT rules in the kernel, while one to 127.0.0.1 passes through
    /// Docker's port proxy. Anywhere else (a network that names no gateway, as Docker's
    /// default bridge does, or an engine on another host) ports are published on 127.0.0.1.
    async fn publish_ip(&self, network: Option<&str>) -> IpAddr {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        if self.publish == Publish::Loopback {
            return loopback;
        }
        let name = network.unwrap_or("bridge");
        let gateway = match self.docker.inspect_network(name, None).await {
            Ok(n) => n
                .ipam
                .and_then(|i| i.config)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| c.gateway?.parse::<Ipv4Addr>().ok())
                .next(),
            Err(e) => {
                tracing::debug!(network = name, error = %e, "cannot read the network's gateway");
                None
            }
        };
        match gateway {
            // Binding a socket to an address succeeds only where the address is this host's
            // (unless `net.ipv4.ip_nonlocal_bind` is set).
            Some(ip) if std::net::TcpListener::bind((ip, 0)).is_ok() => IpAddr::V4(ip),
            _ => loopback,
        }
    }

    fn container_body(
        spec: &InstanceSpec,
        restart: bool,
        mounts: Vec<Mount>,
        publish_on: IpAddr,
    ) -> ContainerCreateBody {
        let (entrypoint, cmd) = match &spec.run_command {
            Some(c) => (
                Some(vec!["/bin/sh".to_string(), "-c".to_string()]),
                Some(vec![c.clone()]),
            ),
            None => (None, None),
        };
        let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = spec
            .ports
            .iter()
            .map(|p| {
                (
                    format!("{p}/tcp"),
                    Some(vec![PortBinding {
                        host_ip: Some(publish_on.to_string()),
                        host_port: Some(String::new()),
                    }]),
                )
            })
            .collect();
        let networking_config = spec.network.as_ref().map(|n| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                n.clone(),
                EndpointSettings {
                    aliases: Some(vec![spec.component.clone()]),
                    ..EndpointSettings::default()
                },
            )])),
        });
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            entrypoint,
            cmd,
            labels: Some(Self::container_labels(spec)),
            exposed_ports: (!spec.ports.is_empty())
                .then(|| spec.ports.iter().map(|p| format!("{p}/tcp")).collect()),
            host_config: Some(HostConfig {
                port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
                network_mode: spec.network.clone(),
                restart_policy: Some(RestartPolicy {
                    name: Some(if restart {
                        RestartPolicyNameEnum::UNLESS_STOPPED
                    } else {
                        RestartPolicyNameEnum::NO
                    }),
                    maximum_retry_count: None,
                }),
                mounts: (!mounts.is_empty()).then_some(mounts),
                ..HostConfig::default()
            }),
            networking_config,
            ..ContainerCreateBody::default()
        }
    }

    fn container_name(spec: &InstanceSpec) -> String {
        let suffix: String = {
            let mut rng = rand::rng();
            (0..8)
                .map(|_| {
                    char::from(b"0123456789abcdefghijklmnopqrstuvwxyz"[rng.random_range(0..36)])
                })
                .collect()
        };
        format!("slipway-{}-{}-{suffix}", spec.app_name, spec.component)
    }

    /// Creates and starts a container, its ports published on [`Self::publish_ip`]; removes it
    /// again if starting fails.
    async fn create_and_start(
        &self,
        spec: &InstanceSpec,
        restart: bool,
        mounts: Vec<Mount>,
    ) -> Result<Instance, RuntimeError> {
        let publish_on = if spec.ports.is_empty() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.publish_ip(spec.network.as_deref()).await
        };
        let body = Self::container_body(spec, restart, mounts, publish_on);
        let name = Self::container_name(spec);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(docker_err(
                "create",
                format!("container {name} from {}", spec.image),
            ))?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            self.remove(&created.id).await;
            return Err(docker_err("start", format!("container {name}"))(e));
        }
        let ports = match self.published_ports(&created.id).await {
            Ok(p) => p,
            Err(e) => {
                self.remove(&created.id).await;
                return Err(e);
            }
        };
        Ok(Instance {
            id: created.id,
            name,
            component: spec.component.clone(),
            deployment_id: spec.deployment_id.clone(),
            image: spec.image.clone(),
            ports,
            running: true,
        })
    }

    async fn published_ports(&self, id: &str) -> Result<BTreeMap<u16, SocketAddr>, RuntimeError> {
        let inspect = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(docker_err("inspect", format!("container {id}")))?;
        let mut out = BTreeMap::new();
        let ports = inspect
            .network_settings
            .and_then(|n| n.ports)
            .unwrap_or_default();
        for (key, bindings) in ports {
            let Some(container) = key.split('/').next().and_then(|p| p.parse::<u16>().ok()) else {
                continue;
            };
            let host = bindings
                .unwrap_or_default()
                .into_iter()
                .find_map(|b| reachable(b.host_ip.as_deref(), b.host_port?.parse().ok()?));
            if let Some(host) = host {
                out.insert(container, host);
            }
        }
        Ok(out)
    }

    /// Removes a container, forcefully; a container already gone is fine.
    async fn remove(&self, id: &str) {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        if let Err(e) = self.docker.remove_container(id, Some(options)).await
            && !is_status(&e, &[404, 409])
        {
            tracing::warn!(container = %id, error = %e, "removing a container failed");
        }
    }

    /// The exit code of a container that no longer runs, or `None` while it runs.
    async fn exited(&self, id: &str) -> Option<i64> {
        match self.docker.inspect_container(id, None).await {
            Ok(c) => {
                let restarted = c.restart_count.unwrap_or(0) > 0;
                let state = c.state.unwrap_or_default();
                if state.running == Some(true) && state.restarting != Some(true) && !restarted {
                    None
                } else {
                    Some(state.exit_code.unwrap_or(-1))
                }
            }
            Err(_) => Some(-1),
        }
    }

    /// Creates the app's network if it does not exist.
    pub async fn ensure_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        let filters = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let existing = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(docker_err("list", "networks"))?;
        if existing.iter().any(|n| n.name.as_deref() == Some(name)) {
            return Ok(());
        }
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            labels: Some(labels.clone().into_iter().collect()),
            ..NetworkCreateRequest::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, &[409]) => Ok(()),
            Err(e) => Err(docker_err("create", format!("network {name}"))(e)),
        }
    }

    /// Starts the database's container unless it already runs; its data lives in `volume`,
    /// mounted at `data_dir`. An existing container is never recreated.
    pub async fn ensure_database(
        &self,
        spec: &InstanceSpec,
        volume: &str,
        data_dir: &str,
    ) -> Result<Instance, RuntimeError> {
        let existing = self
            .list(&[
                (labels::APP, &spec.app_id),
                (labels::COMPONENT, &spec.component),
            ])
            .await?;
        if let Some(db) = existing.into_iter().next() {
            if self.exited(&db.id).await.is_some() {
                self.docker
                    .start_container(&db.id, None)
                    .await
                    .map_err(docker_err(
                        "start",
                        format!("database container {}", db.name),
                    ))?;
            }
            return Ok(db);
        }
        // The volume carries the same labels as its container: the app, the database's name
        // and the deployment that created it.
        let volume_labels = Self::container_labels(spec);
        match self
            .docker
            .create_volume(VolumeCreateRequest {
                name: Some(volume.to_string()),
                labels: Some(volume_labels),
                ..VolumeCreateRequest::default()
            })
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, &[409]) => {}
            Err(e) => return Err(docker_err("create", format!("volume {volume}"))(e)),
        }
        let mount = Mount {
            target: Some(data_dir.to_string()),
            source: Some(volume.to_string()),
            typ: Some(MountType::VOLUME),
            ..Mount::default()
        };
        self.create_and_start(spec, true, vec![mount]).await
    }

    /// Runs a job to completion: a fresh container from `spec`, waited for at most `timeout`.
    /// The container is kept (for its logs) until the component's next run, which removes it.
    pub async fn run_job(
        &self,
        spec: &InstanceSpec,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<JobOutcome, RuntimeError> {
        for previous in self
            .list(&[
                (labels::APP, &spec.app_id),
                (labels::COMPONENT, &spec.component),
            ])
            .await?
        {
            self.remove(&previous.id).await;
        }
        let instance = self.create_and_start(spec, false, Vec::new()).await?;
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut wait = self.docker.wait_container(&instance.id, Some(options));
        let code = tokio::select! {
            next = wait.next() => match next {
                Some(Ok(r)) => r.status_code,
                Some(Err(DockerError::DockerContainerWaitError { code, .. })) => code,
                Some(Err(e)) => return Err(docker_err("wait for", format!("job container {}", instance.name))(e)),
                None => self.exited(&instance.id).await.unwrap_or(-1),
            },
            () = tokio::time::sleep(timeout) => {
                self.remove(&instance.id).await;
                return Err(RuntimeError::JobTimeout {
                    component: spec.component.clone(),
                    seconds: timeout.as_secs(),
                });
            }
            () = cancel.cancelled() => {
                self.remove(&instance.id).await;
                return Err(RuntimeError::JobCanceled { component: spec.component.clone() });
            }
        };
        let output = self.last_output(&instance.id, JOB_OUTPUT_BYTES).await;
        Ok(JobOutcome {
            container_id: instance.id,
            container_name: instance.name,
            exit_code: code,
            output,
        })
    }

    /// A container's stdout and stderr (the last `tail` lines, or all).
    pub async fn logs(&self, id: &str, tail: Option<usize>) -> String {
        let tail = tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        let mut stream = self.docker.logs(id, Some(options));
        let mut out = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            out.push_str(&chunk.to_string());
        }
        out
    }

    /// A container's stdout and stderr, its last `max_bytes` at most (whole writes), after a
    /// line saying how many earlier ones were left out, if any: read as it comes, so that a
    /// container that printed without end costs no more than `max_bytes` here.
    pub async fn last_output(&self, id: &str, max_bytes: usize) -> String {
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail("all")
            .build();
        let mut stream = self.docker.logs(id, Some(options));
        let mut tail = slipway_spec::OutputTail::new(max_bytes);
        while let Some(Ok(chunk)) = stream.next().await {
            tail.push(chunk.to_string());
        }
        tail.finish()
    }

    /// A container's log as records (`at` is Docker's RFC 3339 timestamp, so records of
    /// several containers sort by time); with `follow` it goes on until the container stops or
    /// the stream is dropped.
    pub fn log_records(
        &self,
        instance: &Instance,
        follow: bool,
        tail: Option<usize>,
    ) -> futures::stream::BoxStream<'static, LogRecord> {
        let tail = tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .follow(follow)
            .tail(&tail)
            .build();
        let name = instance.name.clone();
        let component = instance.component.clone();
        self.docker
            .logs(&instance.id, Some(options))
            .filter_map(move |chunk| {
                let (name, component) = (name.clone(), component.clone());
                async move {
                    let text = chunk.ok()?.to_string();
                    Some(futures::stream::iter(
                        text.lines()
                            .map(|l| {
                                let (at, line) = l.split_once(' ').unwrap_or(("", l));
                                LogRecord {
                                    at: at.to_string(),
                                    instance: name.clone(),
                                    component: component.clone(),
                                    line: line.to_string(),
                                }
                            })
                            .collect::<Vec<_>>(),
                    ))
                }
            })
            .flatten()
            .boxed()
    }

    /// A container's log as lines of text, each prefixed with the instance's name and a
    /// space (what a RUN log shows): [`DockerRuntime::log_records`] without the timestamps,
    /// for a reader that keeps up with a busy container.
    pub fn log_lines(
        &self,
        instance: &Instance,
        follow: bool,
        tail: Option<usize>,
    ) -> futures::stream::BoxStream<'static, String> {
        let tail = tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .tail(&tail)
            .build();
        let name = instance.name.clone();
        self.docker
            .logs(&instance.id, Some(options))
            .filter_map(move |chunk| {
                let lines = chunk.ok().map(|chunk| {
                    let bytes = chunk.into_bytes();
                    String::from_utf8_lossy(&bytes)
                        .lines()
                        .map(|l| {
                            let mut line = String::with_capacity(name.len() + 1 + l.len());
                            line.push_str(&name);
                            line.push(' ');
                            line.push_str(l);
                            line
                        })
                        .collect::<Vec<_>>()
                });
                futures::future::ready(lines.map(futures::stream::iter))
            })
            .flatten()
            .boxed()
    }

    /// The containers Slipway created (they carry [`labels::DEPLOYMENT`]) that carry every one
    /// of `labels`, running or not.
    pub async fn list(&self, filter: &[(&str, &str)]) -> Result<Vec<Instance>, RuntimeError> {
        // Only containers Slipway created: one started by hand from an app's image carries
        // the image's labels, never the deployment's.
        let filters = HashMap::from([(
            "label".to_string(),
            filter
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .chain([labels::DEPLOYMENT.to_string()])
                .collect::<Vec<_>>(),
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(docker_err("list", "containers"))?;
        Ok(list
            .into_iter()
            .map(|c| {
                let labels = c.labels.unwrap_or_default();
                Instance {
                    id: c.id.unwrap_or_default(),
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .map(|n| n.trim_start_matches('/').to_string())
                        .unwrap_or_default(),
                    component: labels.get(labels::COMPONENT).cloned().unwrap_or_default(),
                    deployment_id: labels.get(labels::DEPLOYMENT).cloned().unwrap_or_default(),
                    image: c.image_id.unwrap_or_default(),
                    ports: c
                        .ports
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|p| {
                            Some((p.private_port, reachable(p.ip.as_deref(), p.public_port?)?))
                        })
                        .collect(),
                    running: c.state == Some(ContainerSummaryStateEnum::RUNNING),
                }
            })
            .collect())
    }

    /// Removes every container, then the networks, and with `volumes` the volumes, that carry
    /// every one of `labels`. Returns how many objects were removed.
    pub async fn remove_labelled(
        &self,
        filter: &[(&str, &str)],
        volumes: bool,
    ) -> Result<usize, RuntimeError> {
        let mut removed = 0;
        for c in self.list(filter).await? {
            self.remove(&c.id).await;
            removed += 1;
        }
        let filters = HashMap::from([(
            "label".to_string(),
            filter
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
        )]);
        let networks = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(docker_err("list", "networks"))?;
        for n in networks {
            let Some(id) = n.id else { continue };
            match self.docker.remove_network(&id).await {
                Ok(()) => removed += 1,
                Err(e) if is_status(&e, &[404]) => {}
                Err(e) => {
                    return Err(docker_err(
                        "remove",
                        format!("network {}", n.name.unwrap_or(id)),
                    )(e));
                }
            }
        }
        if volumes {
            let list = self
                .docker
                .list_volumes(Some(
                    ListVolumesOptionsBuilder::default()
                        .filters(&filters)
                        .build(),
                ))
                .await
                .map_err(docker_err("list", "volumes"))?;
            for v in list.volumes.unwrap_or_default() {
                match self
                    .docker
                    .remove_volume(
                        &v.name,
                        None::<bollard::query_parameters::RemoveVolumeOptions>,
                    )
                    .await
                {
                    Ok(()) => removed += 1,
                    Err(e) if is_status(&e, &[404]) => {}
                    Err(e) => return Err(docker_err("remove", format!("volume {}", v.name))(e)),
                }
            }
        }
        Ok(removed)
    }

    /// Whether an image defines its own HEALTHCHECK.
    pub async fn image_has_healthcheck(&self, image: &str) -> Result<bool, RuntimeError> {
        let inspect = self
            .docker
            .inspect_image(image)
            .await
            .map_err(docker_err("inspect", format!("image {image}")))?;
        let test = inspect
            .config
            .and_then(|c| c.healthcheck)
            .and_then(|h| h.test)
            .unwrap_or_default();
        Ok(!test.is_empty() && test.first().map(String::as_str) != Some("NONE"))
    }

    async fn probe_tcp(&self, addr: std::net::SocketAddr, timeout: Duration) -> Result<(), String> {
        let connect = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await;
        let mut stream = match connect {
            Err(_) => return Err(format!("TCP connect to {addr} timed out")),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(format!(
                    "nothing listens on {addr} yet (connection refused)"
                ));
            }
            Ok(Err(e)) => return Err(format!("TCP connect to {addr}: {e}")),
            Ok(Ok(s)) => s,
        };
        // On 127.0.0.1, Docker's port proxy accepts a connection even when nothing listens in
        // the container, then closes it: a connection that closes at once is not a listening app.
        let mut buf = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                Err("the connection was closed: nothing listens on the port yet".into())
            }
            _ => Ok(()),
        }
    }
}

impl Runtime for DockerRuntime {
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        // No restart policy until it is ready: a crash while starting must end it.
        self.create_and_start(spec, false, Vec::new()).await
    }

    async fn keep_running(&self, instance: &Instance) -> Result<(), RuntimeError> {
        let update = ContainerUpdateBody {
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..ContainerUpdateBody::default()
        };
        self.docker
            .update_container(&instance.id, update)
            .await
            .map_err(docker_err(
                "set the restart policy of",
                format!("container {}", instance.name),
            ))
    }

    async fn probe(&self, instance: &Instance, probe: &Probe, timeout: Duration) -> ProbeResult {
        let answer = match probe {
            Probe::Http { port, path } => match instance.address(*port) {
                None => Err(format!("port {port} is not published")),
                Some(addr) => {
                    let url = format!("http://{addr}{path}");
                    match self.http.get(&url).timeout(timeout).send().await {
                        Ok(r) if r.status().is_success() || r.status().is_redirection() => Ok(()),
                        Ok(r) => Err(format!("GET {path} answered {}", r.status())),
                        Err(e) if e.is_timeout() => Err(format!(
                            "GET {path} timed out after {:.1} s",
                            timeout.as_secs_f64()
                        )),
                        Err(_) => Err(format!("GET {path}: nothing answers on port {port} yet")),
                    }
                }
            },
            Probe::Tcp { port } => match instance.address(*port) {
                None => Err(format!("port {port} is not published")),
                Some(addr) => self.probe_tcp(addr, timeout).await,
            },
            Probe::DockerHealth => match self.docker.inspect_container(&instance.id, None).await {
                Err(e) => Err(format!("inspect failed: {e}")),
                Ok(c) => {
                    let health = c.state.and_then(|s| s.health);
                    let status = health.as_ref().and_then(|h| h.status);
                    let last = health
                        .and_then(|h| h.log)
                        .and_then(|l| l.into_iter().last())
                        .and_then(|r| r.output)
                        .map(|o| o.trim().to_string())
                        .filter(|o| !o.is_empty());
                    let said = |what: &str| match &last {
                        Some(out) => format!("the image's HEALTHCHECK says {what}: {out}"),
                        None => format!("the image's HEALTHCHECK says {what}"),
                    };
                    match status {
                        Some(HealthStatusEnum::HEALTHY) => Ok(()),
                        Some(HealthStatusEnum::UNHEALTHY) => {
                            return ProbeResult::Unhealthy(said("unhealthy"));
                        }
                        Some(s) => Err(said(s.as_ref())),
                        None => Err(said("nothing yet")),
                    }
                }
            },
            Probe::Running => Ok(()),
        };
        match answer {
            // The app answered (or Docker says it is healthy): it runs. Only the Running probe
            // needs to ask Docker.
            Ok(()) if *probe != Probe::Running => ProbeResult::Ready,
            Ok(()) => match self.exited(&instance.id).await {
                None => ProbeResult::Ready,
                Some(code) => ProbeResult::Exited(code),
            },
            Err(why) => match self.exited(&instance.id).await {
                Some(code) => ProbeResult::Exited(code),
                None => ProbeResult::NotReady(why),
            },
        }
    }

    async fn stop(&self, instance: &Instance, grace: Duration) -> Result<(), RuntimeError> {
        let seconds = i32::try_from(grace.as_secs() + u64::from(grace.subsec_nanos() > 0))
            .unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(seconds).build();
        match self
            .docker
            .stop_container(&instance.id, Some(options))
            .await
        {
            Ok(()) => {}
            Err(e) if is_status(&e, &[304, 404]) => {}
            Err(e) => {
                return Err(docker_err("stop", format!("container {}", instance.name))(
                    e,
                ));
            }
        }
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self
            .docker
            .remove_container(&instance.id, Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, &[404, 409]) => Ok(()),
            Err(e) => Err(docker_err("remove", format!("container {}", instance.name))(e)),
        }
    }

    async fn last_logs(&self, instance: &Instance, lines: usize) -> String {
        self.logs(&instance.id, Some(lines)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_spec::FailureCode;

    /// A client for a Docker socket at `path`, which nothing answers.
    fn docker_at(path: &std::path::Path) -> Docker {
        Docker::connect_with_unix(path.to_str().unwrap(), 5, bollard::API_DEFAULT_VERSION).unwrap()
    }

    #[tokio::test]
    async fn docker_that_cannot_be_reached_is_told_from_docker_that_refuses() {
        let dir = tempfile::tempdir().unwrap();
        // No socket to connect to: the client refuses to be made.
        let missing = dir.path().join("missing.sock");
        let source =
            Docker::connect_with_unix(missing.to_str().unwrap(), 5, bollard::API_DEFAULT_VERSION)
                .unwrap_err();
        let err = docker_err("connect to", "the local engine")(source);
        assert_eq!(err.code(), FailureCode::RuntimeUnreachable, "{err:?}");
        // A socket file that nothing listens on any more: the connection is refused.
        let path = dir.path().join("closed.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let rt = DockerRuntime::new(docker_at(&path));
        let err = rt.list(&[("x", "y")]).await.unwrap_err();
        assert_eq!(err.code(), FailureCode::RuntimeUnreachable, "{err:?}");
        // The socket goes away after the client was made.
        std::fs::remove_file(&path).unwrap();
        let err = rt.list(&[("x", "y")]).await.unwrap_err();
        assert_eq!(err.code(), FailureCode::RuntimeUnreachable, "{err:?}");
        // Docker answered, and refused.
        let refused = RuntimeError::Docker {
            action: "create",
            object: "container web-1".into(),
            source: DockerError::DockerResponseServerError {
                status_code: 409,
                message: "Conflict. The container name is already in use".into(),
            },
        };
        assert_eq!(refused.code(), FailureCode::RuntimeFailed);
        let job = RuntimeError::JobTimeout {
            component: "migrate".into(),
            seconds: 5,
        };
        assert_eq!(job.code(), FailureCode::Timeout);
    }

    #[test]
    fn a_published_port_is_reached_where_it_was_published_and_every_address_at_loopback() {
        let at = |ip: Option<&str>| reachable(ip, 32768).map(|a| a.to_string());
        assert_eq!(
            at(Some("192.168.0.1")).as_deref(),
            Some("192.168.0.1:32768")
        );
        assert_eq!(at(Some("127.0.0.1")).as_deref(), Some("127.0.0.1:32768"));
        assert_eq!(at(Some("0.0.0.0")).as_deref(), Some("127.0.0.1:32768"));
        assert_eq!(at(Some("")).as_deref(), Some("127.0.0.1:32768"));
        assert_eq!(at(None).as_deref(), Some("127.0.0.1:32768"));
        assert_eq!(at(Some("::")), None, "the IPv6 twin is skipped");
    }
}
