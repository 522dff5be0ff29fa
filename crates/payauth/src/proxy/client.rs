//! The upstream client: hyper-util's pooled client over rustls, swappable when certificate files
//! change.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::Service;

use super::tls::TlsFiles;

type Inner = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled HTTP/1.1 client for one gateway, `http://` or `https://`.
///
/// Clones share the pool. [`UpstreamClient::reload`] swaps in a client built from the current
/// certificate files; calls already under way finish on the old one.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    current: Arc<ArcSwap<Inner>>,
    connect_timeout: Duration,
}

impl UpstreamClient {
    /// Builds a client from the gateway's TLS files.
    pub fn new(tls: &TlsFiles, connect_timeout: Duration) -> Result<Self, String> {
        let inner = build(tls, connect_timeout)?;
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(inner)),
            connect_timeout,
        })
    }

    /// Rebuilds the client from the files (after a certificate change).
    pub fn reload(&self, tls: &TlsFiles) -> Result<(), String> {
        let inner = build(tls, self.connect_timeout)?;
        self.current.store(Arc::new(inner));
        Ok(())
    }
}

fn build(tls: &TlsFiles, connect_timeout: Duration) -> Result<Inner, String> {
    let config = super::tls::client_config(tls)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(https))
}

impl Service<Request<Full<Bytes>>> for UpstreamClient {
    type Response = Response<Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        self.current.load().request(request)
    }
}
