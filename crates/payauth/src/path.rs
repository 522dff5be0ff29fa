//! The canonical view of a request path: the one thing every routing decision compares.
//!
//! Whether a call is the app's own `Authenticate` (answered locally, never forwarded) or the
//! relay must be decided on the path as the gateway's server will route it, not on the bytes
//! the app sent: IIS (http.sys and WCF) and servlet containers decode escapes, resolve `.` and
//! `..`, collapse `//`, drop a trailing slash, `;parameters` and (Windows) trailing dots and
//! spaces, and compare case-insensitively. [`canonicalize`] does all of that, at least as
//! aggressively as any of them, and refuses ([`PathError`]) what servers could read differently:
//! encoded separators, double or malformed escapes, control bytes, non-ASCII characters (Windows
//! maps some of them to ASCII letters) and dot segments padded with dots or spaces.
//!
//! ```
//! use payauth::path::canonicalize;
//!
//! let path = canonicalize("/APIcardProcREST/v1.0.0/x/..//%41uthenticate.;a=b/")?;
//! assert!(path.eq_ignore_ascii_case("/apicardprocrest/v1.0.0/authenticate"));
//! assert!(canonicalize("/a%2Fb").is_err());
//! # Ok::<(), payauth::path::PathError>(())
//! ```

use std::borrow::Cow;

/// Why a path was refused: the request gets `bad_request` and is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/`.
    #[error("the path is not absolute")]
    NotAbsolute,
    /// A literal backslash, or an encoded `/`, `\`, `;`, `?` or `#`: servers disagree on whether
    /// those split the path.
    #[error("the path has an encoded separator or a backslash")]
    EncodedSeparator,
    /// A `%` not followed by two hex digits (`%zz`, `%4`, IIS's `%u0041`), or an encoded `%`
    /// (double escaping, which a second decoder would undo).
    #[error("the path has a malformed or double percent-escape")]
    BadEscape,
    /// A control byte (below 0x20, or 0x7F), encoded or not.
    #[error("the path has a control byte")]
    ControlByte,
    /// Decoded bytes that are not UTF-8 (`%FF`, the overlong `%C0%AF`).
    #[error("the decoded path is not utf-8")]
    NotUtf8,
    /// A non-ASCII character: Windows best-fit mapping and case tables turn some into ASCII
    /// letters (`ſ` compares equal to `S`), so their routing is not ours to guess.
    #[error("the path has a non-ascii character")]
    NonAscii,
    /// A segment of dots and spaces other than `.`, `..` or spaces alone (`..%20`, `...`): one
    /// server trims it to `..`, another drops it.
    #[error("the path has an ambiguous dot segment")]
    AmbiguousDotSegment,
}

/// A request path as the gateway's server routes it: percent-decoded, dot segments resolved,
/// empty segments and a trailing slash removed, path parameters (`;...` in a segment) removed,
/// trailing dots and spaces of each segment removed (Windows does that).
///
/// Case is kept; compare with [`eq_ignore_ascii_case`](Self::eq_ignore_ascii_case) (IIS is
/// case-insensitive). It always starts with `/`, and its segments are non-empty printable ASCII
/// without `%`, `;` or `\`, so it is its own canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath<'a>(Cow<'a, str>);

/// Canonicalises a URI's path (no query); an empty path is `/`.
///
/// Borrows the input when it already is canonical, the common case, so the hot path does not
/// allocate.
pub fn canonicalize(path: &str) -> Result<CanonicalPath<'_>, PathError> {
    if is_canonical(path) {
        return Ok(CanonicalPath(Cow::Borrowed(path)));
    }
    resolve(path).map(|owned| CanonicalPath(Cow::Owned(owned)))
}

