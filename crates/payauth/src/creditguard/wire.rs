//! CreditGuard's wire around sessions: the `getSessionId` call and its answer, the `<result>` of
//! any relay answer, and payauth's local answer to an app's own `getSessionId`.
//!
//! Answers declare `encoding='ISO-8859-8'`; payauth reads them as bytes and decodes only the
//! ASCII fields it needs (`result`, `sessionId`, `sessionExpiration`, `sessionReUse`).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::Reader;

use super::form::form_encode;
use super::int_in::TerminalNumber;
use super::scope::SessionScope;
use crate::secret::Secret;

/// The session id payauth hands an app that calls `getSessionId` itself. It is not a real
/// session: payauth removes whatever `sessionId` the app sends and adds a real one.
pub const PLACEHOLDER_SESSION_ID: &str = "00000000-0000-4000-8000-000000000000";

/// Longest session id accepted from the gateway (real ones are 36-character UUIDs).
const MAX_SESSION_ID: usize = 256;

/// A relay `<result>` code.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResultCode(pub u16);

impl ResultCode {
    /// `000`: permitted.
    pub const OK: ResultCode = ResultCode(0);
    /// `405`: authentication failure (bad user or password).
    pub const AUTH_FAILED: ResultCode = ResultCode(405);
    /// `455`: the merchant (terminal) does not support session ids.
    pub const SESSIONS_NOT_SUPPORTED: ResultCode = ResultCode(455);
    /// `456`: session timeout; the call was not processed.
    pub const SESSION_TIMEOUT: ResultCode = ResultCode(456);
    /// `457`: session id generation failed (transient).
    pub const SESSION_GENERATION_FAILED: ResultCode = ResultCode(457);

    /// Reads a code such as `000` or `456`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok().map(ResultCode)
    }

    /// The gateway's general errors (303, 308, 354, 444): a request or configuration problem.
    pub fn is_general_error(self) -> bool {
        matches!(self.0, 303 | 308 | 354 | 444)
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:03}", self.0)
    }
}

impl fmt::Debug for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResultCode({self})")
    }
}

/// How the gateway answered a `getSessionId`.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionAnswer {
    /// `000` with a session id.
    Issued {
        /// The session id.
        id: Secret<String>,
        /// `sessionExpiration`, when given.
        expiration: Option<Duration>,
        /// `sessionReUse` is `1`: the id may be used more than once.
        reusable: bool,
    },
    /// Another result code.
    Refused(ResultCode),
    /// Not a relay answer (an HTML error page, a proxy's 502), or `000` without a usable id.
    Unreadable,
}

/// The `int_in` of payauth's `getSessionId` for `terminal` with `scope`.
pub fn get_session_int_in(terminal: &TerminalNumber, scope: &SessionScope) -> String {
    let mut xml = String::with_capacity(320);
    xml.push_str(
        "<ashrait><request><version>2000</version><language>Eng</language><dateTime/><requestId/>\
         <command>getSessionId</command><getSessionId><terminalNumber>",
    );
    xml.push_str(&escape(terminal.as_str()));
    xml.push_str("</terminalNumber>");
    if let Some(cmd) = scope.cmd {
        xml.push_str("<scope><scopeCmd>");
        xml.push_str(cmd.as_str());
        xml.push_str("</scopeCmd>");
        if let Some(v) = scope.validation {
            xml.push_str("<validation>");
            xml.push_str(v.as_str());
            xml.push_str("</validation>");
        }
        if let Some(t) = scope.transaction_type {
            xml.push_str("<transactionType>");
            xml.push_str(t.as_str());
            xml.push_str("</transactionType>");
        }
        xml.push_str("</scope>");
    }
    xml.push_str("</getSessionId></request></ashrait>");
    xml
}

