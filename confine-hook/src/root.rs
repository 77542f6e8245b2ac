//! The root the launcher works in, and trusted directory walking inside it.
//!
//! The root is derived from where the launcher itself is installed (`/proc/self/exe` minus
//! [`HOOK_PATH`]), never from anything the caller controls. Every directory the launcher uses
//! is reached with `openat(O_NOFOLLOW | O_DIRECTORY)` from a descriptor of its parent and must
//! be owned by root and not writable by group or others ([`Dir`]): a user who cannot write a
//! directory cannot swap what is in it between our check and our use.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use refreshd_runctl::HOOK_PATH;

use crate::error::{fail, show, Context, Result};
use crate::sys;

pub use refreshd_runctl::valid_revision;

/// Derives the root from the launcher's own path: `ROOT/usr/lib/refreshd/confine-hook`.
pub fn root_from_exe(exe: &[u8]) -> Result<Vec<u8>> {
    const HINT: &str = "confine-hook must be run from its installed place \
                        ROOT/usr/lib/refreshd/confine-hook (through the launchers in ROOT/snap/bin)";
    if exe.ends_with(b" (deleted)") {
        return Err(fail!(
            "the running confine-hook ({}) was deleted or replaced; start the app again",
            show(exe)
        ));
    }
    let suffix = [b"/", HOOK_PATH.as_bytes()].concat();
    let Some(root) = exe.strip_suffix(&suffix[..]) else {
        return Err(fail!("refusing to run from {}: {HINT}", show(exe)));
    };
    if root.is_empty() {
        return Ok(b"/".to_vec());
    }
    if root[0] != b'/'
        || root[1..]
            .split(|&c| c == b'/')
            .any(|p| p.is_empty() || p == b"." || p == b"..")
    {
        return Err(fail!("refusing to run from {}: {HINT}", show(exe)));
    }
    Ok(root.to_vec())
}

/// Joins the root and a relative path for messages, the environment and exec.
pub fn join(root: &[u8], rel: &[u8]) -> Vec<u8> {
    let mut p = root.to_vec();
    if p.last() != Some(&b'/') {
        p.push(b'/');
    }
    p.extend_from_slice(rel);
    p
}

fn cstr(b: &[u8]) -> Result<CString> {
    CString::new(b).map_err(|_| fail!("path component {:?} contains a NUL byte", show(b)))
}

/// An open directory that was checked to be owned by root and not group/other-writable, with
/// its path for messages.
pub struct Dir {
    fd: OwnedFd,
    path: Vec<u8>,
}

const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;

/// How strictly an opened directory is checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// Owned by root, not writable by group or others.
    Strict,
    /// An ancestor of the root: owned by root, and either not group/other-writable or sticky
    /// (like `/tmp`: others may add entries but cannot rename or remove root's).
    Ancestor,
}

fn check(st: &sys::Stat, path: &[u8], trust: Trust) -> Result<()> {
    if !st.is_dir() {
        return Err(fail!("refusing to use {}: not a directory", show(path)));
    }
    if st.uid != sys::Uid::ROOT {
        return Err(fail!(
            "refusing to use {}: it is owned by uid {}, not root; it must be owned by root and \
             not writable by group or others (chown root {0})",
            show(path),
            st.uid
        ));
    }
    let writable = st.mode & 0o022 != 0;
    let sticky = st.mode & libc::S_ISVTX != 0;
    if writable && !(trust == Trust::Ancestor && sticky) {
        return Err(fail!(
            "refusing to use {}: it is writable by group or others (mode {:o}); it must not be \
             (chmod go-w {0})",
            show(path),
            st.mode & 0o7777
        ));
    }
    Ok(())
}

impl Dir {
    /// Opens the root by walking from `/`, checking every ancestor and the root itself.
    pub fn open_root(root: &[u8]) -> Result<Dir> {
        let fd = sys::openat(None, c"/", DIR_FLAGS, 0).ctx(|| "cannot open /".into())?;
        let mut dir = Dir {
            fd,
            path: b"/".to_vec(),
        };
        let parts: Vec<&[u8]> = root
            .split(|&c| c == b'/')
            .filter(|p| !p.is_empty())
            .collect();
        dir.verify(if parts.is_empty() {
            Trust::Strict
        } else {
            Trust::Ancestor
        })?;
        for (i, part) in parts.iter().enumerate() {
            let trust = if i + 1 == parts.len() {
                Trust::Strict
            } else {
                Trust::Ancestor
            };
            dir = dir.open_checked(part, trust)?;
        }
        Ok(dir)
    }

