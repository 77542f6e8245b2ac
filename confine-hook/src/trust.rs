//! Before the app's program runs (as root, for root's launches and for services): it and every
//! directory from the revision's payload down to it must be beyond users' reach — on a
//! read-only mount (a loop-mounted payload), or owned by root and not writable by group or
//! others (an extracted one) — so nothing a user could have written runs. The payload's parents
//! (`snap/`, `snap/NAME`, the root) were checked by `root::Dir` on the way here.
//!
//! It is on every launch's path, so it is cheap: on a read-only payload one `fstatvfs` and one
//! `openat2` that stays beneath the payload and on its mount settle it. Only a payload on a
//! writable filesystem is walked entry by entry. Symlinks inside the payload are followed as
//! the kernel will follow them; one leading out of it is refused.
//!
//! The program is then executed by its path, not through the descriptor checked: a script needs
//! its own path as `$0`, and a path whose every directory no one but root can write resolves to
//! the very file checked.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};

use crate::error::{fail, show, Error, Result, EXIT_NOT_FOUND};
use crate::root::Dir;
use crate::sys;

/// As many symlinks as the kernel follows in one path.
const MAX_LINKS: u32 = 40;
const MAX_LINK_LEN: usize = 4096;

/// Checks `command` (relative to `instance/rev`) before it is executed; see the module doc.
pub fn check_program(instance: &Dir, rev: &[u8], command: &[u8]) -> Result<()> {
    let payload_path = instance.child_path(rev);
    let shown = [payload_path.as_slice(), b"/", command].concat();
    let cstr = |b: &[u8]| CString::new(b).map_err(|_| fail!("NUL in {}", show(&shown)));
    let payload = sys::openat(
        Some(instance.as_fd()),
        &cstr(rev)?,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
    .map_err(|e| io_fail(&shown, &payload_path, e))?;
    if sys::on_readonly_mount(payload.as_fd()).map_err(|e| io_fail(&shown, &payload_path, e))? {
        // Beneath the payload and on its mount: everything on the way is read-only.
        let resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV;
        match sys::openat2(payload.as_fd(), &cstr(command)?, libc::O_PATH, resolve) {
            Ok(fd) => return regular(&fd, &shown, &shown),
            // Before Linux 5.6: walk as for a writable payload.
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                return Err(refuse(
                    &shown,
                    &shown,
                    "leads out of the revision's payload (through a symbolic link or onto another \
                     mount)",
                ))
            }
            Err(e) => return Err(io_fail(&shown, &shown, e)),
        }
    }
    let st = sys::fstat(payload.as_fd()).map_err(|e| io_fail(&shown, &payload_path, e))?;
    trusted(&payload, &st, &payload_path, &shown)?;
    walk(payload, payload_path, command, &shown)
}

/// Resolves `command` beneath `payload` one entry at a time, checking each.
fn walk(payload: OwnedFd, payload_path: Vec<u8>, command: &[u8], shown: &[u8]) -> Result<()> {
    // The directories entered, with their paths (for `..` and for messages).
    let mut dirs: Vec<(OwnedFd, Vec<u8>)> = vec![(payload, payload_path)];
    let mut todo: Vec<Vec<u8>> = parts(command);
    todo.reverse();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        if part == b".." {
            if dirs.len() == 1 {
                return Err(refuse(shown, shown, "leads out of the revision's payload"));
            }
            dirs.pop();
            continue;
        }
        let (dir, dir_path) = dirs.last().expect("the payload stays");
        let path = [dir_path.as_slice(), b"/", &part].concat();
        let name = CString::new(part).map_err(|_| fail!("NUL in {}", show(shown)))?;
        let fd = sys::openat(Some(dir.as_fd()), &name, libc::O_PATH | libc::O_NOFOLLOW, 0)
            .map_err(|e| io_fail(shown, &path, e))?;
        let st = sys::fstat(fd.as_fd()).map_err(|e| io_fail(shown, &path, e))?;
        if st.mode & libc::S_IFMT == libc::S_IFLNK {
            links += 1;
            if links > MAX_LINKS {
                return Err(refuse(shown, &path, "starts a loop of symbolic links"));
            }
            let target = sys::readlinkat(dir.as_fd(), &name, MAX_LINK_LEN)
                .map_err(|e| io_fail(shown, &path, e))?;
            if target.first() == Some(&b'/') {
                return Err(refuse(
                    shown,
                    &path,
                    "is a symbolic link out of the revision's payload",
                ));
            }
            let mut more = parts(&target);
            more.reverse();
            todo.extend(more);
            continue;
        }
        trusted(&fd, &st, &path, shown)?;
        if st.is_dir() {
            dirs.push((fd, path));
            continue;
        }
        if !todo.is_empty() {
            return Err(refuse(shown, &path, "is not a directory"));
        }
        if !st.is_file() {
            return Err(refuse(shown, &path, "is not a regular file"));
        }
        return Ok(());
    }
    Err(refuse(shown, shown, "is a directory"))
}

