//! The SOAP API, read with quick-xml's namespace-aware reader (not payauth's).

use super::*;

/// The parts of a SOAP 1.1 request the simulator looks at.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct SoapRequest {
    /// Local name of the first element child of `Body`.
    pub(super) operation: String,
    /// Namespace the operation element is in (empty when unbound).
    pub(super) operation_ns: String,
    /// The operation's element children, in order: (local name, text).
    pub(super) params: Vec<(String, String)>,
}

impl SoapRequest {
    pub(super) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a SOAP 1.1 envelope. Prefixes and whitespace are free; the envelope namespace is not.
pub(super) fn parse_soap(body: &[u8]) -> Result<SoapRequest, String> {
    let mut reader = NsReader::from_reader(body);
    let config = reader.config_mut();
    config.trim_text(true);
    config.expand_empty_elements = true;

    let mut depth = 0usize;
    let mut in_body = false;
    let mut op: Option<SoapRequest> = None;
    let mut op_done = false;
    let mut saw_envelope = false;
    // The parameter element currently open at depth 4, collecting its text.
    let mut param: Option<(String, String)> = None;

    loop {
        let (ns, event) = reader
            .read_resolved_event()
            .map_err(|e| format!("malformed XML: {e}"))?;
        match event {
            Event::Start(e) => {
                depth += 1;
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                let ns_bytes: &[u8] = match &ns {
                    ResolveResult::Bound(n) => n.as_ref(),
                    ResolveResult::Unbound => b"",
                    ResolveResult::Unknown(_) => {
                        return Err(format!("unknown namespace prefix on <{local}>"))
                    }
                };
                match depth {
                    1 => {
                        if local != "Envelope" || ns_bytes != SOAP11_ENVELOPE_NS {
                            return Err(
                                "expected a SOAP 1.1 Envelope (http://schemas.xmlsoap.org/soap/envelope/)"
                                    .to_owned(),
                            );
                        }
                        saw_envelope = true;
                    }
                    2 => in_body = local == "Body" && ns_bytes == SOAP11_ENVELOPE_NS,
                    3 if in_body => {
                        if op.is_some() {
                            return Err("Body holds more than one element".to_owned());
                        }
                        op = Some(SoapRequest {
                            operation: local,
                            operation_ns: String::from_utf8_lossy(ns_bytes).into_owned(),
                            params: Vec::new(),
                        });
                    }
                    4 if in_body && !op_done => param = Some((local, String::new())),
                    _ => {}
                }
            }
            Event::End(_) => {
                if depth == 4 {
                    if let (Some(p), Some(o)) = (param.take(), op.as_mut()) {
                        o.params.push(p);
                    }
                }
                if depth == 3 && in_body {
                    op_done = true;
                }
                if depth == 2 {
                    in_body = false;
                }
                depth = depth.saturating_sub(1);
            }
            Event::Text(t) => {
                if depth == 4 {
                    if let Some((_, value)) = param.as_mut() {
                        let unescaped = t.unescape().map_err(|e| format!("malformed XML: {e}"))?;
                        value.push_str(&unescaped);
                    }
                } else if depth <= 3 && !t.unescape().map(|s| s.trim().is_empty()).unwrap_or(false)
                {
                    return Err("unexpected text in the envelope".to_owned());
                }
            }
            Event::CData(c) if depth == 4 => {
                if let Some((_, value)) = param.as_mut() {
                    value.push_str(&String::from_utf8_lossy(&c));
                }
            }
            Event::DocType(_) => return Err("DOCTYPE is not allowed".to_owned()),
            Event::Eof => break,
            _ => {}
        }
    }
    if depth != 0 {
        return Err("malformed XML: unclosed elements".to_owned());
    }
    if !saw_envelope {
        return Err("expected a SOAP 1.1 Envelope".to_owned());
    }
    op.ok_or_else(|| "Body holds no operation".to_owned())
}

/// The SOAPAction WCF expects for an operation of the `ICardProcess` contract.
pub(super) fn soap_action(namespace: &str, operation: &str) -> String {
    if namespace.ends_with('/') {
        format!("{namespace}ICardProcess/{operation}")
    } else {
        format!("{namespace}/ICardProcess/{operation}")
    }
}

pub(super) fn soap_envelope(inner: &str) -> String {
    format!(
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>{inner}</s:Body></s:Envelope>"
    )
}

/// A WCF-style fault, HTTP 500 as SOAP 1.1 requires.
pub(super) fn soap_fault(code: &str, message: &str) -> Resp {
    let inner = format!(
        "<s:Fault><faultcode xmlns:a=\"http://schemas.microsoft.com/ws/2005/05/addressing/none\">{}</faultcode><faultstring xml:lang=\"en-US\">{}</faultstring></s:Fault>",
        escape(code),
        escape(message)
    );
    xml(StatusCode::INTERNAL_SERVER_ERROR, soap_envelope(&inner))
}

pub(super) fn xml_field(out: &mut String, name: &str, value: &str) {
    if value.is_empty() {
        out.push_str(&format!("<{name}/>"));
    } else {
        out.push_str(&format!("<{name}>{}</{name}>", escape(value)));
    }
}

pub(super) async fn soap(
    shared: &NumberSimCore,
    parts: &http::request::Parts,
    body: Bytes,
) -> Result<Resp, DropConnection> {
    let cfg = &shared.config;
    if !content_type_is(parts, "text/xml") {
        // What WCF's basicHttpBinding does with anything but SOAP 1.1's content type.
        return Ok(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Cannot process the message because the content type is not 'text/xml; charset=utf-8'.",
        ));
    }
    let request = match parse_soap(&body) {
        Ok(r) => r,
        Err(msg) => {
            shared.record_fault("", &body, None);
            return Ok(soap_fault("s:Client", &msg));
        }
    };
    let op = request.operation.as_str();
    let first_param = request.params.first();
    let sess_key = first_param
        .filter(|(name, _)| *name == cfg.soap_session_element)
        .map(|(_, v)| v.trim().to_owned());
    let is_auth = op == "Authenticate";

