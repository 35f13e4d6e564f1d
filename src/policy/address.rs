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
//! [`canonical_domain`]: IDNA-mapped (so upper case, A-labels and U-labels meet), written with
//! U-labels, trailing dot dropped; domain literals are ASCII-lower-cased with inner whitespace
//! dropped. The local part keeps its case. Words with no `@domain` (`postmaster`, `Smith`,
//! `Undisclosed recipients`) are not mailboxes and yield nothing (SPEC section 2).
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
//!   every `<...>` holding an `@` gives the address inside it (route dropped); every `@` outside
//!   `<>` and outside comments/quoted strings gives the longest `word *("." word) "@" domain`
//!   around it. Words without an `@` are display text, never a recipient.
//!
//! Why lenient never under-counts: every reading that keeps the RFC 5322 tokens (which are
//! certain here) must build each addr-spec around its own `@` token, or take it from a `<...>`;
//! it cannot split a `word.word` chain (a dangling `.` is no token boundary an address may end
//! on) and it cannot join words that have no `.` between them. So each address of such a reading
//! maps to a distinct `@` or `<>` we also take, with the same canonical text.
//!
//! # Other readers' readings (the union, SPEC section 2)
//! Readers people use do not all lex like RFC 5322. Where a field holds one of the known
//! disagreement classes, it is also read the way those readers read it, and the union of every
//! reading is counted (the field is then reported lenient):
//! - RFC 2047 encoded words: Python's `email` takes `=?...?=` as one word even when it holds a
//!   raw `"`, `(`, `)` or `,` (and inside quoted strings); Thunderbird-style readers decode the
//!   words first and then parse, so an encoded `,` or `<a@b>` becomes structure.
//! - `\` outside quoted strings (`Smith\, John`, `\(`, `\"`), which Thunderbird honours as an
//!   escape.
//!
//! An alternative reading whose tokens are themselves uncertain contributes every address-like
//! `local@domain` text in its input instead ([`scavenge`]). A field the RFC lexer cannot read
//! is refused as before, unless it holds encoded words and Python's reading of it is certain:
//! then the readers plainly show mailboxes the RFC reading would hide, and every reading plus
//! every address-like text is counted. Bare CR never reaches this module: the header splitter
//! refuses it. The same holds for a field that only Thunderbird's backslash escapes make
//! readable (`\"Boss <b@x>`).
//!
//! Cost is linear in the field length: one lexing pass (comment nesting is an explicit counter,
//! never recursion) and parsers that only move forward; the lenient chain scans are bounded by
//! the neighbouring `@` tokens, so every token is visited a constant number of times.
//!
//! Memory does not grow with the field: tokens are lexed on demand into a window ([`Tokens`])
//! that forgets everything before the list element being read (at most [`MAX_WINDOW`] tokens;
//! a longer entry is [`AddressError::TooLong`]), and addresses go to a [`Sink`] as they are
//! found: the message's [`AddressSet`], or one address for a From: field.

use super::address_set::AddressSet;
use super::rfc2047;

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
    #[error("a list entry of more than 65,536 words and dots between separators")]
    TooLong,
}

/// The addresses of one field, in the order written (duplicates kept when the field has only the
/// RFC reading; the union of several readings is distinct).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressList {
    pub addresses: Vec<String>,
    /// The field is not valid RFC 5322 and was read with the safe-side fallback.
    pub lenient: bool,
}

/// Where a reading puts the addresses it finds, as it finds them: a field of millions of
/// addresses goes straight into the message's [`AddressSet`], never into a list of its own.
pub trait Sink {
    /// Adds one address (a de-duplicating sink may already hold it).
    fn push(&mut self, address: String);
    /// A point to go back to: a strict reading that fails part-way is replaced, not added to.
    fn mark(&self) -> usize;
    fn rollback(&mut self, mark: usize);
}

impl Sink for Vec<String> {
    fn push(&mut self, address: String) {
        Vec::push(self, address);
    }
    fn mark(&self) -> usize {
        self.len()
    }
    fn rollback(&mut self, mark: usize) {
        self.truncate(mark);
    }
}

