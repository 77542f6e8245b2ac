//! Pre-copy: most of the copy made while the apps still run, so the critical section only
//! copies what changed since.
//!
//! The staging directory (the caller names it; it must be on the destination's filesystem,
//! beside it is best) is root's, mode 0700, and holds two things:
//!
//! - `tree/` — the copy, which becomes the destination;
//! - `state` — the record of what each entry of `tree/` was copied from (see `state.rs`).
//!
//! Only root can enter it, so nothing in `tree/` changes between passes but by this crate,
//! whatever the tree's owner does. `precopy` may run any number of times (each pass brings the
//! staging copy up to date and rewrites the record); `finish` runs once the apps are stopped.
//! Passes on one staging directory exclude each other (`flock`; a second gets `Busy`).
//!
//! Naming: a name carrying `.refreshd-tmp` is removed by the daemon's start-up sweep, which
//! loses the pre-copy across a restart but never leaks it; another name keeps it for `finish`
//! after a restart, and then an aborted refresh must `discard` it.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::copy::copy_tree;
use crate::dir;
use crate::error::{Error, Result};
use crate::meta::{stat_fd, FileId};
use crate::resolve;
use crate::state::{self, Records};
use crate::stats::{Progress, Stats};
use crate::sys;
use crate::walk::Walk;
use crate::Options;

const TREE: &CStr = c"tree";

/// An open staging directory, locked against a concurrent pass.
struct Staging {
    fd: OwnedFd,
    id: FileId,
}

/// Opens an existing staging directory: it must be this process's user's and closed to
/// everyone else (a user can make a directory by that name in their own directory, but not
/// one owned by root), and not in use by another pass.
fn open_staging(parent: BorrowedFd<'_>, name: &CStr, path: &Path) -> Result<Option<Staging>> {
    let fd = match sys::open_at(
        Some(parent),
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    ) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)) => {
            return Err(Error::NotStaging {
                path: path.to_owned(),
            })
        }
        Err(source) => {
            return Err(Error::Open {
                path: path.to_owned(),
                source,
            })
        }
    };
    let m = stat_fd(fd.as_fd()).map_err(|source| Error::Stat {
        path: path.to_owned(),
        source,
    })?;
    if m.uid != sys::effective_ids().0 || m.perm & 0o077 != 0 {
        return Err(Error::NotStaging {
            path: path.to_owned(),
        });
    }
    lock(&fd, path)?;
    Ok(Some(Staging { fd, id: m.id }))
}

fn lock(fd: &OwnedFd, path: &Path) -> Result<()> {
    sys::flock(fd.as_fd(), libc::LOCK_EX | libc::LOCK_NB).map_err(|source| {
        if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Error::Busy {
                path: path.to_owned(),
            }
        } else {
            Error::Open {
                path: path.to_owned(),
                source,
            }
        }
    })
}

/// Opens `tree/` in the staging directory, or makes it empty (then `true`: fresh).
fn open_tree(staging: &Staging, path: &Path) -> Result<(OwnedFd, bool)> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    match sys::open_at(Some(staging.fd.as_fd()), TREE, flags, 0) {
        Ok(fd) => return Ok((fd, false)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(source) => {
            return Err(Error::Open {
                path: path.to_owned(),
                source,
            })
        }
    }
    sys::mkdir_at(staging.fd.as_fd(), TREE, 0o700).map_err(|source| Error::Create {
        path: path.to_owned(),
        source,
    })?;
    let fd =
        sys::open_at(Some(staging.fd.as_fd()), TREE, flags, 0).map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
    Ok((fd, true))
}

/// The records of the last pass, if they are about this source and this staging tree.
fn load_records(staging: &Staging, src_root: FileId, tree_root: FileId) -> Records {
    match state::load(staging.fd.as_fd()) {
        Some(s) if s.src_root == Some(src_root) && s.tree_root == Some(tree_root) => s.records,
        _ => Records::new(),
    }
}

fn root_id(fd: &OwnedFd, path: &Path) -> Result<FileId> {
    stat_fd(fd.as_fd())
        .map(|m| m.id)
        .map_err(|source| Error::Stat {
            path: path.to_owned(),
            source,
        })
}

