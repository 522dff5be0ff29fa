//! Reading `int_in`: the few facts payauth needs from the request XML, and nothing else.
//!
//! payauth reads `command` (`/ashrait/request/command`), every `terminalNumber` (anywhere) and,
//! under the command's element, `validation` and `transactionType`. Text of any other element
//! (card numbers, expiry, CVV, ids) is never decoded or copied: it stays in the borrowed input.
//!
//! The XML must be well-formed and unambiguous, because payauth decides on it (which terminal,
//! which scope) while the gateway executes it: one root element, no DOCTYPE, no text outside the
//! root, at most one `command`, and all `terminalNumber`s equal. Anything else is refused with
//! [`IntInError`] (the request gets `bad_request` and is not forwarded).

use std::fmt;

use quick_xml::events::Event;
use quick_xml::Reader;

/// Deepest nesting accepted (real requests nest four or five levels).
const MAX_DEPTH: usize = 32;
/// Longest text kept for a field payauth reads.
const MAX_FIELD: usize = 64;

/// A terminal number (`terminalNumber`). Not a secret: it is in the config.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TerminalNumber(String);

impl TerminalNumber {
    /// A terminal number (surrounding whitespace removed).
    pub fn new(number: impl Into<String>) -> Self {
        let number: String = number.into();
        let trimmed = number.trim();
        if trimmed.len() == number.len() {
            Self(number)
        } else {
            Self(trimmed.to_owned())
        }
    }

    /// The number.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TerminalNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TerminalNumber({})", self.0)
    }
}

impl fmt::Display for TerminalNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for TerminalNumber {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

/// What payauth reads from `int_in`. Holds no card data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntIn {
    /// `command`, e.g. `doDeal` (trimmed; letters and digits only).
    pub command: String,
    /// `terminalNumber`, if any.
    pub terminal: Option<TerminalNumber>,
    /// `validation` under the command's element, as sent (trimmed).
    pub validation: Option<String>,
    /// `transactionType` under the command's element, as sent (trimmed).
    pub transaction_type: Option<String>,
}

impl IntIn {
    /// Whether this is the app's own `getSessionId`.
    pub fn is_get_session_id(&self) -> bool {
        self.command.eq_ignore_ascii_case("getSessionId")
    }
}

/// Why `int_in` was refused. The messages name no content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IntInError {
    /// Not well-formed XML (or empty, or several roots, or text outside the root).
    #[error("int_in is not well-formed XML")]
    Malformed,
    /// A DOCTYPE: refused rather than processed.
    #[error("int_in must not carry a DOCTYPE")]
    DocType,
    /// Nested deeper than any real request.
    #[error("int_in nests too deep")]
    TooDeep,
    /// No `/ashrait/request/command`.
    #[error("int_in names no command")]
    NoCommand,
    /// A `command` that is not a plain word.
    #[error("int_in's command is not a command name")]
    BadCommand,
    /// Two `command`s, two `validation`s, two `transactionType`s, or different `terminalNumber`s.
    #[error("int_in names more than one {0}")]
    Ambiguous(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Request,
    Command,
    TerminalNumber,
    Validation,
    TransactionType,
    Other,
}

fn tag(local_name: &[u8]) -> Tag {
    match local_name {
        b"request" => Tag::Request,
        b"command" => Tag::Command,
        b"terminalNumber" => Tag::TerminalNumber,
        b"validation" => Tag::Validation,
        b"transactionType" => Tag::TransactionType,
        _ => Tag::Other,
    }
}

/// Which field a text belongs to, given the element stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Command,
    Terminal,
    Validation,
    TransactionType,
}

/// `command` under `request`; `validation`/`transactionType` two levels below `request`
/// (under the command's element); `terminalNumber` anywhere.
fn wanted(stack: &[Tag]) -> Option<Wanted> {
    let (&last, rest) = stack.split_last()?;
    let parent = rest.last().copied();
    let grandparent = rest.len().checked_sub(2).map(|i| rest[i]);
    match last {
        Tag::Command if parent == Some(Tag::Request) => Some(Wanted::Command),
        Tag::TerminalNumber => Some(Wanted::Terminal),
        Tag::Validation if grandparent == Some(Tag::Request) => Some(Wanted::Validation),
        Tag::TransactionType if grandparent == Some(Tag::Request) => Some(Wanted::TransactionType),
        _ => None,
    }
}

#[derive(Default)]
struct Found {
    command: Option<String>,
    terminal: Option<String>,
    validation: Option<String>,
    transaction_type: Option<String>,
}

