//! Lockstep: every web server in a farm serves the same data and switches to the next version
//! at the same instant.
//!
//! This crate is the client library — `liblockstep.so` with its C ABI ([`ffi`]) and the Rust
//! API it marshals to ([`client::Client`]) — plus what the data server shares with it: the HTTP
//! wire types ([`wire`]) and the version format ([`format`]).
//!
//! One concept per module: [`format`] (the version bytes), [`clock`] (clock offset to the data
//! server), [`retrieval`] (the background thread's cycle), [`activation`] (staged and active,
//! and the lock-free swap), [`client`] (a handle, across `fork()`), [`options`], [`ffi`].

pub mod activation;
pub mod buffer;
pub mod client;
pub mod clock;
pub mod delta;
pub mod ffi;
pub mod following;
pub mod format;
pub mod host_cache;
pub mod options;
pub mod retrieval;
pub mod tls;
pub mod wire;
