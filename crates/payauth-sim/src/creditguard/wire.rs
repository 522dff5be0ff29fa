//! The relay's wire as the simulator reads and writes it, with parsers of its own.
//!
//! These readers are deliberately independent of payauth's: the simulator is the oracle that
//! payauth's form rewriting and `int_in` reading are tested against, so it reads a request the
//! way the gateway (a Java servlet behind the relay) does, written from that description alone.
//!
//! * **The form**: the body is cut at every `&`; a piece's name is what precedes its first `=`;
//!   names and values are percent-decoded with `+` as a space; the first value of a name wins.
//!   Clients often post `int_in` as raw XML, which may hold `&` (`&amp;`): a raw `int_in` value
//!   (its first non-blank byte is `<`) takes the following pieces back in until one whose
//!   decoded, trimmed name is a relay field (`user`, `password`, `sessionId`, `int_in`).
//! * **`int_in`**: read with quick-xml; a document that is not well-formed, or that uses an
//!   entity XML does not define, cannot be read (the call gets [`super::ERR_GENERAL`]).
//! * **Scopes**: the vendor's lists of commands, validations and transaction types, compared
//!   without ASCII case.

use std::fmt;

use bytes::Bytes;
use percent_encoding::percent_decode;
use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::Reader;

use super::{ReceivedScope, HEBREW_PERMITTED};

/// The form's relay fields; a raw `int_in` runs on until one of these starts a piece.
const RELAY_FIELDS: [&str; 4] = ["user", "password", "sessionId", "int_in"];

/// One field of a form, as the servlet sees it.
#[derive(Clone)]
pub(super) struct Field {
    /// The name as sent (not decoded).
    pub(super) raw_name: Bytes,
    /// The name, decoded.
    pub(super) name: String,
    /// The value as sent (not decoded).
    pub(super) raw_value: Bytes,
    /// The value, decoded.
    pub(super) value: Vec<u8>,
}

// Hand-written: values hold passwords, session ids and card data.
impl fmt::Debug for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Field")
            .field("name_len", &self.name.len())
            .field("value_len", &self.value.len())
            .finish()
    }
}

/// Java's `String.trim`: bytes up to 0x20 at either end.
fn java_trim(s: &str) -> &str {
    s.trim_matches(|c| c <= ' ')
}

impl Field {
    /// Whether the decoded name, trimmed as Java trims, is `want` in any ASCII case (how payauth
    /// must treat a credential, whatever the servlet's own case rules).
    pub(super) fn is_like(&self, want: &str) -> bool {
        java_trim(&self.name).eq_ignore_ascii_case(want)
    }

    fn is_relay_field(&self) -> bool {
        RELAY_FIELDS.iter().any(|f| self.is_like(f))
    }
}

/// A relay form, read.
#[derive(Debug)]
pub(super) struct Form {
    pub(super) fields: Vec<Field>,
}

impl Form {
    /// Reads `body` as the servlet does (see the module docs).
    pub(super) fn read(body: &Bytes) -> Self {
        // Every piece between `&`s (empty ones skipped), as its byte range.
        let mut pieces: Vec<(usize, usize)> = Vec::new();
        let mut start = 0;
        for end in memchr_all(body).chain(std::iter::once(body.len())) {
            if end > start {
                pieces.push((start, end));
            }
            start = end + 1;
        }
        let fields: Vec<Field> = pieces
            .iter()
            .map(|&(from, to)| read_field(body, from, to))
            .collect();
        // A raw int_in takes the pieces after it back in, up to the next relay field.
        let mut out = Vec::with_capacity(fields.len());
        let mut i = 0;
        while i < fields.len() {
            let (from, mut to) = pieces[i];
            let raw_int_in = fields[i].is_like("int_in") && is_raw_xml(&fields[i].raw_value);
            i += 1;
            if raw_int_in {
                while i < fields.len() && !fields[i].is_relay_field() {
                    to = pieces[i].1;
                    i += 1;
                }
                out.push(read_field(body, from, to));
            } else {
                out.push(fields[i - 1].clone());
            }
        }
        Self { fields: out }
    }

    /// The first value named exactly `name` (servlet `getParameter`), decoded.
    pub(super) fn value(&self, name: &str) -> Option<&[u8]> {
        self.field(name).map(|f| f.value.as_slice())
    }

    /// The first field named exactly `name`.
    pub(super) fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// The positions of every `&` in `body`.
fn memchr_all(body: &[u8]) -> impl Iterator<Item = usize> + '_ {
    body.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'&')
        .map(|(i, _)| i)
}

fn read_field(body: &Bytes, from: usize, to: usize) -> Field {
    let piece = &body[from..to];
    let (name_end, value_start) = match piece.iter().position(|b| *b == b'=') {
        Some(eq) => (from + eq, from + eq + 1),
        None => (to, to),
    };
    let raw_name = body.slice(from..name_end);
    let raw_value = body.slice(value_start..to);
    Field {
        name: String::from_utf8_lossy(&decode(&raw_name)).into_owned(),
        value: decode(&raw_value),
        raw_name,
        raw_value,
    }
}

