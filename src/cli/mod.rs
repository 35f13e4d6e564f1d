//! Offline commands for admins: `check`, `config check|show`, `audit verify|query|report`,
//! `passwd`.

pub mod audit;
pub mod check;
pub mod config;
pub mod report;
pub mod when;
