//! Logs (App Platform's pre-signed `live_url` and `historic_urls`) and the events stream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use slipway_spec::{Deployment, Phase, Step, StepStatus};
use slipway_store::LogKind;

use crate::doc::{ErrorBody, LogUrls};
use crate::error::ApiError;
use crate::{Caller, State};

type S = AxumState<Arc<State>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Build,
    Deploy,
    Run,
}

impl Kind {
    fn parse(s: Option<&str>) -> Result<Kind, ApiError> {
        match s.map(str::to_ascii_uppercase).as_deref() {
            Some("BUILD") => Ok(Kind::Build),
            Some("DEPLOY") => Ok(Kind::Deploy),
            Some("RUN") | None => Ok(Kind::Run),
            Some(other) => Err(ApiError::bad_request(format!(
                "type: \"{other}\" must be BUILD, DEPLOY or RUN"
            ))),
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Kind::Build => "BUILD",
            Kind::Deploy => "DEPLOY",
            Kind::Run => "RUN",
        }
    }
    fn store(self) -> Option<LogKind> {
        match self {
            Kind::Build => Some(LogKind::Build),
            Kind::Deploy => Some(LogKind::Deploy),
            Kind::Run => None,
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct LogsQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    follow: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    pod_connection_timeout: Option<String>,
    #[serde(default)]
    component: Option<String>,
    #[serde(default)]
    tail: Option<usize>,
}

/// The scheme and host the client used, for absolute URLs.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("http");
    format!("{scheme}://{host}")
}

async fn urls(
    state: &State,
    caller: Option<&Caller>,
    headers: &HeaderMap,
    app: &str,
    dep: Option<&str>,
    component: Option<&str>,
    q: &LogsQuery,
) -> Result<Json<Value>, ApiError> {
    let kind = Kind::parse(q.kind.as_deref())?;
    // A URL is signed for the token that asked for it, and dies with it.
    let Some(caller) = caller else {
        return Err(ApiError::unauthorized(
            "log URLs are signed for a token: ask with Authorization: Bearer <token>",
        ));
    };
    let record = state.engine.app(app).await?;
    let d = match dep {
        Some(dep) => state.engine.deployment(&record.id, dep).await?,
        None => state
            .engine
            .store()
            .active_deployment(&record.id)
            .await
            .map_err(slipway_engine::EngineError::from)?
            .ok_or_else(|| {
                ApiError::not_found(format!("app {} has no active deployment", record.name))
            })?,
    };
    if let Some(c) = component
        && d.spec.kind_of(c).is_none()
    {
        return Err(ApiError::not_found(format!(
            "deployment {} has no component named \"{c}\"",
            d.id
        )));
    }
    let url = |mode: &str| {
        let mut pq = format!(
            "/v2/apps/{}/deployments/{}/logs/{mode}?type={}",
            record.id,
            d.id,
            kind.as_str()
        );
        if let Some(c) = component {
            pq.push_str(&format!("&component={c}"));
        }
        format!("{}{}", base_url(headers), state.auth.sign(caller, &pq))
    };
    let _ = q.follow;
    Ok(Json(json!({
        "live_url": url("live"),
        "historic_urls": [url("text")],
    })))
}

#[utoipa::path(get, path = "/apps/{app}/deployments/{dep}/logs", tag = "logs", params(("app" = String, Path), ("dep" = String, Path), ("type" = Option<String>, Query, description = "BUILD, DEPLOY or RUN (the default)"), ("follow" = Option<bool>, Query), ("tail" = Option<usize>, Query, description = "RUN only: the last N lines of each instance"), ("component" = Option<String>, Query)), responses((status = 200, body = LogUrls), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn deployment_logs(
    AxumState(state): S,
    Path((app, dep)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
) -> Result<Json<Value>, ApiError> {
    let component = q.component.clone();
    urls(
        &state,
        caller.as_deref(),
        &headers,
        &app,
        Some(&dep),
        component.as_deref(),
        &q,
    )
    .await
}

#[utoipa::path(get, path = "/apps/{app}/deployments/{dep}/components/{component}/logs", tag = "logs", params(("app" = String, Path), ("dep" = String, Path), ("component" = String, Path), ("type" = Option<String>, Query, description = "BUILD, DEPLOY or RUN (the default)"), ("follow" = Option<bool>, Query), ("tail" = Option<usize>, Query, description = "RUN only: the last N lines of each instance")), responses((status = 200, body = LogUrls), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn component_logs(
    AxumState(state): S,
    Path((app, dep, component)): Path<(String, String, String)>,
    Query(q): Query<LogsQuery>,
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
) -> Result<Json<Value>, ApiError> {
    urls(
        &state,
        caller.as_deref(),
        &headers,
        &app,
        Some(&dep),
        Some(&component),
        &q,
    )
    .await
}

