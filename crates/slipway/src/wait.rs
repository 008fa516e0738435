//! `--wait`: following a deployment until it ends, with live progress.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use slipway_spec::{Deployment, DeploymentError, FailureCode, Phase, Step, StepStatus};

use serde_json::Value;

use crate::Outcome;
use crate::client::Client;

/// One line per step that changed status, for logs and scripts.
fn transitions(before: Option<&Deployment>, now: &Deployment) -> Vec<String> {
    fn flatten(steps: &[Step], prefix: &str, out: &mut Vec<(String, StepStatus, String)>) {
        for s in steps {
            let path = if prefix.is_empty() {
                s.name.clone()
            } else {
                format!("{prefix}/{}", s.name)
            };
            let detail = match (&s.reason, &s.message_base) {
                (Some(r), _) => format!(": {}", r.message),
                (None, Some(m)) if matches!(s.status, StepStatus::Success) => format!(": {m}"),
                _ => String::new(),
            };
            out.push((path.clone(), s.status, detail));
            flatten(&s.steps, &path, out);
        }
    }
    let mut old = Vec::new();
    if let Some(b) = before {
        flatten(&b.progress.steps, "", &mut old);
    }
    let mut new = Vec::new();
    flatten(&now.progress.steps, "", &mut new);
    let mut lines = Vec::new();
    if before.map(|b| b.phase) != Some(now.phase) {
        lines.push(format!("phase {}", now.phase));
    }
    for (path, status, detail) in new {
        let was = old.iter().find(|(p, _, _)| *p == path).map(|(_, s, _)| *s);
        if was != Some(status) && status != StepStatus::Pending {
            lines.push(
                format!("{path} {status:?}{detail}")
                    .replace(" Running", " RUNNING")
                    .replace(" Success", " SUCCESS")
                    .replace(" Error", " ERROR"),
            );
        }
    }
    lines
}

/// How following a deployment ended.
#[derive(Debug)]
pub(crate) enum Followed {
    /// It ended, so.
    Ended(Deployment, Outcome),
    /// Ctrl-C: the wait stopped; the deployment, as last seen, goes on.
    Interrupted(Deployment),
}

/// An app's event stream, opened before the request that starts a deployment so that none of
/// its events is missed; `None` when the daemon does not stream them (then `--wait` polls).
pub(crate) type Events = Option<tokio::sync::mpsc::Receiver<anyhow::Result<(String, Value)>>>;

/// Opens `app`'s event stream (the app's ID or name).
pub(crate) async fn events(client: &Client, app: &str) -> Events {
    match client
        .events(&format!("/v2/apps/{app}/events?follow=true"))
        .await
    {
        Ok(rx) => Some(rx),
        Err(e) => {
            tracing::debug!(error = %e, "no event stream; polling");
            None
        }
    }
}

/// The next event, or never when there is no stream.
async fn next_event(events: &mut Events) -> Option<anyhow::Result<(String, Value)>> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// How often the deployment is read while no event says it changed: often without a stream,
/// seldom with one (a safety net, should an event be lost).
const POLL: Duration = Duration::from_millis(200);
const POLL_WITH_EVENTS: Duration = Duration::from_secs(5);

