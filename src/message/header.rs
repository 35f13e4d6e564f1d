//! Header-section splitting (RFC 5322 section 2.2): fields with byte offsets. OWNED BY: visible-recipients work.
