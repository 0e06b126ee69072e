//! Management API failures, rendered as Kubernetes `Status` objects.

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use clusterlink_api::manifest::MAX_OBJECT_BYTES;
use clusterlink_api::{FieldError, ManifestError};
use serde_json::json;

use crate::model::ModelError;

/// An API failure, rendered as a Kubernetes `Status`.
#[derive(Debug)]
pub struct ApiError {
    pub(super) code: StatusCode,
    reason: &'static str,
    pub(super) message: String,
    causes: Vec<FieldError>,
}

impl ApiError {
    pub(super) fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            causes: vec![],
        }
    }

    pub(super) fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    pub(super) fn invalid(causes: Vec<FieldError>) -> Self {
        let message = causes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        ApiError {
            code: StatusCode::BAD_REQUEST,
            reason: "Invalid",
            message,
            causes,
        }
    }

    pub(super) fn field(field: &str, reason: impl Into<String>) -> Self {
        ApiError::invalid(vec![FieldError::new(field, reason)])
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "apiVersion": "v1",
            "kind": "Status",
            "status": "Failure",
            "code": self.code.as_u16(),
            "reason": self.reason,
            "message": self.message,
            "details": {"causes": self.causes.iter().map(|c| json!({"field": c.field, "message": c.reason})).collect::<Vec<_>>()},
        });
        (self.code, Json(body)).into_response()
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::NotFound(_) => ApiError::not_found(e.to_string()),
            ModelError::AlreadyExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "AlreadyExists", e.to_string())
            }
            ModelError::Conflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "Conflict", e.to_string())
            }
            ModelError::Invalid(errors) => ApiError::invalid(errors.0),
            ModelError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                e.to_string(),
            ),
            ModelError::Store(clusterlink_store::StoreError::Io(_)) => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "InsufficientStorage",
                e.to_string(),
            ),
            ModelError::Store(_) | ModelError::Corrupt { .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            ),
        }
    }
}

impl From<ManifestError> for ApiError {
    fn from(e: ManifestError) -> Self {
        match e {
            ManifestError::Syntax(_) | ManifestError::TooDeep => {
                ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", e.to_string())
            }
            other => ApiError::invalid(other.field_errors()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        let code = e.status();
        if code == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                code,
                "RequestEntityTooLarge",
                format!("request body is larger than {MAX_OBJECT_BYTES} bytes"),
            )
        } else {
            ApiError::new(code, "BadRequest", e.body_text())
        }
    }
}
