//! The admin listener: `/live`, `/ready`, `/status`, `/metrics`, and the bearer-protected
//! `POST /admin/*`.
//!
//! `/ready` says whether payauth can serve: started and not draining. A locked gateway does not
//! make it fail unless `[admin] ready_requires_unlocked` is set: with shared credentials every
//! pod of the app would go unready at once, taking the app's other endpoints down, and
//! unreadiness does nothing to unlock (an operator must). A locked gateway shows in `/status`,
//! in `payauth_auth_locked` and in the alerts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;

use prometheus::Registry;

use crate::credentials::{RenewError, Running};
use crate::files::read_secret;
use crate::metrics::GatewayMetrics;

/// What the admin API reaches: small handles, not the sidecar's internals.
#[derive(Clone, Debug)]
pub(crate) struct AdminState {
    /// The metrics registry.
    pub(crate) registry: Registry,
    /// The gateways.
    pub(crate) gateways: Arc<Vec<AdminGateway>>,
    /// File holding the admin bearer token (`None`: the `POST /admin/*` API is off).
    pub(crate) admin_token_file: Option<PathBuf>,
    /// `/ready` also fails while a gateway is locked.
    pub(crate) ready_requires_unlocked: bool,
    /// True once shutdown began: `/ready` answers 503.
    pub(crate) draining: Arc<AtomicBool>,
}

/// One gateway as the admin API sees it.
#[derive(Clone, Debug)]
pub(crate) struct AdminGateway {
    /// Its handle, and where its credentials come from (a token renewal persists there).
    pub(crate) running: Running,
    /// Its metrics (refreshed on a scrape; the token expiry is set on a renewal).
    pub(crate) metrics: GatewayMetrics,
}

/// The admin router.
pub(crate) fn router(shared: AdminState) -> Router {
    Router::new()
        .route("/live", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/admin/{gateway}/unlock", post(unlock))
        .route("/admin/number/{gateway}/tokens", post(number_tokens))
        .with_state(shared)
}

async fn ready(State(shared): State<AdminState>) -> Response {
    let mut problems = Vec::new();
    if shared.draining.load(Ordering::SeqCst) {
        problems.push("draining: shutting down".to_owned());
    }
    for gateway in shared.gateways.iter() {
        if shared.ready_requires_unlocked && gateway.running.guard().is_locked() {
            problems.push(format!(
                "gateway {}: authentication locked",
                gateway.running.name()
            ));
        }
    }
    if problems.is_empty() {
        (StatusCode::OK, Json(json!({"ready": true}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "problems": problems})),
        )
            .into_response()
    }
}

/// Each gateway's state, as JSON: whether it is locked and why, the guard's counts and backoff,
/// the credential's age and the token's expiry, the last authentication's outcome, the session
/// pool. Nothing in it is a secret: no token, key, session id or credential fingerprint.
async fn status(State(shared): State<AdminState>) -> Response {
    let gateways: Vec<_> = shared
        .gateways
        .iter()
        .map(|gateway| {
            let guard = gateway.running.guard().status();
            let kind = gateway.running.kind();
            json!({
                "name": gateway.running.name(),
                "kind": kind,
                "locked": guard.record.locked,
                "lock_reason": guard.record.reason,
                "rejected_in_a_row": guard.record.rejected,
                "unconfirmed_attempts": guard.record.unconfirmed,
                "credentials_proven": guard.record.proven,
                "attempts_in_flight": guard.in_flight,
                "backoff_ms": guard.backoff.map(|b| b.as_millis() as u64),
                "split_egress": gateway.metrics.split_egress(),
                "clock_skew_seconds": gateway.metrics.clock_skew(),
                "metrics": gateway.metrics.snapshot(),
            })
        })
        .collect();
    let draining = shared.draining.load(Ordering::SeqCst);
    Json(json!({
        "draining": draining,
        "ready_requires_unlocked": shared.ready_requires_unlocked,
        "gateways": gateways,
    }))
    .into_response()
}

