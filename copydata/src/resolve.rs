//! From the caller's paths to fds: the source root, the directory that will hold the copy, and
//! the private directories the copy is built in. Below a user's home directory, every
//! component is opened without following symlinks, so a user who swaps a directory of theirs
//! for a symlink cannot send root's copy (or its reads) elsewhere.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::dir;
use crate::error::{Error, Result};
use crate::meta::{stat_at, stat_fd, FileId, Kind};
use crate::sys::{self, XattrTarget};
use crate::xattr;
use crate::Options;

const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY;

fn cstring(name: &OsStr, path: &Path) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| Error::InvalidPath {
        path: path.to_owned(),
        reason: "contains a NUL byte",
    })
}

/// Opens the directory that holds `path`; returns it with the last component.
pub(crate) fn open_parent(path: &Path, opts: &Options) -> Result<(OwnedFd, CString)> {
    let invalid = |reason| Error::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    let Some(user) = &opts.user else {
        let Some(Component::Normal(name)) = path.components().next_back() else {
            return Err(invalid("does not end in a name"));
        };
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let fd = sys::open_at(None, &cstring(parent.as_os_str(), path)?, DIR_FLAGS, 0).map_err(
            |source| Error::Open {
                path: parent.to_owned(),
                source,
            },
        )?;
        return Ok((fd, cstring(name, path)?));
    };
    let rest = path
        .strip_prefix(&user.home)
        .map_err(|_| invalid("is not below the user's home directory"))?;
    let mut names = Vec::new();
    for c in rest.components() {
        match c {
            Component::Normal(n) => names.push(n),
            _ => {
                return Err(invalid(
                    "has a '.' or '..' component below the home directory",
                ))
            }
        }
    }
    let last = names
        .pop()
        .ok_or_else(|| invalid("is the home directory itself"))?;
    let mut fd = sys::open_at(None, &cstring(user.home.as_os_str(), path)?, DIR_FLAGS, 0).map_err(
        |source| Error::Open {
            path: user.home.clone(),
            source,
        },
    )?;
    let mut at = user.home.clone();
    for n in names {
        at.push(n);
        fd = sys::open_at(
            Some(fd.as_fd()),
            &cstring(n, path)?,
            DIR_FLAGS | libc::O_NOFOLLOW,
            0,
        )
        .map_err(|source| Error::Open {
            path: at.clone(),
            source,
        })?;
    }
    Ok((fd, cstring(last, path)?))
}

/// Refuses a destination (or staging) path inside the source: the copy would copy itself.
/// Lexical: callers pass the paths they built, not ones through symlinks.
pub(crate) fn not_inside(path: &Path, src: &Path) -> Result<()> {
    if path.starts_with(src) {
        return Err(Error::InvalidPath {
            path: path.to_owned(),
            reason: "is inside the source tree",
        });
    }
    Ok(())
}

