//! Crash-safe file operations and hashing.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sha3::{Digest, Sha3_384};

use crate::error::{Error, Result};

/// Temporary files carry this marker, as everywhere in refreshd, so a sweep can find what a
/// crash left.
pub(crate) const TMP_MARK: &str = ".refreshd-tmp";

/// The directory a path is in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsync a directory, so a rename or unlink in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("sync the directory", dir))
}

/// Writes `bytes` to `path` atomically (temporary file beside it, fsync, rename, fsync the
/// directory), readable by everyone: a store is served by a web server.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".index-")
        .suffix(TMP_MARK)
        .tempfile_in(dir)
        .map_err(Error::io("create a temporary file in", dir))?;
    let write_err = Error::io("write", tmp.path().to_owned());
    tmp.write_all(bytes)
        .and_then(|()| {
            tmp.as_file()
                .set_permissions(fs::Permissions::from_mode(0o644))
        })
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(write_err)?;
    tmp.persist(path)
        .map_err(|e| Error::io("replace", path)(e.error))?;
    sync_dir(dir)
}

/// The sha3-384 (lowercase hex) of everything `reader` yields.
pub(crate) fn sha3_of(mut reader: impl Read) -> io::Result<String> {
    let mut h = Sha3_384::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex::encode(h.finalize()))
}
