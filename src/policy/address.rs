//! Hand-written RFC 5322 address-list reader for the fields that decide who sees a message
//! (To, Cc, Resent-To, Resent-Cc). Owns lexing (unfolding, comments, quoted strings, domain
//! literals), the strict grammar (groups, display names, routes, obs-list and obs-local-part
//! forms) and the lenient safe-side fallback, plus the canonical address form.
//!
//! # Canonical form
//! `local@domain`, where the local part is its RFC 5322 *semantic* value (CFWS removed,
//! quoted-pairs unescaped, folds removed), written bare when it is a valid dot-atom (RFC 6532
//! UTF-8 allowed) and otherwise as one quoted string with `"` and `\` escaped. `"john"@x` and
//! `john@x` are therefore the same address; `"john smith"@x` stays quoted. The domain is
//! lower-cased (Unicode lower case for dot-atoms, as IDNA maps upper to lower case anyway;
//! ASCII for domain literals, whose inner whitespace is dropped). The local part keeps its case. An address with no `@` (old-style
//! local name such as `postmaster`) is just its canonical local part.
//!
//! # Which inputs get which answer
//! - **Strict**: the field matches RFC 5322 `address-list` including the obsolete forms
//!   (empty list elements, CFWS around dots and `@`, routes, quoted words mixed with atoms).
//!   An empty field is strict with zero addresses.
//! - **Unreadable** ([`AddressError`]): the *lexical* structure is uncertain, i.e. where one
//!   token ends and the next begins depends on the reader: an unclosed quoted string, comment,
//!   `<` or domain literal, a `<` inside `<>`, a `[...]` holding `,`, `@` or other address
//!   punctuation (readers that do not know literals split there); or a candidate address that
//!   cannot be written down (`@` with nothing before or after it, bytes that are not UTF-8).
//!   Readers disagree on such fields, so nobody can count them; the caller refuses the message.
//! - **Lenient**: tokens are certain but the grammar above them is not (`;` used as a list
//!   separator, `@` in an unquoted display name, a display name followed by an address with no
//!   `<>`, several `<>` in one element, group without its `;`, nested groups, an element with no
//!   `@` at all). Addresses are then taken from the tokens directly:
//!   every `<...>` gives the address inside it (route dropped); every `@` outside `<>` and
//!   outside comments/quoted strings gives the longest `word *("." word) "@" domain` around it;
//!   an element (between top-level `,`/`;`) that yields no address but has words that are not a
//!   group name counts as one local-only address made of those words.
//!
//! Why lenient never under-counts: every reading that keeps the RFC 5322 tokens (which are
//! certain here) must build each addr-spec around its own `@` token, or take it from a `<...>`;
//! it cannot split a `word.word` chain (a dangling `.` is no token boundary an address may end
//! on) and it cannot join words that have no `.` between them. So each address of such a reading
//! maps to a distinct `@` or `<>` we also take, with the same canonical text; and an element
//! with no `@` can hold at most one address in any reading, which we count too.
//!
//! Cost is linear in the field length: one lexing pass (comment nesting is an explicit counter,
//! never recursion) and parsers that only move forward; the lenient chain scans are bounded by
//! the neighbouring `@` tokens, so every token is visited a constant number of times.

/// A field whose tokens cannot be determined with certainty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("unclosed quoted string '\"'")]
    UnclosedQuote,
    #[error("unclosed comment '('")]
    UnclosedComment,
    #[error("unclosed '<'")]
    UnclosedAngle,
    #[error("a '<' inside another '<...>'")]
    NestedAngle,
    #[error("unclosed domain literal '['")]
    UnclosedDomainLiteral,
    #[error("a '[...]' holding address punctuation such as ',' or '@'")]
    AmbiguousDomainLiteral,
    #[error("an '@' with nothing before it")]
    EmptyLocalPart,
    #[error("an '@' with no domain after it")]
    EmptyDomain,
    #[error("an address that is not valid UTF-8")]
    NotUtf8,
}

/// The addresses of one field, in the order written (duplicates kept; the caller de-duplicates).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressList {
    pub addresses: Vec<String>,
    /// The field is not valid RFC 5322 and was read with the safe-side fallback.
    pub lenient: bool,
}