/// Opens the source root: a directory, not a symlink to one.
pub(crate) fn open_src(path: &Path, opts: &Options) -> Result<OwnedFd> {
    let (parent, name) = open_parent(path, opts)?;
    dir::open_dir(parent.as_fd(), &name).map_err(|source| {
        if matches!(
            source.raw_os_error(),
            Some(libc::ENOTDIR) | Some(libc::ELOOP)
        ) {
            Error::NotADirectory {
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

/// Fails if `name` exists in `parent` (as anything, a dangling symlink included).
pub(crate) fn ensure_absent(parent: BorrowedFd<'_>, name: &CStr, path: &Path) -> Result<()> {
    match stat_at(parent, name) {
        Ok(_) => Err(Error::Exists {
            path: path.to_owned(),
        }),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(Error::Stat {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A directory this process just made for itself.
pub(crate) struct PrivateDir {
    pub fd: OwnedFd,
    pub id: FileId,
    pub name: CString,
    pub path: PathBuf,
}

/// Makes directory `name` in `parent`, owned by this process and open to nobody else, with
/// no ACL inherited from the parent (a user's directory may carry a default ACL), and checks
/// that what it opened is what it made (the parent may be a hostile user's).
pub(crate) fn make_private_dir(
    parent: BorrowedFd<'_>,
    name: &CStr,
    path: &Path,
) -> Result<PrivateDir> {
    sys::mkdir_at(parent, name, 0o700).map_err(|source| Error::Create {
        path: path.to_owned(),
        source,
    })?;
    let fd =
        sys::open_at(Some(parent), name, DIR_FLAGS | libc::O_NOFOLLOW, 0).map_err(|source| {
            Error::Open {
                path: path.to_owned(),
                source,
            }
        })?;
    let m = stat_fd(fd.as_fd()).map_err(|source| Error::Stat {
        path: path.to_owned(),
        source,
    })?;
    let (uid, gid) = sys::effective_ids();
    let empty = dir::read_dir(fd.as_fd()).is_ok_and(|names| names.is_empty());
    if m.kind != Kind::Dir || m.uid != uid || !empty {
        return Err(Error::Tampered {
            path: path.to_owned(),
            what: "replaced right after it was made",
        });
    }
    let meta_err = |source| Error::SetMetadata {
        path: path.to_owned(),
        source,
    };
    xattr::drop_acls(XattrTarget::Fd(fd.as_fd())).map_err(meta_err)?;
    // The group and the setgid bit may come from a setgid parent.
    sys::fchown(fd.as_fd(), uid, gid).map_err(meta_err)?;
    sys::fchmod(fd.as_fd(), 0o700).map_err(meta_err)?;
    Ok(PrivateDir {
        fd,
        id: m.id,
        name: name.to_owned(),
        path: path.to_owned(),
    })
}

/// Makes the temporary directory a copy to `dst` (named `name` in `parent`) is built in:
/// `.NAME.refreshd-tmp-PID-N` beside it, so the daemon's start-up sweep recognises it.
pub(crate) fn make_temp_dir(parent: BorrowedFd<'_>, name: &CStr, dst: &Path) -> Result<PrivateDir> {
    // Leave room for the suffix within NAME_MAX (255).
    let base = &name.to_bytes()[..name.to_bytes().len().min(200)];
    let base = String::from_utf8_lossy(base);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut attempt = 0u32;
    loop {
        let tmp = format!(
            ".{base}.refreshd-tmp-{}-{:x}",
            std::process::id(),
            seed.wrapping_add(attempt)
        );
        let path = dst.with_file_name(&tmp);
        let tmp = CString::new(tmp).map_err(|_| Error::InvalidPath {
            path: dst.to_owned(),
            reason: "contains a NUL byte",
        })?;
        match make_private_dir(parent, &tmp, &path) {
            // Someone (a user, in their own directory) took the name: pick another.
            Err(Error::Create { source, .. })
                if source.raw_os_error() == Some(libc::EEXIST) && attempt < 16 =>
            {
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// Flushes the filesystem of `fd`.
pub(crate) fn syncfs(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    sys::syncfs(fd).map_err(|source| Error::Sync {
        path: path.to_owned(),
        source,
    })
}

/// Renames `from_name` in `from_dir` to `to_name` in `to_dir`, refusing to replace anything,
/// checks that what arrived is the inode `expect` (the source directory may be a user's, who
/// can swap names in it), and flushes the destination directory.
pub(crate) fn publish(
    from_dir: BorrowedFd<'_>,
    from_name: &CStr,
    from_path: &Path,
    to_dir: BorrowedFd<'_>,
    to_name: &CStr,
    to_path: &Path,
    expect: FileId,
) -> Result<()> {
    sys::rename_at(from_dir, from_name, to_dir, to_name, libc::RENAME_NOREPLACE).map_err(
        |source| Error::Rename {
            from: from_path.to_owned(),
            to: to_path.to_owned(),
            source,
        },
    )?;
    let arrived = stat_at(to_dir, to_name).map_err(|source| Error::Stat {
        path: to_path.to_owned(),
        source,
    })?;
    if arrived.id != expect {
        return Err(Error::Tampered {
            path: from_path.to_owned(),
            what: "replaced before it was renamed into place",
        });
    }
    sys::fsync(to_dir).map_err(|source| Error::Sync {
        path: to_path.to_owned(),
        source,
    })
}