#[utoipa::path(get, path = "/apps/{app}/logs", tag = "logs", params(("app" = String, Path), ("type" = Option<String>, Query, description = "BUILD, DEPLOY or RUN (the default)"), ("follow" = Option<bool>, Query), ("tail" = Option<usize>, Query, description = "RUN only: the last N lines of each instance"), ("component" = Option<String>, Query)), responses((status = 200, body = LogUrls, description = "The logs of the active deployment"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn active_logs(
    AxumState(state): S,
    Path(app): Path<String>,
    Query(q): Query<LogsQuery>,
    headers: HeaderMap,
    caller: Option<Extension<Caller>>,
) -> Result<Json<Value>, ApiError> {
    let component = q.component.clone();
    urls(
        &state,
        caller.as_deref(),
        &headers,
        &app,
        None,
        component.as_deref(),
        &q,
    )
    .await
}

fn text_response(body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn format_line(component: Option<&str>, l: &slipway_store::LogLine) -> String {
    match component {
        Some(_) => format!("{}\n", l.line),
        None => format!("{} {}\n", l.component, l.line),
    }
}

/// A log as it is now, as plain text.
#[utoipa::path(get, path = "/apps/{app}/deployments/{dep}/logs/text", tag = "logs", params(("app" = String, Path), ("dep" = String, Path), ("type" = Option<String>, Query), ("component" = Option<String>, Query), ("exp" = i64, Query, description = "Signed URL: when it expires"), ("sig" = String, Query, description = "Signed URL: its signature")), responses((status = 200, content_type = "text/plain", body = String, description = "The log as it is now"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn historic(
    AxumState(state): S,
    Path((app, dep)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let kind = Kind::parse(q.kind.as_deref())?;
    let record = state.engine.app(&app).await?;
    let d = state.engine.deployment(&record.id, &dep).await?;
    let component = q.component.as_deref();
    let text = match kind.store() {
        Some(store_kind) => {
            let lines = state
                .engine
                .store()
                .read_log(&d.id, store_kind, component, 0)
                .await
                .map_err(slipway_engine::EngineError::from)?;
            lines
                .iter()
                .map(|l| format_line(component, l))
                .collect::<String>()
        }
        None => {
            // Streamed from Docker as it is read: a long log is never held here whole.
            let chunks = state
                .engine
                .run_logs(&record.id, component, false, q.tail)
                .await?
                .map(Ok::<_, Infallible>);
            return Ok(text_response(Body::from_stream(chunks)));
        }
    };
    Ok(text_response(Body::from(text)))
}

/// A log that follows: BUILD and DEPLOY until the deployment ends, RUN until the client
/// leaves.
#[utoipa::path(get, path = "/apps/{app}/deployments/{dep}/logs/live", tag = "logs", params(("app" = String, Path), ("dep" = String, Path), ("type" = Option<String>, Query), ("component" = Option<String>, Query), ("exp" = i64, Query), ("sig" = String, Query)), responses((status = 200, content_type = "text/plain", body = String, description = "The log, following: BUILD and DEPLOY until the deployment ends, RUN until the client leaves"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn live(
    AxumState(state): S,
    Path((app, dep)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiError> {
    let kind = Kind::parse(q.kind.as_deref())?;
    let record = state.engine.app(&app).await?;
    let d = state.engine.deployment(&record.id, &dep).await?;
    let component = q.component.clone();
    let Some(store_kind) = kind.store() else {
        let stream = state
            .engine
            .run_logs(&record.id, component.as_deref(), true, q.tail.or(Some(100)))
            .await?
            .map(Ok::<_, Infallible>);
        return Ok(text_response(Body::from_stream(stream)));
    };
    let engine = state.engine.clone();
    let stream = futures::stream::unfold(
        (engine, d.app_id.clone(), d.id.clone(), 0i64, false),
        move |(engine, app_id, dep_id, after, done)| {
            let component = component.clone();
            async move {
                if done {
                    return None;
                }
                let mut updates = engine.subscribe();
                loop {
                    let lines = engine
                        .store()
                        .read_log(&dep_id, store_kind, component.as_deref(), after)
                        .await
                        .ok()?;
                    let ended = engine
                        .deployment(&app_id, &dep_id)
                        .await
                        .map(|d| d.phase.is_terminal())
                        .unwrap_or(true);
                    if let Some(last) = lines.last() {
                        let next = last.seq;
                        let text: String = lines
                            .iter()
                            .map(|l| format_line(component.as_deref(), l))
                            .collect();
                        // Once ended, one more read picks up lines written at the very end.
                        return Some((
                            Ok::<_, Infallible>(text),
                            (engine, app_id, dep_id, next, false),
                        ));
                    }
                    if ended {
                        return None;
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(250), updates.recv()).await;
                }
            }
        },
    );
    Ok(text_response(Body::from_stream(stream)))
}

/// Server-Sent Events of an app: every deployment's creation, phase changes and step starts
/// and ends, with millisecond timestamps and durations.
#[utoipa::path(get, path = "/apps/{app}/events", tag = "logs", params(("app" = String, Path), ("follow" = Option<bool>, Query, description = "false: replay the newest deployment's events and end")), responses((status = 200, content_type = "text/event-stream", body = String, description = "Server-Sent Events: deployment.created, deployment.phase, step.started, step.finished, deployment.finished"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn events(
    AxumState(state): S,
    Path(app): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let record = state.engine.app(&app).await?;
    // Subscribe before reading the store, so that nothing falls between the two.
    let updates = tokio_stream::wrappers::BroadcastStream::new(state.engine.subscribe());
    let app_id = record.id.clone();
    let (recent, _) = state
        .engine
        .store()
        .deployments(&record.id, 0, 20)
        .await
        .map_err(slipway_engine::EngineError::from)?;
    if !q.follow.unwrap_or(true) {
        // The events of the newest deployment, replayed from what the store kept.
        let replay: Vec<Result<Event, Infallible>> = recent
            .first()
            .map(|d| diff(None, d))
            .unwrap_or_default()
            .into_iter()
            .map(Ok)
            .collect();
        return Ok(Sse::new(futures::stream::iter(replay)).into_response());
    }
    let known: HashMap<String, Deployment> =
        recent.into_iter().map(|d| (d.id.clone(), d)).collect();
    let ready = futures::stream::once(async move {
        Ok::<_, Infallible>(
            Event::default()
                .event("ready")
                .data(json!({"app_id": app_id, "at": slipway_spec::now()}).to_string()),
        )
    });
    let app_id = record.id.clone();
    let changes = updates
        .scan(known, move |known, update| {
            let out: Vec<Event> =
                match update {
                    Ok(u) if u.deployment.app_id == app_id => {
                        let before = known.insert(u.deployment.id.clone(), u.deployment.clone());
                        diff(before.as_ref(), &u.deployment)
                    }
                    Ok(_) => Vec::new(),
                    Err(_) => vec![Event::default().event("lagged").data(
                    json!({"message": "some events were dropped; read the deployments again"})
                        .to_string(),
                )],
                };
            futures::future::ready(Some(futures::stream::iter(out.into_iter().map(Ok))))
        })
        .flatten();
    Ok(Sse::new(ready.chain(changes))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    /// Follow new events (the default); `false` replays the newest deployment's and ends.
    follow: Option<bool>,
}

fn flatten(steps: &[Step], prefix: &str, out: &mut Vec<(String, Step)>) {
    for s in steps {
        let path = if prefix.is_empty() {
            s.name.clone()
        } else {
            format!("{prefix}/{}", s.name)
        };
        out.push((
            path.clone(),
            Step {
                steps: Vec::new(),
                ..s.clone()
            },
        ));
        flatten(&s.steps, &path, out);
    }
}

fn millis(from: Option<jiff::Timestamp>, to: Option<jiff::Timestamp>) -> Option<i64> {
    Some(to?.duration_since(from?).as_millis() as i64)
}

/// The events between two states of one deployment.
fn diff(before: Option<&Deployment>, now: &Deployment) -> Vec<Event> {
    let mut events = Vec::new();
    let event = |name: &str, data: Value| Event::default().event(name).data(data.to_string());
    match before {
        None => events.push(event(
            "deployment.created",
            json!({"deployment_id": now.id, "cause": now.cause, "kind": now.kind, "phase": now.phase, "at": now.created_at}),
        )),
        Some(b) if b.phase != now.phase => events.push(event(
            "deployment.phase",
            json!({
                "deployment_id": now.id, "phase": now.phase, "previous_phase": b.phase,
                "at": now.phase_last_updated_at,
                "previous_phase_ms": millis(Some(b.phase_last_updated_at), Some(now.phase_last_updated_at)),
            }),
        )),
        _ => {}
    }
    let mut old = Vec::new();
    if let Some(b) = before {
        flatten(&b.progress.steps, "", &mut old);
    }
    let mut new = Vec::new();
    flatten(&now.progress.steps, "", &mut new);
    for (path, step) in new {
        let was = old.iter().find(|(p, _)| *p == path).map(|(_, s)| s.status);
        if was == Some(step.status) {
            continue;
        }
        match step.status {
            StepStatus::Running => events.push(event(
                "step.started",
                json!({"deployment_id": now.id, "step": path, "component": step.component_name, "at": step.started_at}),
            )),
            StepStatus::Success | StepStatus::Error => events.push(event(
                "step.finished",
                json!({
                    "deployment_id": now.id, "step": path, "component": step.component_name,
                    "status": step.status, "started_at": step.started_at, "at": step.ended_at,
                    "duration_ms": millis(step.started_at, step.ended_at), "reason": step.reason,
                    "message": step.message_base,
                }),
            )),
            StepStatus::Pending => {}
        }
    }
    if now.phase.is_terminal()
        && before.is_none_or(|b| !b.phase.is_terminal())
        && now.phase != Phase::Superseded
    {
        events.push(event(
            "deployment.finished",
            json!({"deployment_id": now.id, "phase": now.phase, "at": now.ended_at, "duration_ms": millis(Some(now.created_at), now.ended_at)}),
        ));
    }
    events
}