/// Copies `src` into the staging directory `staging` while the apps may still write to it.
///
/// A first pass copies everything; a later pass (the staging directory exists) copies only
/// what changed since the one before. Each pass ends with `syncfs` and then the record
/// written atomically, so the record never vouches for data that is not on disk. Nothing is
/// renamed into place: that is `finish`'s job.
///
/// On error the staging directory is removed.
pub fn precopy(
    src: &Path,
    staging: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(Progress),
) -> Result<Stats> {
    resolve::not_inside(staging, src)?;
    let src_root = resolve::open_src(src, opts)?;
    let src_id = root_id(&src_root, src)?;
    let (parent, name) = resolve::open_parent(staging, opts)?;
    let st = match open_staging(parent.as_fd(), &name, staging)? {
        Some(st) => st,
        None => {
            let dir = resolve::make_private_dir(parent.as_fd(), &name, staging)?;
            lock(&dir.fd, staging)?;
            Staging {
                fd: dir.fd,
                id: dir.id,
            }
        }
    };
    let result = (|| {
        let tree_path = staging.join("tree");
        let (tree, fresh) = open_tree(&st, &tree_path)?;
        let tree_id = root_id(&tree, &tree_path)?;
        let old = load_records(&st, src_id, tree_id);
        let mut walk = Walk::new(opts, progress, src, &tree_path, tree.as_fd(), old, true)?;
        walk.run(src_root.as_fd(), tree.as_fd(), fresh)?;
        let (stats, records) = walk.finish();
        resolve::syncfs(tree.as_fd(), &tree_path)?;
        let data = state::encode(src_id, tree_id, &records.unwrap_or_default());
        state::save(st.fd.as_fd(), &data).map_err(|source| Error::State {
            path: staging.join("state"),
            source,
        })?;
        Ok(stats)
    })();
    if result.is_err() {
        // A partial staging copy only takes space; the next pass starts over.
        let _ = dir::remove_tree(parent.as_fd(), &name, Some(st.id));
    }
    result
}

/// Brings the staging copy up to date with `src` and renames it to `dst`, which must not
/// exist. Run once the apps are stopped: this is the part of the copy inside the critical
/// section, and its work is proportional to what changed since the last `precopy`.
///
/// Walks `src` and the staging tree together: keeps an entry whose source is provably
/// unchanged since it was copied (same inode, type, size, mode, owner, mtime and ctime — any
/// change to data, mode, owner or xattrs moves the ctime — and the staging inode untouched),
/// fixing its times; copies new and changed entries again; removes staging entries the source
/// no longer has; sets every directory's metadata again. The result is what `copy_tree` would
/// make at this moment. Then `syncfs`, the rename (no replacing), and a flush of `dst`'s parent.
///
/// Without a staging directory (none made, or swept after a crash), or with a directory by
/// that name that is not a staging directory of ours, this is `copy_tree`. On
/// error the staging directory is kept: calling `finish` again reuses it, or `discard` removes
/// it. After a crash between the rename and the removal of the staging directory, `dst`
/// exists (complete) and `finish` reports `Exists`; callers check for `dst` first.
pub fn finish(
    src: &Path,
    staging: &Path,
    dst: &Path,
    opts: &Options,
    progress: &mut dyn FnMut(Progress),
) -> Result<Stats> {
    resolve::not_inside(dst, src)?;
    resolve::not_inside(staging, src)?;
    let src_root = resolve::open_src(src, opts)?;
    let src_id = root_id(&src_root, src)?;
    let (dst_parent, dst_name) = resolve::open_parent(dst, opts)?;
    resolve::ensure_absent(dst_parent.as_fd(), &dst_name, dst)?;
    let (parent, name) = resolve::open_parent(staging, opts)?;
    let st = match open_staging(parent.as_fd(), &name, staging) {
        Ok(Some(st)) => st,
        // No staging directory, or one that is not ours (a user can make a directory by that
        // name in their own directory; it must not block the refresh, nor be trusted): copy
        // the whole tree instead, leaving that directory alone.
        Ok(None) | Err(Error::NotStaging { .. }) => return copy_tree(src, dst, opts, progress),
        Err(e) => return Err(e),
    };
    let tree_path: PathBuf = staging.join("tree");
    let (tree, fresh) = open_tree(&st, &tree_path)?;
    let tree_id = root_id(&tree, &tree_path)?;
    let old = load_records(&st, src_id, tree_id);
    let mut walk = Walk::new(opts, progress, src, &tree_path, tree.as_fd(), old, false)?;
    walk.run(src_root.as_fd(), tree.as_fd(), fresh)?;
    let (stats, _) = walk.finish();
    resolve::syncfs(tree.as_fd(), &tree_path)?;
    resolve::publish(
        st.fd.as_fd(),
        TREE,
        &tree_path,
        dst_parent.as_fd(),
        &dst_name,
        dst,
        tree_id,
    )?;
    // The copy is in place; what is left is the record. Failing to remove it does not undo
    // the copy (`discard` or the sweep gets it later).
    let _ = state::remove(st.fd.as_fd());
    let _ = dir::remove_tree(parent.as_fd(), &name, Some(st.id));
    Ok(stats)
}

/// Removes a staging directory (an aborted refresh). Returns whether there was one. Refuses
/// a directory by that name that is not a staging directory of this process's user.
pub fn discard(staging: &Path, opts: &Options) -> Result<bool> {
    let (parent, name) = resolve::open_parent(staging, opts)?;
    let Some(st) = open_staging(parent.as_fd(), &name, staging)? else {
        return Ok(false);
    };
    dir::remove_tree(parent.as_fd(), &name, Some(st.id)).map_err(|source| Error::Remove {
        path: staging.to_owned(),
        source,
    })?;
    Ok(true)
}