impl CanonicalPath<'_> {
    /// The canonical path.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Case-insensitive comparison with another path, itself canonicalised first (config paths
    /// may be written with a trailing slash); a path that is refused equals nothing.
    pub fn eq_ignore_ascii_case(&self, other: &str) -> bool {
        canonicalize(other).is_ok_and(|other| self.0.eq_ignore_ascii_case(&other.0))
    }

    /// The segments, in order (no empty ones; none for the root).
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|segment| !segment.is_empty())
    }

    /// The last segment (`""` for the root).
    pub fn last_segment(&self) -> &str {
        self.0.rsplit_once('/').map_or("", |(_, last)| last)
    }

    /// Whether `prefix` (canonicalised) is this path or a whole-segment prefix of it, ignoring
    /// ASCII case: `/a/b` is a prefix of `/a/b/c`, not of `/a/bc`. WCF routes
    /// `Service.svc/anything` to the service. A refused prefix is a prefix of nothing.
    pub fn starts_with_ignore_ascii_case(&self, prefix: &str) -> bool {
        let Ok(prefix) = canonicalize(prefix) else {
            return false;
        };
        let (path, prefix) = (self.0.as_bytes(), prefix.0.as_bytes());
        if prefix == b"/" {
            return true;
        }
        path.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
            && matches!(path.get(prefix.len()), None | Some(b'/'))
    }

    /// Detaches the path from the input it may borrow.
    pub fn into_owned(self) -> CanonicalPath<'static> {
        CanonicalPath(Cow::Owned(self.0.into_owned()))
    }
}

/// Whether [`resolve`] would return `path` unchanged: `/`, or segments that are non-empty, do
/// not end in a dot or a space, and hold only printable ASCII other than `%`, `;` and `\`.
///
/// On every request's path, so written as folds over the bytes without early exits (which the
/// compiler vectorises) rather than segment by segment; the tests check it against the
/// segment-by-segment reading.
fn is_canonical(path: &str) -> bool {
    if path == "/" {
        return true;
    }
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let bytes = rest.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    let printable = bytes.iter().fold(true, |ok, &b| {
        ok & (b' '..=b'~').contains(&b) & (b != b'%') & (b != b';') & (b != b'\\')
    });
    // A segment is empty or ends in a dot or a space exactly when a `/` is the first byte or
    // follows a `/`, `.` or space, or the last byte is one of those.
    let segment_ends = bytes.windows(2).fold(true, |ok, pair| {
        ok & !(pair[1] == b'/' && matches!(pair[0], b'/' | b'.' | b' '))
    });
    printable && segment_ends && first != b'/' && !matches!(last, b'/' | b'.' | b' ')
}

