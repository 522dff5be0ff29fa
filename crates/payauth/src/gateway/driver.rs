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
//! A kind supplies only what differs, by implementing [`Rules`] ([`super::rules`]); the public
//! [`super::Kind`] follows from it.

use std::sync::Arc;

use http::{Request, Response};
use http_body::Body;

use super::rules::{Local, Read, Rules};
use super::{local_answer, Core};
use crate::body::ResponseBody;
use crate::error::{BoxError, Error};
use crate::forward::{Client, GatewayBody};
use crate::metrics::Outcome;

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
