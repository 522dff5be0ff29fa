//! The simulator's HTTP side: the relay endpoint and the `/_sim/` control plane.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::judge::{CreditGuardSimCore, Parsed};
use super::wire::{Form, IntIn};
use super::{ReceivedCall, ReceivedKind};
use crate::server::{read_body, text, Resp};

pub(super) async fn handle(
    shared: Arc<CreditGuardSimCore>,
    req: Request<Incoming>,
) -> Result<Resp, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    if let Some(cmd) = path.strip_prefix("/_sim/") {
        let cmd = cmd.to_owned();
        return Ok(control(&shared, &cmd, req).await);
    }
    if path != shared.config.relay_path {
        return Ok(text(StatusCode::NOT_FOUND, "not found"));
    }
    if req.method() != Method::POST {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        resp.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
        return Ok(resp);
    }
    let body = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(resp) => return Ok(resp),
    };
    Ok(relay(&shared, body).await)
}

async fn relay(shared: &CreditGuardSimCore, body: Bytes) -> Resp {
    let form = Form::read(&body);
    let int_in_field = form.field("int_in");
    let int_in = int_in_field.and_then(|f| IntIn::read(&f.value));
    let mut record = ReceivedCall {
        kind: if int_in.as_ref().is_some_and(IntIn::is_get_session_id) {
            ReceivedKind::GetSessionId
        } else {
            ReceivedKind::Call
        },
        body: body.clone(),
        field_names: form
            .fields
            .iter()
            .map(|f| String::from_utf8_lossy(&f.raw_name).into_owned())
            .collect(),
        int_in: int_in_field.map(|f| f.raw_value.clone()),
        session_id: form
            .value("sessionId")
            .map(|v| String::from_utf8_lossy(v).into_owned()),
        command: int_in.as_ref().map(|i| i.command.clone()),
        terminal: int_in.as_ref().and_then(|i| i.terminal.clone()),
        scope: None,
        issued_session: None,
        result: String::new(),
    };
    let parsed = Parsed { form, int_in };
    let latency = {
        let st = shared.lock();
        match record.kind {
            ReceivedKind::GetSessionId => st.get_session_latency,
            ReceivedKind::Call => st.deal_latency,
        }
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let answer = match record.kind {
        ReceivedKind::GetSessionId => shared.get_session(&parsed, &mut record),
        ReceivedKind::Call => shared.call(&parsed, &mut record),
    };
    record.result = answer.result.clone();
    let command = record.command.clone().unwrap_or_default();
    tracing::debug!(kind = ?record.kind, command = %command, result = %answer.result, "creditguard simulator: relay");
    let body = answer.render(&command);
    shared.lock().received.push(record);
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=ISO-8859-8"),
    );
    resp
}

async fn control(shared: &CreditGuardSimCore, cmd: &str, req: Request<Incoming>) -> Resp {
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    let param = |name: &str| -> Option<String> {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    let millis = |name: &str| {
        param(name)
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis)
    };
    let no_content = || {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        resp
    };
    match (&method, cmd) {
        (&Method::GET, "stats") => {
            let stats = shared.lock().stats.clone();
            match serde_json::to_vec(&stats) {
                Ok(v) => {
                    let mut resp = Response::new(Full::new(Bytes::from(v)));
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    resp
                }
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode stats"),
            }
        }
        (&Method::POST, "expire") => {
            shared.expire_sessions();
            no_content()
        }
        (&Method::POST, "unlock") => {
            shared.unlock();
            no_content()
        }
        (&Method::POST, "fail-next") => {
            let code =
                param("code").filter(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()));
            let n = param("n").map_or(Some(1), |n| n.parse::<u64>().ok());
            match (code, n) {
                (Some(code), Some(n)) => {
                    shared.lock().fail_next = Some((code, n));
                    no_content()
                }
                _ => text(StatusCode::BAD_REQUEST, "expected ?code=NNN&n=N"),
            }
        }
        (&Method::POST, "latency") => match (millis("get_session_ms"), millis("deal_ms")) {
            (None, None) => text(
                StatusCode::BAD_REQUEST,
                "expected ?get_session_ms=N&deal_ms=N",
            ),
            (get_session, deal) => {
                let mut st = shared.lock();
                if let Some(g) = get_session {
                    st.get_session_latency = g;
                }
                if let Some(d) = deal {
                    st.deal_latency = d;
                }
                no_content()
            }
        },
        (&Method::POST, "password") => {
            let body = match read_body(req.into_body()).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match std::str::from_utf8(&body).map(str::trim) {
                Ok(p) if !p.is_empty() => {
                    shared.lock().password = p.to_owned();
                    no_content()
                }
                _ => text(
                    StatusCode::BAD_REQUEST,
                    "expected the new password as the body",
                ),
            }
        }
        (_, "stats" | "expire" | "unlock" | "fail-next" | "latency" | "password") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(StatusCode::NOT_FOUND, "unknown simulator command"),
    }
}
