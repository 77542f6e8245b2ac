//! The cgroup-v1 release agent (docs/runctl-protocol.md).
//!
//! When a cgroup with `notify_on_release` set loses its last process and child, the kernel execs
//! the hierarchy's `release_agent` as root, with `HOME=/` and a fixed `PATH`, in the initial
//! namespaces, and with exactly one argument: the cgroup's path relative to the hierarchy's
//! mount point. For refreshd's groups that is `/refreshd/snap.NAME` (the daemon whose root is
//! `/`) or `/refreshd.ID/snap.NAME` (a daemon registered as [`AGENT_REGISTRY`]`/ID`). The agent
//! then removes `snap.NAME.running` from that daemon's runctl directory, which tells refreshd
//! that no process of NAME is left, without refreshd polling `cgroup.procs`.
//!
//! The argument is checked by [`runctl::parse_release_path`]; anything it does not accept is
//! left alone. Only the validated pieces (ID, NAME) are ever joined to a path, one component at
//! a time relative to a directory already opened and checked:
//!
//! - `/refreshd/snap.NAME`: open [`DEFAULT_RUNCTL`] (not following a symlink in its last
//!   component), require a root-owned directory, `unlinkat(runctl, "snap.NAME.running")`.
//! - `/refreshd.ID/snap.NAME`: open [`AGENT_REGISTRY`] (not following a symlink), require a
//!   directory owned by root and writable by nobody else; open `ID` in it, following that
//!   root-made symlink to `ROOT/run/refreshd/runctl`; require a root-owned directory;
//!   `unlinkat(runctl, "snap.NAME.running")`.
//!
//! A missing directory, registry entry or marker means there is nothing to do. The agent
//! creates nothing and writes nothing but that one unlink, and the kernel ignores its exit
//! status, so [`Outcome::exit_code`] is 0 for every outcome but an internal impossibility.
//!
//! This library is `no_std` and allocation-free so the binary the kernel spawns for every
//! emptied group can be `no_std` + `no_main` and a few kilobytes (see `measure.sh`). All its
//! `unsafe` lives in [`sys`].

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

pub mod sys;

use core::ffi::CStr;

use refreshd_runctl as runctl;
use runctl::{Marker, Released, ID_LEN, MAX_MARKER};
use sys::{Errno, Fd, Follow, Stat, Uid};

pub use runctl::{AGENT_REGISTRY, DEFAULT_RUNCTL};

/// [`DEFAULT_RUNCTL`], NUL-terminated.
pub const DEFAULT_RUNCTL_C: &CStr = c"/run/refreshd/runctl";
/// [`AGENT_REGISTRY`], NUL-terminated.
pub const AGENT_REGISTRY_C: &CStr = c"/run/refreshd/agent";

const fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

// The C copies above must never drift from the contract crate.
const _: () = assert!(same(DEFAULT_RUNCTL_C.to_bytes(), DEFAULT_RUNCTL.as_bytes()));
const _: () = assert!(same(AGENT_REGISTRY_C.to_bytes(), AGENT_REGISTRY.as_bytes()));

/// Where the agent looks: [`Paths::HOST`] in the binary; scratch trees in tests.
#[derive(Debug, Clone, Copy)]
pub struct Paths<'a> {
    /// The runctl directory of the daemon whose root is `/`.
    pub default_runctl: &'a CStr,
    /// The registry of other daemons' runctl directories.
    pub registry: &'a CStr,
}

impl Paths<'static> {
    /// The real, host-absolute paths of the runctl contract.
    pub const HOST: Paths<'static> = Paths {
        default_runctl: DEFAULT_RUNCTL_C,
        registry: AGENT_REGISTRY_C,
    };
}

/// Which directory a check or a system call was about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// [`Paths::registry`].
    Registry,
    /// A runctl directory: the default one or a registry entry's target.
    Runctl,
}

/// Why a directory was not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotDirectory(Dir),
    /// Not owned by root.
    Owner(Dir, Uid),
    /// Writable by its group or by others.
    Writable(Dir),
}

/// What one run of the agent did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not exactly one argument, or an argument that is not a refreshd snap group: nothing
    /// touched.
    Ignored,
    /// `snap.NAME.running` was removed.
    Removed,
    /// Nothing to remove: the registry, the registry entry, the runctl directory or the marker
    /// does not exist.
    Absent,
    /// A directory on the way failed a check; nothing removed.
    Refused(Refusal),
    /// A system call failed for another reason than a missing file; nothing removed.
    Failed(Dir, Errno),
    /// A name the parser accepted made no marker name: a bug (runctl's checks disagree).
    Impossible,
}

impl Outcome {
    /// `EX_SOFTWARE` for [`Outcome::Impossible`], 0 for everything else: the kernel ignores the
    /// status, and a refused or failed removal only leaves refreshd to notice the empty group
    /// itself.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Impossible => 70,
            _ => 0,
        }
    }
}

