//! refreshd's side of a signed store: one pinned root, metadata verified by `tough` on every
//! look-up, and kept (atomically) so that no version ever goes backwards, across restarts too.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest::{digest, SHA256};
use nix::fcntl::{Flock, FlockArg};
use tough::error::Error as TufError;
use tough::schema::{RoleType, Root, Signed, Target};
use tough::{
    async_trait, Bytes, ExpirationEnforcement, Limits, RepositoryLoader, Transport, TransportError,
    TransportErrorKind, TransportStream,
};
use url::Url;

use super::{chain, hashed_index, index_target, MAX_META_SIZE, META_DIR, SHA3_KEY};
use crate::error::{quote, Error, Result};
use crate::fsutil::sync_dir;
use crate::index::{SnapIndex, MAX_INDEX_SIZE};

/// How refreshd trusts a signed store: the root it pins, and where it keeps what it verified.
#[derive(Debug, Clone)]
pub struct TrustConfig {
    /// The pinned root metadata (`ROOT/etc/refreshd/store-root.json`): the only thing trusted
    /// without a signature. Its expiry does not matter; newer roots are reached from it.
    pub root: PathBuf,
    /// A root-only directory for the newest verified metadata (`STATE/store-trust`).
    pub state_dir: PathBuf,
}

/// The metadata files kept between look-ups: tough's datastore, made durable here.
const KEPT: [&str; 5] = [
    "root.json",
    "timestamp.json",
    "snapshot.json",
    "targets.json",
    "latest_known_time.json",
];

/// The suffix of the working copy tough reads and writes, beside the kept state's directory.
const WORK: &str = ".work";

/// The prefix of the scratch copy earlier versions made for each verification.
const SCRATCH: &str = ".verify-";

/// A pinned root, opened and checked.
pub(crate) struct Trusted {
    pinned: Vec<u8>,
    pinned_version: u64,
    /// `STATE/store-trust/SHA256-OF-ROOT[..16]`: trust kept per pinned root, so pinning another
    /// root starts afresh instead of mixing two stores' versions.
    state: PathBuf,
    /// `STATE/store-trust/SHA256-OF-ROOT[..16].work`: tough's datastore, a working copy of the
    /// kept files (tough writes it in place, not atomically; `keep` moves what it verified to
    /// the kept files). Kept between look-ups: a fresh copy each time created and deleted six
    /// files and a directory, which cost more than the rest of the look-up's own file work.
    work: PathBuf,
    /// One verification at a time: each reads and then moves forward what is kept. Inside,
    /// what the last one found the kept files and their working copies to say alike.
    lock: Mutex<Alike>,
}

