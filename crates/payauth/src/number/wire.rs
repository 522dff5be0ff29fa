//! Number's wire: the Authenticate call (REST and SOAP), reading its answer by the vendor's rule,
//! spotting 5030/5050 in any answer, checking a SOAP request from end to end before filling its
//! session-key element, payauth's local answer to an app's own Authenticate, and payauth's errors
//! as SOAP faults.

use bytes::Bytes;
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::metrics::ReauthReason;
use crate::secret::Secret;
use crate::xml;

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
    // Searchers built once: building one costs more than searching a usual answer.
    static CODES: std::sync::LazyLock<[memchr::memmem::Finder<'static>; 2]> =
        std::sync::LazyLock::new(|| {
            [
                memchr::memmem::Finder::new(b"5030"),
                memchr::memmem::Finder::new(b"5050"),
            ]
        });
    CODES.iter().any(|code| code.find(body).is_some())
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

/// How deep elements may nest in a SOAP request. Number's calls nest a handful of levels; a
/// deeper document is an attack on the gateway's parser (or a bug), not a payment.
pub const MAX_SOAP_DEPTH: usize = 64;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Why a SOAP request could not be given its session key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SoapError {
    /// Not well-formed XML: truncated or unbalanced, something besides whitespace, comments and
    /// processing instructions around the root element, an undefined entity, a broken or
    /// repeated attribute, not UTF-8.
    #[error("the SOAP body is not well-formed XML")]
    Malformed,
    /// No `Body`, or a `Body` without an operation element.
    #[error("the SOAP body has no operation element")]
    NoOperation,
    /// The root is not an `Envelope`, or the `Envelope` holds something besides an optional
    /// `Header` followed by one `Body`.
    #[error("the SOAP body is not an envelope of an optional Header and one Body")]
    NotEnvelope,
    /// A document type declaration: the door to external entities (XXE) and to entity expansion
    /// bombs, and nothing a SOAP message needs.
    #[error("the SOAP body must not carry a DOCTYPE")]
    DocType,
    /// Elements nested deeper than [`MAX_SOAP_DEPTH`].
    #[error("the SOAP body nests elements deeper than {} levels", MAX_SOAP_DEPTH)]
    TooDeep,
    /// More than one element in `Body`: which one the gateway runs would be a guess.
    #[error("the SOAP body holds more than one operation element")]
    SeveralOperations,
    /// The operation carries the session element twice: which one the gateway reads would be a
    /// guess, and the other would travel unreplaced.
    #[error("the SOAP operation carries its session element more than once")]
    DuplicateSessionElement,
}

/// Where the pieces of a SOAP request are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoapRequest {
    /// Local name of the operation (the element inside `Body`).
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

/// Checks that a SOAP request is a well-formed SOAP 1.1 envelope with exactly one operation, and
/// finds the session element: the operation's first-level child named `session_element`. Names
/// are compared without their namespace prefix.
///
/// The whole document is read before answering. A body that is truncated, carries a DOCTYPE or
/// an undefined entity, has anything but whitespace, comments and processing instructions after
/// the envelope, or holds two operations or two session elements is refused: its meaning to the
/// gateway would be uncertain, and payauth does not put a live key into such a body.
pub fn parse_soap_request(body: &[u8], session_element: &str) -> Result<SoapRequest, SoapError> {
    // quick-xml checks markup, not characters: bytes outside UTF-8 or outside XML's character
    // range would pass it and then be refused (or misread) by the gateway's parser.
    check_characters(body)?;
    // A slice reader drops a leading BOM without counting it in its positions: skip it here and
    // add it back to every offset, so that `fill` cuts at the right bytes.
    let (base, xml) = match body.strip_prefix(UTF8_BOM) {
        Some(rest) => (UTF8_BOM.len(), rest),
        None => (0, body),
    };
    let mut reader = Reader::from_reader(xml);
    let config = reader.config_mut();
    // Mostly quick-xml's defaults; spelled out because well-formedness rests on them.
    config.check_end_names = true;
    config.allow_unmatched_ends = false;
    config.check_comments = true;
    config.expand_empty_elements = false;
    // Offsets are taken around each event: trimming would fold the whitespace before a tag
    // into the tag's span, and `fill` would eat it.
    config.trim_text(false);

    let mut walk = Walk::new(session_element.as_bytes(), base);
    loop {
        let before = base + position(&reader)?;
        let event = reader.read_event().map_err(|_| SoapError::Malformed)?;
        let after = base + position(&reader)?;
        if let Event::Eof = event {
            return walk.finish(session_element);
        }
        walk.event(event, before..after)?;
    }
}

fn position<R>(reader: &Reader<R>) -> Result<usize, SoapError> {
    usize::try_from(reader.buffer_position()).map_err(|_| SoapError::Malformed)
}

/// Where the walk stands relative to the root element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Before,
    Inside,
    After,
}

