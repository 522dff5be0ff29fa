//! The exchange loop: send the call with a credential; if the gateway refused the credential
//! (and so did not process the call), get a new one and replay the call, once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::time::Instant;

use super::Core;
use crate::body::{Inspected, ResponseBody};
use crate::error::Error;
use crate::forward::{self, Client, Forwarded, GatewayBody};
use crate::metrics::{Outcome, ReauthReason};

/// What a gateway kind supplies to the exchange loop.
pub(crate) trait Exchange: Send + Sync + 'static {
    /// A request once checked and read (its parts, body and what the kind read from it).
    type Call: Send + Sync;
    /// What authenticates one call (a session key, a pooled session).
    type Credential: Send + Sync;

    /// The gateway's settings, guard and metrics.
    fn core(&self) -> &Core;

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

/// Sends `call` with `credential`; on a refused credential gets a replacement and replays once.
/// A second refusal goes to the app as the gateway sent it: never a loop. A transport failure
/// is never replayed (the call may have been executed).
pub(crate) async fn exchange<K, S, ResB>(
    kind: &Arc<K>,
    call: &K::Call,
    mut credential: K::Credential,
    client: S,
) -> Result<(Response<ResponseBody<ResB>>, Outcome), Error>
where
    K: Exchange,
    S: Client<ResB>,
    ResB: GatewayBody,
{
    let core = kind.core();
    let settings = &core.settings;
    let mut replayed = false;
    let mut upstream = Duration::ZERO;
    let answer = |head, body, replayed, upstream| {
        let mut response = Response::from_parts(head, body);
        response
            .extensions_mut()
            .insert(Forwarded { replayed, upstream });
        Ok((response, Outcome::Forwarded))
    };
    loop {
        let outgoing = kind.outgoing(call, &credential)?;
        let sent_at = Instant::now();
        let (head, inspected) = forward::call(
            client.clone(),
            outgoing,
            settings.request_timeout,
            settings.inspect_limit_bytes,
        )
        .await
        .map_err(|failure| core.failed(failure, K::parts(call), replayed))?;
        let elapsed = sent_at.elapsed();
        upstream += elapsed;
        core.metrics.upstream_duration(elapsed.as_secs_f64());
        core.clock.observe(&head.headers, &core.metrics);
        let bytes = match inspected {
            Inspected::Streaming(body) => return answer(head, body, replayed, upstream),
            Inspected::Buffered(bytes) => bytes,
        };
        match kind.refusal(&bytes) {
            None => return answer(head, ResponseBody::full(bytes), replayed, upstream),
            Some(reason) if replayed => {
                tracing::warn!(gateway = %settings.name, reason = reason.as_str(),
                    "gateway refused a fresh credential too; passing its answer to the app");
                return answer(head, ResponseBody::full(bytes), replayed, upstream);
            }
            Some(reason) => {
                credential = kind
                    .replacement(call, credential, reason, sent_at, &client)
                    .await?;
                core.metrics.replay();
                replayed = true;
            }
        }
    }
}
