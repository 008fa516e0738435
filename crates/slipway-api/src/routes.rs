use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State as AxumState};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use slipway_spec::{App, parse_spec_value};

use crate::doc::{
    ApiDoc, AppBody, AppsPage, DeletedBody, DeploymentBody, DeploymentsPage, ErrorBody, ProposeBody,
};
use crate::error::ApiError;
use crate::{MAX_BODY_BYTES, State, instances, logs, panel};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type S = AxumState<Arc<State>>;
type Body = Result<Bytes, BytesRejection>;

/// The API's routes, and the OpenAPI document made from the same registrations. Without a
/// state, the routes carry no authentication (for the document only).
fn build(state: Option<Arc<State>>) -> (Router<Arc<State>>, utoipa::openapi::OpenApi) {
    let mut v2 = OpenApiRouter::new()
        .routes(routes!(list_apps, create_app))
        .routes(routes!(propose))
        .routes(routes!(get_app, update_app, delete_app))
        .routes(routes!(restart))
        .routes(routes!(list_deployments, create_deployment))
        .routes(routes!(get_deployment))
        .routes(routes!(cancel_deployment))
        .routes(routes!(instances::instances))
        .routes(routes!(logs::deployment_logs))
        .routes(routes!(logs::component_logs))
        .routes(routes!(logs::active_logs))
        .routes(routes!(logs::historic))
        .routes(routes!(logs::live))
        .routes(routes!(logs::events))
        .fallback(not_found);
    if let Some(state) = state {
        v2 = v2.layer(middleware::from_fn_with_state(state, authenticate));
    }
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/v2", v2)
        .split_for_parts()
}

/// The OpenAPI document of the API, as JSON.
pub fn openapi_json() -> String {
    let mut doc = build(None).1;
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.to_pretty_json().expect("the document serializes")
}

pub(crate) fn router(state: Arc<State>) -> Router {
    let (v2, _) = build(Some(Arc::clone(&state)));
    let doc = openapi_json();
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route(
            "/v2/openapi.json",
            get(move || async move {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    doc,
                )
            }),
        )
        .merge(v2)
        .merge(panel::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// Lets a request through with a token: `Authorization: Bearer <token>`, or the web panel's
/// cookie. With the cookie, a request that changes something must also carry
/// `X-Slipway-Panel: 1` (see [`panel`]): another site's page cannot add that header, so it
/// cannot make a signed-in browser act.
async fn authenticate(AxumState(state): S, mut request: Request, next: Next) -> Response {
    let uri = (request.method() == axum::http::Method::GET).then(|| request.uri().clone());
    match signed(&state, uri).await {
        Signed::No => {}
        Signed::Valid => return next.run(request).await,
        // A URL that carries a signature and no token: say why the signature is refused.
        Signed::Refused(why)
            if !request
                .headers()
                .contains_key(axum::http::header::AUTHORIZATION)
                && panel::cookie_token(request.headers()).is_none() =>
        {
            return ApiError::unauthorized(why.to_string()).into_response();
        }
        Signed::Refused(_) => {}
    }
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let token = match presented.map(|t| t.trim().to_string()) {
        Some(token) => token,
        None => match panel::cookie_token(request.headers()) {
            Some(token) => {
                if !panel::is_read(request.method()) && !panel::has_panel_header(request.headers())
                {
                    return panel::missing_header().into_response();
                }
                token
            }
            None => {
                return ApiError::unauthorized(
                    "this API needs an Authorization: Bearer <token> header",
                )
                .into_response();
            }
        },
    };
    let caller = state.auth.identify(&token).await;
    match caller.as_ref().map(|c| c.scope) {
        None => ApiError::unauthorized("the token is not valid (or was revoked)").into_response(),
        Some(crate::Scope::ReadOnly)
            if !matches!(
                *request.method(),
                axum::http::Method::GET | axum::http::Method::HEAD
            ) =>
        {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this token is read-only: it cannot change anything",
            )
            .into_response()
        }
        Some(_) => {
            if let Some(caller) = caller {
                request.extensions_mut().insert(caller);
            }
            next.run(request).await
        }
    }
}

/// Whether a request is a GET of a URL the API signed (a log URL it handed out).
enum Signed {
    /// It carries no signature.
    No,
    Valid,
    Refused(crate::SignedUrlError),
}

/// `uri`: the URI of a GET, `None` for other methods.
async fn signed(state: &State, uri: Option<axum::http::Uri>) -> Signed {
    let Some(uri) = uri else {
        return Signed::No;
    };
    let Some(query) = uri.query() else {
        return Signed::No;
    };
    // The signature covers the full path (with /v2) and the query before `&exp=`.
    let Some((signed_query, rest)) = query.split_once("&exp=") else {
        return Signed::No;
    };
    let Some((exp, sig)) = rest.split_once("&sig=") else {
        return Signed::No;
    };
    let Ok(exp) = exp.parse::<i64>() else {
        return Signed::Refused(crate::SignedUrlError::Invalid);
    };
    let path = format!("/v2{}", uri.path());
    match state
        .auth
        .verify(&format!("{path}?{signed_query}"), exp, sig)
        .await
    {
        Ok(()) => Signed::Valid,
        Err(why) => Signed::Refused(why),
    }
}

