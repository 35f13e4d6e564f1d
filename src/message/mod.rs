//! The raw message as the stages share it: one buffer, held once, with the header section
//! split into fields by byte offset so later stages can read or replace single fields while
//! every other byte (and the whole body) passes through untouched.

pub mod header;
