//! Offline commands for admins: `check`, `config check`, `audit verify|query`, `passwd`.

pub mod audit;
pub mod check;
pub mod config;
