//! SMTP replies as every stage gives them (front end, relay, delivery plan): code, enhanced
//! status code (RFC 3463) and text, formatted correctly on the wire whether one line or several.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code `class.subject.detail`; `None` for replies that carry none (220, 221, 354, 334).
    pub status: Option<(u8, u16, u16)>,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, status: (u8, u16, u16), text: impl Into<String>) -> Reply {
        Reply {
            code,
            status: Some(status),
            text: text.into(),
        }
    }

    pub fn bare(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status: None,
            text: text.into(),
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// An upstream reply as our client should see it. mail-send joins multi-line text with `\n`
    /// and reports a missing enhanced code as 0.0.0, which must not be repeated on the wire.
    pub fn from_upstream(r: &smtp_proto::Response<String>) -> Reply {
        let [class, subject, detail] = r.esc;
        let status = (class != 0).then_some((class, subject as u16, detail as u16));
        Reply {
            code: r.code,
            status,
            text: r.message.clone(),
        }
    }

    /// Wire form, CRLF-terminated, `-` on every line but the last.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + 16);
        let lines: Vec<&str> = self
            .text
            .split('\n')
            .map(|l| l.trim_end_matches('\r'))
            .collect();
        let last = lines.len().saturating_sub(1);
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let line = sanitize_line(line);
            match self.status {
                Some((c, s, d)) => out.extend_from_slice(
                    format!("{}{sep}{c}.{s}.{d} {line}\r\n", self.code).as_bytes(),
                ),
                None => out.extend_from_slice(format!("{}{sep}{line}\r\n", self.code).as_bytes()),
            }
        }
        out
    }

    /// The status code as text, e.g. `5.7.1`, for logs and DSNs.
    pub fn status_text(&self) -> String {
        match self.status {
            Some((c, s, d)) => format!("{c}.{s}.{d}"),
            None => format!("{}.0.0", self.code / 100),
        }
    }
}

/// Keeps peer-supplied text (relayed upstream replies) from injecting extra lines or control bytes.
fn sanitize_line(line: &str) -> String {
    line.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some((c, s, d)) => write!(
                f,
                "{} {c}.{s}.{d} {}",
                self.code,
                self.text.replace('\n', " / ")
            ),
            None => write!(f, "{} {}", self.code, self.text.replace('\n', " / ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_reply_uses_continuation_marks_and_repeats_status() {
        let r = Reply::new(550, (5, 1, 1), "No such user\nTry another");
        assert_eq!(
            r.to_wire(),
            b"550-5.1.1 No such user\r\n550 5.1.1 Try another\r\n".to_vec()
        );
    }

    #[test]
    fn upstream_reply_without_enhanced_code_gets_none_not_zeroes() {
        let up = smtp_proto::Response {
            code: 554,
            esc: [0, 0, 0],
            message: "go away".to_string(),
        };
        let r = Reply::from_upstream(&up);
        assert_eq!(r.to_wire(), b"554 go away\r\n".to_vec());
    }

    #[test]
    fn control_bytes_in_text_cannot_inject_lines() {
        let r = Reply::new(250, (2, 0, 0), "ok\r\x00injected");
        let wire = r.to_wire();
        assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}