/// The operation element found in `Body`.
#[derive(Debug)]
struct Operation {
    /// Local name.
    name: String,
    /// Namespace prefix (empty without one): a missing session element gets the same.
    prefix: String,
    /// Offset right after the start tag, where a missing session element goes.
    content_start: usize,
}

/// The state of one pass over a SOAP request. Depth 1 is the `Envelope`, 2 its `Header` and
/// `Body`, 3 the operation, 4 the operation's arguments.
#[derive(Debug)]
struct Walk<'a> {
    session_element: &'a [u8],
    /// Offset of the document's first byte after a BOM: where a declaration may stand.
    start: usize,
    depth: usize,
    root: Root,
    header_seen: bool,
    body_seen: bool,
    in_body: bool,
    operation: Option<Operation>,
    in_operation: bool,
    /// Content start of the session element being read.
    session_start: Option<usize>,
    slot: Option<Slot>,
}

impl<'a> Walk<'a> {
    fn new(session_element: &'a [u8], start: usize) -> Self {
        Self {
            session_element,
            start,
            depth: 0,
            root: Root::Before,
            header_seen: false,
            body_seen: false,
            in_body: false,
            operation: None,
            in_operation: false,
            session_start: None,
            slot: None,
        }
    }

    /// Takes one event spanning `span` (offsets in the whole body).
    fn event(&mut self, event: Event<'_>, span: std::ops::Range<usize>) -> Result<(), SoapError> {
        match event {
            Event::Start(e) => self.open(&e, span, false),
            Event::Empty(e) => self.open(&e, span, true),
            Event::End(_) => self.close(span.start),
            Event::Text(text) => {
                // Unescaping is what notices an undefined entity (`&foo;`): XML without a
                // DOCTYPE knows only the five predefined ones and character references.
                xml::resolve_references(&text, (), |_| Ok(()))
                    .map_err(|()| SoapError::Malformed)?;
                if memchr::memmem::find(&text, b"]]>").is_some() {
                    return Err(SoapError::Malformed);
                }
                // Around the root, in `Envelope`, `Header` and `Body` only elements count.
                if self.depth <= 2 && !is_xml_whitespace(&text) {
                    return Err(SoapError::Malformed);
                }
                Ok(())
            }
            Event::CData(_) if self.depth <= 2 => Err(SoapError::Malformed),
            Event::Decl(decl) => {
                // The declaration may only open the document.
                if span.start != self.start || decl.version().is_err() {
                    return Err(SoapError::Malformed);
                }
                Ok(())
            }
            Event::PI(pi) => {
                let target = pi.target();
                if !xml::is_name(target) || target.eq_ignore_ascii_case(b"xml") {
                    return Err(SoapError::Malformed);
                }
                Ok(())
            }
            Event::DocType(_) => Err(SoapError::DocType),
            // The caller ends the walk at `Eof`.
            Event::CData(_) | Event::Comment(_) | Event::Eof => Ok(()),
        }
    }

