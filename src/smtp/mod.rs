//! SMTP front end: listeners (plain, STARTTLS, implicit TLS) and PROXY headers ([`server`]),
//! the per-connection session ([`session`], one file per verb) over a line-framed connection
//! ([`conn`]), AUTH credentials ([`auth`]), strict DATA/BDAT reception ([`data`]), limits and
//! timeouts, graceful shutdown. What the sessions share is in [`state`]. A finished message
//! leaves the front end as a [`crate::message::Message`] for [`crate::deliver`].

pub mod auth;
pub mod auth_guard;
pub mod conn;
pub mod data;
pub mod limits;
pub mod proxy;
pub mod server;
pub mod session;
pub mod state;
pub mod tls;