async fn metrics(State(shared): State<AdminState>) -> Response {
    for gateway in shared.gateways.iter() {
        gateway.metrics.refresh();
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(&shared.registry),
    )
        .into_response()
}

/// Checks the bearer token in constant time; `Err` is the response to send.
#[allow(clippy::result_large_err)] // the error is the response itself, built once per refusal
pub(crate) fn authorize(shared: &AdminState, headers: &HeaderMap) -> Result<(), Response> {
    let Some(path) = &shared.admin_token_file else {
        return Err(admin_error(
            StatusCode::NOT_FOUND,
            "the admin API is off: no admin.token_file configured",
        ));
    };
    let expected = read_secret(path).map_err(|_| {
        admin_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the admin token file cannot be read",
        )
    })?;
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .trim();
    if bool::from(presented.as_bytes().ct_eq(expected.expose().as_bytes())) {
        Ok(())
    } else {
        tracing::warn!("admin request with a wrong or missing bearer token");
        Err(admin_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        ))
    }
}

pub(crate) fn admin_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": {"message": message}}))).into_response()
}

#[allow(clippy::result_large_err)] // as above
pub(crate) fn find<'a>(shared: &'a AdminState, name: &str) -> Result<&'a AdminGateway, Response> {
    shared
        .gateways
        .iter()
        .find(|g| g.running.name() == name)
        .ok_or_else(|| admin_error(StatusCode::NOT_FOUND, "no such gateway"))
}

async fn unlock(
    State(shared): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(response) = authorize(&shared, &headers) {
        return response;
    }
    let gateway = match find(&shared, &name) {
        Ok(g) => g,
        Err(response) => return response,
    };
    match gateway.running.guard().unlock().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({"gateway": name, "locked": false})),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(gateway = %name, error = %e, "unlock could not be persisted");
            admin_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the unlock could not be persisted under the state dir",
            )
        }
    }
}

/// The Client Admin Portal's token POST: pick this gateway's token, persist it, swap it in and
/// unlock. Nothing changes unless every step before the swap succeeded.
async fn number_tokens(
    State(shared): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(response) = authorize(&shared, &headers) {
        return response;
    }
    let gateway = match find(&shared, &name) {
        Ok(g) => g,
        Err(response) => return response,
    };
    let Running::Number {
        handle: number,
        source,
    } = &gateway.running
    else {
        return admin_error(StatusCode::NOT_FOUND, "not a number gateway");
    };
    let portal = match crate::tokens::parse_portal(&body, source.account_code()) {
        Ok(token) => token,
        Err(message) => return admin_error(StatusCode::BAD_REQUEST, &message),
    };
    let credentials = match source.renew_token(&portal) {
        Ok(credentials) => credentials,
        Err(e @ RenewError::Files(_)) => {
            tracing::error!(gateway = %name, error = %e, "cannot renew the token; nothing changed");
            return admin_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway's secret files cannot be read",
            );
        }
        Err(e @ RenewError::Persist(_)) => {
            tracing::error!(gateway = %name, error = %e, "cannot persist the renewed token; nothing changed");
            return admin_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the token could not be persisted under the state dir; nothing changed",
            );
        }
    };
    let handle = &gateway.running;
    let was_locked = handle.guard().is_locked();
    if number.update_credentials(credentials).is_err() {
        return admin_error(
            StatusCode::BAD_REQUEST,
            "the gateway's signing settings are unusable",
        );
    }
    if let Err(e) = handle.guard().unlock().await {
        tracing::error!(gateway = %name, error = %e, "token swapped but the unlock could not be persisted");
    }
    if let Some(at) = portal.expires_at {
        gateway.metrics.set_token_expiry(at as f64);
        crate::credentials::warn_if_expiring(&name, at);
    }
    tracing::info!(gateway = %name, token_id = portal.token_id.as_deref().unwrap_or(""), was_locked,
        "gateway token renewed through the admin API");
    (
        StatusCode::OK,
        Json(json!({
            "gateway": name,
            "token_id": portal.token_id,
            "expires_at": portal.expires_at,
            "unlocked": was_locked,
        })),
    )
        .into_response()
}
