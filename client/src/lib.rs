//! refreshd's API types ([`types`]), its HTTP-over-Unix-socket client ([`client`]), and the
//! refreshctl command line ([`cli`]).

// The system is reached through safe wrappers only (tokio, rustix for the terminal's size).
#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod types;

pub use client::{Client, ClientError, RetryPolicy, Watch};
