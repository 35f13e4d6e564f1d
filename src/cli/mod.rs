//! Offline commands for admins: `check`, `config check`, `audit verify|query`, `spool list|flush`, `passwd`.

pub mod audit;
pub mod check;
pub mod spool;
