//! Number's wire: the Authenticate call (REST and SOAP), reading its answer by the vendor's rule,
//! spotting 5030/5050 in any answer, filling the SOAP session-key element, and payauth's local
//! answer to an app's own Authenticate.

use bytes::Bytes;
use quick_xml::events::Event;
use quick_xml::Reader;

use crate::metrics::ReauthReason;
use crate::secret::Secret;

/// The session key payauth hands an app that still calls Authenticate itself. It is not a real
/// key: payauth replaces whatever key the app sends.
pub const PLACEHOLDER_KEY: &str = "PAYAUTH00000000000000000000000000000000000";

/// How Number answered an Authenticate.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthAnswer {
    /// `FunctionOk` and `AuthSuccess` true, with a key.
    Success {
        /// The session key.
        key: Secret<String>,
        /// `ThisUser.ID`, if present.
        user_id: Option<u64>,
    },
    /// `FunctionOk` false or `AuthSuccess` false: the vendor says abort, never retry.
    Rejected {
        /// `ErrCode`, if any (a number; the texts stay out of logs).
        err_code: Option<i64>,
    },
    /// Not an Authenticate answer at all (an HTML error page, a proxy's 502, ...).
    Unreadable,
}

/// The REST Authenticate body.
pub fn rest_auth_body(account_code: &str, token: &Secret<String>) -> Bytes {
    let body = serde_json::json!({ "AcctCode": account_code, "Token": token.expose() });
    Bytes::from(body.to_string())
}

/// Reads a REST Authenticate answer (`{"AuthenticateResult": {...}}`, or the fields at top level).
pub fn parse_rest_auth(body: &[u8]) -> AuthAnswer {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return AuthAnswer::Unreadable;
    };
    let result = value.get("AuthenticateResult").unwrap_or(&value);
    let flag = |name: &str| result.get(name).and_then(json_bool);
    let (Some(function_ok), auth_success) = (flag("FunctionOk"), flag("AuthSuccess")) else {
        return AuthAnswer::Unreadable;
    };
    let err_code = result.get("ErrCode").and_then(json_int);
    if !function_ok || auth_success != Some(true) {
        return AuthAnswer::Rejected { err_code };
    }
    match result.get("SessKey").and_then(|k| k.as_str()) {
        Some(key) if !key.trim().is_empty() => AuthAnswer::Success {
            key: Secret::new(key.trim().to_owned()),
            user_id: result
                .get("ThisUser")
                .and_then(|u| u.get("ID"))
                .and_then(json_int)
                .and_then(|id| u64::try_from(id).ok()),
        },
        // Success without a key is not something to use or to retry blindly.
        _ => AuthAnswer::Unreadable,
    }
}

/// SOAP settings: where the names come from the vendor's WSDL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoapNames {
    /// The service namespace (WCF default `http://tempuri.org/`).
    pub namespace: String,
    /// The Authenticate SOAPAction.
    pub auth_action: String,
    /// The local name of the session-key element, the first argument of every call.
    pub session_element: String,
}

impl Default for SoapNames {
    fn default() -> Self {
        Self {
            namespace: "http://tempuri.org/".into(),
            auth_action: "http://tempuri.org/ICardProcess/Authenticate".into(),
            session_element: "sessKey".into(),
        }
    }
}

/// The SOAP Authenticate envelope.
pub fn soap_auth_body(names: &SoapNames, account_code: &str, token: &Secret<String>) -> Bytes {
    let body = format!(
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>\
         <Authenticate xmlns=\"{}\"><acctCode>{}</acctCode><token>{}</token></Authenticate>\
         </s:Body></s:Envelope>",
        quick_xml::escape::escape(names.namespace.as_str()),
        quick_xml::escape::escape(account_code),
        quick_xml::escape::escape(token.expose().as_str()),
    );
    Bytes::from(body)
}