impl Trusted {
    pub(crate) fn open(config: &TrustConfig) -> Result<Trusted> {
        let bad = |reason: String| Error::PinnedRoot {
            path: config.root.clone(),
            reason,
        };
        let mut pinned = Vec::new();
        File::open(&config.root)
            .and_then(|f| f.take(MAX_META_SIZE + 1).read_to_end(&mut pinned))
            .map_err(|e| bad(e.to_string()))?;
        if pinned.len() as u64 > MAX_META_SIZE {
            return Err(bad(format!("larger than {MAX_META_SIZE} bytes")));
        }
        let root: Signed<Root> = serde_json::from_slice(&pinned)
            .map_err(|e| bad(format!("not TUF root metadata ({})", one(&e))))?;
        root.signed
            .verify_role(&root)
            .map_err(|e| bad(format!("not signed by its own root keys ({})", chain(&e))))?;
        let id = hex::encode(digest(&SHA256, &pinned).as_ref());
        let state = config.state_dir.join(&id[..16]);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state)
            .map_err(Error::io("create", &state))?;
        // An earlier version's verification cut short by a crash left its scratch copy.
        if let Ok(rd) = fs::read_dir(&state) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(SCRATCH) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let work = config.state_dir.join(format!("{}{WORK}", &id[..16]));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&work)
            .or_else(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(Error::io("create", &work))?;
        Ok(Trusted {
            pinned_version: root.signed.version.get(),
            pinned,
            state,
            work,
            lock: Mutex::new(Alike::new()),
        })
    }

    /// Verifies the store's metadata now (tough's client workflow: root chain, timestamp,
    /// snapshot, targets; signatures, thresholds, versions, hashes, lengths, expiry) and keeps
    /// what it trusted.
    pub(crate) fn verify(&self, fetcher: Arc<dyn Fetch>, url: &str) -> Result<Verified> {
        let mut alike = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // Another `Store` of the same state, in this process or another, waits: the working
        // copy is one directory.
        let _work = lock_dir(&self.work)?;
        self.sync_work(&mut alike)?;
        // Begin from the newest root verified before, not the pinned one: a rotation that
        // revoked a key stays in force even if the store stops serving the new root.
        let start = match fs::read(self.state.join("root.json")) {
            Ok(b) => match serde_json::from_slice::<Signed<Root>>(&b) {
                Ok(r) if r.signed.version.get() >= self.pinned_version => b,
                _ => self.pinned.clone(),
            },
            Err(_) => self.pinned.clone(),
        };
        let seen = Arc::new(Mutex::new(Seen::default()));
        let transport = StoreTransport {
            fetcher,
            url: url.to_owned(),
            seen: seen.clone(),
        };
        let base = Url::parse(&format!("{SCHEME}:///{META_DIR}/")).expect("a valid URL");
        let targets = Url::parse(&format!("{SCHEME}:///")).expect("a valid URL");
        let limits = Limits {
            max_root_size: 1 << 20,
            max_targets_size: MAX_META_SIZE,
            max_timestamp_size: 1 << 20,
            max_snapshot_size: 1 << 20,
            max_root_updates: 1024,
        };
        let loaded = super::block_on(
            RepositoryLoader::new(&start, base, targets)
                .transport(transport)
                .datastore(&self.work)
                .limits(limits)
                .expiration_enforcement(ExpirationEnforcement::Safe)
                .load(),
        )?;
        // What tough verified is kept even when a later step failed (a newer root, a newer
        // timestamp): trust only moves forward.
        self.keep(&self.work, &mut alike)?;
        let repo = loaded.map_err(|e| {
            let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            untrusted(url, &e, &seen, &start)
        })?;
        Ok(Verified {
            consistent: repo.root().signed.consistent_snapshot,
            targets: repo
                .targets()
                .signed
                .targets
                .iter()
                .map(|(n, t)| (n.raw().to_owned(), t.clone()))
                .collect(),
        })
    }

    /// Makes the working copy say what is kept: after a finished look-up it already does, and
    /// nothing is written; after a crash, or a failed `keep`, it is put back.
    fn sync_work(&self, alike: &mut Alike) -> Result<()> {
        for name in KEPT {
            let (kept, work) = (self.state.join(name), self.work.join(name));
            match fs::read(&kept) {
                Ok(b) => {
                    let same = match fs::read(&work) {
                        Ok(w) => {
                            w == b
                                || alike.get(name) == Some(&(sha256(&b), sha256(&w)))
                                || same_metadata(Some(&w), &b)
                        }
                        Err(_) => false,
                    };
                    if !same {
                        fs::write(&work, &b).map_err(Error::io("write", &work))?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::remove_file(&work) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove", &work)(e)),
                },
                Err(e) => return Err(Error::io("read", &kept)(e)),
            }
        }
        Ok(())
    }

    /// Makes what tough left in `scratch` the kept state: each file that says something new
    /// replaced atomically, and one it deleted (a rotated key's timestamp or snapshot:
    /// fast-forward recovery) deleted.
    fn keep(&self, scratch: &Path, alike: &mut Alike) -> Result<()> {
        for name in KEPT {
            let dest = self.state.join(name);
            alike.remove(name);
            match fs::read(scratch.join(name)) {
                Ok(b) => match fs::read(&dest) {
                    Ok(old) if same_metadata(Some(&old), &b) => {
                        alike.insert(name, (sha256(&old), sha256(&b)));
                    }
                    _ => write_private(&dest, &b)?,
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::remove_file(&dest) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove", &dest)(e)),
                },
                Err(e) => return Err(Error::io("read", scratch.join(name))(e)),
            }
        }
        sync_dir(&self.state)
    }
}

