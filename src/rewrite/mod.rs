//! Rewrite: applies a policy decision to the message header (hide recipients, one copy per
//! recipient, strip Bcc, trace header, DKIM handling) without copying or touching the body.
