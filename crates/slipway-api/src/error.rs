use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use slipway_engine::EngineError;
use slipway_spec::{Problem, SpecError, error_chain};

/// An error as the API answers it: App Platform's `{"id", "message"}` and a status. What the
/// user sees is separate from what is logged: internal failures say only that they happened.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub id: &'static str,
    pub message: String,
    /// For an invalid spec: every problem with its field path.
    pub problems: Vec<Problem>,
}

impl ApiError {
    pub fn new(status: StatusCode, id: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            id,
            message: message.into(),
            problems: Vec::new(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn unprocessable(message: impl Into<String>) -> Self {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unprocessable_entity",
            message,
        )
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        let problems = e.problems();
        ApiError {
            problems,
            ..ApiError::bad_request(format!("invalid app spec: {e}"))
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        if let EngineError::InvalidSpec(spec) = e {
            return ApiError::from(spec);
        }
        match &e {
            EngineError::NotFound { .. } => ApiError::not_found(e.to_string()),
            EngineError::UnknownComponents { .. }
            | EngineError::NotRestartable { .. }
            | EngineError::NothingToRestart { .. }
            | EngineError::AlreadyEnded { .. } => ApiError::unprocessable(e.to_string()),
            EngineError::Store(slipway_store::StoreError::NameTaken(_))
            | EngineError::CancelRefused { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            EngineError::Store(slipway_store::StoreError::Full) => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                e.to_string(),
            ),
            EngineError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                e.to_string(),
            ),
            _ => {
                tracing::error!(error = %error_chain(&e), "request failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_server_error",
                    "the request failed inside the daemon; its log says why",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"id": self.id, "message": self.message});
        if !self.problems.is_empty() {
            body["problems"] = serde_json::to_value(&self.problems).unwrap_or_default();
        }
        (self.status, Json(body)).into_response()
    }
}