    fn open(
        &mut self,
        e: &BytesStart<'_>,
        span: std::ops::Range<usize>,
        empty: bool,
    ) -> Result<(), SoapError> {
        check_element(e)?;
        let depth = self.depth + 1;
        if depth > MAX_SOAP_DEPTH {
            return Err(SoapError::TooDeep);
        }
        let local = e.local_name();
        let local = local.as_ref();
        match depth {
            1 => {
                if self.root != Root::Before {
                    // A second root element.
                    return Err(SoapError::Malformed);
                }
                if local != b"Envelope" {
                    return Err(SoapError::NotEnvelope);
                }
                self.root = if empty { Root::After } else { Root::Inside };
            }
            2 => match local {
                b"Header" if !self.header_seen && !self.body_seen => self.header_seen = true,
                b"Body" if !self.body_seen => {
                    self.body_seen = true;
                    self.in_body = !empty;
                }
                _ => return Err(SoapError::NotEnvelope),
            },
            3 if self.in_body => {
                if self.operation.is_some() {
                    return Err(SoapError::SeveralOperations);
                }
                if empty {
                    // `<Op/>`: every Number call takes at least the session key, so an
                    // operation without arguments is not a call payauth can complete.
                    return Err(SoapError::NoOperation);
                }
                self.operation = Some(Operation {
                    name: String::from_utf8_lossy(local).into_owned(),
                    prefix: e
                        .name()
                        .prefix()
                        .map(|p| String::from_utf8_lossy(p.as_ref()).into_owned())
                        .unwrap_or_default(),
                    content_start: span.end,
                });
                self.in_operation = true;
            }
            4 if self.in_operation && local == self.session_element => {
                if self.slot.is_some() {
                    return Err(SoapError::DuplicateSessionElement);
                }
                if empty {
                    let qname = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    self.slot = Some(Slot::Empty(span, qname));
                } else {
                    self.session_start = Some(span.end);
                }
            }
            _ => {}
        }
        if !empty {
            self.depth = depth;
        }
        Ok(())
    }

    /// An end tag starting at `at`; quick-xml has checked that it matches its start tag.
    fn close(&mut self, at: usize) -> Result<(), SoapError> {
        match self.depth {
            // quick-xml refuses an unmatched end tag already; this keeps the count honest.
            0 => return Err(SoapError::Malformed),
            1 => self.root = Root::After,
            2 => self.in_body = false,
            3 => self.in_operation = false,
            4 => {
                if let Some(start) = self.session_start.take() {
                    self.slot = Some(Slot::Content(start..at));
                }
            }
            _ => {}
        }
        self.depth -= 1;
        Ok(())
    }

    fn finish(self, session_element: &str) -> Result<SoapRequest, SoapError> {
        // Also covers an empty document and one cut short: the root never closed.
        if self.root != Root::After {
            return Err(SoapError::Malformed);
        }
        let Some(operation) = self.operation else {
            return Err(SoapError::NoOperation);
        };
        let slot = match self.slot {
            Some(slot) => slot,
            None => {
                let qname = if operation.prefix.is_empty() {
                    session_element.to_owned()
                } else {
                    format!("{}:{session_element}", operation.prefix)
                };
                Slot::Missing(operation.content_start, qname)
            }
        };
        Ok(SoapRequest {
            operation: operation.name,
            slot,
        })
    }
}

fn check_element(e: &BytesStart<'_>) -> Result<(), SoapError> {
    if xml::is_well_formed_start(e) {
        Ok(())
    } else {
        Err(SoapError::Malformed)
    }
}

fn is_xml_whitespace(bytes: &[u8]) -> bool {
    bytes.iter().copied().all(xml::is_space)
}

