//! Crash-safe file operations: a reader after a crash sees the old file or the new one, never a
//! half-written one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Temporary files all carry this marker, so start-up can sweep what a crash left.
pub const TMP_MARK: &str = ".refreshd-tmp";

pub fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}{TMP_MARK}-{}", std::process::id()))
}

/// fsync a directory, so a rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename, fsync
/// the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = tmp_path(path);
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_parent(path)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Points the symlink `link` at `target` atomically (new link beside it, renamed over it).
pub fn symlink_atomic(target: &Path, link: &Path) -> io::Result<()> {
    let tmp = tmp_path(link);
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(at("create", &tmp))?;
    if let Err(e) = fs::rename(&tmp, link) {
        let _ = fs::remove_file(&tmp);
        return Err(at("replace", link)(e));
    }
    sync_parent(link).map_err(at("flush the directory of", link))
}

/// An I/O error that names what it was doing and where: these helpers' errors reach people
/// (task errors) through `?`, and a bare "Operation not permitted" says nothing.
fn at<'a>(op: &'a str, path: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
    move |e| io::Error::new(e.kind(), format!("cannot {op} {}: {e}", path.display()))
}

/// Removes a file or symlink; absent is fine.
pub fn remove_file_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(at("remove", path)(e)),
        _ => Ok(()),
    }
}

/// Removes a directory tree without following symlinks; absent is fine.
pub fn remove_tree_if_exists(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(at("read the metadata of", path)(e)),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(at("remove", path)),
        Ok(_) => fs::remove_file(path).map_err(at("remove", path)),
    }
}

/// Removes an empty directory; absent or not empty is fine.
pub fn remove_dir_if_empty(path: &Path) -> io::Result<()> {
    match fs::remove_dir(path) {
        Err(e)
            if e.kind() == io::ErrorKind::NotFound
                || e.kind() == io::ErrorKind::DirectoryNotEmpty =>
        {
            Ok(())
        }
        r => r.map_err(at("remove", path)),
    }
}

/// Deletes temporary files a crash left in `dir` (not recursive).
pub fn sweep_tmp(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for e in fs::read_dir(dir)?.flatten() {
        if e.file_name().to_string_lossy().contains(TMP_MARK) {
            remove_tree_if_exists(&e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

/// Opens (making it, 0600, if missing) a file that is only ever `flock`ed: never through a
/// symlink, never truncated (its content is not what counts).
pub fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_and_symlink() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        write_atomic(&f, b"one", 0o644).unwrap();
        write_atomic(&f, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let l = d.path().join("current");
        symlink_atomic(Path::new("x1"), &l).unwrap();
        symlink_atomic(Path::new("x2"), &l).unwrap();
        assert_eq!(fs::read_link(&l).unwrap(), Path::new("x2"));
        assert_eq!(sweep_tmp(d.path()).unwrap(), 0, "no temporary left behind");
        fs::write(tmp_path(&f), b"half").unwrap();
        assert_eq!(sweep_tmp(d.path()).unwrap(), 1);
    }
}