/// Percent-decoding with `+` as a space, as `application/x-www-form-urlencoded` says. A `%`
/// not followed by two hex digits stays as it is.
fn decode(raw: &[u8]) -> Vec<u8> {
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    percent_decode(&plus_as_space).collect()
}

/// Whether a value is raw XML: its first byte, after a byte-order mark and spaces, tabs, CRs
/// and LFs, is `<`.
fn is_raw_xml(value: &[u8]) -> bool {
    let value = value.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(value);
    value
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .is_some_and(|b| *b == b'<')
}

/// What the simulator reads from `int_in`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct IntIn {
    /// `/ashrait/request/command`, trimmed.
    pub(super) command: String,
    /// The first `terminalNumber`, anywhere, trimmed.
    pub(super) terminal: Option<String>,
    /// `validation` under the command's element.
    pub(super) validation: Option<String>,
    /// `transactionType` under the command's element.
    pub(super) transaction_type: Option<String>,
    /// `/ashrait/request/getSessionId/scope`: `None` without one, else its fields as sent.
    pub(super) scope: Option<ReceivedScope>,
}

impl IntIn {
    /// Reads `xml`; `None` if it is not well-formed or has no `command`.
    pub(super) fn read(xml: &[u8]) -> Option<Self> {
        let text = String::from_utf8_lossy(xml);
        let mut reader = Reader::from_str(&text);
        let mut path: Vec<String> = Vec::new();
        let mut out = IntIn::default();
        let mut command = None;
        // `validation`/`transactionType` under each `request` child, first value each: the
        // command's own are picked once the command is known.
        let mut deal_fields: Vec<(String, &'static str, String)> = Vec::new();
        let mut roots = 0;
        loop {
            match reader.read_event().ok()? {
                Event::Start(e) => {
                    if path.is_empty() {
                        roots += 1;
                    }
                    let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                    if name == "scope" && at(&path, &["ashrait", "request", "getSessionId"]) {
                        out.scope.get_or_insert_with(ReceivedScope::default);
                    }
                    path.push(name);
                }
                Event::Empty(e) => {
                    if path.is_empty() {
                        roots += 1;
                    }
                    let name = e.local_name();
                    if name.as_ref() == b"scope"
                        && at(&path, &["ashrait", "request", "getSessionId"])
                    {
                        out.scope.get_or_insert_with(ReceivedScope::default);
                    }
                }
                Event::End(_) => {
                    path.pop();
                }
                Event::Text(t) => {
                    let value = t.unescape().ok()?.trim().to_owned();
                    out.take(&path, value, &mut command, &mut deal_fields)?;
                }
                Event::CData(c) => {
                    let value = String::from_utf8_lossy(&c).trim().to_owned();
                    out.take(&path, value, &mut command, &mut deal_fields)?;
                }
                Event::DocType(_) => return None,
                Event::Eof => break,
                _ => {}
            }
        }
        if roots != 1 || !path.is_empty() {
            return None;
        }
        let command = command?;
        for (element, field, value) in deal_fields {
            if element == command {
                let slot = match field {
                    "validation" => &mut out.validation,
                    _ => &mut out.transaction_type,
                };
                slot.get_or_insert(value);
            }
        }
        out.command = command;
        Some(out)
    }

    /// Notes one piece of text at `path`. `None` when the document is not one the gateway
    /// reads: text outside the root.
    fn take(
        &mut self,
        path: &[String],
        value: String,
        command: &mut Option<String>,
        deal_fields: &mut Vec<(String, &'static str, String)>,
    ) -> Option<()> {
        if value.is_empty() {
            return Some(());
        }
        let last = path.last()?.as_str();
        let n = path.len();
        if at(path, &["ashrait", "request", "command"]) {
            command.get_or_insert(value);
        } else if last == "terminalNumber" {
            self.terminal.get_or_insert(value);
        } else if n == 5 && at(&path[..4], &["ashrait", "request", "getSessionId", "scope"]) {
            let scope = self.scope.get_or_insert_with(ReceivedScope::default);
            match last {
                "scopeCmd" => scope.cmd = Some(value),
                "validation" => scope.validation = Some(value),
                "transactionType" => scope.transaction_type = Some(value),
                _ => {}
            }
        } else if n == 4 && at(&path[..2], &["ashrait", "request"]) {
            let field = match last {
                "validation" => "validation",
                "transactionType" => "transactionType",
                _ => return Some(()),
            };
            if !deal_fields
                .iter()
                .any(|(e, f, _)| *e == path[2] && *f == field)
            {
                deal_fields.push((path[2].clone(), field, value));
            }
        }
        Some(())
    }

    /// Whether this asks for a session.
    pub(super) fn is_get_session_id(&self) -> bool {
        self.command == "getSessionId"
    }
}

fn at(path: &[String], want: &[&str]) -> bool {
    path.len() == want.len() && path.iter().zip(want).all(|(p, w)| p == w)
}

/// Commands a session can be scoped to.
const SCOPE_COMMANDS: &[&str] = &[
    "doDeal",
    "addCgInvoice",
    "cancelDeal",
    "inquireInvoice",
    "refundCgInvoice",
    "refundDeal",
    "transmitInquire",
    "transmitTerminal",
];
/// `doDeal` validations a session can be scoped to.
const SCOPE_VALIDATIONS: &[&str] = &[
    "AutoComm",
    "Verify",
    "Normal",
    "Token",
    "TxnSetup",
    "AutoCommHold",
    "AutoCommRelease",
];
/// `doDeal` transaction types a session can be scoped to.
const SCOPE_TRANSACTION_TYPES: &[&str] = &[
    "Debit",
    "Credit",
    "Forced",
    "CashBack",
    "Cash",
    "RecurringDebit",
    "BalanceEnquiry",
    "Load",
    "Discharge",
];

/// What a session may be used for (all `None`: anything).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Scope {
    pub(super) cmd: Option<&'static str>,
    pub(super) validation: Option<&'static str>,
    pub(super) transaction_type: Option<&'static str>,
}

impl Scope {
    /// Checks a received `<scope>` against the vendor's lists; `Err` for a value not in them, or
    /// a validation or transaction type without a command.
    pub(super) fn check(received: &ReceivedScope) -> Result<Self, ()> {
        fn known(list: &[&'static str], value: Option<&str>) -> Result<Option<&'static str>, ()> {
            match value {
                None => Ok(None),
                Some(v) => list
                    .iter()
                    .copied()
                    .find(|known| known.eq_ignore_ascii_case(v.trim()))
                    .map(Some)
                    .ok_or(()),
            }
        }
        let scope = Self {
            cmd: known(SCOPE_COMMANDS, received.cmd.as_deref())?,
            validation: known(SCOPE_VALIDATIONS, received.validation.as_deref())?,
            transaction_type: known(
                SCOPE_TRANSACTION_TYPES,
                received.transaction_type.as_deref(),
            )?,
        };
        if scope.cmd.is_none() && (scope.validation.is_some() || scope.transaction_type.is_some()) {
            return Err(());
        }
        Ok(scope)
    }

    /// Whether a session of this scope may carry the call `int_in`.
    pub(super) fn allows(&self, int_in: &IntIn) -> bool {
        let Some(cmd) = self.cmd else {
            return true;
        };
        let same = |want: Option<&str>, got: Option<&str>| {
            want.is_none_or(|w| got.is_some_and(|g| w.eq_ignore_ascii_case(g)))
        };
        cmd.eq_ignore_ascii_case(&int_in.command)
            && same(self.validation, int_in.validation.as_deref())
            && same(self.transaction_type, int_in.transaction_type.as_deref())
    }
}

/// An answer's variable parts.
pub(super) struct Answer {
    pub(super) result: String,
    pub(super) message: String,
    /// The command's own element (e.g. `<doDeal>...</doDeal>`).
    pub(super) command_body: Option<String>,
    pub(super) tran_id: Option<u64>,
}

impl Answer {
    pub(super) fn error(code: impl Into<String>, message: &str) -> Self {
        Self {
            result: code.into(),
            message: message.to_owned(),
            command_body: None,
            tran_id: None,
        }
    }

    pub(super) fn render(&self, command: &str) -> Bytes {
        let command = if is_word(command) { command } else { "unknown" };
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(
            b"<?xml version='1.0' encoding='ISO-8859-8'?><ashrait><response><command>",
        );
        out.extend_from_slice(command.as_bytes());
        out.extend_from_slice(b"</command><dateTime/><requestId/>");
        match self.tran_id {
            Some(id) => out.extend_from_slice(format!("<tranId>{id}</tranId>").as_bytes()),
            None => out.extend_from_slice(b"<tranId/>"),
        }
        out.extend_from_slice(
            format!(
                "<result>{}</result><message>{}</message><userMessage>",
                escape(self.result.as_str()),
                escape(self.message.as_str())
            )
            .as_bytes(),
        );
        if self.result == "000" {
            out.extend_from_slice(HEBREW_PERMITTED);
        }
        out.extend_from_slice(
            b"</userMessage><additionalInfo/><version>2000</version><language>Eng</language>",
        );
        match &self.command_body {
            Some(body) => out.extend_from_slice(body.as_bytes()),
            // Error answers keep the command's element with empty children.
            None if command == "getSessionId" => out.extend_from_slice(
                b"<getSessionId><sessionId/><sessionExpiration/><sessionReUse/></getSessionId>",
            ),
            None => {}
        }
        out.extend_from_slice(b"</response></ashrait>");
        Bytes::from(out)
    }
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric())
}