impl Sink for AddressSet {
    fn push(&mut self, address: String) {
        self.insert(&address);
    }
    fn mark(&self) -> usize {
        self.len()
    }
    fn rollback(&mut self, mark: usize) {
        self.truncate(mark);
    }
}

/// Keeps the first non-empty address only (a From: field of a million addresses costs one).
#[derive(Default)]
pub struct FirstAddress {
    first: Option<(usize, String)>,
    pushed: usize,
}

impl FirstAddress {
    /// The first non-empty address of a field, if it can be read at all.
    pub fn of(value: &[u8]) -> Option<String> {
        let mut sink = FirstAddress::default();
        read_field(value, &mut sink).ok()?;
        sink.first.map(|(_, a)| a)
    }
}

impl Sink for FirstAddress {
    fn push(&mut self, address: String) {
        if self.first.is_none() && !address.is_empty() {
            self.first = Some((self.pushed, address));
        }
        self.pushed += 1;
    }
    fn mark(&self) -> usize {
        self.pushed
    }
    fn rollback(&mut self, mark: usize) {
        if self.first.as_ref().is_some_and(|(at, _)| *at >= mark) {
            self.first = None;
        }
        self.pushed = mark;
    }
}

/// Only asks whether a reading succeeds.
struct Discard;

impl Sink for Discard {
    fn push(&mut self, _: String) {}
    fn mark(&self) -> usize {
        0
    }
    fn rollback(&mut self, _: usize) {}
}

/// Reads one address-list field value (everything after the colon, folds included): the
/// RFC 5322 reading, united with the lenient readers' readings where they can differ.
pub fn parse_address_list(value: &[u8]) -> Result<AddressList, AddressError> {
    let mut addresses = Vec::new();
    let lenient = read_field(value, &mut addresses)?;
    Ok(AddressList { addresses, lenient })
}

/// [`parse_address_list`] into `out`; returns whether the field was read leniently. Memory
/// apart from `out` stays bounded whatever the field holds (a token window, see [`Tokens`]),
/// except where other readers' readings must be united: then the field's own addresses are
/// kept in one more [`AddressSet`] while it is read.
pub fn read_field(value: &[u8], out: &mut dyn Sink) -> Result<bool, AddressError> {
    let has_ew = memchr::memmem::find(value, b"=?").is_some();
    let has_backslash = memchr::memchr(b'\\', value).is_some();
    let glued = glued_quoted_at(value);
    if !has_ew && !has_backslash && !glued {
        return read(value, Lexing::RFC, out);
    }
    let decoded = if has_ew {
        rfc2047::decode_all(value)
    } else {
        None
    };
    let mut readings: Vec<(&[u8], Lexing)> = Vec::new();
    if has_backslash {
        readings.push((value, Lexing::ESCAPES));
    }
    if has_ew {
        readings.push((value, Lexing::ENCODED_WORDS));
    }
    if has_ew && has_backslash {
        readings.push((value, Lexing::BOTH));
    }
    if let Some(d) = decoded.as_deref() {
        readings.push((d, Lexing::RFC));
        if memchr::memchr(b'\\', d).is_some() {
            readings.push((d, Lexing::ESCAPES));
        }
    }
    // The field's addresses over every reading, first-seen order.
    let mut field = AddressSet::new();
    let mut lenient = match read(value, Lexing::RFC, &mut field) {
        Ok(l) => l || disagreement_class(value),
        Err(e) => {
            // Unreadable for RFC readers, but a common reader's tokens are certain: the field
            // plainly shows mailboxes, so count every reading plus every address-like text.
            let certain = |mode| read(value, mode, &mut Discard).is_ok();
            let other_certain = (has_ew && certain(Lexing::ENCODED_WORDS))
                || (has_backslash && certain(Lexing::ESCAPES))
                || (has_ew && has_backslash && certain(Lexing::BOTH));
            if !other_certain {
                return Err(e);
            }
            field = AddressSet::new();
            scavenge(value, &mut field);
            true
        }
    };
    // An encoded word that decodes to an address: some reader shows it as one, whatever the
    // structure around it (Python re-renders decoded names and scripts parse that again).
    if let Some(d) = decoded.as_deref() {
        if rfc2047::words(value).any(|(_, t)| t.contains(&b'@')) {
            lenient = true;
            scavenge(d, &mut field);
        }
    }
    if glued {
        // Python glues touching words into one obs-local-part and then shows the `@` inside
        // the quotes as the address's own: count what that text shows without its quotes.
        let unquoted: Vec<u8> = value
            .iter()
            .copied()
            .filter(|&b| b != b'"' && b != b'\\')
            .collect();
        lenient = true;
        scavenge(&unquoted, &mut field);
    }
    for (text, mode) in readings {
        let mut reading = AddressSet::new();
        match read(text, mode, &mut reading) {
            Ok(l) => lenient |= l,
            Err(_) => {
                lenient = true;
                reading = AddressSet::new();
                scavenge(text, &mut reading);
            }
        }
        for a in &reading {
            if field.insert(a) {
                lenient = true;
            }
        }
    }
    for a in &field {
        out.push(a.to_string());
    }
    Ok(lenient)
}

