//! bccguard: an outbound SMTP relay that stops the "CC instead of BCC" accident.
//!
//! Mail flows through one module per stage:
//! [`smtp`] (front end) → [`policy`] (decide) → [`rewrite`] (apply) → [`relay`] (upstream),
//! with [`audit`] beside the pipe recording every intervention. [`message`] is the raw-message
//! model the stages share; [`config`] loads and checks the admin's TOML; [`cli`] holds the
//! offline commands (check, config check, audit, passwd); [`reply`] is the SMTP reply value
//! every stage answers with.

pub mod audit;
pub mod cli;
pub mod config;
pub mod message;
pub mod metrics;
pub mod policy;
pub mod relay;
pub mod reply;
pub mod rewrite;
pub mod service;
pub mod smtp;