impl Found {
    fn commit(&mut self, field: Wanted, text: String) -> Result<(), IntInError> {
        let text = text.trim().to_owned();
        let (slot, name) = match field {
            Wanted::Command => (&mut self.command, "command"),
            Wanted::Validation => (&mut self.validation, "validation"),
            Wanted::TransactionType => (&mut self.transaction_type, "transactionType"),
            Wanted::Terminal => {
                return match &self.terminal {
                    Some(seen) if *seen != text => Err(IntInError::Ambiguous("terminalNumber")),
                    _ => {
                        self.terminal = Some(text);
                        Ok(())
                    }
                };
            }
        };
        if slot.is_some() {
            return Err(IntInError::Ambiguous(name));
        }
        *slot = Some(text);
        Ok(())
    }
}

/// Reads `int_in`'s XML (already URL-decoded, if it was encoded).
pub fn read(xml: &[u8]) -> Result<IntIn, IntInError> {
    let mut reader = Reader::from_reader(xml);
    let mut stack: Vec<Tag> = Vec::with_capacity(8);
    let mut root_seen = false;
    let mut found = Found::default();
    // Text of the wanted element being read; `None` while inside any other element.
    let mut text: Option<(Wanted, String)> = None;
    loop {
        let event = reader.read_event().map_err(|_| IntInError::Malformed)?;
        match event {
            Event::Start(e) => {
                well_formed_attributes(&e)?;
                if stack.is_empty() {
                    if root_seen {
                        return Err(IntInError::Malformed);
                    }
                    root_seen = true;
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(IntInError::TooDeep);
                }
                // An element inside a wanted field: a command must be a plain word; other
                // fields with mixed content are ignored.
                if let Some((Wanted::Command, _)) = text.take() {
                    return Err(IntInError::BadCommand);
                }
                stack.push(tag(e.local_name().as_ref()));
                text = wanted(&stack).map(|w| (w, String::new()));
            }
            Event::Empty(e) => {
                well_formed_attributes(&e)?;
                if stack.is_empty() {
                    if root_seen {
                        return Err(IntInError::Malformed);
                    }
                    root_seen = true;
                }
                stack.push(tag(e.local_name().as_ref()));
                if let Some(field) = wanted(&stack) {
                    found.commit(field, String::new())?;
                }
                stack.pop();
            }
            Event::End(_) => {
                if let Some((field, value)) = text.take() {
                    found.commit(field, value)?;
                }
                stack.pop();
            }
            Event::Text(t) => {
                if stack.is_empty() {
                    if !t.iter().all(u8::is_ascii_whitespace) {
                        return Err(IntInError::Malformed);
                    }
                } else if let Some((_, value)) = text.as_mut() {
                    let unescaped = t.unescape().map_err(|_| IntInError::Malformed)?;
                    push_bounded(value, &unescaped);
                }
            }
            Event::CData(c) => {
                if stack.is_empty() {
                    return Err(IntInError::Malformed);
                }
                if let Some((_, value)) = text.as_mut() {
                    let s = std::str::from_utf8(&c).map_err(|_| IntInError::Malformed)?;
                    push_bounded(value, s);
                }
            }
            Event::DocType(_) => return Err(IntInError::DocType),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() || !root_seen {
        return Err(IntInError::Malformed);
    }
    let command = found.command.ok_or(IntInError::NoCommand)?;
    if command.is_empty() || !command.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(IntInError::BadCommand);
    }
    Ok(IntIn {
        command,
        terminal: found.terminal.filter(|t| !t.is_empty()).map(TerminalNumber),
        validation: found.validation.filter(|v| !v.is_empty()),
        transaction_type: found.transaction_type.filter(|v| !v.is_empty()),
    })
}

/// Attributes are not read, but they must be well-formed (`name="value"`, no duplicates):
/// the gateway's parser would refuse anything else.
fn well_formed_attributes(e: &quick_xml::events::BytesStart<'_>) -> Result<(), IntInError> {
    for attribute in e.attributes() {
        attribute.map_err(|_| IntInError::Malformed)?;
    }
    Ok(())
}

fn push_bounded(value: &mut String, more: &str) {
    // Longer texts are not values payauth acts on; cap them so a huge element costs nothing.
    if value.len() + more.len() <= MAX_FIELD * 4 {
        value.push_str(more);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEAL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ashrait><request>
  <version>2000</version><language>Eng</language><dateTime/><requestId/><mayBeDuplicate>0</mayBeDuplicate>
  <command>doDeal</command>
  <doDeal>
    <terminalNumber>0882819014</terminalNumber><cardNo>4580000000000000</cardNo><cardExpiration>1230</cardExpiration>
    <total>100</total><transactionType>Debit</transactionType><creditType>RegularCredit</creditType>
    <currency>ILS</currency><transactionCode>Phone</transactionCode><validation> autoComm </validation>
    <customerData><userData1>Tom &amp; Jerry &#38; co</userData1></customerData>
  </doDeal>
</request></ashrait>
"#;

    #[test]
    fn reads_the_vendors_example() {
        let int_in = read(DEAL.as_bytes()).expect("reads");
        assert_eq!(int_in.command, "doDeal");
        assert_eq!(int_in.terminal, Some(TerminalNumber::new("0882819014")));
        assert_eq!(int_in.validation.as_deref(), Some("autoComm"));
        assert_eq!(int_in.transaction_type.as_deref(), Some("Debit"));
        assert!(!format!("{int_in:?}").contains("4580"));
    }

    #[test]
    fn reads_get_session_id_and_prefixed_names() {
        let xml = "<a:ashrait xmlns:a='x'><a:request><a:command><![CDATA[getSessionId]]></a:command>\
                   <a:getSessionId><a:terminalNumber>123</a:terminalNumber></a:getSessionId></a:request></a:ashrait>";
        let int_in = read(xml.as_bytes()).expect("reads");
        assert!(int_in.is_get_session_id());
        assert_eq!(
            int_in.terminal.as_ref().map(TerminalNumber::as_str),
            Some("123")
        );
        assert_eq!(int_in.validation, None);
    }

    #[test]
    fn refuses_what_it_cannot_read_unambiguously() {
        let refused = |xml: &str| read(xml.as_bytes()).expect_err(xml);
        assert_eq!(refused(""), IntInError::Malformed);
        assert_eq!(
            refused("<ashrait><request><command>doDeal</command>"),
            IntInError::Malformed
        );
        assert_eq!(
            refused("<a><request><command>x</command></request></b>"),
            IntInError::Malformed
        );
        assert_eq!(refused("<a/><b/>"), IntInError::Malformed);
        assert_eq!(
            refused("<a><request><command &>doDeal</command></request></a>"),
            IntInError::Malformed
        );
        assert_eq!(
            refused("<a x='1' x='2'><request><command>doDeal</command></request></a>"),
            IntInError::Malformed
        );
        assert_eq!(
            refused("<a><request><command>doDeal</command></request></a>&foo=bar"),
            IntInError::Malformed
        );
        assert_eq!(
            refused("<!DOCTYPE a [<!ENTITY x 'y'>]><a/>"),
            IntInError::DocType
        );
        assert_eq!(refused("<a><request/></a>"), IntInError::NoCommand);
        assert_eq!(
            refused("<a><request><command>do Deal</command></request></a>"),
            IntInError::BadCommand
        );
        assert_eq!(
            refused("<a><request><command>a</command><command>b</command></request></a>"),
            IntInError::Ambiguous("command")
        );
        assert_eq!(
            refused("<a><request><command>a</command><x><terminalNumber>1</terminalNumber><terminalNumber>2</terminalNumber></x></request></a>"),
            IntInError::Ambiguous("terminalNumber")
        );
        assert_eq!(refused(&"<a>".repeat(40)), IntInError::TooDeep);
        assert_eq!(
            refused("<a><request><command>doDeal</command><doDeal><terminalNumber>&bogus;</terminalNumber></doDeal></request></a>"),
            IntInError::Malformed
        );
    }

    #[test]
    fn text_outside_wanted_fields_is_not_decoded() {
        // Non-UTF-8 (ISO-8859-8 Hebrew) and unknown entities in other elements are fine.
        let mut xml = b"<ashrait><request><command>doDeal</command><doDeal><terminalNumber>1</terminalNumber><cardName>".to_vec();
        xml.extend_from_slice(&[0xE0, 0xE1, 0xE2]);
        xml.extend_from_slice(b"</cardName></doDeal></request></ashrait>\r\n");
        let int_in = read(&xml).expect("reads");
        assert_eq!(
            int_in.terminal.as_ref().map(TerminalNumber::as_str),
            Some("1")
        );
    }

    proptest! {
        /// Never panics, whatever the input; what it reads is always a plain command word.
        #[test]
        fn any_bytes_are_read_or_refused(xml in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(int_in) = read(&xml) {
                prop_assert!(int_in.command.bytes().all(|b| b.is_ascii_alphanumeric()));
            }
        }

        /// Mutations of a real request are read or refused, never misread: when it reads, the
        /// terminal and command are the ones in the text.
        #[test]
        fn mutated_requests_never_misread(cut in 0usize..DEAL.len(), insert in "[<>&/a-z ]{0,4}") {
            let mut xml = DEAL.as_bytes().to_vec();
            let at = cut.min(xml.len());
            xml.splice(at..at, insert.bytes());
            if let Ok(int_in) = read(&xml) {
                let text = String::from_utf8_lossy(&xml);
                let compact = text.replace(' ', "");
                let expected = format!("<command>{}</command>", int_in.command);
                prop_assert!(compact.contains(&expected), "{} not in the text", expected);
                if let Some(t) = &int_in.terminal {
                    prop_assert!(text.contains(t.as_str()));
                }
            }
        }
    }
}