/// Whether the field holds a construct on which common readers disagree even when their
/// readings happen to give the same addresses: an encoded word with address punctuation in it
/// (raw or decoded), an encoded word inside a quoted string, a backslash outside quotes.
fn disagreement_class(value: &[u8]) -> bool {
    const SPECIALS: &[u8] = b"\"(),<>@;:\\[]";
    if rfc2047::words(value).any(|(range, text)| {
        value[range].iter().any(|b| SPECIALS.contains(b))
            || text.iter().any(|b| SPECIALS.contains(b))
    }) {
        return true;
    }
    Lexer::new(value, Lexing::RFC).any(|t| match t {
        Err(_) => true,
        Ok(t) => match t.kind {
            Kind::Other => value[t.start] == b'\\',
            Kind::Quoted => rfc2047::words(&value[t.start..t.end]).next().is_some(),
            _ => false,
        },
    })
}

/// Whether a quoted string holding an `@` touches a word with no space or punctuation between
/// (`"a"b"@x"y`): readers that glue touching words read an address across the quotes. False
/// when the field cannot be lexed at all.
fn glued_quoted_at(value: &[u8]) -> bool {
    if memchr::memchr(b'"', value).is_none() {
        return false;
    }
    let mut found = false;
    let (mut prev, mut cur): (Option<Tok>, Option<Tok>) = (None, None);
    let mut lexer = Lexer::new(value, Lexing::RFC);
    loop {
        let next = match lexer.next() {
            Some(Ok(t)) => Some(t),
            Some(Err(_)) => return false,
            None => None,
        };
        if let Some(t) = cur.filter(|t| t.kind == Kind::Quoted) {
            found |= memchr::memchr(b'@', &value[t.start..t.end]).is_some()
                && (prev.is_some_and(|p| p.is_word() && p.end + 1 == t.start)
                    || next.is_some_and(|n| n.is_word() && t.end + 1 == n.start));
        }
        if next.is_none() {
            return found;
        }
        (prev, cur) = (cur, next);
    }
}

