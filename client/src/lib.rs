//! refreshd's API types ([`types`]), its HTTP-over-Unix-socket client ([`client`]), and the
//! refreshctl command line ([`cli`]).

pub mod cli;
pub mod client;
pub mod types;

pub use client::{Client, ClientError, RetryPolicy, Watch};
