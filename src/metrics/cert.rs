//! Certificate expiry for the `bccguard_tls_certificate_expiry_timestamp_seconds` gauge. The DER
//! walk is `config check`'s (it prints the same dates), so both always agree.

/// The earliest `notAfter` (seconds since the Unix epoch) among the PEM certificates in `pem`:
/// an intermediate that expires first breaks clients just as the leaf would. `None` when no
/// certificate's date can be read.
pub fn earliest_not_after(pem: &[u8]) -> Option<i64> {
    crate::cli::config::cert_expiries(pem)
        .into_iter()
        .flatten()
        .map(|t| t.unix_timestamp())
        .min()
}