/// One reading of a field into `out`: the strict grammar, else (its addresses taken back) the
/// lenient one. Returns whether it was lenient.
fn read(value: &[u8], mode: Lexing, out: &mut dyn Sink) -> Result<bool, AddressError> {
    let mark = out.mark();
    let strict = Strict {
        v: value,
        t: Tokens::new(value, mode),
        i: 0,
        out: &mut *out,
    }
    .run();
    match strict {
        Ok(()) => Ok(false),
        Err(Fail::Hard(e)) => Err(e),
        Err(Fail::Grammar) => {
            out.rollback(mark);
            lenient(value, mode, out)?;
            Ok(true)
        }
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

/// How the lexer treats the two constructs readers disagree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lexing {
    /// `\x` outside quoted strings and comments is an escaped `x` inside an atom (Thunderbird).
    escapes: bool,
    /// An RFC 2047 encoded word is one atom, specials inside it included, also inside quoted
    /// strings (Python's `email`).
    encoded_words: bool,
}

impl Lexing {
    const RFC: Lexing = Lexing {
        escapes: false,
        encoded_words: false,
    };
    const ESCAPES: Lexing = Lexing {
        escapes: true,
        encoded_words: false,
    };
    const ENCODED_WORDS: Lexing = Lexing {
        escapes: false,
        encoded_words: true,
    };
    const BOTH: Lexing = Lexing {
        escapes: true,
        encoded_words: true,
    };
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

/// Tokens of a field, one at a time: readers hold only a window of them (see [`Tokens`]).
struct Lexer<'a> {
    v: &'a [u8],
    mode: Lexing,
    words: rfc2047::Finder<'a>,
    i: usize,
}

impl<'a> Lexer<'a> {
    fn new(v: &'a [u8], mode: Lexing) -> Lexer<'a> {
        Lexer {
            v,
            mode,
            words: rfc2047::Finder::new(v),
            i: 0,
        }
    }

    fn token(&mut self) -> Result<Option<Tok>, AddressError> {
        let (v, mode) = (self.v, self.mode);
        while self.i < v.len() {
            let i = self.i;
            let b = v[i];
            if mode.encoded_words && b == b'=' {
                if let Some((end, _)) = self.words.word_at(i) {
                    self.i = end;
                    return Ok(Some(Tok {
                        kind: Kind::Atom,
                        start: i,
                        end,
                    }));
                }
            }
            let (kind, start, end, next) = match b {
                // Folding: the splitter guarantees CR/LF only occur as part of a fold.
                b' ' | b'\t' | b'\r' | b'\n' => {
                    self.i += 1;
                    continue;
                }
                b'(' => {
                    self.i = skip_comment(v, i)?;
                    continue;
                }
                b'"' => {
                    let end = if mode.encoded_words {
                        scan_quoted_with_words(v, i + 1, &self.words)
                    } else {
                        scan_delimited(v, i + 1, b'"')
                    }
                    .ok_or(AddressError::UnclosedQuote)?;
                    (Kind::Quoted, i + 1, end, end + 1)
                }
                b'[' => {
                    let end = scan_delimited(v, i + 1, b']')
                        .ok_or(AddressError::UnclosedDomainLiteral)?;
                    // Readers that do not know domain literals split at these; RFC readers do not.
                    if v[i + 1..end].iter().any(|b| b",;@<>\"()[\\".contains(b)) {
                        return Err(AddressError::AmbiguousDomainLiteral);
                    }
                    (Kind::Literal, i + 1, end, end + 1)
                }
                b'<' | b'>' | b':' | b';' | b'@' | b',' | b'.' => {
                    (Kind::Special(b), i, i + 1, i + 1)
                }
                _ if is_atext(b) || (mode.escapes && b == b'\\') => {
                    let mut e = i;
                    while e < v.len() {
                        if mode.escapes && v[e] == b'\\' {
                            e = (e + 2).min(v.len());
                        } else if is_atext(v[e]) {
                            e += 1;
                        } else {
                            break;
                        }
                    }
                    (Kind::Atom, i, e, e)
                }
                _ => (Kind::Other, i, i + 1, i + 1),
            };
            self.i = next;
            return Ok(Some(Tok { kind, start, end }));
        }
        Ok(None)
    }
}

impl Iterator for Lexer<'_> {
    type Item = Result<Tok, AddressError>;
    fn next(&mut self) -> Option<Self::Item> {
        let t = self.token();
        if t.is_err() {
            // Fused: nothing after an uncertain token is read.
            self.i = self.v.len();
        }
        t.transpose()
    }
}

/// Most tokens a reader keeps at once: the tokens of one list element (or, read leniently, of
/// one stretch that a later `@` could still reach back into). Real entries have a few dozen;
/// a field of millions of addresses is read in constant memory instead of one token list
/// sixteen times its size.
const MAX_WINDOW: usize = 65_536;

/// A sliding window over a field's tokens, indexed by position in the whole field: tokens are
/// lexed when first asked for and forgotten when the reader says it will never look back.
struct Tokens<'a> {
    lexer: Lexer<'a>,
    /// Tokens `base..base + buf.len()`.
    buf: Vec<Tok>,
    base: usize,
}

