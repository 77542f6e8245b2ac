//! The runctl directory's files (docs/runctl-protocol.md, "Files"): each snap's lock, its
//! `running` marker and its `inhibited` marker, and the `tracking` file. What they mean to
//! launchers and the release agent is the protocol's; here is only how the daemon makes, reads
//! and removes them.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use refreshd_runctl::Marker;
use tracing::warn;

use super::Kind;
use crate::fsutil;

/// `ROOT/run/refreshd/runctl`, made by `Tracking::setup`.
pub struct Markers {
    runctl: PathBuf,
}

impl Markers {
    pub fn new(runctl: PathBuf) -> Markers {
        Markers { runctl }
    }

    pub fn dir(&self) -> &Path {
        &self.runctl
    }

    fn path(&self, name: &str, m: Marker) -> PathBuf {
        let mut buf = [0u8; refreshd_runctl::MAX_MARKER];
        let n = refreshd_runctl::marker_name(name.as_bytes(), m, &mut buf)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_else(|| format!("snap.{name}.invalid"));
        self.runctl.join(n)
    }

    /// The per-snap lock launchers take around their join. Never waits: a launcher holds it for
    /// microseconds, unless its user stopped it (SIGSTOP); then the caller retries later rather
    /// than hang. `Ok(None)` when it is busy. The file is never unlinked (rule R8): unlinking it
    /// could leave two holders on two inodes.
    pub fn try_lock(&self, name: &str) -> io::Result<Option<Flock<File>>> {
        let f = fsutil::open_lock_file(&self.path(name, Marker::Lock))?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(l)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(e.into()),
        }
    }

    /// Only its existence counts: a marker that cannot be read still keeps launches out.
    pub fn is_inhibited(&self, name: &str) -> bool {
        self.path(name, Marker::Inhibited).exists()
    }

    /// Writes the inhibition marker (atomically): launches of NAME wait from now on.
    pub fn inhibit(&self, name: &str, change: u64) -> io::Result<()> {
        let body = format!(
            "reason=refresh\nchange={change}\npid={}\nboot-id={}\n",
            std::process::id(),
            crate::procfs::boot_id()
        );
        let path = self.path(name, Marker::Inhibited);
        fsutil::write_atomic(&path, body.as_bytes(), 0o644).map_err(|e| {
            // Said in full: it ends the refresh before its critical section, and the caller
            // should know where space is missing.
            io::Error::new(
                e.kind(),
                format!(
                    "cannot write the inhibition marker {}: {e}; launches could not be held back, so the refresh stops before its critical section: free space there and refresh again",
                    path.display()
                ),
            )
        })
    }

    /// Removes the inhibition marker: waiting launches go on.
    pub fn lift(&self, name: &str) -> io::Result<()> {
        fsutil::remove_file_if_exists(&self.path(name, Marker::Inhibited))
    }

    /// The change that owns NAME's inhibition marker, if there is one.
    pub fn inhibition_owner(&self, name: &str) -> Option<u64> {
        let s = fs::read_to_string(self.path(name, Marker::Inhibited)).ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix("change="))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Creates the running marker if it is missing.
    pub fn set_running(&self, name: &str) -> io::Result<()> {
        let m = self.path(name, Marker::Running);
        if m.exists() {
            return Ok(());
        }
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&m)
            .map(drop)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot create {}: {e}; free space there and try again",
                        m.display()
                    ),
                )
            })
    }

    pub fn clear_running(&self, name: &str) -> io::Result<()> {
        fsutil::remove_file_if_exists(&self.path(name, Marker::Running))
    }

    /// Names with a marker of kind `m`.
    pub fn marked(&self, m: Marker) -> Vec<String> {
        let suffix = match m {
            Marker::Running => ".running",
            Marker::Inhibited => ".inhibited",
            Marker::Lock => ".lock",
        };
        fs::read_dir(&self.runctl)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().into_string().ok()?;
                let name = n.strip_prefix("snap.")?.strip_suffix(suffix)?.to_owned();
                refreshd_runctl::valid_instance_name(name.as_bytes()).then_some(name)
            })
            .collect()
    }

    /// The `tracking` file, for people and tests only: a full run directory (which a user may
    /// be able to fill where /run/lock is part of it) must not keep the daemon from starting.
    pub fn write_backend(&self, kind: Kind) {
        let file = self.runctl.join(refreshd_runctl::TRACKING_FILE);
        if let Err(e) =
            fsutil::write_atomic(&file, format!("{}\n", kind.as_str()).as_bytes(), 0o644)
        {
            warn!("cannot write {}: {e}", file.display());
        }
    }
}

/// A running marker's name, as a watcher sees it: `snap.NAME.running` exactly.
pub fn running_marker_name(file: &std::ffi::OsStr) -> Option<&str> {
    let n = file
        .to_str()?
        .strip_prefix("snap.")?
        .strip_suffix(".running")?;
    refreshd_runctl::valid_instance_name(n.as_bytes()).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inhibition_marker_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let m = Markers::new(d.path().to_owned());
        assert!(!m.is_inhibited("hello"));
        assert_eq!(m.inhibition_owner("hello"), None);
        m.inhibit("hello", 42).unwrap();
        assert!(m.is_inhibited("hello"));
        assert_eq!(m.inhibition_owner("hello"), Some(42));
        assert_eq!(m.marked(Marker::Inhibited), vec!["hello".to_owned()]);
        m.lift("hello").unwrap();
        m.lift("hello").unwrap();
        assert!(!m.is_inhibited("hello"));
    }

    #[test]
    fn running_marker_and_lock() {
        let d = tempfile::tempdir().unwrap();
        let m = Markers::new(d.path().to_owned());
        m.set_running("hello").unwrap();
        m.set_running("hello").unwrap();
        assert_eq!(m.marked(Marker::Running), vec!["hello".to_owned()]);
        m.clear_running("hello").unwrap();
        m.clear_running("hello").unwrap();
        assert!(m.marked(Marker::Running).is_empty());

        let held = m.try_lock("hello").unwrap();
        assert!(held.is_some());
        assert!(m.try_lock("hello").unwrap().is_none());
        drop(held);
        assert!(m.try_lock("hello").unwrap().is_some());
        // The lock file stays for good (R8).
        assert!(d.path().join("snap.hello.lock").exists());
    }

    #[test]
    fn only_exact_running_marker_names() {
        use std::ffi::OsStr;
        assert_eq!(
            running_marker_name(OsStr::new("snap.hello.running")),
            Some("hello")
        );
        for bad in [
            "snap.hello.inhibited",
            ".snap.hello.running",
            "snap..running",
            "snap.HELLO.running",
            "hello.running",
        ] {
            assert_eq!(running_marker_name(OsStr::new(bad)), None, "{bad}");
        }
    }
}
