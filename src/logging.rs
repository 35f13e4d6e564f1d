//! Log output that a client cannot forge lines into.
//!
//! Log fields carry client-supplied text (AUTH user names, HELO names, envelope addresses,
//! upstream replies, error messages quoting them). A raw LF would start a fake log line, CR or an
//! ESC sequence could rewrite what a terminal shows, and bidi controls could reorder it. So every
//! field value is escaped centrally, in both formats, rather than at each call site:
//! - text: [`EscapedFields`] formats fields (event and span) with control characters escaped;
//! - JSON: serde_json already writes C0 controls as `\n`, `\u001b`...; [`JsonSafe`] also escapes
//!   the characters JSON allows raw (DEL, C1 controls, line/paragraph separators, bidi controls).

use std::fmt::{self, Write as _};
use std::io;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, MakeWriter};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: `RUST_LOG`-style filter (default `info`), stderr, text or JSON.
pub fn init(json: bool) {
    init_with_level(json, None);
}

/// [`init`] with the config's `server.log_level` as the default filter (`RUST_LOG` still wins).
pub fn init_with_level(json: bool, level: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder
            .json()
            .with_writer(JsonSafe(io::stderr))
            .with_ansi(false)
            .init();
    } else {
        builder
            .fmt_fields(EscapedFields)
            .with_writer(io::stderr)
            // Colour codes only for a person at a terminal, not in files or journald.
            .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
            .init();
    }
}

/// Whether `c` must not appear raw in a log line.
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every character that could forge or disguise a log line escaped (`\n`, `\r`, `\t`,
/// `\u{1b}`...). A backslash is left alone: it cannot end a line, and the result stays readable.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Text-format field formatter: `message` as is, other fields as `name=value`, space-separated,
/// every value passed through [`escape`].
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for EscapingVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let text = format!("{value:?}");
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = match field.name() {
            "message" => write!(self.writer, "{sep}{}", escape(&text)),
            // Fields bridged from the `log` crate: already shown in the message line.
            name if name.starts_with("log.") => Ok(()),
            name => write!(self.writer, "{sep}{name}={}", escape(&text)),
        };
    }
}

/// A [`MakeWriter`] for JSON lines that escapes what JSON itself lets through raw.
#[derive(Debug, Clone, Copy)]
pub struct JsonSafe<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for JsonSafe<M> {
    type Writer = JsonSafeWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        JsonSafeWriter(self.0.make_writer())
    }
}

pub struct JsonSafeWriter<W>(W);

impl<W: io::Write> io::Write for JsonSafeWriter<W> {
    /// The formatter hands over one whole event per call, so a character is never split.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        if !text.chars().any(unsafe_char_json) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = String::with_capacity(text.len() + 16);
        for c in text.chars() {
            if unsafe_char_json(c) {
                // Only possible inside JSON strings (JSON syntax is ASCII), where \uXXXX is valid.
                let _ = write!(out, "\\u{:04x}", c as u32);
            } else {
                out.push(c);
            }
        }
        self.0.write_all(out.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// What serde_json leaves raw but a log line must not carry (C0 controls it escapes itself,
/// and the event's final newline must stay).
fn unsafe_char_json(c: char) -> bool {
    unsafe_char(c) && (c as u32) >= 0x7f
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn escape_controls() {
        assert_eq!(escape("alice"), "alice");
        assert_eq!(
            escape("alice\nauthenticated user=mallory\x1b[2J\r\t\u{7f}\u{9b}\u{202e}"),
            "alice\\nauthenticated user=mallory\\u{1b}[2J\\r\\t\\u{7f}\\u{9b}\\u{202e}"
        );
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::ErrorKind::Other)?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    const EVIL: &str = "alice\nINFO authenticated user=mallory\x1b[2J\u{85}\u{2028}";

    fn log_evil() {
        let span = tracing::info_span!("session", helo = %EVIL);
        let _g = span.enter();
        tracing::info!(user = %EVIL, addr = ?EVIL, "failed for {EVIL}");
    }

    fn assert_one_clean_line(out: &str) {
        assert_eq!(out.matches('\n').count(), 1, "{out:?}");
        assert!(out.ends_with('\n'));
        assert!(
            !out.trim_end_matches('\n').chars().any(unsafe_char),
            "{out:?}"
        );
    }

    #[test]
    fn text_lines_cannot_be_forged() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .fmt_fields(EscapedFields)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(sub, log_evil);
        let out = buf.text();
        assert_one_clean_line(&out);
        assert!(
            out.contains("user=alice\\nINFO authenticated user=mallory\\u{1b}[2J"),
            "{out}"
        );
        assert!(out.contains("session{helo=alice\\n"), "{out}");
    }

    #[test]
    fn json_lines_cannot_be_forged() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .json()
            .with_ansi(false)
            .with_writer(JsonSafe(move || w.clone()))
            .finish();
        tracing::subscriber::with_default(sub, log_evil);
        let out = buf.text();
        assert_one_clean_line(&out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["fields"]["user"], EVIL);
        assert!(out.contains("\\u001b[2J"), "{out}");
        assert!(out.contains("\\u0085") && out.contains("\\u2028"), "{out}");
    }
}
