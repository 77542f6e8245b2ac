//! Publishing a snap file into a directory store.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use refreshd_snap::{check_image, read_snap_yaml, validate_snap_name};
use sha3::{Digest, Sha3_384};

use crate::error::{Error, Result};
use crate::fsutil::{sync_dir, write_atomic, TMP_MARK};
use crate::index::{self, validate_channel, Entry, SnapIndex, MAX_BLOB_SIZE};

/// The lock publishers of one store take, in the store directory.
pub const LOCK_FILE: &str = ".refreshd-store.lock";

/// Publishes `snap_file` into the directory store at `store_dir` and points `channel` at it.
///
/// The snap is checked first (squashfs superblock, `meta/snap.yaml`, its name), on the copy
/// that will be published, not on the original, which could change meanwhile. The blob is
/// copied in (temporary file, fsync, rename) as `blobs/NAME_REV.snap`, where REV is one more
/// than the highest revision in the index (1 for a new snap), and `v1/snaps/NAME.json` is
/// rewritten atomically, keeping keys it does not know. Publishers of the same store are
/// serialized by an `flock` on [`LOCK_FILE`]; readers never need it, since every file they
/// read is replaced by a rename.
pub fn publish(store_dir: &Path, snap_file: &Path, channel: &str) -> Result<Entry> {
    publish_with_progress(store_dir, snap_file, channel, &mut |_, _| {})
}

