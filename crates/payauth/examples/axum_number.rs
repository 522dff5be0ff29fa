//! An axum service that charges cards through Number, with payauth's `NumberAuthLayer` around
//! payauth's TLS-capable pooled client (`payauth::UpstreamClient`): the service never sees a
//! session key.
//!
//! Try it against the simulator over HTTPS:
//!
//! ```text
//! cargo run -- simulate --tls --tls-dir /tmp/sim-tls &   # Number simulator on https://127.0.0.1:9001
//! NUMBER_URL=https://127.0.0.1:9001 NUMBER_CA_FILE=/tmp/sim-tls/ca.pem \
//!   NUMBER_TOKEN=2148B239CF6846BDA5D141BF4A4CFBE8 cargo run --example axum_number
//! curl -s localhost:3000/charge -H 'content-type: application/json' -d '{"amount": "1.00"}'
//! ```
//!
//! Against the real gateway, `NUMBER_URL=https://easypay5.com` and no CA file: the webpki roots
//! are trusted. `tests/example.rs` runs this service against the HTTPS simulator.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use payauth::number::{NumberAuthLayer, NumberConfig, NumberCredentials};
use payauth::{TlsFiles, UpstreamClient};
use serde::Deserialize;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

type NumberClient = BoxCloneSyncService<
    http::Request<Full<Bytes>>,
    http::Response<payauth::body::ResponseBody<payauth::UpstreamBody>>,
    payauth::Error,
>;

#[derive(Clone)]
struct AppState {
    number: NumberClient,
    base: String,
}

#[derive(Deserialize)]
struct Charge {
    amount: String,
}

async fn charge(
    State(state): State<AppState>,
    Json(charge): Json<Charge>,
) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    let body = serde_json::json!({ "Amount": charge.amount, "CardNum": "4111111111111111", "ExpMonth": "12", "ExpYear": "30" });
    let request = http::Request::post(format!(
        "{}/APIcardProcREST/v1.0.0/CreditCardSale_Manual",
        state.base
    ))
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from(body.to_string())))
    .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    // payauth's errors carry a contract code and a message without secrets.
    let response = state
        .number
        .oneshot(request)
        .await
        .map_err(|e| (e.code().status(), e.to_string()))?;
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?
        .to_bytes();
    let value =
        serde_json::from_slice(&bytes).map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(Json(value))
}

/// The Number client the service calls: payauth's pooled TLS client (the webpki roots, plus
/// `ca_file` if given), with the layer around it.
pub fn number_client(
    base: &str,
    token: &str,
    ca_file: Option<std::path::PathBuf>,
) -> Result<NumberClient, Box<dyn std::error::Error>> {
    let tls = TlsFiles {
        ca_file,
        ..TlsFiles::default()
    };
    let client = UpstreamClient::new(&tls, std::time::Duration::from_secs(5))?;
    let layer = NumberAuthLayer::new(
        NumberConfig::rest("number", base.parse()?),
        NumberCredentials::new("EP9116875", token),
    )?;
    Ok(BoxCloneSyncService::new(
        ServiceBuilder::new().layer(layer).service(client),
    ))
}

/// The service: `POST /charge` with `{"amount": "1.00"}`.
pub fn app(number: NumberClient, base: String) -> Router {
    Router::new()
        .route("/charge", post(charge))
        .with_state(AppState { number, base })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::var("NUMBER_URL").unwrap_or_else(|_| "https://127.0.0.1:9001".into());
    let token = std::env::var("NUMBER_TOKEN")
        .map_err(|_| "set NUMBER_TOKEN (the simulator's default is in the doc above)")?;
    let ca_file = std::env::var_os("NUMBER_CA_FILE").map(Into::into);
    let app = app(number_client(&base, &token, ca_file)?, base);
    let addr: SocketAddr = ([127, 0, 0, 1], 3000).into();
    println!("listening on http://{addr}");
    axum::serve(tokio::net::TcpListener::bind(addr).await?, app).await?;
    Ok(())
}
