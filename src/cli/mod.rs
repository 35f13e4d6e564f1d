//! Offline commands for admins: `check` (one message, or in bulk), `config check|show`, `audit verify|query|report`,
//! `spool list|flush`, `passwd`.

pub mod audit;
pub mod bulk;
pub mod check;
pub mod config;
pub mod report;
pub mod spool;
pub mod when;