fn check_characters(body: &[u8]) -> Result<(), SoapError> {
    let text = std::str::from_utf8(body).map_err(|_| SoapError::Malformed)?;
    if text.chars().all(xml::is_char) {
        Ok(())
    } else {
        Err(SoapError::Malformed)
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

    /// The raw bytes between the session element's tags in `body` (the body this request was
    /// parsed from); `None` when the element is empty (`<sessKey/>`) or missing.
    pub fn session_content<'b>(&self, body: &'b [u8]) -> Option<&'b [u8]> {
        match &self.slot {
            Slot::Content(range) => body.get(range.clone()),
            Slot::Empty(..) | Slot::Missing(..) => None,
        }
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

    /// A WCF-style request: prefixes, whitespace, the session element first.
    const REQUEST: &str = "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">\n  <soap:Body>\n    <tem:CreditCardSale xmlns:tem=\"http://tempuri.org/\">\n      <tem:sessKey>stale</tem:sessKey>\n      <tem:amount>1.00</tem:amount>\n    </tem:CreditCardSale>\n  </soap:Body>\n</soap:Envelope>";

    /// Well-formed requests of every shape the parser accepts.
    const VALID: [&str; 6] = [
        REQUEST,
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope xmlns:s='e'><s:Header><h:Trace xmlns:h='h' id='1'>a &amp; b</h:Trace></s:Header><s:Body><Op xmlns='t'><sessKey>k</sessKey><a>1</a></Op></s:Body></s:Envelope>",
        "<s:Envelope xmlns:s='e'><s:Body><Op xmlns='t'><sessKey/><a>1</a></Op></s:Body></s:Envelope>",
        "<s:Envelope xmlns:s='e'><s:Body><t:Op xmlns:t='t'><t:a>1</t:a></t:Op></s:Body></s:Envelope>",
        "<!-- before --><?app hint?>\n<Envelope><Body>\n<Op><x><sessKey>deeper</sessKey></x><sessKey><![CDATA[old]]></sessKey></Op>\n</Body></Envelope>\n<!-- after -->\n",
        "\u{FEFF}<?xml version='1.0'?><Envelope><Body><Op><a b=\"&#65;&lt;\">&#x42;&gt;</a><sessKey>x</sessKey></Op></Body></Envelope>",
    ];

    fn refused(body: &str) -> SoapError {
        match parse_soap_request(body.as_bytes(), "sessKey") {
            Ok(request) => panic!("accepted {body:?} as {request:?}"),
            Err(e) => e,
        }
    }

    /// `REQUEST` with `from` replaced by `to` (which must occur).
    fn request_with(from: &str, to: &str) -> String {
        assert!(REQUEST.contains(from), "{from}");
        REQUEST.replacen(from, to, 1)
    }

    #[test]
    fn well_formed_requests_are_filled_in_place() {
        let filled = |body: &str| {
            let request = parse_soap_request(body.as_bytes(), "sessKey").expect(body);
            let filled = request.fill(body.as_bytes(), "K");
            (
                request.operation,
                String::from_utf8(filled.to_vec()).expect("utf8"),
            )
        };
        let (operation, out) = filled(VALID[1]);
        assert_eq!(operation, "Op");
        assert_eq!(out, VALID[1].replace("<sessKey>k<", "<sessKey>K<"));
        let (_, out) = filled(VALID[4]);
        assert_eq!(
            out,
            VALID[4].replace("<![CDATA[old]]>", "K"),
            "only the first-level element"
        );
        let (_, out) = filled(VALID[5]);
        assert!(out.starts_with('\u{FEFF}'));
        assert_eq!(
            out,
            VALID[5].replace("<sessKey>x<", "<sessKey>K<"),
            "offsets count the BOM"
        );
        let request = parse_soap_request(VALID[5].as_bytes(), "sessKey").expect("parse");
        assert_eq!(
            request.session_content(VALID[5].as_bytes()),
            Some(&b"x"[..])
        );
        let request = parse_soap_request(VALID[2].as_bytes(), "sessKey").expect("parse");
        assert_eq!(request.session_content(VALID[2].as_bytes()), None);
        // The limit itself is fine.
        let depth = MAX_SOAP_DEPTH - 3;
        let deep = format!(
            "<Envelope><Body><Op>{}{}</Op></Body></Envelope>",
            "<a>".repeat(depth),
            "</a>".repeat(depth)
        );
        assert!(parse_soap_request(deep.as_bytes(), "sessKey").is_ok());
    }

    #[test]
    fn truncated_requests_are_refused() {
        for body in VALID {
            for cut in 0..body.len() {
                let Some(prefix) = body.get(..cut) else {
                    continue; // inside a character
                };
                if body[cut..].trim().is_empty() || body[cut..].trim() == "<!-- after -->" {
                    continue; // only trailing misc is lost
                }
                refused(prefix);
            }
        }
        let after_session =
            REQUEST.find("</tem:sessKey>").expect("session") + "</tem:sessKey>".len();
        for cut in [
            after_session,
            after_session + 7,
            REQUEST.len() - 20,
            REQUEST.len() - 1,
        ] {
            assert_eq!(
                refused(&REQUEST[..cut]),
                SoapError::Malformed,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn anything_but_misc_around_the_envelope_is_refused() {
        for tail in [
            "garbage",
            "<",
            "<x/>",
            "&amp;",
            "<![CDATA[x]]>",
            "</soap:Envelope>",
        ] {
            assert_eq!(
                refused(&format!("{REQUEST}{tail}")),
                SoapError::Malformed,
                "{tail}"
            );
        }
        assert_eq!(
            refused(&format!("{REQUEST}{REQUEST}")),
            SoapError::Malformed,
            "second root"
        );
        assert_eq!(refused(&format!("x{REQUEST}")), SoapError::Malformed);
        assert_eq!(refused("{\"json\": 1}"), SoapError::Malformed);
        assert_eq!(refused(""), SoapError::Malformed);
        assert_eq!(refused("  <!-- only a comment -->"), SoapError::Malformed);
        assert_eq!(
            refused(&format!(" <?xml version='1.0'?>{REQUEST}")),
            SoapError::Malformed
        );
        assert_eq!(
            refused(&request_with(
                "<soap:Body>",
                "<soap:Body><?xml version='1.0'?>"
            )),
            SoapError::Malformed,
            "a declaration inside"
        );
        assert!(parse_soap_request(
            format!("{REQUEST}\n<!-- c --><?pi x?>\n").as_bytes(),
            "sessKey"
        )
        .is_ok());
    }

    #[test]
    fn doctypes_are_refused() {
        let xxe = format!(
            "<?xml version=\"1.0\"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>{}",
            request_with("<tem:amount>1.00", "<tem:amount>&xxe;")
        );
        assert_eq!(refused(&xxe), SoapError::DocType);
        let laughs = format!(
            "<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n <!ENTITY lol \"lol\">\n{}]>\n{}",
            (1..10)
                .map(|i| format!(
                    " <!ENTITY lol{i} \"{}\">\n",
                    format!(
                        "&lol{};",
                        if i == 1 {
                            String::new()
                        } else {
                            (i - 1).to_string()
                        }
                    )
                    .repeat(10)
                ))
                .collect::<String>(),
            request_with("<tem:amount>1.00", "<tem:amount>&lol9;")
        );
        assert_eq!(refused(&laughs), SoapError::DocType);
        // The references alone, without their declarations, are undefined entities.
        assert_eq!(
            refused(&request_with("1.00", "&lol9;")),
            SoapError::Malformed
        );
        let inside = request_with("<soap:Body>", "<soap:Body><!DOCTYPE x>");
        assert_eq!(refused(&inside), SoapError::DocType);
    }

    #[test]
    fn undefined_entities_and_broken_attributes_are_refused() {
        for (from, to) in [
            ("1.00", "&foo;"),
            ("1.00", "&amp"),
            ("1.00", "a & b"),
            ("1.00", "&#0;"),
            ("1.00", "&#xZZ;"),
            ("1.00", "]]>"),
            ("<tem:amount>", "<tem:amount unit=\"&foo;\">"),
            ("<tem:amount>", "<tem:amount unit=\"a<b\">"),
            ("<tem:amount>", "<tem:amount unit=\"1\" unit=\"2\">"),
            ("<tem:amount>", "<tem:amount unit=1>"),
            ("<tem:amount>", "<tem:amount unit>"),
            ("<tem:amount>", "<tem:amount 1x='1'>"),
            ("<soap:Body>", "<soap:Body x='&bar;'>"),
            ("<soap:Body>", "<soap:Body><!-- a -- b -->"),
            ("<soap:Body>", "<soap:Body><?xml-ok?><??>"),
            ("1.00", "1.00\u{1}"),
        ] {
            assert_eq!(
                refused(&request_with(from, to)),
                SoapError::Malformed,
                "{to}"
            );
        }
        let mut latin1 = REQUEST.as_bytes().to_vec();
        latin1.insert(REQUEST.find("1.00").expect("amount"), 0xE9);
        assert_eq!(
            parse_soap_request(&latin1, "sessKey"),
            Err(SoapError::Malformed)
        );
        let fine = request_with("1.00", "1&amp;&lt;&gt;&quot;&apos;&#233;&#x20AC;");
        assert!(parse_soap_request(fine.as_bytes(), "sessKey").is_ok());
    }

    #[test]
    fn unbalanced_markup_is_refused() {
        for (from, to) in [
            ("</tem:amount>", ""),              // unclosed
            ("</tem:amount>", "</tem:Amount>"), // mismatched
            ("</tem:amount>", "</amount>"),     // prefix counts
            ("<tem:amount>", "<tem:amount"),    // unclosed markup
            ("<tem:amount>", "<>"),
            ("<tem:amount>", "< tem:amount>"),
            ("</soap:Body>", "</soap:Body></soap:Body>"),
            ("</tem:sessKey>", "</tem:sessKey></x>"),
        ] {
            assert_eq!(
                refused(&request_with(from, to)),
                SoapError::Malformed,
                "{to}"
            );
        }
        assert_eq!(
            refused("<s:Envelope><s:Body><Op><sessKey>x</Op>"),
            SoapError::Malformed
        );
        let bomb = request_with(
            "1.00",
            &format!("{}{}", "<a>".repeat(100), "</a>".repeat(100)),
        );
        assert_eq!(refused(&bomb), SoapError::TooDeep);
        let bomb = request_with("1.00", &"<a>".repeat(100_000));
        assert_eq!(refused(&bomb), SoapError::TooDeep);
        let depth = MAX_SOAP_DEPTH - 2;
        let just_over = format!(
            "<Envelope><Body><Op>{}{}</Op></Body></Envelope>",
            "<a>".repeat(depth),
            "</a>".repeat(depth)
        );
        assert_eq!(refused(&just_over), SoapError::TooDeep);
    }

    #[test]
    fn the_envelope_holds_one_body_with_one_operation() {
        let op = "<Op><sessKey>k</sessKey></Op>";
        let cases = [
            (format!("<Op>{op}</Op>"), SoapError::NotEnvelope),
            (format!("<Envelope><Body>{op}</Body><Body>{op}</Body></Envelope>"), SoapError::NotEnvelope),
            (format!("<Envelope><Body>{op}</Body><Header/></Envelope>"), SoapError::NotEnvelope),
            (format!("<Envelope><Header/><Header/><Body>{op}</Body></Envelope>"), SoapError::NotEnvelope),
            (format!("<Envelope><Extra/><Body>{op}</Body></Envelope>"), SoapError::NotEnvelope),
            (format!("<Envelope><Body>{op}</Body><Extra/></Envelope>"), SoapError::NotEnvelope),
            (format!("<Envelope><Body>{op}{op}</Body></Envelope>"), SoapError::SeveralOperations),
            (format!("<Envelope><Body>{op}<Other/></Body></Envelope>"), SoapError::SeveralOperations),
            ("<Envelope/>".to_owned(), SoapError::NoOperation),
            ("<Envelope><Header/></Envelope>".to_owned(), SoapError::NoOperation),
            ("<Envelope><Body/></Envelope>".to_owned(), SoapError::NoOperation),
            ("<Envelope><Body> <!-- c --> </Body></Envelope>".to_owned(), SoapError::NoOperation),
            ("<Envelope><Body><Op/></Body></Envelope>".to_owned(), SoapError::NoOperation),
            (format!("<Envelope><Body>text{op}</Body></Envelope>"), SoapError::Malformed),
            (format!("<Envelope><Body><![CDATA[x]]>{op}</Body></Envelope>"), SoapError::Malformed),
            (format!("<Envelope>text<Body>{op}</Body></Envelope>"), SoapError::Malformed),
            (format!("<Envelope><Header>text</Header><Body>{op}</Body></Envelope>"), SoapError::Malformed),
            (
                "<Envelope><Body><Op><sessKey>a</sessKey><sessKey>b</sessKey></Op></Body></Envelope>".to_owned(),
                SoapError::DuplicateSessionElement,
            ),
            (
                "<Envelope><Body><Op><sessKey/><a/><t:sessKey xmlns:t='t'>b</t:sessKey></Op></Body></Envelope>".to_owned(),
                SoapError::DuplicateSessionElement,
            ),
        ];
        for (body, error) in cases {
            assert_eq!(refused(&body), error, "{body}");
        }
        // A session element in a header or deeper in the operation is not the argument.
        let ok = "<Envelope><Header><sessKey>h</sessKey></Header><Body><Op><x><sessKey>d</sessKey></x><sessKey>k</sessKey></Op></Body></Envelope>";
        let request = parse_soap_request(ok.as_bytes(), "sessKey").expect("parse");
        assert_eq!(request.session_content(ok.as_bytes()), Some(&b"k"[..]));
    }

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(
            SoapError::DocType.to_string(),
            "the SOAP body must not carry a DOCTYPE"
        );
        assert_eq!(
            SoapError::TooDeep.to_string(),
            format!("the SOAP body nests elements deeper than {MAX_SOAP_DEPTH} levels")
        );
    }

    #[test]
    fn soap_faults_are_well_formed_and_escaped() {
        let message = "bad <sessKey> & \"quotes\"\u{0}";
        let fault = crate::xml::soap_fault("bad_request", "number & co", message, true);
        let text = std::str::from_utf8(&fault).expect("utf8");
        assert!(
            text.contains("<faultcode>soap:Client</faultcode>"),
            "{text}"
        );
        assert!(
            text.contains("&lt;sessKey&gt; &amp; &quot;quotes&quot;"),
            "{text}"
        );
        assert!(text.contains("<code>bad_request</code>"), "{text}");
        assert!(
            text.contains("<gateway>number &amp; co</gateway>"),
            "{text}"
        );
        // Read back: every text where it belongs, unescaped.
        let mut reader = Reader::from_reader(&fault[..]);
        let mut current = Vec::new();
        let mut texts = Vec::new();
        loop {
            match reader.read_event().expect("well-formed") {
                Event::Start(e) => current = e.local_name().as_ref().to_vec(),
                Event::Text(t) => texts.push((
                    String::from_utf8(current.clone()).expect("utf8"),
                    t.unescape().expect("escaped").into_owned(),
                )),
                Event::Eof => break,
                _ => {}
            }
        }
        let text_of = |name: &str| {
            texts
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.as_str())
        };
        assert_eq!(
            text_of("faultstring"),
            Some("bad <sessKey> & \"quotes\"\u{FFFD}")
        );
        assert_eq!(text_of("code"), Some("bad_request"));
        assert_eq!(text_of("gateway"), Some("number & co"));
        // As a whole document: one Envelope, one Body, the Fault in it.
        let request = parse_soap_request(&fault, "sessKey").expect("a SOAP envelope");
        assert_eq!(request.operation, "Fault");

        let server = crate::xml::soap_fault("upstream_unavailable", "number", "down", false);
        assert!(std::str::from_utf8(&server)
            .expect("utf8")
            .contains("<faultcode>soap:Server</faultcode>"));
    }

    /// After a parse accepted `body`: `fill` changes nothing outside the slot, and the filled
    /// body reads back as the same operation with `key` in its session element.
    fn check_fill(request: &SoapRequest, body: &[u8], key: &str) -> Result<(), TestCaseError> {
        let filled = request.fill(body, key);
        let (start, end) = match &request.slot {
            Slot::Content(range) | Slot::Empty(range, _) => (range.start, range.end),
            Slot::Missing(at, _) => (*at, *at),
        };
        prop_assert!(start <= end && end <= body.len());
        prop_assert_eq!(&filled[..start], &body[..start]);
        let tail = body.len() - end;
        prop_assert_eq!(&filled[filled.len() - tail..], &body[end..]);
        let again = parse_soap_request(&filled, "sessKey");
        prop_assert!(again.is_ok(), "{:?}", again);
        let again = again.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&again.operation, &request.operation);
        prop_assert_eq!(again.session_content(&filled), Some(key.as_bytes()));
        Ok(())
    }

    /// One change to a request body.
    #[derive(Debug, Clone)]
    enum Mutation {
        Truncate(prop::sample::Index),
        Insert(prop::sample::Index, u8),
        Remove(prop::sample::Index),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let byte = prop::sample::select(b"<>&/;!".to_vec());
        prop_oneof![
            1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
            4 => (any::<prop::sample::Index>(), byte).prop_map(|(at, b)| Mutation::Insert(at, b)),
            2 => any::<prop::sample::Index>().prop_map(Mutation::Remove),
        ]
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

        /// Mutated requests are refused, or filled within the session element's slot only.
        #[test]
        fn mutated_requests_are_refused_or_filled_in_place(
            which in 0..VALID.len(),
            mutations in proptest::collection::vec(mutation(), 1..4),
            key in "[A-F0-9]{1,60}",
        ) {
            let mut body = VALID[which].as_bytes().to_vec();
            for mutation in mutations {
                match mutation {
                    Mutation::Truncate(at) => body.truncate(at.index(body.len() + 1)),
                    Mutation::Insert(at, byte) => body.insert(at.index(body.len() + 1), byte),
                    Mutation::Remove(at) if !body.is_empty() => {
                        body.remove(at.index(body.len()));
                    }
                    Mutation::Remove(_) => {}
                }
            }
            if let Ok(request) = parse_soap_request(&body, "sessKey") {
                check_fill(&request, &body, &key)?;
            }
        }

        /// Every valid request is filled in place.
        #[test]
        fn valid_requests_are_filled_in_place(which in 0..VALID.len(), key in "[A-F0-9]{1,60}") {
            let body = VALID[which].as_bytes();
            let request = parse_soap_request(body, "sessKey");
            prop_assert!(request.is_ok(), "{:?}", request);
            let request = request.map_err(|e| TestCaseError::fail(e.to_string()))?;
            check_fill(&request, body, &key)?;
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

        /// The quick look for the codes finds them wherever they are, and only them.
        #[test]
        fn the_codes_are_found_wherever_they_stand(
            bytes in proptest::collection::vec(proptest::sample::select(b"0135 ".to_vec()), 0..80),
        ) {
            let expected = bytes.windows(4).any(|w| w == b"5030" || w == b"5050");
            prop_assert_eq!(mentions_renewal_code(&bytes), expected, "{:?}", String::from_utf8_lossy(&bytes));
        }
    }
}