/// Reads a SOAP Authenticate answer: the elements are found by local name anywhere.
pub fn parse_soap_auth(body: &[u8]) -> AuthAnswer {
    let mut reader = Reader::from_reader(body);
    let mut current: Option<Vec<u8>> = None;
    let mut in_this_user = false;
    let (mut function_ok, mut auth_success, mut key, mut err_code, mut user_id) =
        (None, None, None, None, None);
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => {
                let name = e.local_name().as_ref().to_vec();
                if name == b"ThisUser" {
                    in_this_user = true;
                }
                current = Some(name);
            }
            Ok(Event::End(e)) => {
                if e.local_name().as_ref() == b"ThisUser" {
                    in_this_user = false;
                }
                current = None;
            }
            Ok(Event::Text(t)) => {
                let Some(name) = current.as_deref() else {
                    continue;
                };
                let Ok(text) = t.unescape() else {
                    return AuthAnswer::Unreadable;
                };
                let text = text.trim();
                match name {
                    b"FunctionOk" => function_ok = Some(text.eq_ignore_ascii_case("true")),
                    b"AuthSuccess" => auth_success = Some(text.eq_ignore_ascii_case("true")),
                    b"SessKey" => key = Some(text.to_owned()),
                    b"ErrCode" => err_code = text.parse().ok(),
                    b"ID" if in_this_user => user_id = text.parse().ok(),
                    _ => {}
                }
            }
            Ok(Event::Eof) => break,
            Err(_) => return AuthAnswer::Unreadable,
            Ok(_) => {}
        }
    }
    let Some(function_ok) = function_ok else {
        return AuthAnswer::Unreadable;
    };
    if !function_ok || auth_success != Some(true) {
        return AuthAnswer::Rejected { err_code };
    }
    match key {
        Some(key) if !key.is_empty() => AuthAnswer::Success {
            key: Secret::new(key),
            user_id,
        },
        _ => AuthAnswer::Unreadable,
    }
}

fn json_bool(v: &serde_json::Value) -> Option<bool> {
    v.as_bool()
        .or_else(|| v.as_str().map(|s| s.eq_ignore_ascii_case("true")))
}