/// [`publish`], telling `progress` the bytes copied (and hashed) of the snap's size as the copy
/// goes, after every read.
pub fn publish_with_progress(
    store_dir: &Path,
    snap_file: &Path,
    channel: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Entry> {
    publish_signed(store_dir, snap_file, channel, None, progress)
}

/// [`publish_with_progress`] to a store that may be signed: a signed store (`tuf/root.json`)
/// needs `keys`, the key directory that can sign its targets, snapshot and timestamp; the
/// index and the blob are signed before the publish returns. An unsigned store refuses keys
/// (convert it first: `refreshctl store migrate`).
pub fn publish_signed(
    store_dir: &Path,
    snap_file: &Path,
    channel: &str,
    keys: Option<&Path>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Entry> {
    validate_channel(channel)?;
    let signed = crate::tuf::repo::is_signed(store_dir);
    match (signed, keys) {
        (true, None) => {
            return Err(Error::Signing {
                reason: format!(
                    "{} is a signed store: give the key directory that signs it (--keys KEYDIR)",
                    store_dir.display()
                ),
            })
        }
        (false, Some(_)) => {
            return Err(Error::Signing {
                reason: format!(
                    "{} is not a signed store: publish without --keys, or convert it first (refreshctl store migrate)",
                    store_dir.display()
                ),
            })
        }
        _ => {}
    }
    let meta = fs::metadata(store_dir).map_err(|source| Error::StoreDir {
        path: store_dir.to_owned(),
        error: source,
    })?;
    if !meta.is_dir() {
        return Err(Error::StoreDir {
            path: store_dir.to_owned(),
            error: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let snaps_dir = store_dir.join("v1/snaps");
    let blobs_dir = store_dir.join("blobs");
    for dir in [&snaps_dir, &blobs_dir] {
        fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    }

    // Copy first, without the lock: the copy is what gets checked and published.
    let (tmp, sha3_384, sha256, size) = copy_in(snap_file, &blobs_dir, progress)?;
    let publish_err = |source| Error::Publish {
        snap: snap_file.to_owned(),
        error: source,
    };
    check_image(tmp.path()).map_err(publish_err)?;
    let yaml = read_snap_yaml(tmp.path()).map_err(publish_err)?;
    validate_snap_name(&yaml.name)?;
    let name = yaml.name;

    let _lock = lock(store_dir)?;
    // Before anything is written: the store's metadata verified, the keys enough to sign.
    let publisher = keys
        .map(|k| crate::tuf::repo::Publisher::open(store_dir, k))
        .transpose()?;
    let index_path = snaps_dir.join(format!("{name}.json"));
    let (mut value, revision) = match fs::read(&index_path) {
        Ok(bytes) => {
            // A broken index is not overwritten: it may hold revisions we cannot see.
            let value = index::parse_json(&name, &bytes)?;
            let current = SnapIndex::from_value(&name, &value)?;
            let next = match current.latest() {
                None => 1,
                Some(e) => e.revision.checked_add(1).ok_or_else(|| Error::Index {
                    name: name.clone(),
                    field: "revisions".into(),
                    reason: "no revision number is left".into(),
                })?,
            };
            (value, next)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (index::empty_index(&name), 1),
        Err(source) => {
            return Err(Error::Io {
                op: "read",
                path: index_path,
                error: source,
            })
        }
    };

    let entry = Entry {
        name: name.clone(),
        revision,
        version: yaml.version,
        sha3_384,
        size,
        path: format!("blobs/{name}_{revision}.snap"),
    };
    // A blob left by a publish that crashed before its index was written has this name too;
    // nothing refers to it, so replacing it is safe.
    let blob = store_dir.join(&entry.path);
    tmp.persist(&blob)
        .map_err(|e| Error::io("rename into place", &blob)(e.error))?;
    sync_dir(&blobs_dir)?;

    index::add_revision(&mut value, &entry, channel);
    let mut bytes = serde_json::to_vec_pretty(&value).expect("a JSON value serializes");
    bytes.push(b'\n');
    write_atomic(&index_path, &bytes)?;
    if let Some(p) = publisher {
        p.commit(&name, &bytes, &entry.path, (size, &sha256, &entry.sha3_384))?;
    }
    Ok(entry)
}

/// Copies the snap into a temporary file in `dir`, hashing it on the way; the file is synced
/// and readable by everyone (a web server serves it).
fn copy_in(
    snap_file: &Path,
    dir: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(tempfile::NamedTempFile, String, String, u64)> {
    let src = File::open(snap_file).map_err(Error::io("open", snap_file))?;
    let len = src.metadata().map_err(Error::io("read", snap_file))?.len();
    if len > MAX_BLOB_SIZE {
        return Err(Error::PublishTooLarge {
            snap: snap_file.to_owned(),
            size: len,
            limit: MAX_BLOB_SIZE,
        });
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".publish-")
        .suffix(TMP_MARK)
        .tempfile_in(dir)
        .map_err(Error::io("create a temporary file in", dir))?;
    let mut hasher = Sha3_384::new();
    let mut sha256 = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut size = 0u64;
    let mut reader = src.take(MAX_BLOB_SIZE + 1);
    let mut buf = vec![0u8; 1 << 16];
    progress(0, len);
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(Error::Io {
                    op: "read",
                    path: snap_file.to_owned(),
                    error: source,
                })
            }
        };
        hasher.update(&buf[..n]);
        sha256.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .map_err(Error::io("write", tmp.path().to_owned()))?;
        size += n as u64;
        progress(size, len.max(size));
    }
    if size > MAX_BLOB_SIZE {
        return Err(Error::PublishTooLarge {
            snap: snap_file.to_owned(),
            size,
            limit: MAX_BLOB_SIZE,
        });
    }
    let file = tmp.as_file();
    file.set_permissions(fs::Permissions::from_mode(0o644))
        .and_then(|()| file.sync_all())
        .map_err(Error::io("write", tmp.path().to_owned()))?;
    Ok((
        tmp,
        hex::encode(hasher.finalize()),
        hex::encode(sha256.finish().as_ref()),
        size,
    ))
}

/// Takes the store's publish lock, waiting for another publisher to finish.
pub(crate) fn lock(store_dir: &Path) -> Result<Flock<File>> {
    let path = store_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(Error::io("open", &path))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| Error::Io {
        op: "lock",
        path,
        error: errno.into(),
    })
}
