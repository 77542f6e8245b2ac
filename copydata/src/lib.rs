//! Copying a revision's data directory to the next revision, as root, safely.
//!
//! When a snap-style app gets a new revision, each of its data directories
//! (`var/snap/NAME/OLD`, `home/USER/snap/NAME/OLD`) is copied to the new revision's. This crate
//! makes that copy:
//!
//! - [`copy_tree`] — a whole copy, built in a temporary beside the destination and renamed into
//!   place, so a crash never leaves a half-copied destination that looks complete.
//! - [`precopy`] then [`finish`] — most of the copy made while the apps still run, into a
//!   staging directory; in the critical section (apps stopped) `finish` copies only what
//!   changed and renames. [`discard`] removes a staging directory.
//!
//! # What a copy keeps
//!
//! File types (regular, directory, symlink as a symlink, fifo and device nodes recreated with
//! `mknodat`; sockets are left out with a note), permission bits including setuid, setgid and
//! sticky, owner and group (`lchown` for symlinks), atime and mtime with nanoseconds (a
//! directory's after its contents), hard links (one copy per source inode, the other names
//! linked to it), extended attributes of every namespace (so POSIX ACLs and `security.*`;
//! `ENOTSUP` on the destination is counted, not fatal), sparse files (only data extents are
//! copied; holes stay holes). Data is shared with `FICLONE` where the filesystem can
//! ([`Reflink::Auto`]), else copied with `copy_file_range`, else read and written. Source
//! atimes are not moved (`O_NOATIME`). Not kept: inode flags (`chattr`), btime; what is
//! mounted inside the tree (mount points are left out with a note).
//!
//! # Security
//!
//! Per-user data belongs to a user who may be hostile, and the copy runs as root. Nothing the
//! user plants or does during the copy may make root read or write outside that user's tree:
//!
//! - **No path is ever resolved inside a tree.** The source root is opened with
//!   `O_DIRECTORY|O_NOFOLLOW`, every entry with `openat(dirfd, name, O_NOFOLLOW…)` relative to
//!   its parent's fd, every destination entry made with `mkdirat`/`openat(O_CREAT|O_EXCL|
//!   O_NOFOLLOW)`/`symlinkat`/`mknodat`/`linkat` relative to destination fds. Above the trees,
//!   with [`UserTree::home`], each component below the home directory is opened with
//!   `O_NOFOLLOW` too, so swapping `~/snap` for a symlink cannot redirect the copy.
//! - **Symlinks are copied, never followed**: their target is read from an `O_PATH|O_NOFOLLOW`
//!   fd of the link itself.
//! - **Races are detected, not trusted.** An entry is `statx`ed by name, opened without
//!   following, and the opened fd `fstat`ed: a directory swapped for a symlink makes the open
//!   fail (`ELOOP`/`ENOTDIR`), a type that differs is refused; either way the entry is skipped
//!   with a [`NoteKind::Swapped`] note. All decisions are made on the opened fd's metadata.
//! - **Nothing blocks**: regular files are opened `O_NONBLOCK|O_NOCTTY` (a fifo swapped in
//!   opens at once and is then refused); fifos and devices are never opened, only recreated.
//! - **Directories moved mid-walk**: deep trees keep fds for the deepest [`FD_WINDOW`] levels
//!   only and come back up through `..`, checked to be the same inode; a directory moved away
//!   is not read further ([`NoteKind::DirectoryMoved`]).
//! - **In a user's tree** ([`Options::user`]): device nodes are left out (a user cannot make
//!   one); a non-directory owned by someone else with more than one link is left out (it may
//!   be a hard link to a file outside the tree — `/etc/shadow` where `protected_hardlinks` is
//!   off — and reading it would copy outside data in); another user's single-link file is
//!   copied with its owner and mode but without setuid/setgid bits or file capabilities; a
//!   source entry root cannot read (`EACCES`/`EPERM`, e.g. a FUSE mount) is skipped with a note
//!   rather than failing everyone's refresh.
//! - **The copy is closed until done**: the temporary (and staging) directory is root's, mode
//!   0700, stripped of any ACL inherited from the user's directory; its contents get their
//!   owners and modes as they are made, but nobody else can reach them before the rename. The
//!   rename refuses to replace anything and is checked to have moved our directory.
//!
//! Residual risks: a user's tree with a directory of millions of entries costs memory in
//! proportion (names are listed per directory); a FUSE server mounted with `allow_other`
//! could stall a `statx` of its mount point.
//!
//! # Pre-copy
//!
//! [`precopy`] copies into a staging directory while apps write and records, for every
//! non-directory it copied, the source's identity and state (inode, type, size, mode, owner,
//! mtime, ctime, link count) and the staging inode's identity and ctime. [`finish`] keeps an
//! entry only if the source still matches its record *and* the staging inode is untouched;
//! anything else is copied again, staging entries the source lost are removed, and every
//! directory's metadata is set again, so the result is what [`copy_tree`] would make at that
//! moment. ctime is the key: every change to an inode (data, chmod, chown, xattrs, link count,
//! rename) moves it and no user can set it. Files whose ctime was within two seconds of their
//! copy, or that changed while copied, are not recorded (their ctime might not move again
//! within one coarse timestamp tick), so `finish` copies them again.
//!
//! The record lives in a file in the staging directory (`state`), written after a `syncfs`
//! of the staging copy, so a daemon restart between `precopy` and `finish` keeps the work; if
//! the record is missing or damaged, `finish` still produces a correct copy, only slower.
//!
//! Everything here is synchronous and blocking: callers in async code run it on a blocking
//! thread. All `unsafe` lives in the private `sys` module.

#![deny(unsafe_code)]

mod copy;
mod data;
mod dir;
mod error;
mod meta;
mod precopy;
mod resolve;
mod state;
mod stats;
#[allow(unsafe_code)]
mod sys;
mod walk;
mod xattr;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use copy::copy_tree;
pub use dir::FD_WINDOW;
pub use dir::{read_dir as list_dir, remove_tree_at};
pub use error::{Chain, Error, Result};
pub use precopy::{discard, finish, precopy};
pub use stats::{Note, NoteKind, Progress, Stats, MAX_NOTES};

/// Whether file data may be shared with the source instead of copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reflink {
    /// Share extents (`FICLONE`) where the filesystem supports it, else copy; also lets
    /// `copy_file_range` share them on filesystems that do so.
    #[default]
    Auto,
    /// Independent data blocks: no `FICLONE` and no `copy_file_range`; read and write.
    Never,
}

/// A tree owned by a user who may be hostile (per-user data under their home directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserTree {
    /// The user the tree belongs to.
    pub uid: u32,
    /// A directory the user cannot replace — their home directory, in root's `/home`. It is
    /// opened normally; every component of the source, destination and staging paths below it
    /// is opened without following symlinks, and paths not below it are refused.
    pub home: PathBuf,
}

/// Who owns the copy's entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Owners {
    /// Each entry gets its source's owner and group (root copying: `fchown`).
    #[default]
    Preserve,
    /// Every entry belongs to the process that copies: a user copying their own data cannot
    /// give files away, so no `fchown` is made, and only the attributes a user can set
    /// (`user.*`, POSIX ACLs) are carried; `security.*` and `trusted.*` are left out.
    Caller,
}

/// How to copy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub reflink: Reflink,
    /// `Some` for a user's tree: the conservative rules described in the crate documentation
    /// apply. `None` for root's trees (`var/snap/…`), whose parents are trusted.
    pub user: Option<UserTree>,
    pub owners: Owners,
}