/// Parses a JSON body; a problem names the field path. An empty body is `{}`.
fn parse<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_entity_too_large",
                format!("the request body is larger than the {MAX_BODY_BYTES} bytes accepted"),
            )
        } else {
            ApiError::bad_request(r.body_text())
        }
    })?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("the body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::bad_request(format!("the body is not what this endpoint takes: {inner}"))
        } else {
            ApiError::bad_request(format!("{path}: {inner}"))
        }
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SpecRequest)]
struct SpecBody {
    /// The app spec, with App Platform's fields.
    #[schema(value_type = Object)]
    spec: Value,
    /// With propose: the app the spec is for, so that its own name counts as available.
    #[serde(default)]
    app_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Paging {
    page: Option<u64>,
    per_page: Option<u64>,
}

impl Paging {
    fn resolve(&self) -> Result<(u64, u64), ApiError> {
        let page = self.page.unwrap_or(1);
        let per_page = self.per_page.unwrap_or(20);
        if page == 0 {
            return Err(ApiError::bad_request("page: must be 1 or more"));
        }
        if !(1..=200).contains(&per_page) {
            return Err(ApiError::bad_request("per_page: must be from 1 to 200"));
        }
        Ok((page, per_page))
    }
}

/// App Platform's `links` and `meta` of a page.
fn page_links(path: &str, page: u64, per_page: u64, total: u64) -> (Value, Value) {
    let last = total.div_ceil(per_page).max(1);
    let url = |p: u64| format!("/v2{path}?page={p}&per_page={per_page}");
    let mut pages = serde_json::Map::new();
    if page > 1 {
        pages.insert("first".into(), url(1).into());
        pages.insert("prev".into(), url(page - 1).into());
    }
    if page < last {
        pages.insert("next".into(), url(page + 1).into());
        pages.insert("last".into(), url(last).into());
    }
    (json!({"pages": pages}), json!({"total": total}))
}

async fn view(state: &State, id: &str) -> Result<App, ApiError> {
    let record = state.engine.app(id).await?;
    Ok(state.engine.app_view(&record).await?)
}

#[utoipa::path(get, path = "/apps", tag = "apps", params(("page" = Option<u64>, Query, description = "1 or more"), ("per_page" = Option<u64>, Query, description = "1 to 200, default 20")), responses((status = 200, body = AppsPage), (status = 401, body = ErrorBody)))]
async fn list_apps(
    AxumState(state): S,
    Query(paging): Query<Paging>,
) -> Result<Json<Value>, ApiError> {
    let (page, per_page) = paging.resolve()?;
    let (records, total) = state
        .engine
        .store()
        .apps((page - 1) * per_page, per_page)
        .await
        .map_err(slipway_engine::EngineError::from)?;
    let mut apps = Vec::with_capacity(records.len());
    for r in &records {
        apps.push(state.engine.app_view(r).await?);
    }
    let (links, meta) = page_links("/apps", page, per_page, total);
    Ok(Json(json!({"apps": apps, "links": links, "meta": meta})))
}

#[utoipa::path(post, path = "/apps", tag = "apps", request_body = SpecBody, responses((status = 200, body = AppBody, description = "The app; its first deployment has started"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
async fn create_app(AxumState(state): S, body: Body) -> Result<Json<Value>, ApiError> {
    let body: SpecBody = parse(body)?;
    let parsed = parse_spec_value(body.spec)?;
    for w in &parsed.warnings {
        tracing::info!(warning = %w, "spec warning");
    }
    let (record, _) = state.engine.create_app(parsed.spec).await?;
    let app = state.engine.app_view(&record).await?;
    Ok(Json(json!({"app": app, "warnings": parsed.warnings})))
}

#[utoipa::path(get, path = "/apps/{app}", tag = "apps", params(("app" = String, Path, description = "The app's ID or name")), responses((status = 200, body = AppBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_app(AxumState(state): S, Path(app): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"app": view(&state, &app).await?})))
}

#[utoipa::path(put, path = "/apps/{app}", tag = "apps", params(("app" = String, Path, description = "The app's ID or name")), request_body = SpecBody, responses((status = 200, body = AppBody, description = "The app; a deployment of the new spec has started"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_app(
    AxumState(state): S,
    Path(app): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body: SpecBody = parse(body)?;
    let parsed = parse_spec_value(body.spec)?;
    let (record, _) = state.engine.update_app(&app, parsed.spec).await?;
    let app = state.engine.app_view(&record).await?;
    Ok(Json(json!({"app": app, "warnings": parsed.warnings})))
}

#[derive(Debug, Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    purge: bool,
}