    let fault = header_fault(cfg, parts, &request);
    if let Some((code, msg)) = fault {
        if is_auth {
            shared.lock().stats.auth_attempts += 1;
        } else {
            shared.record_fault(op, &body, sess_key.as_deref());
        }
        return Ok(soap_fault(code, &msg));
    }

    if is_auth {
        let creds = match (request.param("acctCode"), request.param("token")) {
            (Some(a), Some(t)) => Ok((a.trim(), t.trim())),
            _ => Err("Malformed request: Authenticate needs acctCode and token".to_owned()),
        };
        let answer = shared.authenticate(creds);
        tracing::debug!(
            protocol = "soap",
            outcome = answer.label(),
            "number simulator: authenticate"
        );
        apply_latency(shared).await;
        return Ok(xml(StatusCode::OK, authenticate_answer(cfg, answer)));
    }

    let decision = shared.judge_call("soap", op, &body, sess_key.as_deref());
    apply_latency(shared).await;
    match decision {
        CallDecision::Drop => Err(DropConnection),
        CallDecision::Answer(answer) => Ok(xml(StatusCode::OK, call_answer(cfg, op, &answer))),
    }
}

/// The envelope answering operation `op`.
fn call_answer(cfg: &NumberSimConfig, op: &str, answer: &CallAnswer) -> String {
    let ns = escape(cfg.soap_namespace.as_str());
    let (function_ok, err_code, err_msg, resp_msg) = answer.fields();
    let mut out = String::new();
    xml_field(
        &mut out,
        "FunctionOk",
        if function_ok { "true" } else { "false" },
    );
    xml_field(&mut out, "ErrCode", &err_code.to_string());
    xml_field(&mut out, "ErrMsg", err_msg);
    xml_field(&mut out, "RespMsg", resp_msg);
    if let CallAnswer::Ok { tx_id } = answer {
        xml_field(&mut out, "TxID", &tx_id.to_string());
    }
    let inner =
        format!("<{op}Response xmlns=\"{ns}\"><{op}Result>{out}</{op}Result></{op}Response>");
    soap_envelope(&inner)
}

