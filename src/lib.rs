//! Lockstep: every web server in a farm serves the same data and switches to the next version
//! at the same instant.
//!
//! This crate is the client side (the `liblockstep` shared library and its C ABI) and the parts
//! the data server shares with it: the HTTP wire types and the version format.

pub mod format;
pub mod wire;
