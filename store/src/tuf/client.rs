//! refreshd's side of a signed store: one pinned root, metadata verified by `tough` on every
//! look-up, and kept (atomically) so that no version ever goes backwards, across restarts too.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest::{digest, SHA256};
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

/// A pinned root, opened and checked.
pub(crate) struct Trusted {
    pinned: Vec<u8>,
    pinned_version: u64,
    /// `STATE/store-trust/SHA256-OF-ROOT[..16]`: trust kept per pinned root, so pinning another
    /// root starts afresh instead of mixing two stores' versions.
    state: PathBuf,
    /// One verification at a time: each reads and then moves forward what is kept.
    lock: Mutex<()>,
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
        Ok(Trusted {
            pinned_version: root.signed.version.get(),
            pinned,
            state,
            lock: Mutex::new(()),
        })
    }

    /// Verifies the store's metadata now (tough's client workflow: root chain, timestamp,
    /// snapshot, targets; signatures, thresholds, versions, hashes, lengths, expiry) and keeps
    /// what it trusted.
    pub(crate) fn verify(&self, fetcher: Arc<dyn Fetch>, url: &str) -> Result<Verified> {
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let scratch = tempfile::Builder::new()
            .prefix(".verify-")
            .tempdir_in(&self.state)
            .map_err(Error::io("create a temporary directory in", &self.state))?;
        for name in KEPT {
            match fs::read(self.state.join(name)) {
                Ok(b) => fs::write(scratch.path().join(name), b)
                    .map_err(Error::io("write", scratch.path().join(name)))?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("read", self.state.join(name))(e)),
            }
        }
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
                .datastore(scratch.path())
                .limits(limits)
                .expiration_enforcement(ExpirationEnforcement::Safe)
                .load(),
        )?;
        // What tough verified is kept even when a later step failed (a newer root, a newer
        // timestamp): trust only moves forward.
        self.keep(scratch.path())?;
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

    /// Makes what tough left in `scratch` the kept state: each file replaced atomically, and
    /// one it deleted (a rotated key's timestamp or snapshot: fast-forward recovery) deleted.
    fn keep(&self, scratch: &Path) -> Result<()> {
        for name in KEPT {
            let dest = self.state.join(name);
            match fs::read(scratch.join(name)) {
                Ok(b) => {
                    if fs::read(&dest).ok().as_deref() != Some(&b[..]) {
                        write_private(&dest, &b)?;
                    }
                }
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
    failed: Option<Error>,
}

#[derive(Clone)]
struct StoreTransport {
    fetcher: Arc<dyn Fetch>,
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
            url: rel.clone(),
            reason: format!("{rel} is larger than {MAX_META_SIZE} bytes (endless data)"),
            advice: "the store's operator must fix it".into(),
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
            Ok(None) => Err(TransportError::new(TransportErrorKind::FileNotFound, url)),
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
        TufError::Transport { .. } => {
            if let Some(failed) = &seen.failed {
                return clone_error(failed);
            }
            (chain(e), "check the store address and the network".into())
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
            operator.into(),
        ),
        TufError::OlderSnapshotInTimestamp {
            snapshot_new,
            snapshot_old,
            ..
        } => (
            format!("its timestamp names snapshot version {snapshot_new}, older than version {snapshot_old} already trusted here (a rollback)"),
            operator.into(),
        ),
        TufError::SnapshotRoleRollback {
            role,
            old_role_version,
            new_role_version,
            ..
        } => (
            format!("its snapshot names {role} version {new_role_version}, older than version {old_role_version} already trusted here (a rollback)"),
            operator.into(),
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