/// The slow path: applies the rules segment by segment.
fn resolve(path: &str) -> Result<String, PathError> {
    let Some(rest) = path.strip_prefix('/') else {
        return if path.is_empty() {
            Ok(String::from("/"))
        } else {
            Err(PathError::NotAbsolute)
        };
    };
    if path.contains('\\') {
        return Err(PathError::EncodedSeparator);
    }
    let mut out = String::with_capacity(path.len());
    for raw in rest.split('/') {
        // Tomcat ends the name at a raw `;`. The parameters are dropped but still checked:
        // a server that does not know parameters reads them as part of the name.
        let (name, parameters) = raw.split_once(';').unwrap_or((raw, ""));
        decode(parameters)?;
        let name = decode(name)?;
        match &*name {
            "." => continue,
            ".." => {
                // Never above the root: there is nothing to remove there.
                if let Some(parent) = out.rfind('/') {
                    out.truncate(parent);
                }
                continue;
            }
            _ => {}
        }
        let kept = name.trim_end_matches(['.', ' ']);
        if kept.is_empty() {
            // Spaces alone, or `.` with spaces, are dropped by every reading; `.. ` and `...`
            // are `..` to a server that trims first and a plain name to one that does not.
            if !matches!(name.trim_end_matches(' '), "" | ".") {
                return Err(PathError::AmbiguousDotSegment);
            }
            continue;
        }
        out.push('/');
        out.push_str(kept);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Percent-decodes one segment name (or its parameters), refusing every escape a server could
/// read differently. Hand-written: `percent-encoding` decodes leniently (`%zz` stays as is),
/// and here every malformed escape must be refused.
fn decode(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let decoded = if raw.contains('%') {
        let mut bytes = Vec::with_capacity(raw.len());
        let mut input = raw.bytes();
        while let Some(b) = input.next() {
            if b != b'%' {
                bytes.push(b);
                continue;
            }
            let (Some(high), Some(low)) = (
                input.next().and_then(hex_digit),
                input.next().and_then(hex_digit),
            ) else {
                return Err(PathError::BadEscape);
            };
            match high << 4 | low {
                b'/' | b'\\' | b';' | b'?' | b'#' => return Err(PathError::EncodedSeparator),
                b'%' => return Err(PathError::BadEscape),
                byte => bytes.push(byte),
            }
        }
        Cow::Owned(String::from_utf8(bytes).map_err(|_| PathError::NotUtf8)?)
    } else {
        Cow::Borrowed(raw)
    };
    for b in decoded.bytes() {
        if b < 0x20 || b == 0x7F {
            return Err(PathError::ControlByte);
        }
        if !b.is_ascii() {
            return Err(PathError::NonAscii);
        }
    }
    Ok(decoded)
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const AUTHENTICATE: &str = "/APIcardProcREST/v1.0.0/Authenticate";
    const SOAP: &str = "/APIcardProcR119/CardProcAPI.svc";

    fn canon(path: &str) -> String {
        match canonicalize(path) {
            Ok(canonical) => canonical.as_str().to_owned(),
            Err(e) => panic!("{path:?} refused: {e}"),
        }
    }

    #[test]
    fn authenticate_variants_are_authenticate() {
        for variant in [
            AUTHENTICATE,
            "/APIcardProcREST/v1.0.0/Authenticate/",
            "/APIcardProcREST/v1.0.0/./Authenticate",
            "/APIcardProcREST/v1.0.0/x/../Authenticate",
            "/APIcardProcREST//v1.0.0//Authenticate",
            "//APIcardProcREST/v1.0.0/Authenticate//",
            "/APIcardProcREST/v1.0.0/%41uthenticate",
            "/APIcardProcREST/v1.0.0/Authenticat%65",
            "/APIcardProcREST/v1.0.0/Authenticate;a=b",
            "/APIcardProcREST;a=b/v1.0.0/Authenticate",
            "/APIcardProcREST/v1.0.0/AUTHENTICATE",
            "/APIcardProcREST/v1.0.0/Authenticate.",
            "/APIcardProcREST/v1.0.0/Authenticate%20",
            "/APIcardProcREST/v1.0.0/Authenticate%2e",
            "/APIcardProcREST/v1.0.0/%2e/Authenticate",
            "/APIcardProcREST/v1.0.0/x/%2E%2e/Authenticate",
            "/APIcardProcREST/v1.0.0/x/..;y/Authenticate",
            "/APIcardProcREST/v1.0.0/Authenticate/x/..",
            "/../../APIcardProcREST/v1.0.0/Authenticate",
        ] {
            let path = canonicalize(variant).map_err(|e| format!("{variant:?}: {e}"));
            assert!(
                path.as_ref()
                    .is_ok_and(|p| p.eq_ignore_ascii_case(AUTHENTICATE)),
                "{variant:?} -> {path:?}"
            );
        }
    }

    #[test]
    fn soap_variants_are_the_service() {
        for variant in [
            SOAP,
            "/APIcardProcR119/CardProcAPI.svc/",
            "/APIcardProcR119/./CardProcAPI.svc",
            "/APIcardProcR119//CardProcAPI.svc",
            "/APIcardProcR119/%43ardProcAPI.svc",
            "/APIcardProcR119/CardProcAPI.svc/Authenticate",
            "/apicardprocr119/cardprocapi.SVC.",
        ] {
            let path = canonicalize(variant).map_err(|e| format!("{variant:?}: {e}"));
            assert!(
                path.as_ref()
                    .is_ok_and(|p| p.starts_with_ignore_ascii_case(SOAP)),
                "{variant:?} -> {path:?}"
            );
        }
        let other = canonicalize("/APIcardProcR119/CardProcAPI.svcX").map(|p| p.into_owned());
        assert!(other.is_ok_and(|p| !p.starts_with_ignore_ascii_case(SOAP)));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        use PathError::*;
        for (path, expected) in [
            ("", Ok("/")),
            ("a/b", Err(NotAbsolute)),
            ("*", Err(NotAbsolute)),
            ("/a%2Fb", Err(EncodedSeparator)),
            ("/a%5cb", Err(EncodedSeparator)),
            ("/a\\b", Err(EncodedSeparator)),
            ("/a;x\\y/b", Err(EncodedSeparator)),
            ("/a%3Bb", Err(EncodedSeparator)),
            ("/a%3fb", Err(EncodedSeparator)),
            ("/a%23b", Err(EncodedSeparator)),
            ("/a;x=%2F/b", Err(EncodedSeparator)),
            ("/a%zz", Err(BadEscape)),
            ("/a%4", Err(BadEscape)),
            ("/a%", Err(BadEscape)),
            ("/%u0041uthenticate", Err(BadEscape)),
            ("/%2541uthenticate", Err(BadEscape)),
            ("/a%00", Err(ControlByte)),
            ("/a%7F", Err(ControlByte)),
            ("/a\tb", Err(ControlByte)),
            ("/a%C0%AF", Err(NotUtf8)),
            ("/a%FF", Err(NotUtf8)),
            ("/a%C3%A9", Err(NonAscii)),
            ("/é", Err(NonAscii)),
            ("/a/..%20/b", Err(AmbiguousDotSegment)),
            ("/a/.../b", Err(AmbiguousDotSegment)),
            ("/a/%2e%2e%2e", Err(AmbiguousDotSegment)),
        ] {
            let got = canonicalize(path);
            assert_eq!(
                got.as_ref().map(|p| p.as_str()).map_err(|e| *e),
                expected,
                "{path:?}"
            );
        }
    }

    #[test]
    fn accessors() {
        let path = canonicalize("/a/./b;x/%2e%2e/c./").map(CanonicalPath::into_owned);
        let Ok(path) = path else {
            panic!("refused: {path:?}")
        };
        assert_eq!(path.as_str(), "/a/c");
        assert_eq!(path.segments().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(path.last_segment(), "c");
        assert!(path.starts_with_ignore_ascii_case("/A/"));
        assert!(path.starts_with_ignore_ascii_case("/"));
        assert!(path.starts_with_ignore_ascii_case("/a/C"));
        assert!(!path.starts_with_ignore_ascii_case("/a/c/d"));
        assert!(!path.starts_with_ignore_ascii_case("/a%2F"));
        assert!(!path.eq_ignore_ascii_case("/a/c%zz"));

        let root = canonicalize("/./..//");
        assert!(root.as_ref().is_ok_and(|root| root.as_str() == "/"
            && root.segments().next().is_none()
            && root.last_segment().is_empty()));
        // Spaces alone and a dot with spaces are dropped; a space inside a name is kept.
        assert_eq!(canon("/%20/a%20b/.%20/c"), "/a b/c");
        // `+` is not a space in a path.
        assert_eq!(canon("/a+b"), "/a+b");
    }

    #[test]
    fn canonical_input_is_borrowed() {
        for path in ["/", AUTHENTICATE, SOAP, "/a/.b/c d/+"] {
            let canonical = canonicalize(path);
            assert!(
                matches!(canonical, Ok(CanonicalPath(Cow::Borrowed(p))) if p == path),
                "{path:?}: {canonical:?}"
            );
        }
    }

    /// Paths made of the pieces that matter to the rules.
    fn raw_path() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "/", "/", "/", ".", ".", "%", ";", "2", "5", "F", "f", "e", "E", "A", "a", "\\", " ",
            "%2e", "%2E", "%20", "%41", "%2F", "%3B", "=", "x", "..", "+", "~", "%C3%A9", "%7f",
        ]);
        (any::<bool>(), prop::collection::vec(piece, 0..24)).prop_map(|(rooted, pieces)| {
            let rest = pieces.concat();
            if rooted {
                format!("/{rest}")
            } else {
                rest
            }
        })
    }

    /// Segments that canonicalise in various ways, none of them refused.
    fn segments() -> impl Strategy<Value = Vec<&'static str>> {
        let segment = prop::sample::select(vec![
            "a", "Ab", "v1.0.0", "%41x", "b%2e", "c.", "d%20", "", ".", "..", "%2e%2E", "e;f=g",
            "h+i", " ",
        ]);
        prop::collection::vec(segment, 0..8)
    }

    fn check_invariants(out: &str) -> Result<(), TestCaseError> {
        prop_assert!(out.starts_with('/'));
        prop_assert!(out == "/" || !out.ends_with('/'));
        if out != "/" {
            for segment in out[1..].split('/') {
                prop_assert!(!segment.is_empty(), "empty segment in {:?}", out);
                prop_assert!(
                    segment != "." && segment != "..",
                    "dot segment in {:?}",
                    out
                );
                prop_assert!(!segment.ends_with(['.', ' ']), "untrimmed {:?}", out);
                prop_assert!(
                    segment
                        .bytes()
                        .all(|b| matches!(b, b' '..=b'~') && !matches!(b, b'%' | b';' | b'\\')),
                    "undecoded or refused byte in {:?}",
                    out
                );
            }
        }
        Ok(())
    }

    /// The segment-by-segment reading of [`is_canonical`]'s rule.
    fn is_canonical_by_segments(path: &str) -> bool {
        if path == "/" {
            return true;
        }
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        rest.split('/').all(|segment| {
            !segment.is_empty()
                && !segment.ends_with(['.', ' '])
                && segment
                    .bytes()
                    .all(|b| matches!(b, b' '..=b'~') && !matches!(b, b'%' | b';' | b'\\'))
        })
    }

    #[test]
    fn the_canonical_check_agrees_with_its_segment_by_segment_reading_on_edges() {
        for path in [
            "",
            "/",
            "//",
            "//a",
            "/a",
            "/a/",
            "/a//b",
            "/a/b",
            "/.",
            "/a.",
            "/a./b",
            "/a /b",
            "/ a",
            "/a/.b",
            "/a%2f",
            "/a;b",
            "/a\\b",
            "/é",
            "/a\u{7f}",
            "a/b",
            "/a/b.",
            "/a/b ",
            "/APIcardProcREST/v1.0.0/CreditCardSale_Manual",
        ] {
            assert_eq!(
                is_canonical(path),
                is_canonical_by_segments(path),
                "{path:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]
        /// Paths made of segments that each break one rule or none (mostly none, so that a
        /// single break among good segments comes up often).
        #[test]
        fn the_canonical_check_agrees_with_its_segment_by_segment_reading(
            rooted: bool,
            segments in proptest::collection::vec(
                proptest::sample::select(vec![
                    "a", "ab", " a", "a", "ab", " a", "a", "ab", " a", "a", "ab", "a-b",
                    "", "", "a.", "a ", ".", "%", ";", "\\", "é", "\u{7f}",
                ]),
                0..5,
            ),
        ) {
            let path = format!("{}{}", if rooted { "/" } else { "" }, segments.join("/"));
            prop_assert_eq!(is_canonical(&path), is_canonical_by_segments(&path), "{:?}", path);
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_output_is_canonical(path in raw_path()) {
            if let Ok(canonical) = canonicalize(&path) {
                check_invariants(canonical.as_str())?;
                let again = canonicalize(canonical.as_str());
                prop_assert!(
                    matches!(&again, Ok(CanonicalPath(Cow::Borrowed(p))) if *p == canonical.as_str()),
                    "{:?} -> {:?} -> {:?}", path, canonical, again
                );
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(path in any::<String>()) {
            if let Ok(canonical) = canonicalize(&format!("/{path}")) {
                check_invariants(canonical.as_str())?;
            }
        }

        #[test]
        fn fast_path_agrees_with_slow_path(path in raw_path()) {
            let fast = canonicalize(&path).map(|p| p.as_str().to_owned());
            prop_assert_eq!(&fast, &resolve(&path));
            // The fast path is taken exactly when the slow path would give the input back.
            prop_assert_eq!(is_canonical(&path), fast.as_deref() == Ok(path.as_str()));
        }

        #[test]
        fn noise_does_not_change_the_path(
            segments in segments(),
            at in any::<prop::sample::Index>(),
            noise in 0..5u8,
        ) {
            let join = |segments: &[&str]| format!("/{}", segments.join("/"));
            let base = join(&segments);
            let at = at.index(segments.len() + 1);
            let mut noisy: Vec<String> = segments.iter().map(|s| s.to_string()).collect();
            match noise {
                0 => noisy.insert(at, ".".into()),
                1 => noisy.insert(at, String::new()),
                2 => {
                    noisy.insert(at, "..".into());
                    noisy.insert(at, "x".into());
                }
                3 => match noisy.get_mut(at) {
                    Some(segment) => segment.push_str(";x=y"),
                    None => noisy.push(";x=y".into()),
                },
                _ => noisy.push(String::new()),
            }
            let noisy = join(&noisy.iter().map(String::as_str).collect::<Vec<_>>());
            let (base, noisy) = (canonicalize(&base), canonicalize(&noisy));
            prop_assert!(base.is_ok(), "{:?}", base);
            prop_assert_eq!(
                base.map(|p| p.as_str().to_owned()),
                noisy.map(|p| p.as_str().to_owned())
            );
        }
    }
}
