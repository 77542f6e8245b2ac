//! refreshd: refreshes snap-style applications safely while people use them.
//!
//! The daemon's library: the change/task engine, the task handlers, the on-disk layout and the
//! HTTP API. The `refreshd` binary is a thin wrapper around [`daemon::main`].
//!
//! `unsafe` is denied everywhere but in `supervise::sys`, the one module that needs it. Public
//! are only the modules other crates use: the daemon's entry point and arguments (the binary,
//! xtask's man page), and the engine with its database access (the benchmarks).

#![deny(unsafe_code)]

pub(crate) mod api;
pub(crate) mod autorefresh;
pub(crate) mod blob;
pub mod daemon;
pub mod db;
pub mod engine;
pub(crate) mod fsutil;
pub mod kinds;
pub(crate) mod layout;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod ops;
pub(crate) mod procfs;
pub(crate) mod shutdown_delay;
pub(crate) mod supervise;
pub(crate) mod systemd;
pub(crate) mod tasks;
pub(crate) mod tracking;
pub(crate) mod usertree;
