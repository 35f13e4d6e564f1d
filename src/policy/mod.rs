//! Policy: decides what happens to a message from what it shows its readers.
//! Owns the visible-recipient finder ([`visible`], [`address`]), internal/external counting and
//! the admin's rules ([`rules`]); returns a [`Decision`] and never touches the message bytes.

pub mod address;
pub mod rules;
pub mod visible;

pub use crate::config::{Action, Mode};
