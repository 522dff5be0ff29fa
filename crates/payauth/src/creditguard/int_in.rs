//! Reading `int_in`: the few facts payauth needs from the request XML, and nothing else.
//!
//! payauth reads `command` (`/ashrait/request/command`), every `terminalNumber` (anywhere) and,
//! under the command's element, `validation` and `transactionType`. Text of any other element
//! (card numbers, expiry, CVV, ids) is checked for well-formed references but never copied: it
//! stays in the borrowed input.
//!
//! The XML must be well-formed and unambiguous, because payauth decides on it (which terminal,
//! which scope) while the gateway executes it: one root element, no DOCTYPE, no text outside the
//! root, at most one `command`, and all `terminalNumber`s equal (an empty one next to another
//! too). References are XML's own and nothing else, anywhere in the document (text and
//! attribute values alike): `&lt;` `&gt;` `&amp;` `&apos;` `&quot;` and character references
//! to characters XML allows; without a DTD every other `&name;` is undefined, and a parser
//! might skip it, keep it or fail. A field payauth reads is one piece of text: no element,
//! comment or processing instruction inside it, and at most one non-blank text or CDATA piece,
//! so that readers taking the first text node, the last, or all of them agree; and it is at
//! most [`MAX_FIELD`] bytes long, never cut short. Anything else is refused with
//! [`IntInError`] (the request gets `bad_request` and is not forwarded).

use std::fmt;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::xml;

