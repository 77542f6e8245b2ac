//! Crash points for the crash tests.
//!
//! `REFRESHD_FAILPOINTS=before-do:mount,after-undo:link` makes the daemon kill itself with
//! SIGKILL — no unwinding, no destructors, exactly like `kill -9` — the first time it reaches a
//! named point. The engine passes `before-do:KIND` after committing a task as Doing and before
//! running its handler, and `after-do:KIND` after the handler returned and before its outcome is
//! committed (likewise `-undo`); handlers may name points of their own.
//!
//! `mid-copy:precopy-data` and `mid-copy:setup-data` fire inside a data copy, after its first
//! entry; `mid-copy:setup-data@N` after the N-th entry, counted over all of the task's data
//! directories (the system one, then each user's). `mid-download@BYTES` fires once BYTES of the
//! blob are written to its `.partial` (a bare `mid-download`: after the first chunk). The crash
//! matrix (docs/crash-matrix.md) cuts at random positions with these.
//!
//! `mid-save:save-data` fires once a remove's snapshot holds the system's data and before it
//! takes users' trees; `mid-restore:restore-data` once a restore put the system's data back
//! and before users' trees.
//!
//! `pause:POINT=FILE` stops the thread at `POINT` (`mid-copy:setup-data`, `mid-download`,
//! `mid-verify`: `prepare` hashing the blob, its first progress recorded): it creates
//! `FILE.reached`, then waits until `FILE` exists, so a test can break the filesystem under a
//! task in the middle of its work, or see its progress.
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

/// Stops here while `pause:NAME=FILE` is armed and FILE does not exist (FILE.reached says it
/// got here). Polls: test-only, never armed in production.
pub fn pause(name: &str) {
    let prefix = format!("pause:{name}=");
    let Some(file) = points().iter().find_map(|p| p.strip_prefix(&prefix)) else {
        return;
    };
    let file = std::path::Path::new(file);
    if file.exists() {
        return;
    }
    let _ = std::fs::write(format!("{}.reached", file.display()), b"");
    tracing::warn!(
        failpoint = name,
        "failpoint reached: paused until {} exists",
        file.display()
    );
    while !file.exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Kills the process with SIGKILL if `name` is armed.
pub fn hit(name: &str) {
    if points().iter().any(|p| p == name) {
        die(name);
    }
}

/// Kills the process with SIGKILL if `name@N` is armed and `count` has reached N (a bare
/// `name` counts as `name@1`). Unset, one load of the cached empty list, as for [`hit`].
pub fn hit_at(name: &str, count: u64) {
    if points().iter().any(|p| reached(p, name, count)) {
        die(&format!("{name}@{count}"));
    }
}

/// Whether the armed point `p` names `name` at a position `count` has reached.
fn reached(p: &str, name: &str, count: u64) -> bool {
    match p.strip_prefix(name) {
        Some("") => count >= 1,
        Some(at) => at
            .strip_prefix('@')
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| count >= n),
        None => false,
    }
}

fn die(name: &str) {
    tracing::warn!(
        failpoint = name,
        "failpoint reached: killing myself with SIGKILL"
    );
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::reached;

    #[test]
    fn positions() {
        assert!(!reached("mid-download@100", "mid-download", 99));
        assert!(reached("mid-download@100", "mid-download", 100));
        assert!(reached("mid-download@100", "mid-download", 4096));
        assert!(reached("mid-copy:setup-data", "mid-copy:setup-data", 1));
        assert!(!reached("mid-copy:setup-data", "mid-copy:setup-data", 0));
        assert!(!reached("mid-copy:setup-data@x", "mid-copy:setup-data", 5));
        assert!(!reached(
            "mid-copy:setup-data@3",
            "mid-copy:precopy-data",
            5
        ));
        assert!(!reached("mid-copy:setup-dataX@3", "mid-copy:setup-data", 5));
    }
}