/// The whole `getSessionId` form: `user`, `password` and `int_in`, each URL-encoded.
pub fn get_session_request(
    user: &str,
    password: &Secret<String>,
    terminal: &TerminalNumber,
    scope: &SessionScope,
) -> Bytes {
    let int_in = get_session_int_in(terminal, scope);
    let mut body = Vec::with_capacity(64 + int_in.len() * 2);
    body.extend_from_slice(b"user=");
    form_encode(user.as_bytes(), &mut body);
    body.extend_from_slice(b"&password=");
    form_encode(password.expose().as_bytes(), &mut body);
    body.extend_from_slice(b"&int_in=");
    form_encode(int_in.as_bytes(), &mut body);
    Bytes::from(body)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerTag {
    Response,
    Result,
    GetSessionId,
    SessionId,
    SessionExpiration,
    SessionReUse,
    Other,
}

fn tag(name: &[u8]) -> AnswerTag {
    match name {
        b"response" => AnswerTag::Response,
        b"result" => AnswerTag::Result,
        b"getSessionId" => AnswerTag::GetSessionId,
        b"sessionId" => AnswerTag::SessionId,
        b"sessionExpiration" => AnswerTag::SessionExpiration,
        b"sessionReUse" => AnswerTag::SessionReUse,
        _ => AnswerTag::Other,
    }
}

// No Debug: `session_id` is a plain string until it is wrapped in `Secret`.
#[derive(Default)]
struct AnswerFields {
    result: Option<String>,
    session_id: Option<String>,
    expiration: Option<String>,
    reuse: Option<String>,
}

/// Reads the fields of a relay answer; with `stop_at_result`, stops at `<result>`.
/// `None` when the bytes are not XML.
fn answer_fields(body: &[u8], stop_at_result: bool) -> Option<AnswerFields> {
    let mut reader = Reader::from_reader(body);
    let mut stack: Vec<AnswerTag> = Vec::with_capacity(8);
    let mut fields = AnswerFields::default();
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => {
                if stack.len() > 32 {
                    return None;
                }
                stack.push(tag(e.local_name().as_ref()));
            }
            Event::End(_) => {
                let closed = stack.pop();
                if stop_at_result && closed == Some(AnswerTag::Result) && fields.result.is_some() {
                    return Some(fields);
                }
            }
            Event::Text(t) => {
                let (Some(&last), Some(&parent)) = (
                    stack.last(),
                    stack.len().checked_sub(2).and_then(|i| stack.get(i)),
                ) else {
                    continue;
                };
                let slot = match (parent, last) {
                    (AnswerTag::Response, AnswerTag::Result) => &mut fields.result,
                    (AnswerTag::GetSessionId, AnswerTag::SessionId) => &mut fields.session_id,
                    (AnswerTag::GetSessionId, AnswerTag::SessionExpiration) => {
                        &mut fields.expiration
                    }
                    (AnswerTag::GetSessionId, AnswerTag::SessionReUse) => &mut fields.reuse,
                    _ => continue,
                };
                if slot.is_none() {
                    let text = t.unescape().ok()?;
                    *slot = Some(text.trim().to_owned());
                }
            }
            Event::Eof => return Some(fields),
            _ => {}
        }
    }
}

/// The `<result>` of a relay answer (`/ashrait/response/result`), if it has one.
pub fn answer_result(body: &[u8]) -> Option<ResultCode> {
    ResultCode::parse(answer_fields(body, true)?.result.as_deref()?)
}

/// Whether a relay answer is `456`: the session was refused and the call not processed.
pub fn is_session_timeout(body: &[u8]) -> bool {
    // Nearly every answer lacks the digits entirely: skip the parse.
    memchr::memmem::find(body, b"456").is_some()
        && answer_result(body) == Some(ResultCode::SESSION_TIMEOUT)
}

/// Reads a `getSessionId` answer.
pub fn parse_get_session(body: &[u8]) -> SessionAnswer {
    let Some(fields) = answer_fields(body, false) else {
        return SessionAnswer::Unreadable;
    };
    let Some(code) = fields.result.as_deref().and_then(ResultCode::parse) else {
        return SessionAnswer::Unreadable;
    };
    if code != ResultCode::OK {
        return SessionAnswer::Refused(code);
    }
    let id = match fields.session_id {
        Some(id)
            if !id.is_empty()
                && id.len() <= MAX_SESSION_ID
                && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            id
        }
        _ => return SessionAnswer::Unreadable,
    };
    SessionAnswer::Issued {
        id: Secret::new(id),
        expiration: fields
            .expiration
            .as_deref()
            .and_then(|e| e.parse::<u64>().ok())
            .filter(|s| *s > 0)
            .map(Duration::from_secs),
        reusable: fields.reuse.as_deref() == Some("1"),
    }
}

