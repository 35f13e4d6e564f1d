//! bccguard: an outbound SMTP relay that stops the "CC instead of BCC" accident.
//!
//! Mail flows through one module per stage:
//! [`smtp`] (front end) → [`policy`] (decide) → [`rewrite`] (apply: the plan) → [`relay`]
//! (upstream), with [`audit`] beside the pipe recording every intervention. [`deliver`] runs one
//! message through those stages and its outcome step; [`generated`] is the mail the relay writes.
//! [`message`] holds the values the stages share (message, envelope, client); [`config`] loads and checks the admin's TOML; [`cli`] holds the
//! offline commands (check, config check, audit, spool, passwd); [`spool`] keeps split copies
//! the upstream could not take in-session and retries them; [`reply`] is the SMTP reply value
//! every stage answers with.

pub mod audit;
pub mod cli;
pub mod config;
pub mod deliver;
pub mod generated;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod policy;
pub mod relay;
pub mod reply;
pub mod rewrite;
pub mod service;
pub mod smtp;
pub mod spool;