/// The components of a relative path, without empty ones and `.`.
fn parts(p: &[u8]) -> Vec<Vec<u8>> {
    p.split(|&c| c == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect()
}

/// Root's and not writable by group or others, or else on a read-only mount (asked only
/// then: an extracted payload passes on its `stat` alone).
fn trusted(fd: &OwnedFd, st: &sys::Stat, path: &[u8], shown: &[u8]) -> Result<()> {
    let why = if st.uid != sys::Uid::ROOT {
        format!("is owned by uid {}, not root", st.uid)
    } else if st.mode & 0o022 != 0 {
        format!(
            "is writable by group or others (mode {:o})",
            st.mode & 0o7777
        )
    } else {
        return Ok(());
    };
    if sys::on_readonly_mount(fd.as_fd()).map_err(|e| io_fail(shown, path, e))? {
        return Ok(());
    }
    Err(refuse(shown, path, &why))
}

fn regular(fd: &OwnedFd, path: &[u8], shown: &[u8]) -> Result<()> {
    let st = sys::fstat(fd.as_fd()).map_err(|e| io_fail(shown, path, e))?;
    if !st.is_file() {
        return Err(refuse(shown, path, "is not a regular file"));
    }
    Ok(())
}

fn refuse(shown: &[u8], path: &[u8], why: &str) -> Error {
    let at = if path == shown {
        String::new()
    } else {
        format!(": {}", show(path))
    };
    fail!(
        "refusing to run {}{at} {why}; an app runs only from a payload no user can change \
         (restart refreshd, or reinstall the snap)",
        show(shown)
    )
}

fn io_fail(shown: &[u8], path: &[u8], e: std::io::Error) -> Error {
    let at = if path == shown {
        String::new()
    } else {
        format!("{}: ", show(path))
    };
    if e.raw_os_error() == Some(libc::ENOENT) {
        return fail!(
            "cannot run {}: {at}{e}; the revision may not be mounted: restart refreshd, or \
             reinstall the snap",
            show(shown)
        )
        .with_code(EXIT_NOT_FOUND);
    }
    fail!("cannot run {}: {at}{e}", show(shown))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn check(root: &std::path::Path, command: &str) -> std::result::Result<(), String> {
        let root_bytes = root.as_os_str().as_encoded_bytes();
        let dir = Dir::open_root(root_bytes)
            .and_then(|r| r.open(b"snap"))
            .and_then(|s| s.open(b"app"))
            .map_err(|e| e.to_string())?;
        check_program(&dir, b"x1", command.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn programs_run_only_from_a_payload_no_user_can_change() {
        if sys::geteuid() != sys::Uid::ROOT {
            println!("SKIP programs_run_only_from_a_payload_no_user_can_change: needs root");
            return;
        }
        let d = tempfile_dir();
        let _gone = Remove(d.clone());
        let root = d.join("root");
        let p = root.join("snap/app/x1");
        fs::create_dir_all(p.join("bin/sub")).unwrap();
        for dir in ["", "snap", "snap/app"] {
            fs::set_permissions(root.join(dir), fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::write(p.join("bin/app"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(p.join("bin/app"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("app", p.join("bin/same")).unwrap();
        symlink("../../bin/./app", p.join("bin/sub/up")).unwrap();
        symlink("/bin/sh", p.join("bin/host")).unwrap();
        symlink("../../x1/bin/app", p.join("bin/escape")).unwrap();
        symlink("loop", p.join("bin/loop")).unwrap();

        // The same answers on a writable payload (walked) and on a read-only one (openat2).
        let table: &[(&str, Option<&str>)] = &[
            ("bin/app", None),
            ("./bin//app", None),
            ("bin/same", None),
            ("bin/sub/up", None),
            ("bin/host", Some("out of the revision's payload")),
            ("bin/escape", Some("out of the revision's payload")),
            ("bin/loop", Some("symbolic links")),
            ("bin", Some("not a regular file|is a directory")),
            ("bin/app/x", Some("ot a directory")),
            (
                "bin/none",
                Some("No such file or directory (os error 2); the revision may not be mounted"),
            ),
        ];
        let run_table = |ro: bool| {
            for (cmd, want) in table {
                match (check(&root, cmd), want) {
                    (Ok(()), None) => {}
                    (Err(e), Some(w))
                        if w.split('|').any(|w| e.contains(w)) && !e.contains('\n') => {}
                    (got, _) => panic!("ro={ro} {cmd}: {got:?}, want {want:?}"),
                }
            }
        };
        run_table(false);
        // Read-only: even a mode-0777 file is beyond users' reach.
        fs::set_permissions(p.join("bin/app"), fs::Permissions::from_mode(0o777)).unwrap();
        let mounted = |args: &[&str]| {
            std::process::Command::new("mount")
                .args(args)
                .arg(&p)
                .arg(&p)
                .status()
                .is_ok_and(|s| s.success())
        };
        if mounted(&["--bind"]) {
            struct Unmount<'a>(&'a std::path::Path);
            impl Drop for Unmount<'_> {
                fn drop(&mut self) {
                    let _ = std::process::Command::new("umount").arg(self.0).status();
                }
            }
            let _guard = Unmount(&p);
            assert!(mounted(&["-o", "remount,bind,ro"]));
            run_table(true);
        } else {
            println!("SKIP the read-only half: cannot bind-mount");
        }
        fs::set_permissions(p.join("bin/app"), fs::Permissions::from_mode(0o755)).unwrap();
        // Writable by others, or someone else's: the file, a directory on the way, the payload.
        for (at, how) in [
            ("bin/app", "mode"),
            ("bin", "mode"),
            ("", "mode"),
            ("bin/app", "owner"),
        ] {
            let f = p.join(at);
            if how == "mode" {
                fs::set_permissions(&f, fs::Permissions::from_mode(0o777)).unwrap();
            } else {
                std::os::unix::fs::chown(&f, Some(4242), None).unwrap();
            }
            let e = check(&root, "bin/sub/up").unwrap_err();
            assert!(e.starts_with("refusing to run"), "{at}: {e}");
            assert!(
                e.contains("is writable by group or others") || e.contains("is owned by uid 4242"),
                "{at}: {e}"
            );
            fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(&f, Some(0), None).unwrap();
        }
        check(&root, "bin/app").unwrap();
    }

    /// Removes the scratch directory even when an assertion fails.
    struct Remove(std::path::PathBuf);

    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A private scratch directory (the crate has no tempfile dependency).
    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("confine-hook-trust-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        d
    }
}
