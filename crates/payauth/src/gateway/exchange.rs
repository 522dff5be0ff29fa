//! The exchange loop: send the call with a credential; if the gateway refused the credential
//! (and so did not process the call), get a new one and replay the call, once.

use std::sync::Arc;
use std::time::Duration;

use http::Response;
use tokio::time::Instant;

use super::rules::Rules;
use crate::body::{Inspected, ResponseBody};
use crate::error::Error;
use crate::forward::{self, Client, Forwarded, GatewayBody};
use crate::metrics::Outcome;

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
    K: Rules,
    S: Client<ResB>,
    ResB: GatewayBody,
{
    let core = kind.core();
    let settings = &core.settings;
    let mut replayed = false;
    let mut upstream = Duration::ZERO;
    let answer = |head, body: ResponseBody<ResB>, replayed, upstream| {
        let body = body.from_gateway(Forwarded { replayed, upstream });
        Ok((Response::from_parts(head, body), Outcome::Forwarded))
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
