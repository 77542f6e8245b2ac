//! Crash points for the crash tests.
//!
//! `REFRESHD_FAILPOINTS=before-do:mount,after-undo:link` makes the daemon kill itself with
//! SIGKILL — no unwinding, no destructors, exactly like `kill -9` — the first time it reaches a
//! named point. The engine passes `before-do:KIND` after committing a task as Doing and before
//! running its handler, and `after-do:KIND` after the handler returned and before its outcome is
//! committed (likewise `-undo`); handlers may name points of their own.
//!
//! `mid-copy:precopy-data` and `mid-copy:setup-data` fire inside a data copy, after its first
//! entry.
//!
//! `lose-events` drops the events the tracking watcher sees (and makes its backstop look every
//! second), to show that the backstop catches up with events lost outside the protocol.
//!
//! `fail-do:KIND` makes the task fail instead of running, to drive a change into undo;
//! `park-do:KIND` parks it in Wait until the change is aborted. Unset (always, in production),
//! a check is one load of a cached empty list.

use std::sync::OnceLock;

pub const ENV: &str = "REFRESHD_FAILPOINTS";

fn points() -> &'static [String] {
    static POINTS: OnceLock<Vec<String>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var(ENV)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// True if `name` is armed: the caller then fails on purpose (`fail-do:KIND` makes a task's
/// do half fail without running, to exercise undo).
pub fn fails(name: &str) -> bool {
    points().iter().any(|p| p == name)
}

/// Kills the process with SIGKILL if `name` is armed.
pub fn hit(name: &str) {
    if points().iter().any(|p| p == name) {
        tracing::warn!(
            failpoint = name,
            "failpoint reached: killing myself with SIGKILL"
        );
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
