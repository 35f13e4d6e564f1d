//! SMTP front end: listeners (plain, STARTTLS, implicit TLS), the per-connection session state
//! machine, AUTH, strict DATA/BDAT reception, limits and timeouts, graceful shutdown.

pub mod auth;
pub mod auth_guard;
pub mod data;
pub mod delivery;
pub mod observe;
pub mod proxy;
pub mod server;
pub mod session;
pub mod stream;
pub mod tls;