impl<'a> Tokens<'a> {
    fn new(v: &'a [u8], mode: Lexing) -> Tokens<'a> {
        Tokens {
            lexer: Lexer::new(v, mode),
            buf: Vec::new(),
            base: 0,
        }
    }

    /// Token `j` (never one already forgotten), or `None` past the end of the field.
    fn get(&mut self, j: usize) -> Result<Option<Tok>, AddressError> {
        while j >= self.base + self.buf.len() {
            let Some(t) = self.lexer.next().transpose()? else {
                return Ok(None);
            };
            if self.buf.len() >= MAX_WINDOW {
                return Err(AddressError::TooLong);
            }
            self.buf.push(t);
        }
        Ok(self.buf.get(j - self.base).copied())
    }

    /// Tokens `from..to`, all of which were got already.
    fn slice(&self, from: usize, to: usize) -> &[Tok] {
        &self.buf[from - self.base..to - self.base]
    }

    /// The reader will not ask for tokens before `j` again.
    fn forget_before(&mut self, j: usize) {
        let n = j.saturating_sub(self.base).min(self.buf.len());
        self.buf.drain(..n);
        self.base += n;
    }
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

/// Like [`scan_delimited`] for `"`, but an encoded word inside the quotes is skipped whole.
fn scan_quoted_with_words(v: &[u8], from: usize, words: &rfc2047::Finder) -> Option<usize> {
    let mut i = from;
    while i < v.len() {
        match v[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            b'=' => match words.word_at(i) {
                Some((end, _)) => i = end,
                None => i += 1,
            },
            _ => i += 1,
        }
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
        // Atoms hold a `\` only in the escapes reading, where it is an escape.
        Kind::Quoted | Kind::Atom => unescape(&v[t.start..t.end]),
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
    Ok(canonical_domain(&s))
}

/// The one spelling of a domain name: IDNA (UTS 46) mapped, so letter case, full-width forms
/// and A-labels (`xn--...`) meet their U-label, written with U-labels; trailing dots (the DNS
/// root) dropped. A name IDNA refuses keeps its Unicode lower case: it is still counted.
/// Idempotent, so every stage can canonicalise again and get the same text.
pub fn canonical_domain(domain: &str) -> String {
    let trimmed = domain.trim_end_matches('.');
    let d = if trimmed.is_empty() { domain } else { trimmed };
    if d.is_ascii() && !d.contains("xn--") && !d.contains("XN--") && !d.contains("Xn--") {
        return d.to_ascii_lowercase();
    }
    match idna::domain_to_ascii(d) {
        Ok(ascii) => match idna::domain_to_unicode(&ascii) {
            (unicode, Ok(())) => unicode,
            (_, Err(_)) => ascii,
        },
        Err(_) => d.to_lowercase(),
    }
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
        match e {
            // An entry too long to hold at once may still be readable with the lenient
            // reading, which holds less (it cuts where no address can span).
            AddressError::TooLong => Fail::Grammar,
            e => Fail::Hard(e),
        }
    }
}

/// The strict grammar over a token window; it never looks back past the start of the list
/// element it is in, so everything before is forgotten.
struct Strict<'a, 'o> {
    v: &'a [u8],
    t: Tokens<'a>,
    i: usize,
    out: &'o mut dyn Sink,
}

impl Strict<'_, '_> {
    fn run(mut self) -> Result<(), Fail> {
        self.list()
    }

    fn tok(&mut self, j: usize) -> Result<Option<Tok>, Fail> {
        Ok(self.t.get(j)?)
    }

    fn peek(&mut self, c: u8) -> Result<bool, Fail> {
        let i = self.i;
        Ok(self.tok(i)?.is_some_and(|t| t.is(c)))
    }

    fn eat(&mut self, c: u8) -> Result<bool, Fail> {
        let hit = self.peek(c)?;
        if hit {
            self.i += 1;
        }
        Ok(hit)
    }

    fn at_end(&mut self) -> Result<bool, Fail> {
        let i = self.i;
        Ok(self.tok(i)?.is_none())
    }

    /// End (exclusive) of the run of words and dots starting at `from`.
    fn run_end(&mut self, from: usize) -> Result<usize, Fail> {
        let mut j = from;
        while self.tok(j)?.is_some_and(|t| t.is_word() || t.is(b'.')) {
            j += 1;
        }
        Ok(j)
    }

    /// address-list, with obs-addr-list's empty elements.
    fn list(&mut self) -> Result<(), Fail> {
        loop {
            while self.eat(b',')? {}
            self.t.forget_before(self.i);
            if self.at_end()? {
                return Ok(());
            }
            self.element(true)?;
            if self.at_end()? {
                return Ok(());
            }
            if !self.eat(b',')? {
                return Err(Fail::Grammar);
            }
        }
    }

    /// mailbox, or (when `group_ok`) group.
    fn element(&mut self, group_ok: bool) -> Result<(), Fail> {
        let start = self.i;
        let end = self.run_end(start)?;
        match self.tok(end)?.map(|t| t.kind) {
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
        match self.t.slice(start, end).first() {
            None if may_be_empty => Ok(()),
            Some(first) if first.is_word() => Ok(()),
            _ => Err(Fail::Grammar),
        }
    }

    /// local-part = word *("." word) (dot-atom, quoted-string and obs-local-part in one).
    fn local_part(&self, start: usize, end: usize) -> Result<String, Fail> {
        let toks = self.t.slice(start, end);
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
        let i = self.i;
        let Some(first) = self.tok(i)? else {
            return Err(Fail::Grammar);
        };
        match first.kind {
            Kind::Literal => {
                self.i += 1;
                Ok(render_literal(self.v, &first)?)
            }
            Kind::Atom => {
                let mut value = self.v[first.start..first.end].to_vec();
                self.i += 1;
                while self.peek(b'.')? {
                    let j = self.i + 1;
                    let Some(next) = self.tok(j)?.filter(|t| t.kind == Kind::Atom) else {
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
        if !self.eat(b'<')? {
            return Err(Fail::Grammar);
        }
        if self.peek(b'@')? || self.peek(b',')? {
            loop {
                while self.eat(b',')? {}
                if !self.eat(b'@')? {
                    break;
                }
                self.domain()?;
            }
            if !self.eat(b':')? {
                return Err(Fail::Grammar);
            }
        }
        let start = self.i;
        let end = self.run_end(start)?;
        if !self.tok(end)?.is_some_and(|t| t.is(b'@')) {
            return Err(Fail::Grammar);
        }
        let local = self.local_part(start, end)?;
        self.i = end + 1;
        let domain = self.domain()?;
        if !self.eat(b'>')? {
            return Err(Fail::Grammar);
        }
        self.out.push(format!("{local}@{domain}"));
        Ok(())
    }

    /// group-list after the ':' up to and including the ';' (obs-group-list empties allowed).
    fn group_list(&mut self) -> Result<(), Fail> {
        loop {
            while self.eat(b',')? {}
            self.t.forget_before(self.i);
            if self.eat(b';')? {
                return Ok(());
            }
            if self.at_end()? {
                return Err(Fail::Grammar);
            }
            self.element(false)?;
            if !(self.peek(b',')? || self.peek(b';')?) {
                return Err(Fail::Grammar);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lenient safe-side reading (tokens certain, grammar not)

/// The lenient reading, streaming: a stretch of tokens is read and forgotten at every point no
/// address can span (a `,` or `;`, a `<...>`, any token that is not a word, `.` or `@`, and
/// between two words that touch without a dot, which [`scan_segment`] never joins either way).
fn lenient(v: &[u8], mode: Lexing, out: &mut dyn Sink) -> Result<(), AddressError> {
    let mut t = Tokens::new(v, mode);
    let mut i = 0;
    let mut seg_start = 0;
    let mut prev_word = false;
    while let Some(tok) = t.get(i)? {
        if tok.is(b'<') {
            scan_segment(v, t.slice(seg_start, i), out)?;
            let mut close = i + 1;
            loop {
                match t.get(close)? {
                    None => return Err(AddressError::UnclosedAngle),
                    Some(c) if c.is(b'<') => return Err(AddressError::NestedAngle),
                    Some(c) if c.is(b'>') => break,
                    Some(_) => close += 1,
                }
            }
            let inner = t.slice(i + 1, close);
            scan_segment(v, &inner[skip_route(inner)..], out)?;
            i = close + 1;
            seg_start = i;
            prev_word = false;
        } else if tok.is(b',') || tok.is(b';') {
            scan_segment(v, t.slice(seg_start, i), out)?;
            i += 1;
            seg_start = i;
            prev_word = false;
        } else if tok.is_word() && prev_word {
            scan_segment(v, t.slice(seg_start, i), out)?;
            seg_start = i;
            i += 1;
        } else if tok.is_word() || tok.is(b'.') || tok.is(b'@') {
            prev_word = tok.is_word();
            i += 1;
        } else {
            i += 1;
            scan_segment(v, t.slice(seg_start, i), out)?;
            seg_start = i;
            prev_word = false;
        }
        t.forget_before(seg_start);
    }
    scan_segment(v, t.slice(seg_start, i), out)
}

/// Index in `t` (the inside of one `<...>`) after an obs-route (`*("," / "@" domain) ":"`), or 0
/// when the tokens are not exactly a route: then nothing is skipped and every `@` is read.
fn skip_route(t: &[Tok]) -> usize {
    let to = t.len();
    let mut k = 0;
    let mut saw_at = false;
    while k < to {
        if t[k].is(b',') {
            k += 1;
        } else if t[k].is(b'@') {
            saw_at = true;
            k += 1;
            match t.get(k).map(|x| x.kind) {
                Some(Kind::Literal) => k += 1,
                Some(Kind::Atom) => {
                    k += 1;
                    while k + 1 < to && t[k].is(b'.') && t[k + 1].kind == Kind::Atom {
                        k += 2;
                    }
                }
                _ => return 0,
            }
        } else {
            break;
        }
    }
    if saw_at && k < to && t[k].is(b':') {
        k + 1
    } else {
        0
    }
}

/// Reads a stretch of tokens with no `<`, `>`-pair, `,` or `;` in it.
fn scan_segment(v: &[u8], t: &[Tok], out: &mut dyn Sink) -> Result<(), AddressError> {
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
            let local = render_local(chain_value(v, &t[k..j]))?;
            let (domain, next) = lenient_domain(v, t, j + 1)?;
            out.push(format!("{local}@{domain}"));
            j = next;
            floor = next;
            continue;
        }
        j += 1;
        floor = j;
    }
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

/// Every `local@domain` text in `v`, structure ignored: the reading of last resort for an
/// alternative reading whose own tokens are uncertain (an unbalanced decoded quote, say).
/// Over-counts display text that looks like an address; never misses one.
fn scavenge(v: &[u8], out: &mut dyn Sink) {
    // A backslash may escape part of a local part for some readers (`a\@b@x`).
    let local_byte = |b: u8| is_atext(b) || b == b'.' || b == b'\\';
    let domain_byte = |b: u8| b.is_ascii_alphanumeric() || b"-._".contains(&b) || b >= 0x80;
    for at in memchr::memchr_iter(b'@', v) {
        let start = v[..at]
            .iter()
            .rposition(|&b| !local_byte(b))
            .map_or(0, |i| i + 1);
        let end = v[at + 1..]
            .iter()
            .position(|&b| !domain_byte(b))
            .map_or(v.len(), |i| at + 1 + i);
        let local = &v[start..at];
        let domain = String::from_utf8_lossy(&v[at + 1..end]);
        let domain = domain.trim_matches('.');
        if local.is_empty() || domain.is_empty() {
            continue;
        }
        let local = String::from_utf8_lossy(local).into_owned().into_bytes();
        if let Ok(local) = render_local(local) {
            out.push(format!("{local}@{}", canonical_domain(domain)));
        }
    }
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
    fn first_address_survives_a_strict_reading_taken_back() {
        assert_eq!(
            FirstAddress::of(b" Boss <boss@x.org>, a@b").as_deref(),
            Some("boss@x.org")
        );
        // Strict reads `a@b` then fails at `;`: the lenient reading gives the answer.
        assert_eq!(
            FirstAddress::of(b" (c) a@b, c d@e; x").as_deref(),
            Some("a@b")
        );
        assert_eq!(FirstAddress::of(b" undisclosed-recipients:;"), None);
        assert_eq!(FirstAddress::of(b" \"unclosed"), None);
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
        assert_eq!(lenient(" postmaster"), Vec::<String>::new());
        assert_eq!(lenient(" John Smith, a@b"), ["a@b"]);
        assert_eq!(lenient(" <postmaster>"), Vec::<String>::new());
        assert_eq!(lenient(" Smith, John <j@x>"), ["j@x"]);
        assert_eq!(lenient(" \"Undisclosed recipients\""), Vec::<String>::new());
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

    #[test]
    fn encoded_word_with_raw_quote_counts_what_python_shows() {
        // RFC lexing: the two raw quotes make one quoted string that swallows a@x and b@y.
        let v = lenient(r#" =?utf-8?Q?"?= <a@x>, b@y, =?utf-8?Q?"?= <c@z>"#);
        assert_eq!(v, ["c@z", "a@x", "b@y"]);
        // An odd quote: the RFC reading is unreadable, Python's is certain, so count them all.
        let v = lenient(r#" =?utf-8?Q?"Doe?= <a@x>, b@y, "Bar" <c@z>"#);
        assert_eq!(v, ["a@x", "b@y", "c@z"]);
        // Without encoded words an odd quote stays unreadable.
        assert_eq!(err(r#" "Doe <a@x>, b@y"#), AddressError::UnclosedQuote);
    }

    #[test]
    fn decoded_structure_is_counted_too() {
        // Thunderbird-style decode-then-parse sees a second mailbox in the encoded name.
        let v = lenient(" =?utf-8?Q?=3Cx=40evil=2Eexample=3E?= <a@x>");
        assert_eq!(v, ["a@x", "x@evil.example"]);
        // "Last, First" encoded with a comma: one mailbox, no phantom, field marked.
        assert_eq!(lenient(" =?utf-8?Q?Smith,_John?= <john@x>"), ["john@x"]);
        assert_eq!(lenient(" =?utf-8?Q?Smith=2C_John?= <john@x>"), ["john@x"]);
        // An ordinary encoded name is neither lenient nor different.
        assert_eq!(strict(" =?UTF-8?B?SsO2cmc=?= <j@x>"), ["j@x"]);
        // Encoded word inside a quoted string: same mailbox, but readers disagree on it.
        assert_eq!(lenient(r#" "=?utf-8?Q?M=C3=BCller?=" <h@x>"#), ["h@x"]);
    }

    #[test]
    fn backslash_escapes_outside_quotes() {
        // Unreadable for RFC readers (unclosed quote), certain with Thunderbird's escapes.
        assert_eq!(
            lenient(r#" \"Boss <boss@x>, staff@y"#),
            ["boss@x", "staff@y"]
        );
        assert_eq!(lenient(r" \(Sales\) <s@x>"), ["s@x"]);
        // A backslash inside quotes or comments is no disagreement.
        assert_eq!(strict(r#" "Smith\, John" <j@x> (Smith\, J)"#), ["j@x"]);
        assert_eq!(lenient(r" Smith\, John <j@x>"), ["j@x"]);
        // RFC: `(` opens a comment that hides b@y; Thunderbird: `\(` is a literal.
        assert_eq!(lenient(r" a\(b@y c) <a@x>"), ["a@x", r#""a(b"@y"#]);
    }

    #[test]
    fn domains_are_canonical() {
        assert_eq!(canonical_domain("Ext.Example."), "ext.example");
        assert_eq!(canonical_domain("XN--BCHER-KVA.example"), "bücher.example");
        assert_eq!(canonical_domain("BÜCHER.example"), "bücher.example");
        assert_eq!(canonical_domain("xn--strae-oqa.example"), "straße.example");
        assert_eq!(canonical_domain("Straße.example"), "straße.example");
        assert_eq!(canonical_domain("ＥＸＡＭＰＬＥ.com"), "example.com");
        assert_eq!(canonical_domain("xn--zz.example"), "xn--zz.example");
        assert_eq!(
            strict(" p@xn--bcher-kva.example, q@BÜCHER.EXAMPLE"),
            ["p@bücher.example", "q@bücher.example"]
        );
        assert_eq!(lenient(" p@ext.example."), ["p@ext.example"]);
    }
}
