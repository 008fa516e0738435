use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use slipway_engine::EngineError;
use slipway_spec::{FailureCode, Problem, SpecError, error_chain};

/// An error as the API answers it: App Platform's `{"id", "message"}` and a status, and
/// Slipway's `code` when the request failed the way a deployment can fail (Docker
/// unreachable, the store failing...). What the user sees is separate from what is logged:
/// internal failures say only that they happened.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub id: &'static str,
    pub message: String,
    /// For an invalid spec: every problem with its field path.
    pub problems: Vec<Problem>,
    /// The stable code of the failure under the request, if it is one (never for a request
    /// that is refused as it is).
    pub code: Option<FailureCode>,
}

impl ApiError {
    pub fn new(status: StatusCode, id: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            id,
            message: message.into(),
            problems: Vec::new(),
            code: None,
        }
    }

    fn with_code(self, code: Option<FailureCode>) -> Self {
        ApiError { code, ..self }
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
        let code = e.code();
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
            )
            .with_code(code),
            EngineError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                e.to_string(),
            ),
            _ if code == Some(FailureCode::RuntimeUnreachable) => {
                tracing::error!(error = %error_chain(&e), "request failed: Docker is unreachable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "runtime_unreachable",
                    "the daemon cannot reach Docker; its log says why",
                )
                .with_code(code)
            }
            EngineError::Store(_) => {
                tracing::error!(error = %error_chain(&e), "request failed in the store");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the daemon's store failed; its log says why",
                )
                .with_code(code)
            }
            _ => {
                tracing::error!(error = %error_chain(&e), "request failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_server_error",
                    "the request failed inside the daemon; its log says why",
                )
                .with_code(code)
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
        if let Some(code) = self.code {
            body["code"] = code.as_str().into();
        }
        (self.status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(e: EngineError) -> (StatusCode, serde_json::Value) {
        let response = ApiError::from(e).into_response();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn failures_under_a_request_answer_with_their_status_id_and_code() {
        let unreachable = EngineError::Runtime(slipway_rollout::RuntimeError::Docker {
            action: "list",
            object: "containers".into(),
            source: bollard::errors::Error::SocketNotFoundError("/var/run/docker.sock".into()),
        });
        let (status, body) = answer(unreachable).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["id"], "runtime_unreachable");
        assert_eq!(body["code"], "RuntimeUnreachable");

        let store = EngineError::Store(slipway_store::StoreError::Mode {
            path: "/data/slipway.db".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        });
        let (status, body) = answer(store).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["id"], "store_unavailable");
        assert_eq!(body["code"], "StoreFailed");
        assert!(
            !body["message"].as_str().unwrap().contains("/data"),
            "what is logged is not answered: {body}"
        );

        let refused = EngineError::CancelRefused {
            id: "d1".into(),
            reason: "the switch-over has begun committing".into(),
        };
        let (status, body) = answer(refused).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body["id"], "conflict");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("can no longer be canceled: the switch-over has begun committing"),
            "{body}"
        );

        let (status, body) = answer(EngineError::Store(slipway_store::StoreError::Full)).await;
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(body["id"], "insufficient_storage");
        assert_eq!(body["code"], "StoreFailed");

        // A refused request is not a failure: no code.
        let (status, body) = answer(EngineError::NotFound {
            what: "app",
            id: "nope".into(),
        })
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body.get("code"), None, "{body}");
    }
}
