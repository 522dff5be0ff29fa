//! The simulator's HTTP side: routing, bodies, answers, and the `/_sim/` control plane.

use super::*;

/// Returned by the service to make hyper close the connection without answering.
#[derive(Debug)]
pub(super) struct DropConnection;

impl fmt::Display for DropConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for DropConnection {}

pub(super) async fn handle(
    shared: Arc<NumberSimCore>,
    req: Request<Incoming>,
) -> Result<Resp, DropConnection> {
    let offset = shared.config.clock_offset_secs;
    let mut resp = route(shared, req).await?;
    if offset != 0 {
        // hyper writes the host's Date only where the answer has none.
        let now = std::time::SystemTime::now();
        let at = if offset > 0 {
            now + Duration::from_secs(offset.unsigned_abs())
        } else {
            now - Duration::from_secs(offset.unsigned_abs())
        };
        if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(at)) {
            resp.headers_mut().insert(http::header::DATE, date);
        }
    }
    Ok(resp)
}

async fn route(shared: Arc<NumberSimCore>, req: Request<Incoming>) -> Result<Resp, DropConnection> {
    let path = req.uri().path().to_owned();
    let cfg = &shared.config;

    if let Some(cmd) = path.strip_prefix("/_sim/") {
        let cmd = cmd.to_owned();
        return Ok(control(&shared, &cmd, req).await);
    }

    let rest_call = path
        .strip_prefix(cfg.rest_base.as_str())
        .and_then(|p| p.strip_prefix('/'))
        .filter(|m| is_xml_name(m))
        .map(str::to_owned);
    let is_soap = path == cfg.soap_path;
    if rest_call.is_none() && !is_soap {
        return Ok(text(StatusCode::NOT_FOUND, "not found"));
    }
    if req.method() != Method::POST {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        resp.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
        return Ok(resp);
    }

    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(resp) => return Ok(resp),
    };

    match rest_call {
        Some(method) if method == "Authenticate" => {
            Ok(rest_authenticate(&shared, &parts, &body).await)
        }
        Some(method) => rest_call_handler(&shared, &parts, &method, body).await,
        None => soap(&shared, &parts, body).await,
    }
}

pub(super) async fn apply_latency(shared: &NumberSimCore) {
    let latency = shared.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

pub(super) fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

pub(super) fn xml(status: StatusCode, body: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    resp
}

/// An operation or method name we are willing to echo into element names and JSON keys.
pub(super) fn is_xml_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn content_type_is(parts: &http::request::Parts, expected: &str) -> bool {
    parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

pub(super) async fn control(shared: &NumberSimCore, cmd: &str, req: Request<Incoming>) -> Resp {
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    let param = |name: &str| -> Option<u64> {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
    };
    let no_content = || {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NO_CONTENT;
        resp
    };
    match (&method, cmd) {
        (&Method::GET, "stats") => {
            let stats = shared.lock().stats.clone();
            match serde_json::to_value(&stats) {
                Ok(v) => json(StatusCode::OK, &v),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode stats"),
            }
        }
        (&Method::POST, "expire") => {
            shared.expire_keys();
            no_content()
        }
        (&Method::POST, "change-ip") => {
            shared.change_ip();
            no_content()
        }
        (&Method::POST, "unlock-ip") => {
            shared.unlock_ip();
            no_content()
        }
        (&Method::POST, "latency") => match param("ms") {
            Some(ms) => {
                shared.lock().latency = Duration::from_millis(ms);
                no_content()
            }
            None => text(StatusCode::BAD_REQUEST, "expected ?ms=N"),
        },
        (&Method::POST, "drop") => match param("n") {
            Some(n) => {
                shared.lock().drop_pending = n;
                no_content()
            }
            None => text(StatusCode::BAD_REQUEST, "expected ?n=N"),
        },
        (&Method::POST, "token") => {
            let body = match read_body(req.into_body()).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            match std::str::from_utf8(&body).map(str::trim) {
                Ok(token) if !token.is_empty() => {
                    shared.lock().token = token.to_owned();
                    no_content()
                }
                _ => text(
                    StatusCode::BAD_REQUEST,
                    "expected the new token as the body",
                ),
            }
        }
        (_, "stats" | "expire" | "change-ip" | "unlock-ip" | "latency" | "drop" | "token") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => text(StatusCode::NOT_FOUND, "unknown simulator command"),
    }
}
