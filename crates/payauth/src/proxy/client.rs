//! The upstream client: pooled HTTP/1.1 connections over rustls ([`super::pool`]), swappable when
//! certificate files change.

use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::Service;

use super::pool::{Pool, UpstreamBody, UpstreamError, UpstreamFuture};
use super::tls::TlsFiles;
use crate::sync::lock;

/// A pooled HTTP/1.1 client for one gateway, `http://` or `https://`: the client the sidecar
/// uses, for embedders too. TLS is rustls, trusting the webpki roots, plus a CA file if given,
/// with an optional client certificate (mTLS). Wrap it in a layer:
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use payauth::number::{NumberAuthLayer, NumberConfig, NumberCredentials};
/// use payauth::{TlsFiles, UpstreamClient};
/// use tower::ServiceBuilder;
///
/// // The public roots only:
/// let client = UpstreamClient::webpki()?;
/// // Or with a private CA and a client certificate:
/// let _mtls = UpstreamClient::new(
///     &TlsFiles {
///         ca_file: Some("/run/secrets/gateway/ca.pem".into()),
///         client_cert_file: Some("/run/secrets/gateway/client.pem".into()),
///         client_key_file: Some("/run/secrets/gateway/client-key.pem".into()),
///     },
///     std::time::Duration::from_secs(5),
/// )?;
/// let layer = NumberAuthLayer::new(
///     NumberConfig::rest("number", "https://easypay5.com".parse()?),
///     NumberCredentials::new("EP9116875", "<token>"),
/// )?;
/// let number = ServiceBuilder::new().layer(layer).service(client);
/// # let _ = number;
/// # Ok(())
/// # }
/// ```
///
/// Clones share the pool. [`UpstreamClient::fork`] makes a client with a pool of its own (the
/// sidecar gives each worker thread one, so that a connection is only ever driven by the thread
/// that uses it). A connection is reused only after its last answer was read to the end, a
/// request goes to a second connection only when the first handed it back unsent, and at most
/// 256 connections per pool stay idle, each for at most 60 s (see [`UpstreamError::is_connect`]
/// for what a failure says about the request). [`UpstreamClient::reload`] swaps in clients built from the current certificate
/// files, for this client and every fork of it; calls already under way finish on the old ones.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    /// One `Arc` per fork: cloning the client (once or twice per call) touches only its own
    /// fork's counter, not one that every worker thread shares.
    member: Arc<Member>,
}

#[derive(Debug)]
struct Member {
    current: ArcSwap<Pool>,
    family: Arc<Mutex<Family>>,
}

/// What every fork of a client shares: how to build one, and the forks to reload.
#[derive(Debug)]
struct Family {
    config: Arc<rustls::ClientConfig>,
    connect: Connect,
    members: Vec<Weak<Member>>,
}

impl UpstreamClient {
    /// A client trusting the webpki roots (no extra CA, no client certificate), connecting
    /// within 5 s.
    pub fn webpki() -> Result<Self, String> {
        Self::new(&TlsFiles::default(), Duration::from_secs(5))
    }

    /// Builds a client from the gateway's TLS files; the error names the file that is unusable.
    pub fn new(tls: &TlsFiles, connect_timeout: Duration) -> Result<Self, String> {
        Self::with_source(tls, connect_timeout, None)
    }

    /// [`new`](Self::new), its connections leaving from `source` (a local address of this
    /// host's) when given.
    pub fn with_source(
        tls: &TlsFiles,
        connect_timeout: Duration,
        source: Option<std::net::IpAddr>,
    ) -> Result<Self, String> {
        let config = Arc::new(super::tls::client_config(tls)?);
        let connect = Connect {
            timeout: connect_timeout,
            source,
        };
        let family = Arc::new(Mutex::new(Family {
            config: Arc::clone(&config),
            connect,
            members: Vec::new(),
        }));
        let member = Arc::new(Member {
            current: ArcSwap::from_pointee(build(&config, connect)),
            family: Arc::clone(&family),
        });
        lock(&family).members.push(Arc::downgrade(&member));
        Ok(Self { member })
    }

    /// A client with the same settings and a connection pool of its own, reloaded with this one.
    pub fn fork(&self) -> Self {
        let mut family = lock(&self.member.family);
        let member = Arc::new(Member {
            current: ArcSwap::from_pointee(build(&family.config, family.connect)),
            family: Arc::clone(&self.member.family),
        });
        family.members.retain(|m| m.strong_count() > 0);
        family.members.push(Arc::downgrade(&member));
        Self { member }
    }

    /// Rebuilds this client and its forks from the files (after a certificate change).
    pub fn reload(&self, tls: &TlsFiles) -> Result<(), String> {
        let config = Arc::new(super::tls::client_config(tls)?);
        let mut family = lock(&self.member.family);
        family.members.retain(|m| m.strong_count() > 0);
        for member in family.members.iter().filter_map(Weak::upgrade) {
            member
                .current
                .store(Arc::new(build(&config, family.connect)));
        }
        family.config = config;
        Ok(())
    }
}

/// How a client connects: within a time, from a source address.
#[derive(Debug, Clone, Copy)]
struct Connect {
    timeout: Duration,
    source: Option<std::net::IpAddr>,
}

fn build(config: &Arc<rustls::ClientConfig>, connect: Connect) -> Pool {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect.timeout));
    http.set_local_address(connect.source);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(rustls::ClientConfig::clone(config))
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Pool::new(https)
}

impl Service<Request<Full<Bytes>>> for UpstreamClient {
    type Response = Response<UpstreamBody>;
    type Error = UpstreamError;
    type Future = UpstreamFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        Box::pin(self.member.current.load_full().send(request))
    }
}
