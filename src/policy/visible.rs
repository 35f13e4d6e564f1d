//! Finds the recipients a message shows to every reader (SPEC section 2).
//! INTERFACE STUB — the visible-recipients helper replaces the body of `find_visible`.

/// The visible recipients of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Visible {
    /// Distinct addr-specs (domain lower-cased), first-seen order.
    pub addresses: Vec<String>,
    /// The top-level header section carries a `Bcc` field.
    pub bcc_present: bool,
    /// Names of fields that could not be read strictly and were counted on the safe side.
    pub lenient_fields: Vec<String>,
}

/// A header that cannot be read with certainty: the message must be refused (550 5.6.0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Unreadable {
    pub reason: String,
}

pub fn find_visible(raw: &[u8]) -> Result<Visible, Unreadable> {
    let _ = raw;
    Ok(Visible::default())
}