/// By file name, (sha256 of a kept file, sha256 of its working copy) that `keep` found to say
/// the same in other bytes (tough's key order): the next look-up need not parse them again.
type Alike = HashMap<&'static str, (Vec<u8>, Vec<u8>)>;

fn sha256(bytes: &[u8]) -> Vec<u8> {
    digest(&SHA256, bytes).as_ref().to_vec()
}

/// Whether `new` says what `kept` says: the same bytes, or the same JSON. tough writes its
/// datastore by serialising structures that hold `HashMap`s, so an unchanged root or targets
/// comes out in another key order at each look-up: rewriting it (an fsync and a rename, the
/// whole targets of a large store) would keep nothing new.
fn same_metadata(kept: Option<&[u8]>, new: &[u8]) -> bool {
    let Some(kept) = kept else {
        return false;
    };
    kept == new
        || matches!(
            (
                serde_json::from_slice::<serde_json::Value>(kept),
                serde_json::from_slice::<serde_json::Value>(new),
            ),
            (Ok(a), Ok(b)) if a == b
        )
}

/// An exclusive `flock` on a directory, held while the value lives.
fn lock_dir(dir: &Path) -> Result<Flock<File>> {
    let f = File::open(dir).map_err(Error::io("open", dir))?;
    Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::io("lock", dir)(io::Error::from(e)))
}

/// Writes a kept file: temporary file, fsync, rename, root-only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = crate::fsutil::parent_dir(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".kept-")
        .suffix(crate::fsutil::TMP_MARK)
        .tempfile_in(dir)
        .map_err(Error::io("create a temporary file in", dir))?;
    tmp.write_all(bytes)
        .and_then(|()| {
            tmp.as_file()
                .set_permissions(fs::Permissions::from_mode(0o600))
        })
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(Error::io("write", tmp.path().to_owned()))?;
    tmp.persist(path)
        .map_err(|e| Error::io("replace", path)(e.error))?;
    Ok(())
}

/// The targets of one verified moment of the store.
pub(crate) struct Verified {
    consistent: bool,
    targets: HashMap<String, Target>,
}

impl Verified {
    /// Reads `name`'s index through its signed target: no target, no snap. The index must
    /// have exactly the signed length and sha256, and every revision in it must be a signed
    /// target with the same size and sha3-384, so a blob and its index entry replaced together
    /// are still refused.
    pub(crate) fn snap(
        &self,
        fetcher: &dyn Fetch,
        url: &str,
        name: &str,
    ) -> Result<Option<SnapIndex>> {
        let target_name = index_target(name);
        let Some(target) = self.targets.get(&target_name) else {
            return Ok(None);
        };
        let refuse = |reason: String| Error::Untrusted {
            url: url.to_owned(),
            reason,
            advice: "the store's operator must publish the snap again".into(),
        };
        let sha256 = hex::encode(&*target.hashes.sha256);
        let rel = if self.consistent {
            hashed_index(name, &sha256)
        } else {
            target_name.clone()
        };
        let limit = target.length.min(MAX_INDEX_SIZE);
        let bytes = fetcher
            .small(&rel, limit, &|| {
                refuse(format!(
                    "the index of {name} ({rel}) is larger than the {} bytes signed for it",
                    target.length
                ))
            })?
            .ok_or_else(|| refuse(format!("the index of {name} ({rel}) is signed but missing")))?;
        let actual = hex::encode(digest(&SHA256, &bytes).as_ref());
        if bytes.len() as u64 != target.length || actual != sha256 {
            return Err(refuse(format!(
                "the index of {name} ({rel}) does not match its signed length and sha256 (tampered with, or from another moment)"
            )));
        }
        let index = SnapIndex::parse(name, &bytes)?;
        for e in index.revisions() {
            let blob = self.targets.get(&e.path).ok_or_else(|| {
                refuse(format!(
                    "revision {} of {name} ({}) is not a signed target",
                    e.revision, e.path
                ))
            })?;
            let signed_sha3 = blob.custom.get(SHA3_KEY).and_then(|v| v.as_str());
            if blob.length != e.size || signed_sha3 != Some(e.sha3_384.as_str()) {
                return Err(refuse(format!(
                    "revision {} of {name} ({}) in the index does not match its signed target's size and sha3-384",
                    e.revision, e.path
                )));
            }
        }
        Ok(Some(index))
    }
}

