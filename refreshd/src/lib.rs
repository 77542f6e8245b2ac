//! refreshd: refreshes snap-style applications safely while people use them.
//!
//! The daemon's library: the change/task engine, the task handlers, the on-disk layout and the
//! HTTP API. The `refreshd` binary is a thin wrapper around [`daemon::main`].

pub mod api;
mod asuser;
pub mod autorefresh;
pub mod blob;
pub mod daemon;
pub mod db;
pub mod engine;
pub mod fsutil;
pub mod inhibit;
pub mod layout;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod procfs;
pub mod systemd;
pub mod tasks;
pub mod tracking;
pub mod usertree;
