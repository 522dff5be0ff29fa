//! The current session key of one gateway, and the single flight that renews it.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::Full;
use tokio::sync::watch;
use tokio::time::Instant;

use super::layer::{CredState, NumberGateway, Protocol};
use super::session_key::KeyState;
use super::signer::Signer;
use super::wire::{self, AuthAnswer};
use super::NumberCredentials;
use crate::error::{Error, ErrorCode};
use crate::forward::{Client, GatewayBody};
use crate::gateway::auth::{Fingerprinted, NotStarted, Started, Verdict, Words};
use crate::gateway::state::Published;
use crate::guard::Fingerprint;
use crate::metrics::ReauthReason;
use crate::secret::Secret;

/// The largest Authenticate answer read (merchant lists can be long).
const AUTH_ANSWER_LIMIT: usize = 1 << 20;

/// How Number's authentication is named in errors.
const WORDS: Words = Words {
    action: "authenticate",
    attempt: "authentication",
    secret: "token",
};

impl Fingerprinted for CredState {
    fn fingerprint(&self) -> Fingerprint {
        self.credentials.fingerprint()
    }
}

/// The single flight: one authentication per stale key, however many calls noticed.
impl NumberGateway {
    /// The key in use, or the first one.
    pub(super) async fn current_key<S, ResB>(
        self: &Arc<Self>,
        client: &S,
    ) -> Result<Arc<KeyState>, Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        if let Some(key) = self.key.load_full() {
            return Ok(key);
        }
        self.renew(None, client).await
    }

    /// Gets a key newer than `stale` (any key when `None`): joins the authentication in flight
    /// or starts one. However many callers arrive, one authentication is sent per stale key, and
    /// all of them share its result, failure included. A renewal is counted under the gateway's
    /// reason once the guard lets it be sent. Waiting is bounded by the request timeout.
    pub(super) async fn renew<S, ResB>(
        self: &Arc<Self>,
        stale: Option<(&KeyState, ReauthReason)>,
        client: &S,
    ) -> Result<Arc<KeyState>, Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        let mut flight = {
            let mut slot = crate::sync::lock(&self.flight);
            if let Some(key) = self.key.load_full() {
                if stale.is_none_or(|(refused, _)| key.generation > refused.generation) {
                    return Ok(key);
                }
            }
            if let Some((refused, reason)) = stale {
                self.brake.refused(&self.core, refused, reason)?;
            }
            match slot.as_ref() {
                Some(flight) => flight.clone(),
                None => {
                    if let Some((refused, reason)) = stale {
                        tracing::info!(gateway = %self.core.name(), reason = reason.as_str(),
                            generation = refused.generation, "gateway refused the session key; renewing");
                    }
                    let reason = stale.map(|(_, reason)| reason);
                    let (tx, rx) = watch::channel(None);
                    *slot = Some(rx.clone());
                    let shared = Arc::clone(self);
                    let client = client.clone();
                    // Spawned so that a caller going away cannot abandon an attempt halfway.
                    tokio::spawn(async move {
                        let result = shared.authenticate(client, reason).await;
                        let mut slot = crate::sync::lock(&shared.flight);
                        if let Ok(key) = &result {
                            shared.key.store(Some(Arc::clone(key)));
                        }
                        *slot = None;
                        drop(slot);
                        let _ = tx.send(Some(result));
                    });
                    rx
                }
            }
        };
        let waited = tokio::time::timeout(
            self.core.settings.request_timeout,
            flight.wait_for(Option::is_some),
        )
        .await;
        match waited {
            Ok(Ok(outcome)) => match outcome.as_ref() {
                Some(result) => result.clone(),
                None => Err(self.core.error(ErrorCode::AuthUnavailable, "the authentication task failed")),
            },
            Ok(Err(_)) => Err(self.core.error(ErrorCode::AuthUnavailable, "the authentication task failed")),
            Err(_) => Err(self.core.error(
                ErrorCode::AuthUnavailable,
                "no session key could be obtained within the request timeout; nothing was forwarded",
            )),
        }
    }

    async fn authenticate<S, ResB>(
        self: &Arc<Self>,
        client: S,
        reason: Option<ReauthReason>,
    ) -> Result<Arc<KeyState>, Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        // Without a key yet (a start, a scale-out), any key published is newer: generation 0.
        let seen = self.key.load().as_ref().map_or(0, |k| k.generation);
        self.authenticate_seen(client, reason, Some(seen)).await
    }

    /// Authenticates, or adopts a key newer than `seen` published meanwhile.
    async fn authenticate_seen<S, ResB>(
        self: &Arc<Self>,
        client: S,
        reason: Option<ReauthReason>,
        seen: Option<u64>,
    ) -> Result<Arc<KeyState>, Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        let (attempt, creds) = match self.core.begin(&self.credentials, WORDS, seen).await {
            Ok(Started::Attempt(attempt, creds)) => (attempt, creds),
            Ok(Started::Adopt(published)) => return self.adopt(published, client, reason).await,
            Err(NotStarted::Refused(refusal)) => return Err(refusal.into_error(self.core.name())),
            Err(NotStarted::Changed(error)) => return Err(error),
        };
        if let Some(reason) = reason {
            self.core.metrics.reauth(reason);
        }
        tracing::info!(gateway = %self.core.name(), "authenticating");
        let request = self.auth_request(&creds.credentials);
        let protocol = self.config.protocol;
        let (key, attempt) = self
            .core
            .authenticate_open(
                attempt,
                request,
                client,
                AUTH_ANSWER_LIMIT,
                WORDS,
                |bytes| {
                    let answer = match protocol {
                        Protocol::Rest => wire::parse_rest_auth(bytes),
                        Protocol::Soap => wire::parse_soap_auth(bytes),
                    };
                    match answer {
                        AuthAnswer::Success { key, .. } => Verdict::Issued(key),
                        AuthAnswer::Rejected { err_code } => {
                            Verdict::Rejected(err_code.map(|c| format!("ErrCode {c}")))
                        }
                        AuthAnswer::Unreadable => Verdict::Unreadable,
                    }
                },
            )
            .await?;
        // Published before the attempt is settled: no other holder is admitted in between, so
        // none authenticates again for a key it could adopt.
        let published = match creds.seal.seal(&key) {
            Ok(sealed) => self
                .core
                .guard
                .publish(sealed)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        attempt.success().await;
        self.core.metrics.credential_obtained();
        // The key is good either way: a key that could not be published is used here (under
        // the next generation this replica knows of) rather than thrown away, which would cost
        // another authentication.
        let generation = published.unwrap_or_else(|e| {
            tracing::warn!(gateway = %self.core.name(), error = %e,
                "cannot publish the new session key; using it here only");
            self.key.load().as_ref().map_or(0, |k| k.generation) + 1
        });
        let state = self.key_state(key, generation, creds.signer.clone())?;
        tracing::info!(gateway = %self.core.name(), generation, "authenticated");
        Ok(state)
    }

    /// Takes a key published meanwhile (by a peer sharing the store) instead of authenticating.
    /// A key that does not open with these credentials (a peer on another token) is not used:
    /// an attempt is reserved instead.
    async fn adopt<S, ResB>(
        self: &Arc<Self>,
        published: Published,
        client: S,
        reason: Option<ReauthReason>,
    ) -> Result<Arc<KeyState>, Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        let creds = self.credentials.load_full();
        match creds.seal.open(&published.sealed) {
            Ok(key) => {
                tracing::info!(gateway = %self.core.name(), generation = published.generation,
                    "using the session key published meanwhile; not authenticating");
                self.key_state(key, published.generation, creds.signer.clone())
            }
            Err(_) => {
                tracing::warn!(gateway = %self.core.name(), generation = published.generation,
                    "the published session key does not open with these credentials; authenticating");
                Box::pin(self.authenticate_seen(client, reason, None)).await
            }
        }
    }

    /// A key ready for use; an error when the gateway issued one payauth cannot use (not
    /// retried blindly: the authentication itself succeeded).
    pub(super) fn key_state(
        &self,
        key: Secret<String>,
        generation: u64,
        signer: Option<Signer>,
    ) -> Result<Arc<KeyState>, Error> {
        KeyState::new(key, generation, signer, Instant::now())
            .map(Arc::new)
            .map_err(|_| {
                self.core.error(
                    ErrorCode::AuthUnavailable,
                    "the gateway issued a session key payauth cannot use",
                )
            })
    }

    /// The Authenticate call for `credentials`.
    fn auth_request(&self, credentials: &NumberCredentials) -> Request<Full<Bytes>> {
        let (body, content_type, accept) = match self.config.protocol {
            Protocol::Rest => (
                wire::rest_auth_body(&credentials.account_code, &credentials.token),
                "application/json",
                "application/json",
            ),
            Protocol::Soap => (
                wire::soap_auth_body(
                    &self.config.soap,
                    &credentials.account_code,
                    &credentials.token,
                ),
                "text/xml; charset=utf-8",
                "text/xml",
            ),
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.auth_uri.clone();
        let headers = request.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
        if self.config.protocol == Protocol::Soap {
            if let Ok(action) =
                HeaderValue::from_str(&format!("\"{}\"", self.config.soap.auth_action))
            {
                headers.insert("SOAPAction", action);
            }
        }
        request
    }
}
