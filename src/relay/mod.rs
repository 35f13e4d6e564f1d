//! Relay: the upstream side. Opens the upstream session (plain, STARTTLS or implicit TLS, AUTH),
//! forwards envelope commands one by one and the message data, and maps upstream replies to
//! what our client is told.
