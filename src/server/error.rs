//! One error shape for the whole API: `{"error": "<code>", "detail": "<what went wrong>"}`
//! with a 4xx status for the caller's mistakes and 5xx for ours. Client errors are not
//! logged; server errors are logged once, here.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use creature_actors::brain::SnapshotError;
use creature_actors::slot::CallError;
use creature_actors::tasks::TaskError;
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub detail: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    detail: &'a str,
}

/// A request body that may be empty: whitespace gives `T::default()`, anything else must
/// be JSON of `T` (malformed JSON is 400 `malformed_json`, the wrong fields 422
/// `invalid_body`).
pub(super) fn optional_json_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::unprocessable("invalid_body", e.to_string())
        } else {
            ApiError::bad_request("malformed_json", e.to_string())
        }
    })
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            error,
            detail: detail.into(),
        }
    }

    pub fn bad_request(error: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn unprocessable(error: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, error, detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", detail)
    }

    /// A failure on our side: logged with its cause, reported without internals.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(cause = %cause, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the brain's log has the cause",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.error,
            detail: &self.detail,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let detail = rejection.body_text();
        match rejection {
            JsonRejection::JsonDataError(_) => Self::unprocessable("invalid_body", detail),
            JsonRejection::JsonSyntaxError(_) => Self::bad_request("malformed_json", detail),
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            JsonRejection::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", detail)
            }
            _ => Self::bad_request("bad_body", detail),
        }
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        Self::unavailable(e.to_string())
    }
}

impl From<SnapshotError> for ApiError {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Unknown(_) => Self::not_found(e.to_string()),
            SnapshotError::Call(c) => c.into(),
        }
    }
}

impl From<TaskError> for ApiError {
    fn from(e: TaskError) -> Self {
        match e {
            TaskError::NotFound(_) => Self::not_found(e.to_string()),
            TaskError::Invalid(_) => Self::unprocessable("invalid_task", e.to_string()),
            TaskError::Lifecycle(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            TaskError::Detached => Self::new(StatusCode::CONFLICT, "detached", e.to_string()),
            TaskError::TooManyUnfinished { .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_unfinished",
                e.to_string(),
            ),
            TaskError::Call(c) => c.into(),
            TaskError::Store(s) => Self::internal(s),
        }
    }
}

/// `Json` whose rejections use the API's error shape.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(rejection.into()),
        }
    }
}