/// The envelope answering `Authenticate`.
fn authenticate_answer(cfg: &NumberSimConfig, answer: AuthAnswer) -> String {
    let ns = escape(cfg.soap_namespace.as_str());
    let mut out = String::new();
    match answer {
        AuthAnswer::Success { key, expires } => {
            xml_field(&mut out, "AuthSuccess", "true");
            xml_field(&mut out, "ErrCode", "0");
            xml_field(&mut out, "ErrMsg", "");
            xml_field(&mut out, "FunctionOk", "true");
            out.push_str("<MerchantList><Merchant>");
            xml_field(&mut out, "Address", "127.0.0.1");
            xml_field(&mut out, "Descrip", "Simulated Merchant");
            xml_field(&mut out, "ID", "1");
            xml_field(&mut out, "Location", "Simulator");
            xml_field(&mut out, "TermID", "001");
            out.push_str("</Merchant></MerchantList>");
            let resp_msg = format!("SessKey Expires|{}", format_vendor_date(expires));
            xml_field(&mut out, "RespMsg", &resp_msg);
            xml_field(&mut out, "SessKey", &key);
            out.push_str("<ThisUser>");
            xml_field(&mut out, "AccountCode", &cfg.account_code);
            xml_field(&mut out, "ID", &cfg.user_id.to_string());
            xml_field(&mut out, "IsExpired", "false");
            xml_field(&mut out, "IsLockedOut", "false");
            out.push_str("</ThisUser>");
        }
        AuthAnswer::Rejected { resp_msg } => {
            xml_field(&mut out, "AuthSuccess", "false");
            xml_field(&mut out, "ErrCode", "0");
            xml_field(&mut out, "ErrMsg", "");
            xml_field(&mut out, "FunctionOk", "true");
            out.push_str("<MerchantList/>");
            xml_field(&mut out, "RespMsg", resp_msg);
            xml_field(&mut out, "SessKey", "");
        }
        AuthAnswer::Malformed { err_msg } => {
            xml_field(&mut out, "AuthSuccess", "false");
            xml_field(&mut out, "ErrCode", &ERR_MALFORMED.to_string());
            xml_field(&mut out, "ErrMsg", &err_msg);
            xml_field(&mut out, "FunctionOk", "false");
            out.push_str("<MerchantList/>");
            xml_field(&mut out, "RespMsg", "");
            xml_field(&mut out, "SessKey", "");
        }
    }
    let inner = format!(
        "<AuthenticateResponse xmlns=\"{ns}\"><AuthenticateResult>{out}</AuthenticateResult></AuthenticateResponse>"
    );
    soap_envelope(&inner)
}

/// A fault for what the headers and the operation's namespace say, as WCF would answer it.
fn header_fault(
    cfg: &NumberSimConfig,
    parts: &http::request::Parts,
    request: &SoapRequest,
) -> Option<(&'static str, String)> {
    let op = request.operation.as_str();
    let expected_action = soap_action(&cfg.soap_namespace, op);
    let action = parts
        .headers
        .get("SOAPAction")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_matches('"'));
    if action != Some(expected_action.as_str()) {
        Some((
            "a:ActionNotSupported",
            format!("The message with Action '{}' cannot be processed at the receiver. Expected '{expected_action}'.", action.unwrap_or("")),
        ))
    } else if request.operation_ns != cfg.soap_namespace {
        Some((
            "s:Client",
            format!(
                "Operation element <{op}> must be in namespace '{}'",
                cfg.soap_namespace
            ),
        ))
    } else if !is_xml_name(op) {
        Some(("s:Client", "Invalid operation name".to_owned()))
    } else {
        None
    }
}