/// Small files of the store (metadata, indexes) with the store's retries, redirect rules and
/// time limits: the one way signed metadata is read.
pub(crate) trait Fetch: Send + Sync {
    /// At most `limit` bytes; `None` when the store has no such file.
    fn small(
        &self,
        rel: &str,
        limit: u64,
        too_large: &dyn Fn() -> Error,
    ) -> Result<Option<Vec<u8>>>;
}

/// tough asks for `refreshd-store:///tuf/timestamp.json`; the path is the store's file.
const SCHEME: &str = "refreshd-store";

/// What the transport fetched for tough: the metadata (to say when an expired role expired)
/// and the store's own error when a fetch failed (to say it as the store does).
#[derive(Default)]
struct Seen {
    files: Vec<(String, Vec<u8>)>,
    /// Files the store does not have (a root version not made yet is one of these).
    missing: Vec<String>,
    failed: Option<Error>,
}

#[derive(Clone)]
struct StoreTransport {
    fetcher: Arc<dyn Fetch>,
    /// The store's address, for messages.
    url: String,
    seen: Arc<Mutex<Seen>>,
}

impl std::fmt::Debug for StoreTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreTransport")
    }
}

#[async_trait]
impl Transport for StoreTransport {
    async fn fetch(&self, url: Url) -> std::result::Result<TransportStream, TransportError> {
        if url.scheme() != SCHEME {
            return Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                url,
            ));
        }
        let rel = url.path().trim_start_matches('/').to_owned();
        let too_large = || Error::Untrusted {
            url: self.url.clone(),
            reason: format!("{rel} is larger than {MAX_META_SIZE} bytes (endless data)"),
            advice: "the store's operator must serve its current signed metadata".into(),
        };
        // Blocking, on the runtime of this one verification: nothing else runs on it.
        let got = self.fetcher.small(&rel, MAX_META_SIZE, &too_large);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match got {
            Ok(Some(bytes)) => {
                seen.files.push((rel, bytes.clone()));
                let chunk: std::result::Result<Bytes, TransportError> = Ok(Bytes::from(bytes));
                Ok(Box::pin(futures_util::stream::iter([chunk])))
            }
            Ok(None) => {
                seen.missing.push(rel);
                Err(TransportError::new(TransportErrorKind::FileNotFound, url))
            }
            Err(e) => {
                let shown = e.to_string();
                seen.failed = Some(e);
                Err(TransportError::new_with_cause(
                    TransportErrorKind::Other,
                    url,
                    shown,
                ))
            }
        }
    }
}