/// Deepest nesting accepted (real requests nest four or five levels).
const MAX_DEPTH: usize = 32;
/// Longest text accepted in a field payauth reads (surrounding whitespace included); real values
/// are a few bytes, and a longer one is refused rather than cut.
pub const MAX_FIELD: usize = 256;

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
    /// Not well-formed XML (or empty, or several roots, or text outside the root, or a
    /// reference XML does not define).
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
    /// A field payauth reads holds an element, a comment or a processing instruction, or text
    /// in more than one piece.
    #[error("int_in's {0} is not a single piece of text")]
    MixedContent(&'static str),
    /// A field payauth reads is longer than [`MAX_FIELD`] bytes.
    #[error("int_in's {0} is longer than any real value")]
    FieldTooLong(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IntInTag {
    Request,
    Command,
    TerminalNumber,
    Validation,
    TransactionType,
    Other,
}

fn tag(local_name: &[u8]) -> IntInTag {
    match local_name {
        b"request" => IntInTag::Request,
        b"command" => IntInTag::Command,
        b"terminalNumber" => IntInTag::TerminalNumber,
        b"validation" => IntInTag::Validation,
        b"transactionType" => IntInTag::TransactionType,
        _ => IntInTag::Other,
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

impl Wanted {
    fn name(self) -> &'static str {
        match self {
            Self::Command => "command",
            Self::Terminal => "terminalNumber",
            Self::Validation => "validation",
            Self::TransactionType => "transactionType",
        }
    }
}

/// `command` under `request`; `validation`/`transactionType` two levels below `request`
/// (under the command's element); `terminalNumber` anywhere.
fn wanted(stack: &[IntInTag]) -> Option<Wanted> {
    let (&last, rest) = stack.split_last()?;
    let parent = rest.last().copied();
    let grandparent = rest.len().checked_sub(2).map(|i| rest[i]);
    match last {
        IntInTag::Command if parent == Some(IntInTag::Request) => Some(Wanted::Command),
        IntInTag::TerminalNumber => Some(Wanted::Terminal),
        IntInTag::Validation if grandparent == Some(IntInTag::Request) => Some(Wanted::Validation),
        IntInTag::TransactionType if grandparent == Some(IntInTag::Request) => {
            Some(Wanted::TransactionType)
        }
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
    fn commit(&mut self, field: Wanted, text: &[u8]) -> Result<(), IntInError> {
        let text = std::str::from_utf8(text).map_err(|_| IntInError::Malformed)?;
        let text = text.trim_matches(is_xml_space);
        let slot = match field {
            Wanted::Command => &mut self.command,
            Wanted::Validation => &mut self.validation,
            Wanted::TransactionType => &mut self.transaction_type,
            Wanted::Terminal => {
                // Every terminalNumber counts, empty ones too: the gateway may read any of them.
                return match &self.terminal {
                    Some(seen) if seen != text => Err(IntInError::Ambiguous(field.name())),
                    Some(_) => Ok(()),
                    None => {
                        self.terminal = Some(text.to_owned());
                        Ok(())
                    }
                };
            }
        };
        if slot.is_some() {
            return Err(IntInError::Ambiguous(field.name()));
        }
        *slot = Some(text.to_owned());
        Ok(())
    }
}

/// The wanted field being read: its text so far is in `read`'s buffer.
struct Reading {
    field: Wanted,
    /// Text and CDATA pieces that are not blank.
    pieces: u8,
}

impl Reading {
    /// Counts a piece of text just added to `buf` from `from` on.
    fn piece(&mut self, buf: &[u8], from: usize) -> Result<(), IntInError> {
        if buf.len() > MAX_FIELD {
            return Err(IntInError::FieldTooLong(self.field.name()));
        }
        if !buf[from..].iter().all(|b| is_xml_space(char::from(*b))) {
            self.pieces += 1;
            if self.pieces > 1 {
                return Err(IntInError::MixedContent(self.field.name()));
            }
        }
        Ok(())
    }
}

/// Reads `int_in`'s XML (already URL-decoded, as the gateway decodes it).
pub fn read(xml: &[u8]) -> Result<IntIn, IntInError> {
    let mut reader = Reader::from_reader(xml);
    // `--` inside a comment is not well-formed; a parser might end the comment there.
    reader.config_mut().check_comments = true;
    let mut walk = IntInWalk::default();
    loop {
        let event = reader.read_event().map_err(|_| IntInError::Malformed)?;
        match event {
            Event::Start(ref e) => walk.start(e, false)?,
            Event::Empty(ref e) => walk.start(e, true)?,
            Event::End(_) => walk.end()?,
            Event::Text(t) => walk.text(&t)?,
            Event::CData(c) => walk.cdata(&c)?,
            Event::Comment(_) | Event::PI(_) => {
                if let Some(r) = &walk.reading {
                    return Err(IntInError::MixedContent(r.field.name()));
                }
            }
            Event::DocType(_) => return Err(IntInError::DocType),
            Event::Decl(_) => {}
            Event::Eof => break,
        }
    }
    walk.finish()
}

/// Where [`read`] is in the document.
#[derive(Default)]
struct IntInWalk {
    stack: Vec<IntInTag>,
    root_seen: bool,
    found: Found,
    /// The wanted element being read, if any; its text goes to `buf`, which is reused.
    reading: Option<Reading>,
    buf: Vec<u8>,
}

impl IntInWalk {
    /// An element opens (`empty`: and closes at once).
    fn start(
        &mut self,
        e: &quick_xml::events::BytesStart<'_>,
        empty: bool,
    ) -> Result<(), IntInError> {
        well_formed_start(e)?;
        if let Some(r) = &self.reading {
            return Err(IntInError::MixedContent(r.field.name()));
        }
        if self.stack.is_empty() {
            if self.root_seen {
                return Err(IntInError::Malformed);
            }
            self.root_seen = true;
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(IntInError::TooDeep);
        }
        self.stack.push(tag(e.local_name().as_ref()));
        let field = wanted(&self.stack);
        if empty {
            if let Some(field) = field {
                self.found.commit(field, b"")?;
            }
            self.stack.pop();
        } else if let Some(field) = field {
            self.buf.clear();
            self.reading = Some(Reading { field, pieces: 0 });
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), IntInError> {
        if let Some(r) = self.reading.take() {
            self.found.commit(r.field, &self.buf)?;
        }
        self.stack.pop();
        Ok(())
    }

    fn text(&mut self, t: &[u8]) -> Result<(), IntInError> {
        if self.stack.is_empty() {
            if !t.iter().all(|b| is_xml_space(char::from(*b))) {
                return Err(IntInError::Malformed);
            }
        } else if let Some(r) = self.reading.as_mut() {
            let from = self.buf.len();
            unescape(t, Some((&mut self.buf, r.field)))?;
            r.piece(&self.buf, from)?;
        } else {
            unescape(t, None)?;
        }
        Ok(())
    }

    fn cdata(&mut self, c: &[u8]) -> Result<(), IntInError> {
        if self.stack.is_empty() {
            return Err(IntInError::Malformed);
        }
        if let Some(r) = self.reading.as_mut() {
            let from = self.buf.len();
            self.buf.extend_from_slice(c);
            r.piece(&self.buf, from)?;
        }
        Ok(())
    }

    /// The document ended: what it said, if it was whole and named a good command.
    fn finish(self) -> Result<IntIn, IntInError> {
        if !self.stack.is_empty() || !self.root_seen {
            return Err(IntInError::Malformed);
        }
        let found = self.found;
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
}

fn is_xml_space(c: char) -> bool {
    u8::try_from(c).is_ok_and(xml::is_space)
}

/// The start tag is well-formed (see [`xml::is_well_formed_start`]): the gateway's parser would
/// refuse anything else.
fn well_formed_start(e: &BytesStart<'_>) -> Result<(), IntInError> {
    if xml::is_well_formed_start(e) {
        Ok(())
    } else {
        Err(IntInError::Malformed)
    }
}

/// Checks the references in a text and, for a field payauth reads, appends the text with them
/// resolved to its buffer (refusing it past [`MAX_FIELD`] bytes).
fn unescape(raw: &[u8], mut out: Option<(&mut Vec<u8>, Wanted)>) -> Result<(), IntInError> {
    xml::resolve_references(raw, IntInError::Malformed, |bytes| {
        if let Some((buf, field)) = out.as_mut() {
            if buf.len() + bytes.len() > MAX_FIELD {
                return Err(IntInError::FieldTooLong(field.name()));
            }
            buf.extend_from_slice(bytes);
        }
        Ok(())
    })
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

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Piece {
        Text,
        CData,
        Markup,
    }

    fn deal_with(terminal_element: &str) -> String {
        DEAL.replace(
            "<terminalNumber>0882819014</terminalNumber>",
            terminal_element,
        )
    }

    fn terminal_of(xml: &str) -> Result<Option<String>, IntInError> {
        read(xml.as_bytes()).map(|i| i.terminal.map(|t| t.as_str().to_owned()))
    }

    #[test]
    fn a_field_in_pieces_is_refused_not_cut() {
        // Found black-box: the 300 blanks used to be dropped silently while the rest was kept.
        let padded = format!(
            "<terminalNumber>9999999999<!--x-->{}<!--x-->0882819014</terminalNumber>",
            " ".repeat(300)
        );
        assert_eq!(
            terminal_of(&deal_with(&padded)),
            Err(IntInError::MixedContent("terminalNumber"))
        );
        for split in [
            "<terminalNumber>0882<![CDATA[819014]]></terminalNumber>",
            "<terminalNumber><![CDATA[0882]]>819014</terminalNumber>",
            "<terminalNumber>0882<!---->819014</terminalNumber>",
            "<terminalNumber>0882<?pi?>819014</terminalNumber>",
            "<terminalNumber><!--9999999999-->0882819014</terminalNumber>",
            "<terminalNumber><b>9999999999</b></terminalNumber><terminalNumber>0882819014</terminalNumber>",
            "<terminalNumber>0882<b/>819014</terminalNumber>",
        ] {
            assert_eq!(
                terminal_of(&deal_with(split)),
                Err(IntInError::MixedContent("terminalNumber")),
                "{split}"
            );
        }
        assert_eq!(
            read(b"<a><request><command>do<x/>Deal</command></request></a>"),
            Err(IntInError::MixedContent("command"))
        );
        // Blanks around a single piece are fine, whatever their form.
        for fine in [
            "<terminalNumber>\n  <![CDATA[0882819014]]>\n</terminalNumber>",
            "<terminalNumber>&#32;0882819014&#x0A;</terminalNumber>",
            "<terminalNumber>&#48;882819014</terminalNumber>",
        ] {
            assert_eq!(
                terminal_of(&deal_with(fine)),
                Ok(Some("0882819014".into())),
                "{fine}"
            );
        }
        // Over the cap: refused, counted after references are resolved.
        let long = format!(
            "<terminalNumber>{}0882819014</terminalNumber>",
            " ".repeat(300)
        );
        assert_eq!(
            terminal_of(&deal_with(&long)),
            Err(IntInError::FieldTooLong("terminalNumber"))
        );
        let long = format!(
            "<terminalNumber><![CDATA[{}0882819014]]></terminalNumber>",
            " ".repeat(300)
        );
        assert_eq!(
            terminal_of(&deal_with(&long)),
            Err(IntInError::FieldTooLong("terminalNumber"))
        );
        let referenced = format!(
            "<terminalNumber>{}0882819014</terminalNumber>",
            "&#32;".repeat(100)
        );
        assert_eq!(
            terminal_of(&deal_with(&referenced)),
            Ok(Some("0882819014".into()))
        );
        // Long text elsewhere costs nothing and is fine.
        let elsewhere = DEAL.replace("Tom &amp; Jerry", &"x".repeat(10_000));
        assert!(read(elsewhere.as_bytes()).is_ok());
    }

    #[test]
    fn every_terminal_number_counts_empty_ones_too() {
        for two in [
            "<terminalNumber/><terminalNumber>0882819014</terminalNumber>",
            "<terminalNumber>0882819014</terminalNumber><terminalNumber/>",
            "<terminalNumber> </terminalNumber><terminalNumber>0882819014</terminalNumber>",
            "<terminalNumber>0882819014</terminalNumber><x><terminalNumber>9999999999</terminalNumber></x>",
        ] {
            assert_eq!(
                terminal_of(&deal_with(two)),
                Err(IntInError::Ambiguous("terminalNumber")),
                "{two}"
            );
        }
        let same = "<terminalNumber>0882819014</terminalNumber><x><terminalNumber> 0882819014 </terminalNumber></x>";
        assert_eq!(terminal_of(&deal_with(same)), Ok(Some("0882819014".into())));
        assert_eq!(
            terminal_of(&deal_with(
                "<terminalNumber/><terminalNumber></terminalNumber>"
            )),
            Ok(None)
        );
    }

    #[test]
    fn undefined_references_are_refused_anywhere() {
        for bad in [
            "<cardNo>&foo;</cardNo>",
            "<cardNo>4580&nbsp;0000</cardNo>",
            "<cardNo type='&foo;'>4580000000000000</cardNo>",
            "<cardNo type=\"a&b\">4580000000000000</cardNo>",
            "<cardNo type='<'>4580000000000000</cardNo>",
            "<cardNo>&amp</cardNo>",
            "<cardNo>a & b</cardNo>",
            "<cardNo>&#0;</cardNo>",
            "<cardNo>&#1;</cardNo>",
            "<cardNo>&#xD800;</cardNo>",
            "<cardNo>&#xFFFE;</cardNo>",
            "<cardNo>&#x110000;</cardNo>",
            "<cardNo>&#99999999999;</cardNo>",
            "<cardNo>&#X41;</cardNo>",
            "<cardNo>&#;</cardNo>",
            "<cardNo>&#x;</cardNo>",
            "<cardNo>&#-1;</cardNo>",
            "<cardNo>&#+65;</cardNo>",
            "<cardNo&foo;>1</cardNo&foo;>",
            "<cardNo a&b='1'>1</cardNo>",
            "<cardNo><!-- a -- b --></cardNo>",
        ] {
            let xml = DEAL.replace("<cardNo>4580000000000000</cardNo>", bad);
            assert_eq!(read(xml.as_bytes()), Err(IntInError::Malformed), "{bad}");
        }
        for fine in [
            "<cardNo>&lt;&gt;&amp;&apos;&quot;&#65;&#x41;&#x1F600;&#9;</cardNo>",
            "<cardNo type='&amp;&#38;' b=\"'\">1</cardNo>",
            "<cardNo><![CDATA[&foo;]]></cardNo>",
            "<cardNo><!-- &foo; --></cardNo>",
        ] {
            let xml = DEAL.replace("<cardNo>4580000000000000</cardNo>", fine);
            assert!(read(xml.as_bytes()).is_ok(), "{fine}");
        }
    }

    proptest! {
        /// Never panics, whatever the input; what it reads is always a plain command word.
        #[test]
        fn any_bytes_are_read_or_refused(xml in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(int_in) = read(&xml) {
                prop_assert!(int_in.command.bytes().all(|b| b.is_ascii_alphanumeric()));
            }
        }

        /// A terminalNumber made of pieces (text with references, CDATA, comments, elements):
        /// when payauth reads it, every reader agrees on it (the first text node, the last,
        /// or all of them joined).
        #[test]
        fn a_field_read_is_what_every_reader_reads(pieces in proptest::collection::vec(prop_oneof![
            "[0-9 \n]{0,4}".prop_map(|t| (t.clone(), t, Piece::Text)),
            Just(("&#48;".to_owned(), "0".to_owned(), Piece::Text)),
            Just(("&#x20;".to_owned(), " ".to_owned(), Piece::Text)),
            "[0-9 ]{0,4}".prop_map(|t| (format!("<![CDATA[{t}]]>"), t, Piece::CData)),
            Just(("<!--1-->".to_owned(), String::new(), Piece::Markup)),
            Just(("<?x 1?>".to_owned(), String::new(), Piece::Markup)),
            Just(("<b>1</b>".to_owned(), "1".to_owned(), Piece::Markup)),
            Just(("<b/>".to_owned(), String::new(), Piece::Markup)),
        ], 0..5)) {
            let element: String = pieces.iter().map(|(raw, _, _)| raw.as_str()).collect();
            let xml = deal_with(&format!("<terminalNumber>{element}</terminalNumber>"));
            if let Ok(int_in) = read(xml.as_bytes()) {
                prop_assert!(pieces.iter().all(|(_, _, kind)| *kind != Piece::Markup));
                // The nodes a DOM would hold: adjacent text is one node.
                let mut nodes: Vec<(String, Piece)> = Vec::new();
                for (_, text, kind) in &pieces {
                    match nodes.last_mut() {
                        Some((last, Piece::Text)) if *kind == Piece::Text => last.push_str(text),
                        _ => nodes.push((text.clone(), *kind)),
                    }
                }
                let trim = |t: &str| t.trim_matches(is_xml_space).to_owned();
                let texts: Vec<String> = nodes.iter().map(|(t, _)| trim(t)).filter(|t| !t.is_empty()).collect();
                prop_assert!(texts.len() <= 1);
                let all = trim(&nodes.iter().map(|(t, _)| t.as_str()).collect::<String>());
                prop_assert_eq!(int_in.terminal.as_ref().map_or("", TerminalNumber::as_str), all.as_str());
                prop_assert_eq!(texts.first().map_or("", String::as_str), all.as_str());
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