/// The whole agent for `args`, the arguments after `argv[0]`: anything but exactly one is
/// [`Outcome::Ignored`].
pub fn run<'a>(paths: &Paths<'_>, mut args: impl Iterator<Item = &'a [u8]>) -> Outcome {
    match (args.next(), args.next()) {
        (Some(arg), None) => release(paths, arg),
        _ => Outcome::Ignored,
    }
}

/// Handles the release of the cgroup at `arg` (relative to the hierarchy's mount point).
pub fn release(paths: &Paths<'_>, arg: &[u8]) -> Outcome {
    let Some(Released { id, name }) = runctl::parse_release_path(arg) else {
        return Outcome::Ignored;
    };
    let mut marker = [0u8; MAX_MARKER];
    let mut marker_c = [0u8; MAX_MARKER + 1];
    let Some(marker) = runctl::marker_name(name, Marker::Running, &mut marker)
        .and_then(|m| with_nul(m, &mut marker_c))
    else {
        return Outcome::Impossible;
    };
    let mut entry_c = [0u8; ID_LEN + 1];
    let runctl = match id {
        None => open_default_runctl(paths),
        Some(id) => match with_nul(id, &mut entry_c) {
            Some(entry) => open_registered_runctl(paths, entry),
            None => return Outcome::Impossible,
        },
    };
    let runctl = match runctl {
        Ok(fd) => fd,
        Err(outcome) => return outcome,
    };
    match sys::unlink_at(&runctl, marker) {
        Ok(()) => Outcome::Removed,
        Err(Errno::ENOENT) => Outcome::Absent,
        Err(e) => Outcome::Failed(Dir::Runctl, e),
    }
}

/// Copies `src` into `out` with a NUL after it; None if it does not fit or holds a NUL.
fn with_nul<'o, const N: usize>(src: &[u8], out: &'o mut [u8; N]) -> Option<&'o CStr> {
    let (body, rest) = out.split_at_mut_checked(src.len())?;
    body.copy_from_slice(src);
    *rest.first_mut()? = 0;
    CStr::from_bytes_with_nul(out.get(..=src.len())?).ok()
}

/// Maps an open or stat error: a missing directory is nothing to do.
fn missing_or_failed(dir: Dir, e: Errno) -> Outcome {
    if e == Errno::ENOENT {
        Outcome::Absent
    } else {
        Outcome::Failed(dir, e)
    }
}

fn open_default_runctl(paths: &Paths<'_>) -> Result<Fd, Outcome> {
    let fd = sys::open_dir(paths.default_runctl, Follow::No)
        .map_err(|e| missing_or_failed(Dir::Runctl, e))?;
    check_runctl(sys::stat(&fd).map_err(|e| Outcome::Failed(Dir::Runctl, e))?)
        .map_err(Outcome::Refused)?;
    Ok(fd)
}

fn open_registered_runctl(paths: &Paths<'_>, entry: &CStr) -> Result<Fd, Outcome> {
    let registry = sys::open_dir(paths.registry, Follow::No)
        .map_err(|e| missing_or_failed(Dir::Registry, e))?;
    check_registry(sys::stat(&registry).map_err(|e| Outcome::Failed(Dir::Registry, e))?)
        .map_err(Outcome::Refused)?;
    // The entry is a symlink only root could have made; following it is the point.
    let fd = sys::open_dir_at(&registry, entry, Follow::Yes)
        .map_err(|e| missing_or_failed(Dir::Runctl, e))?;
    check_runctl(sys::stat(&fd).map_err(|e| Outcome::Failed(Dir::Runctl, e))?)
        .map_err(Outcome::Refused)?;
    Ok(fd)
}

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const GROUP_OTHER_WRITE: u32 = 0o022;

/// The registry must be a directory only root can add entries to.
pub fn check_registry(st: Stat) -> Result<(), Refusal> {
    if st.mode & S_IFMT != S_IFDIR {
        return Err(Refusal::NotDirectory(Dir::Registry));
    }
    if st.owner != Uid::ROOT {
        return Err(Refusal::Owner(Dir::Registry, st.owner));
    }
    if st.mode & GROUP_OTHER_WRITE != 0 {
        return Err(Refusal::Writable(Dir::Registry));
    }
    Ok(())
}

/// A runctl directory must be a directory owned by root (refreshd runs as root and makes it);
/// its mode is refreshd's business.
pub fn check_runctl(st: Stat) -> Result<(), Refusal> {
    if st.mode & S_IFMT != S_IFDIR {
        return Err(Refusal::NotDirectory(Dir::Runctl));
    }
    if st.owner != Uid::ROOT {
        return Err(Refusal::Owner(Dir::Runctl, st.owner));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