/// tough's refusal as one line that says what was refused and why, and what to do.
fn untrusted(url: &str, e: &TufError, seen: &Seen, start_root: &[u8]) -> Error {
    let operator = "the store's operator must serve its current signed metadata";
    let (reason, advice) = match e {
        TufError::Transport { url: asked, .. } => {
            if let Some(failed) = &seen.failed {
                return clone_error(failed);
            }
            let rel = asked.path().trim_start_matches('/');
            if let Some(reason) = read_refusal(e, rel) {
                (reason, operator.into())
            } else if seen.missing.iter().any(|m| m == rel) {
                (
                    format!("it has no {rel}: it serves no signed metadata, or not all of it"),
                    "if it is not signed yet, its operator must sign it (refreshctl store migrate); if it is, the files under tuf/ must all be served".into(),
                )
            } else {
                (chain(e), "check the store address and the network".into())
            }
        }
        TufError::ExpiredMetadata { role, .. } => {
            let since = expired_at(*role, seen, start_root)
                .map(|t| format!(" at {t} ({} ago)", ago(t)))
                .unwrap_or_default();
            (
                format!("its {role} metadata expired{since} (a store that is not re-signed in time looks like a freeze attack)"),
                "the store's operator must re-sign it (refreshctl store resign)".into(),
            )
        }
        TufError::VerifyMetadata { role, source, .. } => (
            format!(
                "its {role} metadata is not signed by enough of the keys the trusted root names ({}): forged, or another store's",
                chain(source)
            ),
            "if the store changed its keys, its operator must publish a root rotation (refreshctl store rotate-key); if it is another store, pin that store's root".into(),
        ),
        TufError::VerifyTrustedMetadata { source, .. } => (
            format!("the trusted root is not valid ({})", chain(source)),
            "install the store's root again (--store-root)".into(),
        ),
        TufError::OlderMetadata {
            role,
            current_version,
            new_version,
            ..
        } => (
            format!("its {role} metadata is version {new_version}, older than version {current_version} already trusted here (a rollback: old metadata served again)"),
            older_advice(*role),
        ),
        TufError::OlderSnapshotInTimestamp {
            snapshot_new,
            snapshot_old,
            ..
        } => (
            format!("its timestamp names snapshot version {snapshot_new}, older than version {snapshot_old} already trusted here (a rollback)"),
            older_advice(RoleType::Snapshot),
        ),
        TufError::SnapshotRoleRollback {
            role,
            old_role_version,
            new_role_version,
            ..
        } => (
            format!("its snapshot names {role} version {new_role_version}, older than version {old_role_version} already trusted here (a rollback)"),
            older_advice(RoleType::Snapshot),
        ),
        TufError::MaxSizeExceeded {
            max_size,
            specifier,
            ..
        } => (
            format!("a metadata file is larger than the {max_size} bytes allowed ({specifier}): endless data"),
            operator.into(),
        ),
        TufError::HashMismatch { context, .. } => (
            format!("{} does not match the hash signed for it (metadata of different moments mixed, or tampered with)", quote(context)),
            operator.into(),
        ),
        TufError::VersionMismatch {
            role,
            fetched,
            expected,
            ..
        } => (
            format!("its {role} metadata is version {fetched} where version {expected} is signed (metadata of different moments mixed)"),
            operator.into(),
        ),
        TufError::SystemTimeSteppedBackward {
            sys_time,
            latest_known_time,
        } => (
            format!("this machine's clock says {sys_time}, before {latest_known_time} seen already"),
            "set the clock right (expiry cannot be judged by a clock that went back)".into(),
        ),
        other => (chain(other), operator.into()),
    };
    Error::Untrusted {
        url: url.to_owned(),
        reason,
        advice,
    }
}