/// Follows a deployment until it ends, or until Ctrl-C (which stops the waiting, never the
/// deployment). It is read again at each of its events (at once), else polled. On a terminal,
/// a live progress line; otherwise one line per transition on stderr; with `json`, each of its
/// events as a JSON line on stdout (`{"event", "data"}`, times to the millisecond) as it
/// comes.
pub(crate) async fn follow(
    client: &Client,
    app: &str,
    initial: Deployment,
    json: bool,
    mut events: Events,
) -> anyhow::Result<Followed> {
    // Listening from here on: a Ctrl-C after the first line printed is never the default
    // (which would end the process without a word).
    let mut interrupted =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let started = Instant::now();
    let terminal = std::io::stderr().is_terminal() && !json;
    let bar = terminal.then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    });
    let mut last: Option<Deployment> = None;
    let mut current = initial;
    loop {
        if let Some(bar) = &bar {
            bar.set_message(live_line(&current));
        } else if !json {
            for line in transitions(last.as_ref(), &current) {
                eprintln!("{:>7.2}s {line}", started.elapsed().as_secs_f64());
            }
        }
        if current.phase.is_terminal() {
            break;
        }
        last = Some(current.clone());
        let poll = if events.is_some() {
            POLL_WITH_EVENTS
        } else {
            POLL
        };
        let read_again = tokio::select! {
            _ = interrupted.recv() => {
                if let Some(bar) = bar {
                    bar.finish_and_clear();
                }
                return Ok(Followed::Interrupted(current));
            }
            event = next_event(&mut events) => match event {
                Some(Ok((name, data))) => {
                    let mine = data["deployment_id"].as_str() == Some(current.id.as_str());
                    if json && mine {
                        println!("{}", serde_json::json!({"event": name, "data": data}));
                    }
                    // `ready`: the stream listens, so what happened before is read now;
                    // `lagged`: events were dropped; read it to be sure.
                    mine || name == "ready" || name == "lagged"
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "the event stream broke; polling");
                    events = None;
                    true
                }
                None => {
                    events = None;
                    true
                }
            },
            () = tokio::time::sleep(poll) => true,
        };
        if read_again {
            current = client.deployment(app, &current.id).await?;
        }
    }
    // Read as ended, its last events may still be on their way: they are printed before it.
    if json && let Some(rx) = events.as_mut() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Some(Ok((name, data)))) = tokio::time::timeout_at(deadline, rx.recv()).await {
            if data["deployment_id"].as_str() == Some(current.id.as_str()) {
                println!("{}", serde_json::json!({"event": name, "data": data}));
                if name == "deployment.finished" {
                    break;
                }
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if current.error.is_none() {
        current.error = failure(&current);
    }
    let code = current.error.as_ref().map(|e| e.code);
    let outcome = match current.phase {
        Phase::Active | Phase::Superseded => Outcome::Ok,
        Phase::Canceled => Outcome::DeploymentCanceled(code),
        _ => Outcome::DeploymentError(code),
    };
    Ok(Followed::Ended(current, outcome))
}

/// Why a deployment that ended in ERROR or CANCELED did: its `error`, or for a daemon that
/// does not set one, the failing step's reason when its code is a [`FailureCode`].
pub(crate) fn failure(d: &Deployment) -> Option<DeploymentError> {
    if !matches!(d.phase, Phase::Error | Phase::Canceled) {
        return None;
    }
    if let Some(e) = &d.error {
        return Some(e.clone());
    }
    let (_, reason) = d.progress.first_error()?;
    Some(DeploymentError {
        code: FailureCode::parse(&reason.code)?,
        message: reason.message.clone(),
    })
}

/// `DEPLOYING  deploy › web  [██░] 2/3 instances`.
fn live_line(d: &Deployment) -> String {
    let path = d.progress.running_path();
    let mut line = format!("{:<14} {}", d.phase.to_string(), path.join(" › "));
    if let [top, component, ..] = path.as_slice()
        && top == "deploy"
        && let Some(step) = d
            .progress
            .steps
            .iter()
            .find(|s| s.name == *top)
            .and_then(|s| s.steps.iter().find(|c| c.name == *component))
        && !step.steps.is_empty()
    {
        let done = step
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Success)
            .count();
        let total = step.steps.len();
        let bar: String = (0..total)
            .map(|i| if i < done { '█' } else { '░' })
            .collect();
        line.push_str(&format!("  [{bar}] {done}/{total} instances"));
    }
    line
}

/// One sentence on how a deployment ended, for the CLI's last line: a failed one says its
/// code and why (`... ERROR BuildFailed (web): ...`).
pub(crate) fn summary(d: &Deployment) -> String {
    if !matches!(d.phase, Phase::Error | Phase::Canceled) {
        return format!("{} {} in {}", d.id, d.phase, crate::output::duration(d));
    }
    let step = d.progress.first_error();
    let failure = failure(d);
    let mut line = format!("{} {}", d.id, d.phase);
    if let Some(e) = &failure {
        line.push_str(&format!(" {}", e.code));
    }
    if let Some((step, _)) = step {
        line.push_str(&format!(" ({})", step.name));
    }
    let message = failure
        .map(|e| e.message)
        .or_else(|| step.map(|(_, r)| r.message.clone()));
    if let Some(message) = message {
        line.push_str(&format!(": {message}"));
    }
    line
}
