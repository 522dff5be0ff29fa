//! What a gateway kind supplies: [`Rules`], the only trait a kind implements. The driver
//! ([`super::driver`]) runs a request through them; the exchange loop ([`super::exchange`])
//! sends, inspects and replays with them.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::time::Instant;

use super::Core;
use crate::error::Error;
use crate::forward::{Client, GatewayBody};
use crate::metrics::ReauthReason;

/// An answer payauth gives itself: the app's own authentication, which must never reach the
/// gateway with the app's stale credentials.
pub(crate) struct Local {
    /// What is answered, for the log line ("Authenticate", "getSessionId").
    pub(crate) what: &'static str,
    pub(crate) body: Bytes,
    pub(crate) content_type: &'static str,
}

/// What [`Rules::read`] made of a request.
pub(crate) enum Read<C> {
    /// A call to send.
    Call(C),
    /// The app's own authentication, answered here.
    Local(Local),
}

/// What a gateway kind supplies to the driver and to the exchange loop. Implementing it makes a
/// type a [`super::Kind`], usable in [`super::Middleware`].
pub(crate) trait Rules: Send + Sync + std::fmt::Debug + 'static {
    /// A request once checked and read (its parts, body and what the kind read from it).
    type Call: Send + Sync;
    /// What authenticates one call (a session key, a pooled session).
    type Credential: Send + Sync;

    /// The gateway's settings, guard and metrics.
    fn core(&self) -> &Core;

    /// Runs first on every request, with the client the call will use.
    fn starting<S, ResB>(self: &Arc<Self>, _client: &S)
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
    }

    /// Checks the request's head before its body is read; may rewrite it, or answer locally.
    fn check_head(&self, parts: &mut http::request::Parts) -> Result<Option<Local>, Error>;

    /// Reads the checked request and its body into a call, or answers it locally.
    fn read(&self, parts: http::request::Parts, body: Bytes) -> Result<Read<Self::Call>, Error>;

    /// The credential to send `call` with (or why it cannot be sent: nothing is forwarded).
    fn acquire<'a, S, ResB>(
        self: &'a Arc<Self>,
        call: &'a Self::Call,
        client: &'a S,
    ) -> impl Future<Output = Result<Self::Credential, Error>> + Send + 'a
    where
        S: Client<ResB>,
        ResB: GatewayBody;

    /// The request's head, for logs and errors.
    fn parts(call: &Self::Call) -> &http::request::Parts;

    /// The call as sent to the gateway, carrying `credential`.
    fn outgoing(
        &self,
        call: &Self::Call,
        credential: &Self::Credential,
    ) -> Result<Request<Full<Bytes>>, Error>;

    /// Whether an (inspected) answer says the gateway refused the credential and did not
    /// process the call.
    fn refusal(&self, answer: &[u8]) -> Option<ReauthReason>;

    /// A credential to replay `call` with after the gateway refused `refused` for `reason`
    /// (the call was sent at `sent_at`).
    fn replacement<'a, S, ResB>(
        self: &'a Arc<Self>,
        call: &'a Self::Call,
        refused: Self::Credential,
        reason: ReauthReason,
        sent_at: Instant,
        client: &'a S,
    ) -> impl Future<Output = Result<Self::Credential, Error>> + Send + 'a
    where
        S: Client<ResB>,
        ResB: GatewayBody;
}