/// A length or hash refusal tough made while reading `rel`: it checks both as the bytes come,
/// so these arrive wrapped in a transport error, which would read as a network failure.
fn read_refusal(e: &TufError, rel: &str) -> Option<String> {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        match s.downcast_ref::<TufError>() {
            Some(TufError::MaxSizeExceeded {
                max_size,
                specifier,
                ..
            }) => {
                // A limit of refreshd's own ("max_timestamp_size argument"), or the length
                // another metadata file signs.
                return Some(if specifier.ends_with(" argument") {
                    format!(
                        "{rel} is larger than the {max_size} bytes allowed for it (endless data)"
                    )
                } else {
                    format!("{rel} is larger than the {max_size} bytes {specifier} signs for it (endless data, or metadata of different moments mixed)")
                });
            }
            Some(TufError::HashMismatch { .. }) => {
                return Some(format!("{rel} does not match the sha256 signed for it (metadata of different moments mixed, or tampered with)"));
            }
            _ => src = s.source(),
        }
    }
    None
}

/// What to do about metadata older than what is trusted. When the store does serve its
/// current metadata, the trusted version was signed ahead by a thief of the online key (a
/// fast-forward): rotating that key makes clients forget it.
fn older_advice(role: RoleType) -> String {
    match role {
        RoleType::Timestamp | RoleType::Snapshot => format!(
            "the store's operator must serve its current signed metadata or, if it does, rotate the {role} key (refreshctl store rotate-key {role}): a thief of that key signed a version ahead"
        ),
        _ => "the store's operator must serve its current signed metadata".into(),
    }
}

/// The store's own error, again (it is not `Clone`: its I/O errors are not).
fn clone_error(e: &Error) -> Error {
    match e {
        Error::Unreachable {
            url,
            attempts,
            detail,
        } => Error::Unreachable {
            url: url.clone(),
            attempts: *attempts,
            detail: detail.clone(),
        },
        Error::Redirect {
            url,
            location,
            reason,
        } => Error::Redirect {
            url: url.clone(),
            location: location.clone(),
            reason: reason.clone(),
        },
        Error::Transfer { url, detail } => Error::Transfer {
            url: url.clone(),
            detail: detail.clone(),
        },
        Error::Untrusted {
            url,
            reason,
            advice,
        } => Error::Untrusted {
            url: url.clone(),
            reason: reason.clone(),
            advice: advice.clone(),
        },
        other => Error::Signing {
            reason: other.to_string(),
        },
    }
}

/// When the expired `role`'s newest fetched metadata (or the starting root) expired.
fn expired_at(role: RoleType, seen: &Seen, start_root: &[u8]) -> Option<jiff::Timestamp> {
    let file = format!("{role}.json");
    let bytes = seen
        .files
        .iter()
        .rev()
        .find(|(rel, _)| rel.ends_with(&format!("/{file}")) || rel.ends_with(&format!(".{file}")))
        .map(|(_, b)| b.as_slice())
        .or((role == RoleType::Root).then_some(start_root))?;
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    v.pointer("/signed/expires")?.as_str()?.parse().ok()
}

/// How long ago `t` was, roughly: "3 h", "12 min", "5 s", "2 d".
fn ago(t: jiff::Timestamp) -> String {
    let s = jiff::Timestamp::now().as_second() - t.as_second();
    match s {
        s if s >= 2 * 86400 => format!("{} d", s / 86400),
        s if s >= 2 * 3600 => format!("{} h", s / 3600),
        s if s >= 120 => format!("{} min", s / 60),
        s => format!("{} s", s.max(0)),
    }
}