#[utoipa::path(delete, path = "/apps/{app}", tag = "apps", params(("app" = String, Path, description = "The app's ID or name"), ("purge" = Option<bool>, Query, description = "Also remove the databases' volumes")), responses((status = 200, body = DeletedBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_app(
    AxumState(state): S,
    Path(app): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<Value>, ApiError> {
    let id = state.engine.delete_app(&app, q.purge).await?;
    Ok(Json(json!({"id": id})))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RestartBody {
    /// Services and workers to restart; all of them when empty.
    #[serde(default)]
    components: Vec<String>,
}

#[utoipa::path(post, path = "/apps/{app}/restart", tag = "deployments", params(("app" = String, Path, description = "The app's ID or name")), request_body(content = RestartBody, description = "Optional: the services and workers to restart (all when absent)"), responses((status = 200, body = DeploymentBody, description = "The restart: new containers from the active deployment's images"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody, description = "A component the app lacks, a job or a database, or no active deployment")))]
async fn restart(
    AxumState(state): S,
    Path(app): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body: RestartBody = parse(body)?;
    let d = state.engine.restart(&app, &body.components).await?;
    Ok(Json(json!({"deployment": d})))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DeploymentRequest)]
struct DeploymentRequest {
    /// Fetch and build even if the previous build could be reused.
    #[serde(default)]
    force_build: bool,
    #[serde(default)]
    clear_build_cache: bool,
}

#[utoipa::path(post, path = "/apps/{app}/deployments", tag = "deployments", params(("app" = String, Path, description = "The app's ID or name")), request_body(content = DeploymentRequest, description = "Optional"), responses((status = 200, body = DeploymentBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_deployment(
    AxumState(state): S,
    Path(app): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let body: DeploymentRequest = parse(body)?;
    if body.clear_build_cache && !body.force_build {
        return Err(ApiError::bad_request(
            "clear_build_cache: only takes effect with force_build: true",
        ));
    }
    let d = state
        .engine
        .create_deployment(&app, body.force_build, body.clear_build_cache)
        .await?;
    Ok(Json(json!({"deployment": d})))
}

#[utoipa::path(get, path = "/apps/{app}/deployments", tag = "deployments", params(("app" = String, Path, description = "The app's ID or name"), ("page" = Option<u64>, Query), ("per_page" = Option<u64>, Query)), responses((status = 200, body = DeploymentsPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_deployments(
    AxumState(state): S,
    Path(app): Path<String>,
    Query(paging): Query<Paging>,
) -> Result<Json<Value>, ApiError> {
    let (page, per_page) = paging.resolve()?;
    let record = state.engine.app(&app).await?;
    let (list, total) = state
        .engine
        .store()
        .deployments(&record.id, (page - 1) * per_page, per_page)
        .await
        .map_err(slipway_engine::EngineError::from)?;
    let (links, meta) = page_links(
        &format!("/apps/{}/deployments", record.id),
        page,
        per_page,
        total,
    );
    Ok(Json(
        json!({"deployments": list, "links": links, "meta": meta}),
    ))
}

#[utoipa::path(get, path = "/apps/{app}/deployments/{dep}", tag = "deployments", params(("app" = String, Path, description = "The app's ID or name"), ("dep" = String, Path, description = "The deployment's ID")), responses((status = 200, body = DeploymentBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_deployment(
    AxumState(state): S,
    Path((app, dep)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let record = state.engine.app(&app).await?;
    let d = state.engine.deployment(&record.id, &dep).await?;
    Ok(Json(json!({"deployment": d})))
}

#[utoipa::path(post, path = "/apps/{app}/deployments/{dep}/cancel", tag = "deployments", params(("app" = String, Path, description = "The app's ID or name"), ("dep" = String, Path, description = "The deployment's ID")), responses((status = 200, body = DeploymentBody, description = "The deployment once it has stopped: CANCELED"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody, description = "It has already ended")))]
async fn cancel_deployment(
    AxumState(state): S,
    Path((app, dep)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let record = state.engine.app(&app).await?;
    let d = state.engine.cancel(&record.id, &dep).await?;
    Ok(Json(json!({"deployment": d})))
}

#[utoipa::path(post, path = "/apps/propose", tag = "apps", request_body = SpecBody, responses((status = 200, body = ProposeBody), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn propose(AxumState(state): S, body: Body) -> Result<Json<Value>, ApiError> {
    let body: SpecBody = parse(body)?;
    let parsed = parse_spec_value(body.spec)?;
    state.engine.check_spec(&parsed.spec)?;
    let taken = state
        .engine
        .store()
        .app(&parsed.spec.name)
        .await
        .map_err(slipway_engine::EngineError::from)?
        .is_some_and(|a| Some(&a.id) != body.app_id.as_ref());
    Ok(Json(json!({
        "app_name_available": !taken,
        "spec": parsed.spec,
        "warnings": parsed.warnings,
    })))
}