    fn verify(&self, trust: Trust) -> Result<()> {
        let st = sys::fstat(self.fd.as_fd()).ctx(|| format!("cannot stat {}", show(&self.path)))?;
        check(&st, &self.path, trust)
    }

    fn try_open_checked(&self, name: &[u8], trust: Trust) -> Result<Option<Dir>> {
        let path = join(&self.path, name);
        match sys::openat(Some(self.fd.as_fd()), &cstr(name)?, DIR_FLAGS, 0) {
            Ok(fd) => {
                let dir = Dir { fd, path };
                dir.verify(trust)?;
                Ok(Some(dir))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => Err(fail!(
                "refusing to use {}: it is not a directory (symbolic links are not followed \
                 here)",
                show(&path)
            )),
            Err(e) => Err(fail!("cannot open {}: {e}", show(&path))),
        }
    }

    fn open_checked(&self, name: &[u8], trust: Trust) -> Result<Dir> {
        self.try_open_checked(name, trust)?
            .ok_or_else(|| fail!("{} does not exist", show(&join(&self.path, name))))
    }

    /// Opens the child directory `name` (one component); None if it does not exist.
    pub fn try_open(&self, name: &[u8]) -> Result<Option<Dir>> {
        self.try_open_checked(name, Trust::Strict)
    }

    /// Opens the child directory `name` (one component); its absence is an error.
    pub fn open(&self, name: &[u8]) -> Result<Dir> {
        self.open_checked(name, Trust::Strict)
    }

    /// Opens a relative path (`a/b/c`) one checked component at a time.
    pub fn open_path(&self, rel: &str) -> Result<Dir> {
        let mut parts = rel.split('/');
        let first = parts.next().unwrap_or_default();
        let mut dir = self.open(first.as_bytes())?;
        for p in parts {
            dir = dir.open(p.as_bytes())?;
        }
        Ok(dir)
    }

    /// Opens the child directory `name`, creating it (mode 0755, as root) if missing.
    pub fn ensure(&self, name: &[u8]) -> Result<Dir> {
        if let Some(d) = self.try_open(name)? {
            return Ok(d);
        }
        match sys::mkdirat(self.fd.as_fd(), &cstr(name)?, 0o755) {
            Ok(()) => {}
            // Someone (the daemon, another launch) created it meanwhile: check what is there.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(fail!(
                    "cannot create {}: {e}",
                    show(&join(&self.path, name))
                ))
            }
        }
        self.open(name)
    }

    /// Opens the regular file `name` for reading, refusing symlinks, non-regular files and
    /// files that are not owned by root or are group/other-writable.
    pub fn open_trusted_file(&self, name: &[u8]) -> Result<Option<(std::fs::File, sys::Stat)>> {
        let path = join(&self.path, name);
        let fd = match sys::openat(
            Some(self.fd.as_fd()),
            &cstr(name)?,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
            0,
        ) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(fail!("cannot open {}: {e}", show(&path))),
        };
        let st = sys::fstat(fd.as_fd()).ctx(|| format!("cannot stat {}", show(&path)))?;
        if !st.is_file() {
            return Err(fail!(
                "refusing to read {}: not a regular file",
                show(&path)
            ));
        }
        if st.uid != sys::Uid::ROOT || st.mode & 0o022 != 0 {
            return Err(fail!(
                "refusing to read {}: it must be owned by root and not writable by group or \
                 others",
                show(&path)
            ));
        }
        Ok(Some((std::fs::File::from(fd), st)))
    }

    /// The path of a child, for messages.
    pub fn child_path(&self, name: &[u8]) -> Vec<u8> {
        join(&self.path, name)
    }

    pub fn path(&self) -> &[u8] {
        &self.path
    }

    pub fn readlink(&self, name: &[u8], max: usize) -> io::Result<Vec<u8>> {
        sys::readlinkat(self.fd.as_fd(), &CString::new(name)?, max)
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The root: its path (derived from `/proc/self/exe`) and a checked descriptor of it.
pub struct Root {
    pub path: Vec<u8>,
    pub dir: Dir,
}

impl Root {
    /// Finds and checks the root this launcher serves: derived from the launcher's own path,
    /// every directory on the way root-owned, and the file at `ROOT/HOOK_PATH` is the very
    /// program running (same device and inode as `/proc/self/exe`).
    pub fn discover() -> Result<Root> {
        let exe = std::fs::read_link("/proc/self/exe")
            .ctx(|| "cannot read /proc/self/exe (is /proc mounted?)".into())?;
        let path = root_from_exe(std::os::unix::ffi::OsStrExt::as_bytes(exe.as_os_str()))?;
        let dir = Dir::open_root(&path)?;
        let (parent, file) = HOOK_PATH.rsplit_once('/').unwrap_or(("", HOOK_PATH));
        let hook_dir = dir.open_path(parent)?;
        let st = sys::lstatat(hook_dir.as_fd(), &cstr(file.as_bytes())?).ctx(|| {
            format!(
                "cannot stat {}",
                show(&hook_dir.child_path(file.as_bytes()))
            )
        })?;
        let me = sys::stat(c"/proc/self/exe").ctx(|| "cannot stat /proc/self/exe".into())?;
        if !st.is_file() || st.dev != me.dev || st.ino != me.ino {
            return Err(fail!(
                "refusing to run: {} is not this program (it was replaced while starting?); \
                 start the app again",
                show(&hook_dir.child_path(file.as_bytes()))
            ));
        }
        if st.uid != sys::Uid::ROOT || st.mode & 0o022 != 0 {
            return Err(fail!(
                "refusing to run: {} must be owned by root and not writable by group or others",
                show(&hook_dir.child_path(file.as_bytes()))
            ));
        }
        Ok(Root { path, dir })
    }

    /// `ROOT/rel` as bytes.
    pub fn join(&self, rel: &[u8]) -> Vec<u8> {
        join(&self.path, rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions() {
        let table: &[(&str, bool)] = &[
            ("1", true),
            ("x1", true),
            ("42", true),
            ("x1234567890", true),
            ("1234567890", true),
            ("12345678901", false),
            ("x12345678901", false),
            ("0", false),
            ("x0", false),
            ("01", false),
            ("x", false),
            ("", false),
            ("xx1", false),
            ("X1", false),
            ("-1", false),
            ("1a", false),
            ("..", false),
            ("../x1", false),
            ("/tmp/evil", false),
            ("x1/../..", false),
            ("1 ", false),
            ("current", false),
        ];
        for (rev, ok) in table {
            assert_eq!(valid_revision(rev.as_bytes()), *ok, "{rev:?}");
        }
    }

    #[test]
    fn roots() {
        let table: &[(&[u8], Option<&[u8]>)] = &[
            (b"/usr/lib/refreshd/confine-hook", Some(b"/")),
            (b"/tmp/r/usr/lib/refreshd/confine-hook", Some(b"/tmp/r")),
            (b"/a b/usr/lib/refreshd/confine-hook", Some(b"/a b")),
            (b"/tmp/r/usr/lib/refreshd/confine-hook (deleted)", None),
            (b"/usr/lib/refreshd/confine-hook (deleted)", None),
            (b"/tmp/x/confine-hook", None),
            (b"/tmp/rusr/lib/refreshd/confine-hook", None),
            (b"usr/lib/refreshd/confine-hook", None),
            (b"tmp/usr/lib/refreshd/confine-hook", None),
            (b"/tmp/../usr/lib/refreshd/confine-hook", None),
            (b"/tmp//r/usr/lib/refreshd/confine-hook", None),
            (b"/tmp/./usr/lib/refreshd/confine-hook", None),
            (b"/usr/lib/refreshd/confine-hook2", None),
            (b"", None),
        ];
        for (exe, want) in table {
            assert_eq!(
                root_from_exe(exe).ok().as_deref(),
                *want,
                "{:?}",
                String::from_utf8_lossy(exe)
            );
        }
    }

    #[test]
    fn joins() {
        assert_eq!(join(b"/", b"snap/x"), b"/snap/x");
        assert_eq!(join(b"/tmp/r", b"snap/x"), b"/tmp/r/snap/x");
    }
}
