//! Audit: the durable, hash-chained JSON Lines record of every intervention, written and
//! fsynced (group commit) before the client hears the outcome; recipients pseudonymised.