/// payauth's answer to an app's own `getSessionId`: result `000` and
/// [`PLACEHOLDER_SESSION_ID`], reusable, so the app keeps sending it and payauth keeps
/// replacing it.
pub fn local_get_session_answer() -> Bytes {
    Bytes::from(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <ashrait><response><command>getSessionId</command><dateTime/><requestId/><tranId/>\
         <result>000</result><message>Permitted transaction</message>\
         <userMessage>Permitted transaction</userMessage>\
         <additionalInfo>answered by payauth; the session id is a placeholder</additionalInfo>\
         <version>2000</version><language>Eng</language>\
         <getSessionId><sessionId>{PLACEHOLDER_SESSION_ID}</sessionId>\
         <sessionExpiration>600</sessionExpiration><sessionReUse>1</sessionReUse></getSessionId>\
         </response></ashrait>"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::creditguard::form::{form_decode, RelayForm};
    use crate::creditguard::int_in;
    use crate::creditguard::scope::{ScopeCmd, TransactionType, Validation};

    const ISSUED: &str = "<ashrait><response><command>getSessionId</command><dateTime>2025-08-06 11:07</dateTime>\
        <requestId/><tranId/><result>000</result><message>Permitted</message><userMessage/><additionalInfo/>\
        <version>2000</version><language>Eng</language><getSessionId>\
        <sessionId>3e4cb361-0465-44db-9d46-bd393f0e120d</sessionId><sessionExpiration>600</sessionExpiration>\
        <sessionReUse>1</sessionReUse></getSessionId></response></ashrait>";

    #[test]
    fn reads_an_issued_session() {
        match parse_get_session(ISSUED.as_bytes()) {
            SessionAnswer::Issued {
                id,
                expiration,
                reusable,
            } => {
                assert_eq!(id.expose(), "3e4cb361-0465-44db-9d46-bd393f0e120d");
                assert_eq!(expiration, Some(Duration::from_secs(600)));
                assert!(reusable);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_refusals_and_garbage() {
        let refused = "<ashrait><response><result>405</result><message>\u{5d0}</message><getSessionId><sessionId/>\
            <sessionExpiration/><sessionReUse/></getSessionId></response></ashrait>";
        assert_eq!(
            parse_get_session(refused.as_bytes()),
            SessionAnswer::Refused(ResultCode::AUTH_FAILED)
        );
        assert_eq!(
            parse_get_session(b"<html>502 Bad Gateway</html>"),
            SessionAnswer::Unreadable
        );
        assert_eq!(parse_get_session(b"not xml <<"), SessionAnswer::Unreadable);
        let no_id = ISSUED.replace("3e4cb361-0465-44db-9d46-bd393f0e120d", "");
        assert_eq!(
            parse_get_session(no_id.as_bytes()),
            SessionAnswer::Unreadable
        );
    }

    #[test]
    fn spots_456_only_in_the_result() {
        let mut timeout = b"<?xml version='1.0' encoding='ISO-8859-8'?><ashrait><response><command>doDeal</command><result>456</result><message>".to_vec();
        timeout.extend_from_slice(&[0xF9, 0xE2, 0xE9, 0xE0, 0xE4]);
        timeout.extend_from_slice(b"</message></response></ashrait>");
        assert!(is_session_timeout(&timeout));
        let ok = "<ashrait><response><result>000</result><doDeal><total>456</total></doDeal></response></ashrait>";
        assert!(!is_session_timeout(ok.as_bytes()));
        assert_eq!(answer_result(ok.as_bytes()), Some(ResultCode::OK));
        assert_eq!(ResultCode(7).to_string(), "007");
    }

    #[test]
    fn get_session_request_is_an_encoded_form_with_the_scope() {
        let scope = SessionScope {
            cmd: Some(ScopeCmd::DoDeal),
            validation: Some(Validation::AutoComm),
            transaction_type: Some(TransactionType::Credit),
        };
        let body = get_session_request(
            "merchant user",
            &Secret::from("p&ss=w+rd%"),
            &"0882819014".into(),
            &scope,
        );
        let form = RelayForm::parse(body).expect("parses");
        assert_eq!(
            &form_decode(form.value("user").expect("user"))[..],
            b"merchant user"
        );
        assert_eq!(
            &form_decode(form.value("password").expect("password"))[..],
            b"p&ss=w+rd%"
        );
        let xml = form.decoded_int_in();
        let int_in = int_in::read(&xml).expect("reads");
        assert!(int_in.is_get_session_id());
        let xml = String::from_utf8_lossy(&xml);
        assert!(xml.contains("<scope><scopeCmd>doDeal</scopeCmd><validation>AutoComm</validation><transactionType>Credit</transactionType></scope>"), "{xml}");
        let unscoped = get_session_int_in(&"1".into(), &SessionScope::UNSCOPED);
        assert!(!unscoped.contains("<scope>"));
    }

    #[test]
    fn local_answer_is_a_readable_session() {
        match parse_get_session(&local_get_session_answer()) {
            SessionAnswer::Issued { id, reusable, .. } => {
                assert_eq!(id.expose(), PLACEHOLDER_SESSION_ID);
                assert!(reusable);
            }
            other => panic!("{other:?}"),
        }
    }
}
