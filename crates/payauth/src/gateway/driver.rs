//! The request driver: the steps every call takes, written once for both gateway kinds.
//!
//! 1. the kind's [`Rules::starting`] hook (CreditGuard starts its session filler);
//! 2. the head is checked ([`Rules::check_head`]): refused, answered locally (the app's own
//!    authentication), or let through, possibly rewritten (CreditGuard points it at its relay);
//! 3. the body is read, bounded by `max_request_bytes` ([`Core::read_body`]);
//! 4. the kind reads the call ([`Rules::read`]): refused, answered locally, or a call;
//! 5. a credential is acquired for it ([`Rules::acquire`]);
//! 6. the exchange loop sends it, renewing and replaying once ([`super::exchange`]);
//! 7. the outcome is counted.
//!
//! A kind supplies only what differs, by implementing [`Rules`]; the public
//! [`super::Kind`] follows from it.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tokio::time::Instant;

use super::{local_answer, Core};
use crate::body::ResponseBody;
use crate::error::{BoxError, Error};
use crate::forward::{Client, GatewayBody};
use crate::metrics::{Outcome, ReauthReason};

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

/// One request, start to end: the steps of the module docs, the outcome counted.
pub(crate) async fn drive<K, S, B, ResB>(
    kind: Arc<K>,
    client: S,
    request: Request<B>,
) -> Result<Response<ResponseBody<ResB>>, Error>
where
    K: Rules,
    S: Client<ResB>,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: GatewayBody,
{
    kind.starting(&client);
    let result = steps(&kind, client, request).await;
    kind.core().metrics.count(result)
}

async fn steps<K, S, B, ResB>(
    kind: &Arc<K>,
    client: S,
    request: Request<B>,
) -> Result<(Response<ResponseBody<ResB>>, Outcome), Error>
where
    K: Rules,
    S: Client<ResB>,
    B: Body + Send + 'static,
    B::Error: Into<BoxError>,
    ResB: GatewayBody,
{
    let core = kind.core();
    let (mut parts, body) = request.into_parts();
    if let Some(local) = kind.check_head(&mut parts)? {
        return Ok(answer_locally(core, local));
    }
    let body = core.read_body(&parts, body).await?;
    let call = match kind.read(parts, body)? {
        Read::Call(call) => call,
        Read::Local(local) => return Ok(answer_locally(core, local)),
    };
    let credential = kind.acquire(&call, &client).await?;
    super::exchange::exchange(kind, &call, credential, client).await
}

fn answer_locally<ResB>(core: &Core, local: Local) -> (Response<ResponseBody<ResB>>, Outcome) {
    tracing::debug!(gateway = %core.name(), what = local.what,
        "answering the app's own authentication locally");
    (local_answer(local.body, local.content_type), Outcome::Local)
}