fn one(e: &serde_json::Error) -> String {
    crate::error::one_line(&e.to_string())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::tuf::repo::{init, resign, Expiries, InitOptions};
    use crate::{Store, StoreConfig};

    /// A signed store with no snaps, and a client's configuration pinned to its root.
    fn signed() -> (tempfile::TempDir, PathBuf, StoreConfig) {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let made = init(&store, &tmp.path().join("keys"), &InitOptions::default()).unwrap();
        let config = StoreConfig {
            trust: Some(TrustConfig {
                root: made.root_file,
                state_dir: tmp.path().join("trust"),
            }),
            ..StoreConfig::default()
        };
        (tmp, store, config)
    }

    /// The kept state's directory and its working copy.
    fn kept(config: &StoreConfig) -> (PathBuf, PathBuf) {
        let mut dirs: Vec<PathBuf> = fs::read_dir(&config.trust.as_ref().unwrap().state_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        dirs.sort();
        assert_eq!(dirs.len(), 2, "{dirs:?}");
        assert_eq!(
            dirs[1],
            PathBuf::from(format!("{}{WORK}", dirs[0].display()))
        );
        (dirs[0].clone(), dirs[1].clone())
    }

    #[test]
    fn the_same_json_in_another_order_is_the_same_metadata() {
        let a = br#"{"signed":{"a":1,"b":[1,2]},"signatures":[]}"#;
        let b = br#"{"signatures":[],"signed":{"b":[1,2],"a":1}}"#;
        assert!(same_metadata(Some(a), b));
        assert!(!same_metadata(
            Some(a),
            br#"{"signed":{"a":2,"b":[1,2]},"signatures":[]}"#
        ));
        assert!(!same_metadata(
            Some(a),
            br#"{"signed":{"a":1,"b":[2,1]},"signatures":[]}"#
        ));
        assert!(!same_metadata(None, a));
        assert!(!same_metadata(Some(b"not json"), a));
    }

    #[test]
    fn a_look_up_with_nothing_new_replaces_no_kept_metadata() {
        let (tmp, store, config) = signed();
        let s = Store::open_with(&store.to_string_lossy(), config.clone()).unwrap();
        s.catalog().unwrap();
        let (dir, _) = kept(&config);
        let inodes = |dir: &Path| -> Vec<u64> {
            [
                "root.json",
                "timestamp.json",
                "snapshot.json",
                "targets.json",
            ]
            .iter()
            .map(|n| fs::metadata(dir.join(n)).unwrap().ino())
            .collect()
        };
        let before = inodes(&dir);
        for _ in 0..4 {
            s.catalog().unwrap();
        }
        assert_eq!(inodes(&dir), before, "unchanged metadata was written again");
        drop(tmp);
    }

    #[test]
    fn a_spoilt_working_copy_is_put_back_before_tough_reads_it() {
        let (tmp, store, config) = signed();
        let url = store.to_string_lossy().into_owned();
        let meta = store.join(META_DIR);
        Store::open_with(&url, config.clone())
            .unwrap()
            .catalog()
            .unwrap();
        // Version 2 of the timestamp is trusted; then version 1 is served again.
        let old = fs::read(meta.join("timestamp.json")).unwrap();
        let keys = tmp.path().join("keys");
        resign(&store, &keys, &[RoleType::Timestamp], &Expiries::default()).unwrap();
        // Two look-ups: the second finds its working copy saying what is kept.
        let s = Store::open_with(&url, config.clone()).unwrap();
        s.catalog().unwrap();
        s.catalog().unwrap();
        let new = fs::read(meta.join("timestamp.json")).unwrap();
        fs::write(meta.join("timestamp.json"), &old).unwrap();
        // The working copy as a crash in the middle of tough's writes may leave it: the
        // rollback check must still see version 2.
        let (_, work) = kept(&config);
        fs::write(work.join("timestamp.json"), b"{\"signed\":").unwrap();
        fs::remove_file(work.join("snapshot.json")).unwrap();
        let e = s
            .catalog()
            .err()
            .expect("a rollback of the timestamp was accepted");
        assert!(
            matches!(&e, Error::Untrusted { reason, .. } if reason.contains("older than version 2")),
            "{e}"
        );
        // And with no working copy at all.
        fs::remove_dir_all(&work).unwrap();
        let e = Store::open_with(&url, config.clone())
            .unwrap()
            .catalog()
            .err()
            .expect("a rollback of the timestamp was accepted");
        assert!(matches!(&e, Error::Untrusted { .. }), "{e}");
        fs::write(meta.join("timestamp.json"), &new).unwrap();
        Store::open_with(&url, config).unwrap().catalog().unwrap();
    }
}