/// Reads one address-list field value (everything after the colon, folds included).
pub fn parse_address_list(value: &[u8]) -> Result<AddressList, AddressError> {
    let toks = lex(value)?;
    let mut p = Strict {
        v: value,
        t: &toks,
        i: 0,
        out: Vec::new(),
    };
    match p.list() {
        Ok(()) => Ok(AddressList {
            addresses: p.out,
            lenient: false,
        }),
        Err(Fail::Hard(e)) => Err(e),
        Err(Fail::Grammar) => Ok(AddressList {
            addresses: lenient(value, &toks)?,
            lenient: true,
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Atom,
    /// Range is the inside of the quotes.
    Quoted,
    /// Range is the inside of the brackets.
    Literal,
    Special(u8),
    /// A byte that is neither atext nor a special (control character, stray `)`/`]`/`\`).
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Tok {
    kind: Kind,
    start: usize,
    end: usize,
}

impl Tok {
    fn is_word(&self) -> bool {
        matches!(self.kind, Kind::Atom | Kind::Quoted)
    }
    fn is(&self, c: u8) -> bool {
        self.kind == Kind::Special(c)
    }
}

/// RFC 5322 atext, plus every 8-bit byte (RFC 6532 UTF8-non-ascii; validated when an address
/// is written out).
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

fn lex(v: &[u8]) -> Result<Vec<Tok>, AddressError> {
    let mut toks = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let b = v[i];
        match b {
            // Folding: the splitter guarantees CR/LF only occur as part of a fold.
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'(' => i = skip_comment(v, i)?,
            b'"' => {
                let end = scan_delimited(v, i + 1, b'"').ok_or(AddressError::UnclosedQuote)?;
                toks.push(Tok {
                    kind: Kind::Quoted,
                    start: i + 1,
                    end,
                });
                i = end + 1;
            }
            b'[' => {
                let end =
                    scan_delimited(v, i + 1, b']').ok_or(AddressError::UnclosedDomainLiteral)?;
                // Readers that do not know domain literals split at these; RFC readers do not.
                if v[i + 1..end].iter().any(|b| b",;@<>\"()[\\".contains(b)) {
                    return Err(AddressError::AmbiguousDomainLiteral);
                }
                toks.push(Tok {
                    kind: Kind::Literal,
                    start: i + 1,
                    end,
                });
                i = end + 1;
            }
            b'<' | b'>' | b':' | b';' | b'@' | b',' | b'.' => {
                toks.push(Tok {
                    kind: Kind::Special(b),
                    start: i,
                    end: i + 1,
                });
                i += 1;
            }
            _ if is_atext(b) => {
                let start = i;
                while i < v.len() && is_atext(v[i]) {
                    i += 1;
                }
                toks.push(Tok {
                    kind: Kind::Atom,
                    start,
                    end: i,
                });
            }
            _ => {
                toks.push(Tok {
                    kind: Kind::Other,
                    start: i,
                    end: i + 1,
                });
                i += 1;
            }
        }
    }
    Ok(toks)
}

/// Returns the offset just past the comment starting at `start` (which holds `(`).
fn skip_comment(v: &[u8], start: usize) -> Result<usize, AddressError> {
    // Explicit depth counter: a header of a million `(` must not recurse.
    let mut depth = 0usize;
    let mut i = start;
    while i < v.len() {
        match v[i] {
            b'\\' => i += 1,
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(AddressError::UnclosedComment)
}

/// Finds the unescaped `close` byte from `from` on (quoted-pairs skipped).
fn scan_delimited(v: &[u8], from: usize, close: u8) -> Option<usize> {
    let mut i = from;
    while i < v.len() {
        if v[i] == b'\\' {
            i += 2;
            continue;
        }
        if v[i] == close {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Semantic value of a quoted string or domain literal: quoted-pairs unescaped, folds removed
/// (the CRLF of a fold is invisible; its whitespace stays, RFC 5322 3.2.4).
fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\\' if i + 1 < raw.len() && raw[i + 1] != b'\r' && raw[i + 1] != b'\n' => {
                out.push(raw[i + 1]);
                i += 2;
            }
            b'\n' => i += 1,
            b'\r' if raw.get(i + 1) == Some(&b'\n') => i += 1,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn word_value(v: &[u8], t: &Tok) -> Vec<u8> {
    match t.kind {
        Kind::Quoted => unescape(&v[t.start..t.end]),
        _ => v[t.start..t.end].to_vec(),
    }
}

// ---------------------------------------------------------------------------------------------
// Canonical form

fn is_dot_atom(s: &[u8]) -> bool {
    !s.is_empty()
        && s.split(|&b| b == b'.')
            .all(|part| !part.is_empty() && part.iter().all(|&b| is_atext(b)))
}

fn render_local(value: Vec<u8>) -> Result<String, AddressError> {
    let s = String::from_utf8(value).map_err(|_| AddressError::NotUtf8)?;
    if is_dot_atom(s.as_bytes()) {
        return Ok(s);
    }
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    Ok(q)
}

fn render_domain_atoms(value: Vec<u8>) -> Result<String, AddressError> {
    let s = String::from_utf8(value).map_err(|_| AddressError::NotUtf8)?;
    Ok(s.to_lowercase())
}

fn render_literal(v: &[u8], t: &Tok) -> Result<String, AddressError> {
    let mut inner = unescape(&v[t.start..t.end]);
    inner.retain(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
    let s = String::from_utf8(inner).map_err(|_| AddressError::NotUtf8)?;
    Ok(format!("[{}]", s.to_ascii_lowercase()))
}

/// Joins a run of words and dots: dots kept, words that touch without a dot separated by one
/// space (only lenient local-only names have such runs).
fn chain_value(v: &[u8], toks: &[Tok]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut prev_word = false;
    for t in toks {
        if t.is_word() {
            if prev_word {
                out.push(b' ');
            }
            out.extend_from_slice(&word_value(v, t));
            prev_word = true;
        } else {
            out.push(b'.');
            prev_word = false;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Strict RFC 5322 grammar

enum Fail {
    /// Not RFC 5322: read the field leniently instead.
    Grammar,
    Hard(AddressError),
}

impl From<AddressError> for Fail {
    fn from(e: AddressError) -> Fail {
        Fail::Hard(e)
    }
}

struct Strict<'a> {
    v: &'a [u8],
    t: &'a [Tok],
    i: usize,
    out: Vec<String>,
}

impl Strict<'_> {
    fn peek(&self, c: u8) -> bool {
        self.t.get(self.i).is_some_and(|t| t.is(c))
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek(c);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn at_end(&self) -> bool {
        self.i >= self.t.len()
    }

    /// End (exclusive) of the run of words and dots starting at `from`.
    fn run_end(&self, from: usize) -> usize {
        let mut j = from;
        while j < self.t.len() && (self.t[j].is_word() || self.t[j].is(b'.')) {
            j += 1;
        }
        j
    }

    /// address-list, with obs-addr-list's empty elements.
    fn list(&mut self) -> Result<(), Fail> {
        loop {
            while self.eat(b',') {}
            if self.at_end() {
                return Ok(());
            }
            self.element(true)?;
            if self.at_end() {
                return Ok(());
            }
            if !self.eat(b',') {
                return Err(Fail::Grammar);
            }
        }
    }

    /// mailbox, or (when `group_ok`) group.
    fn element(&mut self, group_ok: bool) -> Result<(), Fail> {
        let start = self.i;
        let end = self.run_end(start);
        match self.t.get(end).map(|t| t.kind) {
            Some(Kind::Special(b'@')) => {
                let local = self.local_part(start, end)?;
                self.i = end + 1;
                let domain = self.domain()?;
                self.out.push(format!("{local}@{domain}"));
                Ok(())
            }
            Some(Kind::Special(b'<')) => {
                self.phrase(start, end, true)?;
                self.i = end;
                self.angle_addr()
            }
            Some(Kind::Special(b':')) if group_ok => {
                self.phrase(start, end, false)?;
                self.i = end + 1;
                self.group_list()
            }
            _ => Err(Fail::Grammar),
        }
    }

    /// display-name = phrase (obs-phrase allows dots after the first word).
    fn phrase(&self, start: usize, end: usize, may_be_empty: bool) -> Result<(), Fail> {
        if start == end {
            return if may_be_empty {
                Ok(())
            } else {
                Err(Fail::Grammar)
            };
        }
        if self.t[start].is_word() {
            Ok(())
        } else {
            Err(Fail::Grammar)
        }
    }

    /// local-part = word *("." word) (dot-atom, quoted-string and obs-local-part in one).
    fn local_part(&self, start: usize, end: usize) -> Result<String, Fail> {
        let toks = &self.t[start..end];
        if toks.is_empty() || toks.len().is_multiple_of(2) {
            return Err(Fail::Grammar);
        }
        for (k, t) in toks.iter().enumerate() {
            let ok = if k % 2 == 0 { t.is_word() } else { t.is(b'.') };
            if !ok {
                return Err(Fail::Grammar);
            }
        }
        Ok(render_local(chain_value(self.v, toks))?)
    }

    /// domain = dot-atom / domain-literal / obs-domain.
    fn domain(&mut self) -> Result<String, Fail> {
        let Some(first) = self.t.get(self.i) else {
            return Err(Fail::Grammar);
        };
        match first.kind {
            Kind::Literal => {
                self.i += 1;
                Ok(render_literal(self.v, first)?)
            }
            Kind::Atom => {
                let mut value = self.v[first.start..first.end].to_vec();
                self.i += 1;
                while self.peek(b'.') {
                    let Some(next) = self.t.get(self.i + 1).filter(|t| t.kind == Kind::Atom) else {
                        return Err(Fail::Grammar);
                    };
                    value.push(b'.');
                    value.extend_from_slice(&self.v[next.start..next.end]);
                    self.i += 2;
                }
                Ok(render_domain_atoms(value)?)
            }
            _ => Err(Fail::Grammar),
        }
    }

    /// angle-addr = "<" [obs-route] addr-spec ">"; the route is read and dropped.
    fn angle_addr(&mut self) -> Result<(), Fail> {
        if !self.eat(b'<') {
            return Err(Fail::Grammar);
        }
        if self.peek(b'@') || self.peek(b',') {
            loop {
                while self.eat(b',') {}
                if !self.eat(b'@') {
                    break;
                }
                self.domain()?;
            }
            if !self.eat(b':') {
                return Err(Fail::Grammar);
            }
        }
        let start = self.i;
        let end = self.run_end(start);
        if !self.t.get(end).is_some_and(|t| t.is(b'@')) {
            return Err(Fail::Grammar);
        }
        let local = self.local_part(start, end)?;
        self.i = end + 1;
        let domain = self.domain()?;
        if !self.eat(b'>') {
            return Err(Fail::Grammar);
        }
        self.out.push(format!("{local}@{domain}"));
        Ok(())
    }

    /// group-list after the ':' up to and including the ';' (obs-group-list empties allowed).
    fn group_list(&mut self) -> Result<(), Fail> {
        loop {
            while self.eat(b',') {}
            if self.eat(b';') {
                return Ok(());
            }
            if self.at_end() {
                return Err(Fail::Grammar);
            }
            self.element(false)?;
            if !(self.peek(b',') || self.peek(b';')) {
                return Err(Fail::Grammar);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lenient safe-side reading (tokens certain, grammar not)

#[derive(Default)]
struct Element {
    has_addr: bool,
    /// Words that belong to no address and to no group name, as one local-only name.
    loose: Vec<Tok>,
}

fn lenient(v: &[u8], t: &[Tok]) -> Result<Vec<String>, AddressError> {
    let mut out = Vec::new();
    let mut elem = Element::default();
    let mut i = 0;
    let mut seg_start = 0;
    while i < t.len() {
        let tok = t[i];
        if tok.is(b'<') {
            scan_segment(v, &t[seg_start..i], &mut out, &mut elem)?;
            let mut close = i + 1;
            loop {
                match t.get(close) {
                    None => return Err(AddressError::UnclosedAngle),
                    Some(c) if c.is(b'<') => return Err(AddressError::NestedAngle),
                    Some(c) if c.is(b'>') => break,
                    Some(_) => close += 1,
                }
            }
            let inner_start = skip_route(t, i + 1, close);
            let mut inner = Element::default();
            scan_segment(v, &t[inner_start..close], &mut out, &mut inner)?;
            if !inner.has_addr && !inner.loose.is_empty() {
                out.push(render_local(chain_value(v, &inner.loose))?);
            }
            elem.has_addr = true;
            i = close + 1;
            seg_start = i;
        } else if tok.is(b',') || tok.is(b';') {
            scan_segment(v, &t[seg_start..i], &mut out, &mut elem)?;
            finish_element(v, &mut out, &mut elem)?;
            i += 1;
            seg_start = i;
        } else {
            i += 1;
        }
    }
    scan_segment(v, &t[seg_start..], &mut out, &mut elem)?;
    finish_element(v, &mut out, &mut elem)?;
    Ok(out)
}

/// Index after an obs-route (`*("," / "@" domain) ":"`) starting at `from`, or `from` itself
/// when the tokens are not exactly a route: then nothing is skipped and every `@` is read.
fn skip_route(t: &[Tok], from: usize, to: usize) -> usize {
    let mut k = from;
    let mut saw_at = false;
    while k < to {
        if t[k].is(b',') {
            k += 1;
        } else if t[k].is(b'@') {
            saw_at = true;
            k += 1;
            match t.get(k).filter(|_| k < to).map(|x| x.kind) {
                Some(Kind::Literal) => k += 1,
                Some(Kind::Atom) => {
                    k += 1;
                    while k + 1 < to && t[k].is(b'.') && t[k + 1].kind == Kind::Atom {
                        k += 2;
                    }
                }
                _ => return from,
            }
        } else {
            break;
        }
    }
    if saw_at && k < to && t[k].is(b':') {
        k + 1
    } else {
        from
    }
}

fn finish_element(v: &[u8], out: &mut Vec<String>, elem: &mut Element) -> Result<(), AddressError> {
    if !elem.has_addr && !elem.loose.is_empty() {
        out.push(render_local(chain_value(v, &elem.loose))?);
    }
    *elem = Element::default();
    Ok(())
}

/// Reads a stretch of tokens with no `<`, `>`-pair, `,` or `;` in it.
fn scan_segment(
    v: &[u8],
    t: &[Tok],
    out: &mut Vec<String>,
    elem: &mut Element,
) -> Result<(), AddressError> {
    // `floor` is where the current run of unconsumed words/dots starts.
    let mut floor = 0;
    let mut j = 0;
    while j < t.len() {
        let tok = t[j];
        if tok.is_word() || tok.is(b'.') {
            j += 1;
            continue;
        }
        if tok.is(b'@') {
            // Longest word *("." word) ending at the '@' (two words without a dot never join).
            let mut k = j;
            while k > floor {
                let prev = t[k - 1];
                if prev.is(b'.') || (prev.is_word() && !(k < j && t[k].is_word())) {
                    k -= 1;
                } else {
                    break;
                }
            }
            if k == j {
                return Err(AddressError::EmptyLocalPart);
            }
            elem.loose.extend_from_slice(&t[floor..k]);
            let local = render_local(chain_value(v, &t[k..j]))?;
            let (domain, next) = lenient_domain(v, t, j + 1)?;
            out.push(format!("{local}@{domain}"));
            elem.has_addr = true;
            j = next;
            floor = next;
            continue;
        }
        if tok.is(b':') {
            // Words before a ':' name a group: display text, not an address.
            elem.loose.clear();
        } else {
            elem.loose.extend_from_slice(&t[floor..j]);
        }
        j += 1;
        floor = j;
    }
    elem.loose.extend_from_slice(&t[floor..]);
    Ok(())
}

/// Domain after an '@' at `from`: one literal, or the longest atom *("." atom) (stray dots
/// kept, which can only make the address more distinct). Returns the domain and the next index.
fn lenient_domain(v: &[u8], t: &[Tok], from: usize) -> Result<(String, usize), AddressError> {
    if let Some(lit) = t.get(from).filter(|x| x.kind == Kind::Literal) {
        return Ok((render_literal(v, lit)?, from + 1));
    }
    let mut k = from;
    while k < t.len() {
        let tok = t[k];
        let atom_ok = tok.kind == Kind::Atom && !(k > from && t[k - 1].kind == Kind::Atom);
        if tok.is(b'.') || atom_ok {
            k += 1;
        } else {
            break;
        }
    }
    if k == from {
        return Err(AddressError::EmptyDomain);
    }
    let mut value = Vec::new();
    for tok in &t[from..k] {
        value.extend_from_slice(&v[tok.start..tok.end]);
    }
    Ok((render_domain_atoms(value)?, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(s: &str) -> Vec<String> {
        let l = parse_address_list(s.as_bytes()).expect("readable");
        assert!(
            !l.lenient,
            "expected strict reading of {s:?}, got lenient {:?}",
            l.addresses
        );
        l.addresses
    }

    fn lenient(s: &str) -> Vec<String> {
        let l = parse_address_list(s.as_bytes()).expect("readable");
        assert!(l.lenient, "expected lenient reading of {s:?}");
        l.addresses
    }

    fn err(s: &str) -> AddressError {
        parse_address_list(s.as_bytes()).expect_err("unreadable")
    }

    #[test]
    fn plain_forms() {
        assert_eq!(strict(" a@b.example"), ["a@b.example"]);
        assert_eq!(strict(" <a@b.example>"), ["a@b.example"]);
        assert_eq!(strict(" A B <a@B.Example>, c@d"), ["a@b.example", "c@d"]);
        assert_eq!(strict(""), Vec::<String>::new());
        assert_eq!(strict("  \r\n "), Vec::<String>::new());
    }

    #[test]
    fn groups_and_empty_elements() {
        assert_eq!(strict(" undisclosed-recipients:;"), Vec::<String>::new());
        assert_eq!(strict(" Team: a@x, b@y; , c@z"), ["a@x", "b@y", "c@z"]);
        assert_eq!(strict(" ,a@x,,b@y,"), ["a@x", "b@y"]);
        assert_eq!(strict(" Team: ,a@x,,; "), ["a@x"]);
    }

    #[test]
    fn quoted_and_obsolete_local_parts() {
        assert_eq!(strict(r#" "john"@x"#), ["john@x"]);
        assert_eq!(strict(r#" "john smith"@x"#), [r#""john smith"@x"#]);
        assert_eq!(strict(r#" "a\"b\\c"@x"#), [r#""a\"b\\c"@x"#]);
        assert_eq!(strict(r#" "a\b"@x"#), ["ab@x"]);
        assert_eq!(
            strict(" john (c) . (d) smith (e) @ (f) x (g) . com"),
            ["john.smith@x.com"]
        );
        assert_eq!(strict(r#" "a b".c@x"#), [r#""a b.c"@x"#]);
        assert_eq!(strict(" \"a\r\n b\"@x"), [r#""a b"@x"#]);
    }

    #[test]
    fn literals_routes_and_utf8() {
        assert_eq!(strict(" u@[ 192.0.2.1 ]"), ["u@[192.0.2.1]"]);
        assert_eq!(strict(" u@[IPv6:2001:DB8::1]"), ["u@[ipv6:2001:db8::1]"]);
        assert_eq!(
            strict(" <@a.example,@b.example:user@c.example>"),
            ["user@c.example"]
        );
        assert_eq!(
            strict(" Ünï <jörg@BÜCHER.example>"),
            ["jörg@bücher.example"]
        );
    }

    #[test]
    fn comments_nest_and_hide_addresses() {
        assert_eq!(strict(" (x@y (z@w) \\) ) a@b"), ["a@b"]);
        assert_eq!(strict(" \"x@y, z\" <a@b>"), ["a@b"]);
    }

    #[test]
    fn lenient_forms_count_on_the_safe_side() {
        assert_eq!(lenient(" a@x; b@y"), ["a@x", "b@y"]);
        assert_eq!(lenient(" a@x <a@x>"), ["a@x", "a@x"]);
        assert_eq!(lenient(" John john@x"), ["john@x"]);
        assert_eq!(lenient(" postmaster"), ["postmaster"]);
        assert_eq!(lenient(" John Smith, a@b"), [r#""John Smith""#, "a@b"]);
        assert_eq!(lenient(" <postmaster>"), ["postmaster"]);
        assert_eq!(lenient(" Team: a@x, b@y"), ["a@x", "b@y"]);
        assert_eq!(lenient(" A: B: x@y;;"), ["x@y"]);
        assert_eq!(lenient(" john.@x, .j@y"), [r#""john."@x"#, r#"".j"@y"#]);
        assert_eq!(lenient(" a@x>"), ["a@x"]);
        // A ':' inside <> is no route unless the tokens before it are one.
        assert_eq!(lenient(" Dr. No <no@x.org:>"), ["no@x.org"]);
        assert_eq!(lenient(" <a:b@x.org c@y>"), ["b@x.org", "c@y"]);
        assert_eq!(lenient(" <@r.example:u@x.org>>"), ["u@x.org"]);
        assert_eq!(lenient(" <@r.example:u@x.org> y@z"), ["u@x.org", "y@z"]);
    }

    #[test]
    fn uncertain_tokens_are_unreadable() {
        assert_eq!(err(" <a@x"), AddressError::UnclosedAngle);
        assert_eq!(err(" \"a@x"), AddressError::UnclosedQuote);
        assert_eq!(err(" (a@x"), AddressError::UnclosedComment);
        assert_eq!(err(" a@[1.2"), AddressError::UnclosedDomainLiteral);
        assert_eq!(err(" <a <b@x>>"), AddressError::NestedAngle);
        assert_eq!(err(" u@[1.2, v@x]"), AddressError::AmbiguousDomainLiteral);
        assert_eq!(err(" [a@x] b@y"), AddressError::AmbiguousDomainLiteral);
        assert_eq!(err(" a@x, @y z"), AddressError::EmptyLocalPart);
        assert_eq!(err(" a@"), AddressError::EmptyDomain);
        assert_eq!(parse_address_list(b" \xff@x"), Err(AddressError::NotUtf8));
    }
}
