//! Certificate actions of the REST API: `POST /v1/certificates/{domain}/retry` asks the ACME
//! loop to order a certificate for a domain now (clearing any failure backoff; on a healthy
//! certificate this is an early renewal, e.g. after a revocation). The list itself is
//! `GET /v1/certificates` in `apps`. Answers: 202 queued, 404 for a domain Berth does not
//! order certificates for (unknown, bring-your-own, or ACME off), 409 while an order for the
//! domain is already running (its outcome shows in the list; ask again afterwards).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use super::error::{ApiError, ApiPath};
use super::ApiState;
use crate::model::api::CertRetryQueued;
use crate::tls::RetryError;

pub fn router() -> Router<ApiState> {
    Router::new().route("/v1/certificates/{domain}/retry", post(retry))
}

/// `POST /v1/certificates/{domain}/retry`.
async fn retry(
    State(state): State<ApiState>,
    ApiPath(domain): ApiPath<String>,
) -> Result<Response, ApiError> {
    let Some(acme) = &state.acme else {
        return Err(ApiError::NotFound(format!(
            "{domain}: ACME is not configured on this server (tls.acme), so it orders no \
             certificates"
        )));
    };
    match acme.request_retry(&domain) {
        Ok(domain) => Ok((
            StatusCode::ACCEPTED,
            Json(CertRetryQueued {
                domain,
                status: "queued".into(),
            }),
        )
            .into_response()),
        Err(e @ (RetryError::NotManaged(_) | RetryError::Manual(_))) => {
            Err(ApiError::NotFound(e.to_string()))
        }
        Err(e @ RetryError::InProgress(_)) => Err(ApiError::Conflict {
            code: "order_in_progress",
            field: None,
            message: e.to_string(),
        }),
    }
}
