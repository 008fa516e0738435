//! The health gate of a service component's rollout on a swarm ([`slipway_swarm::HealthGate`]):
//! a build deployment proves the new version in a canary before it touches the service, and
//! every deployment probes the service's new tasks once Swarm's update completed, before the
//! component is done.

use slipway_store::LogKind;
use slipway_swarm::{HealthGate, ServiceDef, service_name, task_name};
use tokio_util::sync::CancellationToken;

use super::Run;
use super::on_swarm::Stopped;
use crate::swarm::SwarmMode;

impl Run {
    /// Runs the new version of `def` as a canary until it passes the component's health
    /// check. The canary is removed whatever happens, also when `stop` fires.
    pub(super) async fn prove_canary(
        &self,
        mode: &SwarmMode,
        def: &ServiceDef,
        gate: &HealthGate,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        let component = def.component.as_str();
        let name = mode
            .swarm
            .start_canary(def)
            .await
            .map_err(|error| Stopped::Failed { error, task: None })?;
        self.log(
            LogKind::Deploy,
            component,
            vec![format!(
                "{component}: canary {name} of the new version started; {} must pass within {:.1} s",
                gate.prober.describe(),
                gate.budget.as_secs_f64()
            )],
        )
        .await;
        let result = tokio::select! {
            r = mode.swarm.prove_canary(&name, component, gate, mode.config.update_timeout) => Some(r),
            () = stop.cancelled() => None,
        };
        if let Err(e) = mode.swarm.remove(&name).await {
            tracing::warn!(service = %name, error = %e, "cannot remove the canary");
        }
        let line = match &result {
            None => format!("{component}: canary removed"),
            Some(Ok(answer)) => {
                format!(
                    "{component}: the canary passed its health check ({answer}); canary removed"
                )
            }
            Some(Err(e)) => format!("{e}; canary removed"),
        };
        self.log(LogKind::Deploy, component, vec![line]).await;
        match result {
            None => Err(Stopped::Canceled),
            Some(Ok(_)) => Ok(()),
            Some(Err(error)) => Err(Stopped::Failed { error, task: None }),
        }
    }

    /// Probes every task of the component's new version (Swarm's update completed) until
    /// each passed the health check; the first that does not fails the component.
    pub(super) async fn prove_new_tasks(
        &self,
        mode: &SwarmMode,
        def: &ServiceDef,
        gate: &HealthGate,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        let component = def.component.as_str();
        let name = service_name(&def.app_id, component);
        let mut lines = Vec::new();
        let result = tokio::select! {
            r = mode.swarm.prove_tasks(&name, component, gate, |id, slot, answer| {
                lines.push(format!(
                    "{component}: new task {} passed its health check ({answer})",
                    task_name(component, id, slot)
                ));
            }) => Some(r),
            () = stop.cancelled() => None,
        };
        if let Some(Err(e)) = &result {
            lines.push(e.to_string());
        }
        self.log(LogKind::Deploy, component, lines).await;
        match result {
            None => Err(Stopped::Canceled),
            Some(Ok(_)) => Ok(()),
            Some(Err(error)) => Err(Stopped::Failed { error, task: None }),
        }
    }
}
