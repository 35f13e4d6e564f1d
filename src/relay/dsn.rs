//! Delivery status notifications (RFC 3464) for split copies that failed.
//! INTERFACE STUB — the policy/rewrite helper implements this.

/// A complete RFC 5322 message (CRLF line ends) reporting `failures` (recipient, upstream reply) to `sender`.
/// `original_header` is the failed message's header section, returned as `text/rfc822-headers`.
pub fn failure_report(reporting_host: &str, sender: &str, original_header: &[u8], failures: &[(String, String)]) -> Vec<u8> {
    let _ = (reporting_host, original_header, failures);
    format!("From: MAILER-DAEMON\r\nTo: <{sender}>\r\nSubject: Delivery failure\r\n\r\n").into_bytes()
}
