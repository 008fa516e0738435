//! The OpenAPI document of exactly what the API implements: it is generated from the same
//! registrations that build the router, and checked into the repository
//! (`crates/slipway-api/openapi.json`) so that a change to the API shows in review.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Slipway API",
        description = "App Platform's v2 API, for the part Slipway implements: apps, deployments (restart and force rebuild), logs and events.",
        license(name = "Apache-2.0"),
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "apps", description = "Apps and their specs"),
        (name = "deployments", description = "Restarts, rebuilds and their progress"),
        (name = "logs", description = "BUILD, DEPLOY and RUN logs, and events"),
    ),
)]
pub(crate) struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `{"id", "message"}`, App Platform's error body; `problems` names every field path of an
/// invalid spec; `code` is the stable failure code when the request failed the way a
/// deployment can fail.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ErrorBody {
    /// `bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `request_entity_too_large`, `unprocessable_entity`, `insufficient_storage`,
    /// `service_unavailable`, `runtime_unreachable`, `store_unavailable`,
    /// `internal_server_error`.
    id: String,
    message: String,
    problems: Option<Vec<ProblemBody>>,
    /// Slipway's addition: the failure's stable code (e.g. `RuntimeUnreachable`,
    /// `StoreFailed`), as in a deployment's `error.code`.
    code: Option<FailureCodeBody>,
}

/// Why a deployment (or a request) failed, as a stable code; a code is never renamed.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) enum FailureCodeBody {
    BuildFailed,
    SourceFetchFailed,
    SourceInvalid,
    ImageMissing,
    PushFailed,
    HealthCheckFailed,
    RolloutFailed,
    JobFailed,
    DatabaseFailed,
    Canceled,
    RuntimeUnreachable,
    RuntimeFailed,
    StoreFailed,
    Timeout,
    InvalidSpec,
    SecretUnreadable,
    Interrupted,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ProblemBody {
    /// The field path, e.g. `services[1].name`.
    path: String,
    message: String,
}

/// `{"app": {...}}`: the app object has App Platform's fields (`id`, `spec`, `default_ingress`,
/// `live_url`, `created_at`, `updated_at`, `active_deployment`, `in_progress_deployment`,
/// `pending_deployment`, `last_deployment_created_at`, and `domains[]`: each of the spec's
/// domains with `id`, `spec`, `phase` (PENDING, CONFIGURING, ACTIVE, ERROR), `error` and
/// `certificate_expires_at`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AppBody {
    #[schema(value_type = Object)]
    app: (),
    /// Fields App Platform defines that Slipway accepts without implementing.
    warnings: Option<Vec<ProblemBody>>,
}

/// `{"apps": [...], "links": {"pages": {...}}, "meta": {"total": N}}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct AppsPage {
    #[schema(value_type = Vec<Object>)]
    apps: (),
    #[schema(value_type = Object)]
    links: (),
    #[schema(value_type = Object)]
    meta: (),
}

/// `{"deployment": {...}}`: App Platform's fields (`id`, `spec`, `cause`, `phase`,
/// `phase_last_updated_at`, `created_at`, `updated_at`, `progress` with its step tree,
/// `services[]`, `workers[]`, `jobs[]`) and Slipway's (`app_id`, `kind`, `force_build`,
/// `clear_build_cache`, `restart_components`, `ended_at`, and once it ended in ERROR or
/// CANCELED `error`: `{"code", "message"}`, a `FailureCodeBody` and the failing step's reason).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct DeploymentBody {
    #[schema(value_type = Object)]
    deployment: (),
}

/// `{"deployments": [...], "links": ..., "meta": ...}`, newest first.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct DeploymentsPage {
    #[schema(value_type = Vec<Object>)]
    deployments: (),
    #[schema(value_type = Object)]
    links: (),
    #[schema(value_type = Object)]
    meta: (),
}

/// `{"id": "..."}` of the deleted app.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct DeletedBody {
    id: String,
}

/// The answer of propose: whether the name is free, the spec as understood, and warnings.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ProposeBody {
    app_name_available: bool,
    #[schema(value_type = Object)]
    spec: (),
    warnings: Vec<ProblemBody>,
}

/// Where a log can be read: both URLs are signed and need no token for 15 minutes.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct LogUrls {
    live_url: String,
    historic_urls: Vec<String>,
}
