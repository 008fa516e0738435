//! `GET /v2/apps/{app}/instances` (Slipway's addition): an app's components with the image and
//! commit of the active deployment, and the containers that run them now.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State as AxumState};
use serde::Serialize;
use slipway_spec::ComponentKind;

use crate::State;
use crate::doc::ErrorBody;
use crate::error::ApiError;

/// An app's components and their containers now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct InstancesBody {
    app_id: String,
    /// The active deployment, whose images and commits are shown; none before the first
    /// deployment is active.
    active_deployment_id: Option<String>,
    /// In spec order: services, workers, jobs, databases.
    components: Vec<ComponentInstances>,
}

/// One component and its containers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ComponentInstances {
    name: String,
    /// `service`, `worker`, `job` or `database`.
    kind: String,
    /// Whether a restart may name it: services and workers are restarted; jobs run with
    /// deployments and databases keep running.
    restartable: bool,
    /// The image the active deployment runs (for a database, the image its spec names).
    image: Option<ImageRef>,
    /// The git commit the image was built from.
    commit: Option<String>,
    /// How many instances the spec asks for (services and workers).
    instance_count: Option<u32>,
    /// The component's containers, running or not.
    instances: Vec<InstanceView>,
}

/// An image: Docker's ID and the reference it is known by.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ImageRef {
    id: String,
    reference: String,
}

/// One container.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct InstanceView {
    /// The container's name.
    name: String,
    /// The container's ID.
    id: String,
    /// Docker's state: `running`, `exited`, `restarting`, `created`, ...
    state: String,
    /// The deployment that started it.
    deployment_id: String,
    /// The image ID it runs.
    image: String,
    /// Container ports and the host address each is published on (the app network's gateway,
    /// or loopback: see `slipway serve --publish-on`).
    ports: Vec<PortView>,
}

/// A container port and where it is published.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct PortView {
    container_port: u16,
    host_ip: String,
    host_port: u16,
}

#[utoipa::path(get, path = "/apps/{app}/instances", tag = "apps", params(("app" = String, Path, description = "The app's ID or name")), responses((status = 200, body = InstancesBody, description = "Slipway's addition: each component's kind, image, commit and containers now"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn instances(
    AxumState(state): AxumState<Arc<State>>,
    Path(app): Path<String>,
) -> Result<Json<InstancesBody>, ApiError> {
    let record = state.engine.app(&app).await?;
    let active = state
        .engine
        .store()
        .active_deployment(&record.id)
        .await
        .map_err(slipway_engine::EngineError::from)?;
    let containers = state.engine.instances(&record.id).await?;
    let states = state.engine.container_states(&record.id).await?;
    let mut by_component: HashMap<String, Vec<InstanceView>> = HashMap::new();
    for (component, _, i) in containers {
        by_component
            .entry(component)
            .or_default()
            .push(InstanceView {
                state: states
                    .get(&i.id)
                    .cloned()
                    .unwrap_or_else(|| "removed".into()),
                name: i.name,
                id: i.id,
                deployment_id: i.deployment_id,
                image: i.image,
                ports: i
                    .ports
                    .iter()
                    .map(|(c, h)| PortView {
                        container_port: *c,
                        host_ip: h.ip().to_string(),
                        host_port: h.port(),
                    })
                    .collect(),
            });
    }
    let spec = &record.spec;
    let counts: HashMap<&str, u32> = spec
        .buildable()
        .into_iter()
        .filter(|(k, _)| k.is_restartable())
        .map(|(_, c)| (c.name, c.instance_count()))
        .collect();
    let components = spec
        .components()
        .into_iter()
        .map(|(name, kind)| {
            let deployed = active.as_ref().and_then(|d| d.component(name));
            let mut instances = by_component.remove(name).unwrap_or_default();
            instances.sort_by(|a, b| a.name.cmp(&b.name));
            let image = match kind {
                ComponentKind::Database => spec
                    .databases
                    .iter()
                    .find(|d| d.name == name)
                    .and_then(|d| d.image_and_data_dir())
                    .map(|(reference, _)| ImageRef {
                        id: instances
                            .first()
                            .map(|i| i.image.clone())
                            .unwrap_or_default(),
                        reference,
                    }),
                _ => deployed.and_then(|c| c.image.as_ref()).map(|i| ImageRef {
                    id: i.id.clone(),
                    reference: i.reference.clone(),
                }),
            };
            ComponentInstances {
                name: name.to_string(),
                kind: kind.as_str().to_string(),
                restartable: kind.is_restartable(),
                image,
                commit: deployed.and_then(|c| c.source_commit_hash.clone()),
                instance_count: counts.get(name).copied(),
                instances,
            }
        })
        .collect();
    Ok(Json(InstancesBody {
        app_id: record.id.clone(),
        active_deployment_id: active.map(|d| d.id),
        components,
    }))
}