fn json_int(v: &serde_json::Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

fn renewal_code(code: i64) -> Option<ReauthReason> {
    match code {
        5030 => Some(ReauthReason::Expired5030),
        5050 => Some(ReauthReason::IpChanged5050),
        _ => None,
    }
}

fn mentions_renewal_code(body: &[u8]) -> bool {
    memchr::memmem::find(body, b"5030").is_some() || memchr::memmem::find(body, b"5050").is_some()
}

/// Whether a REST answer says the key must be renewed: `ErrCode` 5030/5050 at top level or in a
/// `<Method>Result` wrapper, whatever the HTTP status.
pub fn rest_renewal(body: &[u8]) -> Option<ReauthReason> {
    // Most answers do not contain the digits at all: skip the parse.
    if !mentions_renewal_code(body) {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    if let Some(reason) = object
        .get("ErrCode")
        .and_then(json_int)
        .and_then(renewal_code)
    {
        return Some(reason);
    }
    object
        .values()
        .filter_map(|v| v.get("ErrCode"))
        .filter_map(json_int)
        .find_map(renewal_code)
}

/// Whether a SOAP answer carries an `ErrCode` element of 5030/5050.
pub fn soap_renewal(body: &[u8]) -> Option<ReauthReason> {
    if !mentions_renewal_code(body) {
        return None;
    }
    let mut reader = Reader::from_reader(body);
    let mut in_err_code = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => in_err_code = e.local_name().as_ref() == b"ErrCode",
            Ok(Event::End(_)) => in_err_code = false,
            Ok(Event::Text(t)) if in_err_code => {
                let text = t.unescape().ok()?;
                if let Some(reason) = text.trim().parse().ok().and_then(renewal_code) {
                    return Some(reason);
                }
            }
            Ok(Event::Eof) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Why a SOAP request could not be given its session key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SoapError {
    /// Not well-formed XML.
    #[error("the SOAP body is not well-formed XML")]
    Malformed,
    /// No `Envelope`/`Body`/operation element.
    #[error("the SOAP body has no operation element")]
    NoOperation,
}

/// Where the pieces of a SOAP request are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoapRequest {
    /// Local name of the operation (the first element inside `Body`).
    pub operation: String,
    /// Byte range of the session element's content, or of the whole empty element.
    slot: Slot,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    /// `<sessKey>..</sessKey>`: replace the bytes in this range.
    Content(std::ops::Range<usize>),
    /// `<sessKey/>`: replace the element (range) with a filled one named `qname`.
    Empty(std::ops::Range<usize>, String),
    /// No session element: insert one named `qname` at this offset (first child).
    Missing(usize, String),
}

/// Finds the operation and the session element (the operation's first-level child named
/// `session_element`) in a SOAP request.
pub fn parse_soap_request(body: &[u8], session_element: &str) -> Result<SoapRequest, SoapError> {
    let mut reader = Reader::from_reader(body);
    let mut depth = 0usize;
    let mut body_depth = None;
    let mut operation: Option<(String, usize, String)> = None; // (local name, depth, prefix)
    let mut content_start = None;
    loop {
        let before = usize::try_from(reader.buffer_position()).map_err(|_| SoapError::Malformed)?;
        let event = reader.read_event().map_err(|_| SoapError::Malformed)?;
        let after = usize::try_from(reader.buffer_position()).map_err(|_| SoapError::Malformed)?;
        match event {
            Event::Start(e) => {
                depth += 1;
                let local = e.local_name();
                if body_depth.is_none() && local.as_ref() == b"Body" {
                    body_depth = Some(depth);
                } else if operation.is_none() && body_depth.is_some_and(|d| depth == d + 1) {
                    let name = String::from_utf8_lossy(local.as_ref()).into_owned();
                    let prefix = e
                        .name()
                        .prefix()
                        .map(|p| String::from_utf8_lossy(p.as_ref()).into_owned())
                        .unwrap_or_default();
                    operation = Some((name, depth, prefix));
                    // Until a session element is found, it would go right here.
                    content_start = Some(after);
                } else if let Some((op, op_depth, _)) = &operation {
                    if depth == op_depth + 1 && local.as_ref() == session_element.as_bytes() {
                        let op = op.clone();
                        let start = after;
                        // Find the matching end.
                        let mut inner = 0usize;
                        loop {
                            let before_end = usize::try_from(reader.buffer_position())
                                .map_err(|_| SoapError::Malformed)?;
                            match reader.read_event().map_err(|_| SoapError::Malformed)? {
                                Event::Start(_) => inner += 1,
                                Event::End(_) if inner == 0 => {
                                    return Ok(SoapRequest {
                                        operation: op,
                                        slot: Slot::Content(start..before_end),
                                    })
                                }
                                Event::End(_) => inner -= 1,
                                Event::Eof => return Err(SoapError::Malformed),
                                _ => {}
                            }
                        }
                    }
                }
            }
            Event::Empty(e) => {
                if let Some((op, op_depth, _)) = &operation {
                    if depth == *op_depth && e.local_name().as_ref() == session_element.as_bytes() {
                        let qname = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                        return Ok(SoapRequest {
                            operation: op.clone(),
                            slot: Slot::Empty(before..after, qname),
                        });
                    }
                } else if body_depth.is_some_and(|d| depth == d) {
                    // `<Op/>`: every Number call takes at least the session key, so an
                    // operation without arguments is not a call payauth can complete.
                    return Err(SoapError::NoOperation);
                }
            }
            Event::End(_) => {
                if let Some((op, op_depth, prefix)) = &operation {
                    if depth == *op_depth {
                        let qname = if prefix.is_empty() {
                            session_element.to_owned()
                        } else {
                            format!("{prefix}:{session_element}")
                        };
                        let at = content_start.ok_or(SoapError::Malformed)?;
                        return Ok(SoapRequest {
                            operation: op.clone(),
                            slot: Slot::Missing(at, qname),
                        });
                    }
                }
                depth = depth.checked_sub(1).ok_or(SoapError::Malformed)?;
            }
            Event::Eof => {
                return Err(if operation.is_some() {
                    SoapError::Malformed
                } else {
                    SoapError::NoOperation
                })
            }
            _ => {}
        }
    }
}

impl SoapRequest {
    /// The request body with the session element holding `value`; every other byte unchanged.
    pub fn fill(&self, body: &[u8], value: &str) -> Bytes {
        let escaped = quick_xml::escape::escape(value);
        let (range, insert) = match &self.slot {
            Slot::Content(range) => (range.clone(), escaped.into_owned()),
            Slot::Empty(range, qname) => (range.clone(), format!("<{qname}>{escaped}</{qname}>")),
            Slot::Missing(at, qname) => (*at..*at, format!("<{qname}>{escaped}</{qname}>")),
        };
        let mut out = Vec::with_capacity(body.len() + insert.len());
        out.extend_from_slice(&body[..range.start]);
        out.extend_from_slice(insert.as_bytes());
        out.extend_from_slice(&body[range.end..]);
        Bytes::from(out)
    }
}

/// payauth's answer to an app's own REST Authenticate.
pub fn local_rest_auth_answer(user_id: Option<u64>) -> Bytes {
    let body = serde_json::json!({
        "AuthenticateResult": {
            "AuthSuccess": true,
            "ErrCode": 0,
            "ErrMsg": "",
            "FunctionOk": true,
            "RespMsg": "Answered by payauth: the session key is managed by the proxy",
            "SessKey": PLACEHOLDER_KEY,
            "ThisUser": { "ID": user_id.unwrap_or(0) },
        }
    });
    Bytes::from(body.to_string())
}

/// payauth's answer to an app's own SOAP Authenticate.
pub fn local_soap_auth_answer(names: &SoapNames) -> Bytes {
    Bytes::from(format!(
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>\
         <AuthenticateResponse xmlns=\"{}\"><AuthenticateResult><AuthSuccess>true</AuthSuccess>\
         <ErrCode>0</ErrCode><ErrMsg/><FunctionOk>true</FunctionOk>\
         <RespMsg>Answered by payauth: the session key is managed by the proxy</RespMsg>\
         <SessKey>{PLACEHOLDER_KEY}</SessKey></AuthenticateResult></AuthenticateResponse>\
         </s:Body></s:Envelope>",
        quick_xml::escape::escape(names.namespace.as_str())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rest_auth_follows_the_vendor_rule() {
        let ok = br#"{"AuthenticateResult": {"AuthSuccess": true, "ErrCode": 0, "ErrMsg": "", "FunctionOk": true,
            "RespMsg": "SessKey Expires|4/18/2019 7:29:47 AM", "SessKey": "B9F24903C3BA4770AE303032303541303032353437",
            "ThisUser": {"ID": 2547}}}"#;
        match parse_rest_auth(ok) {
            AuthAnswer::Success { key, user_id } => {
                assert_eq!(key.expose(), "B9F24903C3BA4770AE303032303541303032353437");
                assert_eq!(user_id, Some(2547));
            }
            other => panic!("{other:?}"),
        }
        let denied = br#"{"AuthenticateResult": {"AuthSuccess": false, "FunctionOk": true, "SessKey": "", "ErrCode": 0}}"#;
        assert_eq!(
            parse_rest_auth(denied),
            AuthAnswer::Rejected { err_code: Some(0) }
        );
        let broken =
            br#"{"AuthenticateResult": {"FunctionOk": false, "ErrCode": 105, "ErrMsg": "bad"}}"#;
        assert_eq!(
            parse_rest_auth(broken),
            AuthAnswer::Rejected {
                err_code: Some(105)
            }
        );
        assert_eq!(parse_rest_auth(b"<html>502</html>"), AuthAnswer::Unreadable);
    }

    #[test]
    fn soap_auth_answer() {
        let ok = b"<s:Envelope xmlns:s='x'><s:Body><AuthenticateResponse xmlns='http://tempuri.org/'>\
            <AuthenticateResult><AuthSuccess>true</AuthSuccess><ErrCode>0</ErrCode><FunctionOk>true</FunctionOk>\
            <SessKey>ABC123</SessKey><ThisUser><ID>77</ID></ThisUser></AuthenticateResult></AuthenticateResponse></s:Body></s:Envelope>";
        assert_eq!(
            parse_soap_auth(ok),
            AuthAnswer::Success {
                key: Secret::from("ABC123"),
                user_id: Some(77)
            }
        );
        let denied =
            b"<Envelope><Body><a:AuthenticateResult xmlns:a='n'><a:FunctionOk>true</a:FunctionOk>\
            <a:AuthSuccess>false</a:AuthSuccess></a:AuthenticateResult></Body></Envelope>";
        assert_eq!(
            parse_soap_auth(denied),
            AuthAnswer::Rejected { err_code: None }
        );
    }

    #[test]
    fn renewal_codes_are_found_in_wrappers_and_at_top_level() {
        let wrapped = br#"{"CreditCardSale_ManualResult": {"FunctionOk": false, "ErrCode": 5030, "ErrMsg": "Expired"}}"#;
        assert_eq!(rest_renewal(wrapped), Some(ReauthReason::Expired5030));
        assert_eq!(
            rest_renewal(br#"{"ErrCode": "5050"}"#),
            Some(ReauthReason::IpChanged5050)
        );
        assert_eq!(
            rest_renewal(br#"{"XResult": {"ErrCode": 0, "Amount": 5030}}"#),
            None
        );
        assert_eq!(rest_renewal(br#"{"XResult": {"ErrCode": 0}}"#), None);
        let soap = b"<s:Envelope xmlns:s='x'><s:Body><XResponse><XResult><a:ErrCode xmlns:a='y'>5050</a:ErrCode></XResult></XResponse></s:Body></s:Envelope>";
        assert_eq!(soap_renewal(soap), Some(ReauthReason::IpChanged5050));
        assert_eq!(soap_renewal(b"<a><Total>5030</Total></a>"), None);
    }

    #[test]
    fn soap_session_element_is_filled_byte_preserving() {
        let body = "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">\n  <soap:Body>\n    <tem:CreditCardSale xmlns:tem=\"http://tempuri.org/\">\n      <tem:sessKey>stale</tem:sessKey>\n      <tem:amount>1.00</tem:amount>\n    </tem:CreditCardSale>\n  </soap:Body>\n</soap:Envelope>";
        let req = parse_soap_request(body.as_bytes(), "sessKey").expect("parse");
        assert_eq!(req.operation, "CreditCardSale");
        let filled = req.fill(body.as_bytes(), "NEWKEY");
        assert_eq!(
            std::str::from_utf8(&filled).expect("utf8"),
            body.replace("stale", "NEWKEY")
        );

        let empty = "<s:Envelope xmlns:s='e'><s:Body><Op xmlns='t'><sessKey/><a>1</a></Op></s:Body></s:Envelope>";
        let req = parse_soap_request(empty.as_bytes(), "sessKey").expect("parse");
        let filled = req.fill(empty.as_bytes(), "K");
        assert_eq!(
            std::str::from_utf8(&filled).expect("utf8"),
            empty.replace("<sessKey/>", "<sessKey>K</sessKey>")
        );

        let missing = "<s:Envelope xmlns:s='e'><s:Body><t:Op xmlns:t='t'><t:a>1</t:a></t:Op></s:Body></s:Envelope>";
        let req = parse_soap_request(missing.as_bytes(), "sessKey").expect("parse");
        let filled = req.fill(missing.as_bytes(), "K");
        assert_eq!(
            std::str::from_utf8(&filled).expect("utf8"),
            missing.replace("<t:a>", "<t:sessKey>K</t:sessKey><t:a>")
        );
    }

    #[test]
    fn malformed_soap_is_refused() {
        assert!(parse_soap_request(b"<s:Envelope><s:Body><Op><sessKey>x</Op>", "sessKey").is_err());
        assert_eq!(
            parse_soap_request(b"{\"json\": 1}", "sessKey"),
            Err(SoapError::NoOperation)
        );
        assert!(parse_soap_request(b"", "sessKey").is_err());
    }

    proptest! {
        /// Whatever the other arguments hold, filling the session element changes only its content.
        #[test]
        fn fill_keeps_every_other_byte(args in "[a-zA-Z0-9 .<>&]{0,40}", key in "[A-F0-9]{1,60}") {
            let escaped = quick_xml::escape::escape(args.as_str());
            let body = format!("<s:Envelope xmlns:s='e'><s:Body><Op><sessKey>old</sessKey><x>{escaped}</x></Op></s:Body></s:Envelope>");
            let req = parse_soap_request(body.as_bytes(), "sessKey").expect("parse");
            let filled = req.fill(body.as_bytes(), &key);
            let expected = body.replacen("<sessKey>old</sessKey>", &format!("<sessKey>{key}</sessKey>"), 1);
            prop_assert_eq!(std::str::from_utf8(&filled).expect("utf8"), expected);
        }

        /// The parsers never panic, whatever the bytes.
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_soap_request(&bytes, "sessKey");
            let _ = parse_soap_auth(&bytes);
            let _ = parse_rest_auth(&bytes);
            let _ = rest_renewal(&bytes);
            let _ = soap_renewal(&bytes);
        }
    }
}
