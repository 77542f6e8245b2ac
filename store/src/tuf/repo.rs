//! The publisher's side of a signed store: making it, signing what is published, re-signing
//! before expiry, rotating keys (the root's too) and converting an unsigned store.
//!
//! Keys live in a key directory (mode 0700, one PKCS#8 Ed25519 file per key, 0600) that is
//! never inside the store. Every command signs everything it changes in memory first, then
//! writes the files in the order a reader needs them (a new root, targets, snapshot, and the
//! timestamp last, by rename), so a reader never meets a half-made moment and a missing key
//! leaves the store as it was.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::num::NonZeroU64;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use serde_json::Value;
use sha3::{Digest, Sha3_384};
use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{
    Hashes, KeyHolder, Metafile, RoleKeys as TufRoleKeys, RoleType, Root, Snapshot, Target,
    Targets, Timestamp,
};
use tough::sign::{parse_keypair, Sign};
use tough::TargetName;

use super::{block_on, chain, hashed_index, index_target, META_DIR, SHA3_KEY, SPEC_VERSION};
use crate::error::{Error, Result};
use crate::fsutil::{sync_dir, write_atomic};
use crate::index::SnapIndex;

/// How long each role's metadata stays valid when signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiries {
    /// 365 days: the root is signed offline, rarely.
    pub root: Duration,
    /// 90 days: re-signed on every publish.
    pub targets: Duration,
    /// 14 days: re-signed on every publish.
    pub snapshot: Duration,
    /// 7 days: `refreshctl store resign` from a daily timer keeps it fresh; a client refuses
    /// a store whose timestamp is older (a freeze attack).
    pub timestamp: Duration,
}

const DAY: u64 = 86400;

impl Default for Expiries {
    fn default() -> Self {
        Expiries {
            root: Duration::from_secs(365 * DAY),
            targets: Duration::from_secs(90 * DAY),
            snapshot: Duration::from_secs(14 * DAY),
            timestamp: Duration::from_secs(7 * DAY),
        }
    }
}

/// Where the lifetimes a store was made with are recorded: in its targets metadata (signed, so
/// a publish or a re-signing signs with them, not with the defaults).
const LIFETIMES_KEY: &str = "x-refreshd-lifetimes";

impl Expiries {
    fn to_value(self) -> Value {
        serde_json::json!({
            "root": self.root.as_secs(),
            "targets": self.targets.as_secs(),
            "snapshot": self.snapshot.as_secs(),
            "timestamp": self.timestamp.as_secs(),
        })
    }

    /// The lifetimes recorded in `targets`, each missing or bad one the default.
    fn recorded(targets: &Targets) -> Expiries {
        let d = Expiries::default();
        let v = targets._extra.get(LIFETIMES_KEY);
        let get = |role: &str, def: Duration| {
            v.and_then(|v| v.get(role))
                .and_then(Value::as_u64)
                .map(Duration::from_secs)
                .unwrap_or(def)
        };
        Expiries {
            root: get("root", d.root),
            targets: get("targets", d.targets),
            snapshot: get("snapshot", d.snapshot),
            timestamp: get("timestamp", d.timestamp),
        }
    }
}

/// The lifetimes a signed store signs with: those it was made with (`store init --expires`),
/// or last re-signed its targets with.
pub fn lifetimes(store: &Path) -> Result<Expiries> {
    Ok(Expiries::recorded(&Repo::read(store)?.targets.signed))
}

/// How many keys a role has and how many must sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleKeys {
    pub keys: u32,
    pub threshold: u32,
}

impl Default for RoleKeys {
    fn default() -> Self {
        RoleKeys {
            keys: 1,
            threshold: 1,
        }
    }
}

/// What `store init` (and `store migrate`) make.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub expiries: Expiries,
    pub root: RoleKeys,
    pub targets: RoleKeys,
    pub snapshot: RoleKeys,
    pub timestamp: RoleKeys,
}

impl InitOptions {
    fn role(&self, role: RoleType) -> RoleKeys {
        match role {
            RoleType::Root => self.root,
            RoleType::Targets | RoleType::DelegatedTargets => self.targets,
            RoleType::Snapshot => self.snapshot,
            RoleType::Timestamp => self.timestamp,
        }
    }
}

/// A store made signed.
#[derive(Debug, Clone)]
pub struct Initialized {
    /// The root every client must pin (`STORE/tuf/1.root.json`).
    pub root_file: PathBuf,
    /// Its sha256, to compare out of band.
    pub root_sha256: String,
    /// The private keys made, in the key directory.
    pub keys: Vec<PathBuf>,
    /// Snaps of an unsigned store now signed (`migrate`).
    pub snaps: Vec<String>,
}

/// What a signing command left: each role's version and expiry now.
#[derive(Debug, Clone)]
pub struct Signed {
    pub roles: Vec<(String, u64, String)>,
    /// A new root to install on clients that pin by hand (`rotate-key root`); clients that
    /// trust an older one reach it themselves.
    pub new_root: Option<PathBuf>,
}

const ROLES: [RoleType; 4] = [
    RoleType::Root,
    RoleType::Targets,
    RoleType::Snapshot,
    RoleType::Timestamp,
];

fn sign_err(reason: String) -> Error {
    Error::Signing { reason }
}

fn meta_dir(store: &Path) -> PathBuf {
    store.join(META_DIR)
}

/// Whether `store` is a signed store (it has `tuf/root.json`).
pub fn is_signed(store: &Path) -> bool {
    meta_dir(store).join("root.json").exists()
}

/// Makes `store` (created if missing, which must hold no snaps) a signed store with no snaps,
/// and new keys in `keys` (created 0700, which must hold none).
pub fn init(store: &Path, keys: &Path, opts: &InitOptions) -> Result<Initialized> {
    make(store, keys, opts, false)
}

/// Converts an unsigned store in place: every index and the blob of every revision become
/// signed targets (each blob hashed and checked against its index first). Unsigned readers
/// keep working: `v1/snaps/NAME.json` stays where it was.
pub fn migrate(store: &Path, keys: &Path, opts: &InitOptions) -> Result<Initialized> {
    make(store, keys, opts, true)
}

fn make(store: &Path, keys: &Path, opts: &InitOptions, adopt: bool) -> Result<Initialized> {
    for (role, rk) in ROLES.iter().map(|r| (*r, opts.role(*r))) {
        if rk.threshold == 0 || rk.keys < rk.threshold {
            return Err(sign_err(format!(
                "the {role} role needs a threshold of 1 or more and at least as many keys ({} keys, threshold {}): change the options",
                rk.keys, rk.threshold
            )));
        }
    }
    keys_outside(store, keys)?;
    if !adopt {
        fs::create_dir_all(store).map_err(Error::io("create", store))?;
    }
    let store_meta = fs::metadata(store).map_err(|e| Error::StoreDir {
        path: store.to_owned(),
        error: e,
    })?;
    if !store_meta.is_dir() {
        return Err(Error::StoreDir {
            path: store.to_owned(),
            error: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    if is_signed(store) {
        return Err(sign_err(format!(
            "{} is a signed store already: publish to it, or rotate its keys (refreshctl store rotate-key)",
            store.display()
        )));
    }
    let snaps = unsigned_snaps(store)?;
    if !adopt && !snaps.is_empty() {
        return Err(sign_err(format!(
            "{} holds snaps already ({}): convert it with refreshctl store migrate",
            store.display(),
            snaps.join(", ")
        )));
    }
    if adopt && snaps.is_empty() && !store.join("v1/snaps").is_dir() {
        return Err(sign_err(format!(
            "{} is not a store (no v1/snaps): make a new one with refreshctl store init",
            store.display()
        )));
    }
    let keys = key_dir_for_new(store, keys)?;

    let _lock = crate::publish::lock(store)?;
    let rng = SystemRandom::new();
    let now = jiff::Timestamp::now();
    let mut root = Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version: NonZeroU64::MIN,
        expires: later(now, opts.expiries.root)?,
        keys: HashMap::new(),
        roles: HashMap::new(),
        _extra: HashMap::new(),
    };
    let mut made = Vec::new();
    for role in ROLES {
        let rk = opts.role(role);
        let mut ids = Vec::new();
        for _ in 0..rk.keys {
            let (id, key, path) = new_key(&keys, role, &rng)?;
            root.keys.insert(id.clone(), key);
            ids.push(id);
            made.push(path);
        }
        root.roles.insert(role, role_keys(ids, rk.threshold));
    }

    // Adopted snaps: each index and each blob it names become targets.
    let mut targets = Targets::new(
        SPEC_VERSION.into(),
        NonZeroU64::MIN,
        later(now, opts.expiries.targets)?,
    );
    targets
        ._extra
        .insert(LIFETIMES_KEY.into(), opts.expiries.to_value());
    let mut hashed = Vec::new();
    for name in &snaps {
        let path = store.join(index_target(name));
        let bytes = fs::read(&path).map_err(Error::io("read", &path))?;
        let index = SnapIndex::parse(name, &bytes)?;
        for e in index.revisions() {
            let blob = inside(store, &e.path)?;
            let (length, sha256, sha3) = hash_file(&blob)?;
            if length != e.size || sha3 != e.sha3_384 {
                return Err(sign_err(format!(
                    "the blob of {name} revision {} ({}) does not match its index (size {length}, sha3-384 {}...): it is not signed; republish or remove that revision, then migrate again",
                    e.revision,
                    e.path,
                    &sha3[..16]
                )));
            }
            add_target(&mut targets, &e.path, blob_target(length, &sha256, &sha3))?;
        }
        let sha256 = sha256_hex(&bytes);
        add_target(
            &mut targets,
            &index_target(name),
            plain_target(bytes.len() as u64, &sha256),
        )?;
        hashed.push((store.join(hashed_index(name, &sha256)), bytes));
    }

    let signer = Signer::new(load_keys(&keys)?);
    let root_signed = signer.root(&root, None)?;
    let holder = KeyHolder::Root(root.clone());
    let targets_signed = signer.sign(targets, &holder)?;
    let snapshot_signed = signer.sign(
        snapshot_of(
            NonZeroU64::MIN,
            later(now, opts.expiries.snapshot)?,
            &targets_signed,
        ),
        &holder,
    )?;
    let timestamp_signed = signer.sign(
        timestamp_of(
            NonZeroU64::MIN,
            later(now, opts.expiries.timestamp)?,
            &snapshot_signed,
        ),
        &holder,
    )?;

    let dir = meta_dir(store);
    fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
    for (path, bytes) in &hashed {
        write_atomic(path, bytes)?;
    }
    let root_file = dir.join("1.root.json");
    write_atomic(&root_file, root_signed.buffer())?;
    write_atomic(&dir.join("1.targets.json"), targets_signed.buffer())?;
    write_atomic(&dir.join("1.snapshot.json"), snapshot_signed.buffer())?;
    // Last: until root.json is there, this is not a signed store to anyone.
    write_atomic(&dir.join("timestamp.json"), timestamp_signed.buffer())?;
    write_atomic(&dir.join("root.json"), root_signed.buffer())?;
    Ok(Initialized {
        root_sha256: hex::encode(root_signed.sha256()),
        root_file,
        keys: made,
        snaps,
    })
}

/// Re-signs `roles` (and the ones that sign them: targets → snapshot → timestamp) with new
/// versions and expiries; the timestamp always. `root` makes a new root version with a new
/// expiry (its keys must be in `keys`).
pub fn resign(
    store: &Path,
    keys: &Path,
    roles: &[RoleType],
    expiries: &Expiries,
) -> Result<Signed> {
    let _lock = crate::publish::lock(store)?;
    let repo = Repo::read(store)?;
    let signer = Signer::new(load_keys(&check_key_dir(store, keys)?)?);
    let mut plan = Plan::default();
    if roles.contains(&RoleType::Root) {
        plan.root = Some(repo.root.signed.clone());
    }
    plan.targets = roles.contains(&RoleType::Targets);
    plan.snapshot = plan.targets || roles.contains(&RoleType::Snapshot);
    repo.commit(&signer, plan, expiries)
}

/// Replaces every key of `role` with new ones (as many, same threshold) in a new root version,
/// signed by the old root's keys and, for the root role, the new ones too; then re-signs the
/// role with its new keys. The old keys move to `KEYDIR/retired/`. Clients walk to the new
/// root by themselves; after an online key was stolen this is the recovery: versions the thief
/// signed far ahead (a fast-forward) are forgotten by clients when the key changes.
pub fn rotate_key(
    store: &Path,
    keys: &Path,
    role: RoleType,
    expiries: &Expiries,
) -> Result<Signed> {
    let keys = check_key_dir(store, keys)?;
    let _lock = crate::publish::lock(store)?;
    let repo = Repo::read(store)?;
    let old_signer = Signer::new(load_keys(&keys)?);
    let rng = SystemRandom::new();
    let mut root = repo.root.signed.clone();
    let old = root
        .roles
        .get(&role)
        .cloned()
        .ok_or_else(|| sign_err(format!("the root names no {role} role")))?;
    let mut ids = Vec::new();
    let mut made = Vec::new();
    for _ in 0..old.keyids.len() {
        let (id, key, path) = new_key(&keys, role, &rng)?;
        root.keys.insert(id.clone(), key);
        ids.push(id);
        made.push(path);
    }
    root.roles
        .insert(role, role_keys(ids, old.threshold.get() as u32));
    // A key no role uses any more leaves the root.
    let used: Vec<_> = root.roles.values().flat_map(|r| r.keyids.clone()).collect();
    root.keys.retain(|id, _| used.contains(id));

    let signer = Signer::new(load_keys(&keys)?);
    let plan = Plan {
        root: Some(root),
        targets: role == RoleType::Targets,
        snapshot: matches!(role, RoleType::Targets | RoleType::Snapshot),
    };
    let out = match repo.commit_with(&old_signer, &signer, plan, expiries) {
        Ok(out) => out,
        Err(e) => {
            for p in made {
                let _ = fs::remove_file(p);
            }
            return Err(e);
        }
    };
    retire(&keys, &old.keyids)?;
    Ok(out)
}

/// Publishing to a signed store: the store's metadata and keys, checked before anything is
/// written, and the targets a publish adds.
pub(crate) struct Publisher {
    repo: Repo,
    signer: Signer,
}

impl Publisher {
    /// Under the store's lock: reads and verifies its metadata and checks that `keys` can
    /// sign targets, snapshot and timestamp.
    pub(crate) fn open(store: &Path, keys: &Path) -> Result<Publisher> {
        let repo = Repo::read(store)?;
        let signer = Signer::new(load_keys(&check_key_dir(store, keys)?)?);
        for role in [RoleType::Targets, RoleType::Snapshot, RoleType::Timestamp] {
            signer.can_sign(&repo.root.signed, role, keys)?;
        }
        Ok(Publisher { repo, signer })
    }

    /// Signs the new index of `name` (also written as `v1/snaps/SHA256.NAME.json`) and a new
    /// blob (its size, sha256 and sha3-384).
    pub(crate) fn commit(
        self,
        name: &str,
        index: &[u8],
        blob_path: &str,
        blob: (u64, &str, &str),
    ) -> Result<()> {
        let store = self.repo.dir.clone();
        let sha256 = sha256_hex(index);
        write_atomic(&store.join(hashed_index(name, &sha256)), index)?;
        let mut targets = self.repo.targets.signed.clone();
        add_target(
            &mut targets,
            &index_target(name),
            plain_target(index.len() as u64, &sha256),
        )?;
        add_target(&mut targets, blob_path, blob_target(blob.0, blob.1, blob.2))?;
        // A publish that crashed after writing its index but before signing left a revision
        // whose blob is no target; clients would refuse the whole index for it. Signed now,
        // once its blob is checked against its entry.
        for e in SnapIndex::parse(name, index)?.revisions() {
            let known = TargetName::new(e.path.as_str())
                .ok()
                .is_some_and(|n| targets.targets.contains_key(&n));
            if known {
                continue;
            }
            let (length, sha256, sha3) = hash_file(&inside(&store, &e.path)?)?;
            if length != e.size || sha3 != e.sha3_384 {
                return Err(sign_err(format!(
                    "the blob of {name} revision {} ({}) does not match its index: it is not signed; republish that revision",
                    e.revision, e.path
                )));
            }
            add_target(&mut targets, &e.path, blob_target(length, &sha256, &sha3))?;
        }
        let plan = Plan {
            root: None,
            targets: true,
            snapshot: true,
        };
        let lifetimes = Expiries::recorded(&self.repo.targets.signed);
        let mut repo = self.repo;
        repo.targets.signed = targets;
        repo.commit(&self.signer, plan, &lifetimes)?;
        Ok(())
    }
}

/// A signed store's current metadata, read from its directory and verified against its root
/// (a tampered directory is refused rather than signed over).
struct Repo {
    dir: PathBuf,
    root: tough::schema::Signed<Root>,
    targets: tough::schema::Signed<Targets>,
    targets_bytes: Vec<u8>,
    snapshot: tough::schema::Signed<Snapshot>,
    snapshot_bytes: Vec<u8>,
    timestamp: tough::schema::Signed<Timestamp>,
}

#[derive(Default)]
struct Plan {
    /// A new root to sign (its version is set here).
    root: Option<Root>,
    targets: bool,
    snapshot: bool,
}

impl Repo {
    fn read(store: &Path) -> Result<Repo> {
        let dir = meta_dir(store);
        if !is_signed(store) {
            return Err(sign_err(format!(
                "{} is not a signed store (no {META_DIR}/root.json): make one with refreshctl store init, or convert it with refreshctl store migrate",
                store.display()
            )));
        }
        let read = |name: &str| -> Result<Vec<u8>> {
            let p = dir.join(name);
            fs::read(&p).map_err(Error::io("read", &p))
        };
        let parse = |name: &str, bytes: &[u8]| -> Result<Value> {
            serde_json::from_slice(bytes).map_err(|e| {
                sign_err(format!(
                    "{}/{name} is not valid metadata ({e}): restore it from a backup",
                    dir.display()
                ))
            })
        };
        fn typed<T: serde::de::DeserializeOwned>(
            dir: &Path,
            name: &str,
            v: Value,
        ) -> Result<tough::schema::Signed<T>> {
            serde_json::from_value(v).map_err(|e| {
                sign_err(format!(
                    "{}/{name} is not valid metadata ({e}): restore it from a backup",
                    dir.display()
                ))
            })
        }
        let root_bytes = read("root.json")?;
        let root: tough::schema::Signed<Root> =
            typed(&dir, "root.json", parse("root.json", &root_bytes)?)?;
        let ts_bytes = read("timestamp.json")?;
        let timestamp: tough::schema::Signed<Timestamp> =
            typed(&dir, "timestamp.json", parse("timestamp.json", &ts_bytes)?)?;
        let snap_v = timestamp
            .signed
            .meta
            .get("snapshot.json")
            .map(|m| m.version)
            .ok_or_else(|| {
                sign_err(format!(
                    "{}/timestamp.json names no snapshot: restore it from a backup",
                    dir.display()
                ))
            })?;
        let snap_name = format!("{snap_v}.snapshot.json");
        let snapshot_bytes = read(&snap_name)?;
        let snapshot: tough::schema::Signed<Snapshot> =
            typed(&dir, &snap_name, parse(&snap_name, &snapshot_bytes)?)?;
        let targets_v = snapshot
            .signed
            .meta
            .get("targets.json")
            .map(|m| m.version)
            .ok_or_else(|| {
                sign_err(format!(
                    "{}/{snap_name} names no targets: restore it from a backup",
                    dir.display()
                ))
            })?;
        let targets_name = format!("{targets_v}.targets.json");
        let targets_bytes = read(&targets_name)?;
        let targets: tough::schema::Signed<Targets> =
            typed(&dir, &targets_name, parse(&targets_name, &targets_bytes)?)?;
        let tampered = |name: &str, e: &dyn std::error::Error| {
            sign_err(format!(
                "{}/{name} is not signed by the store's keys ({}): it was tampered with; restore the store from a backup before signing over it",
                dir.display(),
                chain(e)
            ))
        };
        root.signed
            .verify_role(&root)
            .map_err(|e| tampered("root.json", &e))?;
        root.signed
            .verify_role(&timestamp)
            .map_err(|e| tampered("timestamp.json", &e))?;
        root.signed
            .verify_role(&snapshot)
            .map_err(|e| tampered(&snap_name, &e))?;
        root.signed
            .verify_role(&targets)
            .map_err(|e| tampered(&targets_name, &e))?;
        Ok(Repo {
            dir: store.to_owned(),
            root,
            targets,
            targets_bytes,
            snapshot,
            snapshot_bytes,
            timestamp,
        })
    }

    fn commit(self, signer: &Signer, plan: Plan, expiries: &Expiries) -> Result<Signed> {
        self.commit_with(signer, signer, plan, expiries)
    }

    /// Signs `plan` in memory (a new root with `old` and `new` keys), then writes it: root,
    /// targets, snapshot, timestamp.
    fn commit_with(
        self,
        old: &Signer,
        new: &Signer,
        plan: Plan,
        expiries: &Expiries,
    ) -> Result<Signed> {
        let now = jiff::Timestamp::now();
        let next = |v: NonZeroU64| {
            v.checked_add(1)
                .ok_or_else(|| sign_err("no version number is left".into()))
        };
        let dir = meta_dir(&self.dir);
        let mut writes: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        let mut roles = Vec::new();
        let mut new_root = None;

        let root = match plan.root {
            Some(mut root) => {
                root.version = next(self.root.signed.version)?;
                root.expires = later(now, expiries.root)?;
                let signed = new.root(&root, Some((&self.root.signed, old)))?;
                let file = dir.join(format!("{}.root.json", root.version));
                writes.push((file.clone(), signed.buffer().clone()));
                writes.push((dir.join("root.json"), signed.buffer().clone()));
                new_root = Some(file);
                roles.push((
                    "root".to_owned(),
                    root.version.get(),
                    root.expires.to_string(),
                ));
                root
            }
            None => self.root.signed.clone(),
        };
        let holder = KeyHolder::Root(root.clone());

        let targets_meta = if plan.targets {
            let mut t = self.targets.signed.clone();
            t.version = next(t.version)?;
            t.expires = later(now, expiries.targets)?;
            t._extra.insert(LIFETIMES_KEY.into(), expiries.to_value());
            roles.push(("targets".to_owned(), t.version.get(), t.expires.to_string()));
            let v = t.version;
            let signed = new.sign(t, &holder)?;
            writes.push((
                dir.join(format!("{v}.targets.json")),
                signed.buffer().clone(),
            ));
            meta_of(signed.buffer(), v)
        } else {
            meta_of(&self.targets_bytes, self.targets.signed.version)
        };

        let snapshot_meta = if plan.snapshot {
            let v = next(self.snapshot.signed.version)?;
            let expires = later(now, expiries.snapshot)?;
            let mut s = Snapshot::new(SPEC_VERSION.into(), v, expires);
            s.meta.insert("targets.json".into(), targets_meta);
            roles.push(("snapshot".to_owned(), v.get(), expires.to_string()));
            let signed = new.sign(s, &holder)?;
            writes.push((
                dir.join(format!("{v}.snapshot.json")),
                signed.buffer().clone(),
            ));
            meta_of(signed.buffer(), v)
        } else {
            meta_of(&self.snapshot_bytes, self.snapshot.signed.version)
        };

        let v = next(self.timestamp.signed.version)?;
        let expires = later(now, expiries.timestamp)?;
        let mut t = Timestamp::new(SPEC_VERSION.into(), v, expires);
        t.meta.insert("snapshot.json".into(), snapshot_meta);
        roles.push(("timestamp".to_owned(), v.get(), expires.to_string()));
        let signed = new.sign(t, &holder)?;
        writes.push((dir.join("timestamp.json"), signed.buffer().clone()));

        // The timestamp is what readers start from: it goes last, and the root's copy (read
        // by publishers only) just before it.
        writes.sort_by_key(|(p, _)| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            match n {
                "timestamp.json" => 2,
                "root.json" => 1,
                _ => 0,
            }
        });
        for (path, bytes) in &writes {
            write_atomic(path, bytes)?;
        }
        Ok(Signed { roles, new_root })
    }
}

/// The keys of a key directory, ready to sign.
struct Signer {
    keys: Vec<Box<dyn KeySource>>,
    rng: SystemRandom,
}

impl Signer {
    fn new(keys: Vec<Box<dyn KeySource>>) -> Signer {
        Signer {
            keys,
            rng: SystemRandom::new(),
        }
    }

    fn sign<T>(&self, role: T, holder: &KeyHolder) -> Result<SignedRole<T>>
    where
        T: tough::schema::Role + serde::Serialize,
    {
        let kind = T::TYPE;
        block_on(SignedRole::new(role, holder, &self.keys, &self.rng))?.map_err(|e| {
            sign_err(format!(
                "cannot sign the {kind} metadata: {}; the key directory must hold enough of the {kind} role's keys",
                chain(&e)
            ))
        })
    }

    /// Signs `root` with its own root keys and, when it replaces `previous`, with the previous
    /// root's keys too; both thresholds must be met.
    fn root(&self, root: &Root, previous: Option<(&Root, &Signer)>) -> Result<SignedRole<Root>> {
        let mut signed = self.sign(root.clone(), &KeyHolder::Root(root.clone()))?;
        if let Some((prev, old)) = previous {
            let by_old = old.sign(root.clone(), &KeyHolder::Root(prev.clone()))?;
            signed = signed
                .add_old_signatures(by_old.signed().signatures.clone())
                .map_err(|e| sign_err(format!("cannot sign the root metadata: {}", chain(&e))))?;
            prev.verify_role(signed.signed()).map_err(|e| {
                sign_err(format!(
                    "the new root is not signed by enough of the current root's keys ({}): put them in the key directory",
                    chain(&e)
                ))
            })?;
        }
        root.verify_role(signed.signed()).map_err(|e| {
            sign_err(format!(
                "the root is not signed by enough of its root keys ({}): put them in the key directory",
                chain(&e)
            ))
        })?;
        Ok(signed)
    }

    /// Fails, naming the role and the directory, unless the threshold of `role` is held.
    fn can_sign(&self, root: &Root, role: RoleType, dir: &Path) -> Result<()> {
        let Some(rk) = root.roles.get(&role) else {
            return Err(sign_err(format!("the store's root names no {role} role")));
        };
        let held = block_on(async {
            let mut ids = Vec::new();
            for k in &self.keys {
                if let Ok(s) = k.as_sign().await {
                    if let Ok(id) = s.tuf_key().key_id() {
                        ids.push(id);
                    }
                }
            }
            ids
        })?;
        let n = rk.keyids.iter().filter(|id| held.contains(id)).count() as u64;
        if n < rk.threshold.get() {
            return Err(sign_err(format!(
                "{} holds {n} of the {} {role} key(s) needed to sign: give the key directory that holds them (--keys)",
                dir.display(),
                rk.threshold
            )));
        }
        Ok(())
    }
}

fn role_keys(keyids: Vec<Decoded<Hex>>, threshold: u32) -> TufRoleKeys {
    TufRoleKeys {
        keyids,
        threshold: NonZeroU64::new(u64::from(threshold.max(1))).expect("not zero"),
        _extra: HashMap::new(),
    }
}

fn later(now: jiff::Timestamp, d: Duration) -> Result<jiff::Timestamp> {
    let span =
        jiff::SignedDuration::try_from(d).map_err(|e| sign_err(format!("bad expiry: {e}")))?;
    // Whole seconds: metadata carries no fractions.
    now.checked_add(span)
        .and_then(|t| jiff::Timestamp::from_second(t.as_second()))
        .map_err(|e| sign_err(format!("bad expiry: {e}")))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(digest(&SHA256, bytes).as_ref())
}

fn decoded(hex_str: &str) -> Decoded<Hex> {
    Decoded::from(hex::decode(hex_str).expect("hex made here"))
}

fn meta_of(bytes: &[u8], version: NonZeroU64) -> Metafile {
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: decoded(&sha256_hex(bytes)),
            _extra: HashMap::new(),
        }),
        version,
        _extra: HashMap::new(),
    }
}

fn snapshot_of(v: NonZeroU64, expires: jiff::Timestamp, targets: &SignedRole<Targets>) -> Snapshot {
    let mut s = Snapshot::new(SPEC_VERSION.into(), v, expires);
    s.meta.insert(
        "targets.json".into(),
        meta_of(targets.buffer(), targets.signed().signed.version),
    );
    s
}

fn timestamp_of(
    v: NonZeroU64,
    expires: jiff::Timestamp,
    snapshot: &SignedRole<Snapshot>,
) -> Timestamp {
    let mut t = Timestamp::new(SPEC_VERSION.into(), v, expires);
    t.meta.insert(
        "snapshot.json".into(),
        meta_of(snapshot.buffer(), snapshot.signed().signed.version),
    );
    t
}

fn plain_target(length: u64, sha256: &str) -> Target {
    Target {
        length,
        hashes: Hashes {
            sha256: decoded(sha256),
            _extra: HashMap::new(),
        },
        custom: HashMap::new(),
        _extra: HashMap::new(),
    }
}

/// A blob's target: TUF's length and sha256, and the snap's own sha3-384 bound in `custom`.
pub(crate) fn blob_target(length: u64, sha256: &str, sha3: &str) -> Target {
    let mut t = plain_target(length, sha256);
    t.custom
        .insert(SHA3_KEY.into(), Value::String(sha3.to_owned()));
    t
}

fn add_target(targets: &mut Targets, name: &str, target: Target) -> Result<()> {
    let n = TargetName::new(name)
        .map_err(|e| sign_err(format!("cannot sign {name}: {}", chain(&e))))?;
    targets.targets.insert(n, target);
    Ok(())
}

/// A file of the store, refused if it resolves outside it.
fn inside(store: &Path, rel: &str) -> Result<PathBuf> {
    let base = fs::canonicalize(store).map_err(Error::io("open", store))?;
    let p = fs::canonicalize(store.join(rel)).map_err(Error::io("open", store.join(rel)))?;
    if !p.starts_with(&base) {
        return Err(Error::OutsideStore {
            reason: format!("{rel} resolves to {}, outside the store", p.display()),
        });
    }
    Ok(p)
}

/// Length, sha256 and sha3-384 of a file, in one read.
fn hash_file(path: &Path) -> Result<(u64, String, String)> {
    let mut f = File::open(path).map_err(Error::io("open", path))?;
    let mut sha3 = Sha3_384::new();
    let mut sha256 = aws_lc_rs::digest::Context::new(&SHA256);
    let mut len = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read", path)(e)),
        };
        sha3.update(&buf[..n]);
        sha256.update(&buf[..n]);
        len += n as u64;
    }
    Ok((
        len,
        hex::encode(sha256.finish().as_ref()),
        hex::encode(sha3.finalize()),
    ))
}

/// The snaps of a store's `v1/snaps/` (not the hashed copies of a signed store).
fn unsigned_snaps(store: &Path) -> Result<Vec<String>> {
    let dir = store.join("v1/snaps");
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read", &dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(Error::io("read", &dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(snap) = name.strip_suffix(".json") {
            if refreshd_snap::validate_snap_name(snap).is_ok() {
                out.push(snap.to_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Refuses, before anything is made, a key directory that would be inside the store (or hold
/// it); neither needs to exist yet.
fn keys_outside(store: &Path, keys: &Path) -> Result<()> {
    let abs = |p: &Path| -> PathBuf {
        let p = std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
        // The deepest part that exists, resolved, with the rest as given.
        let mut base = p.clone();
        let mut rest = Vec::new();
        while !base.exists() {
            match (base.parent(), base.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_owned());
                    base = parent.to_owned();
                }
                _ => break,
            }
        }
        let mut real = fs::canonicalize(&base).unwrap_or(base);
        real.extend(rest.iter().rev());
        real
    };
    let (k, st) = (abs(keys), abs(store));
    if k.starts_with(&st) || st.starts_with(&k) {
        return Err(sign_err(format!(
            "the key directory {} is inside the store {} (or holds it): keys never go where the store is served from; keep them elsewhere",
            keys.display(),
            store.display()
        )));
    }
    Ok(())
}

/// The key directory of a new store: made 0700 (or empty already), never inside the store
/// nor holding it.
fn key_dir_for_new(store: &Path, keys: &Path) -> Result<PathBuf> {
    if !keys.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .create(keys)
            .map_err(Error::io("create", keys))?;
        fs::set_permissions(keys, fs::Permissions::from_mode(0o700))
            .map_err(Error::io("set the mode of", keys))?;
    }
    let keys = check_key_dir(store, keys)?;
    let held = fs::read_dir(&keys)
        .map_err(Error::io("read", &keys))?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().ends_with(KEY_SUFFIX));
    if held {
        return Err(sign_err(format!(
            "{} holds keys already: give an empty or new directory for a new store's keys",
            keys.display()
        )));
    }
    Ok(keys)
}

const KEY_SUFFIX: &str = ".pk8";

/// A key directory: a directory of its own, open to its owner only, outside the store.
fn check_key_dir(store: &Path, keys: &Path) -> Result<PathBuf> {
    let real = fs::canonicalize(keys).map_err(|e| {
        sign_err(format!("cannot use the key directory {}: {e}; give the directory refreshctl store init made (--keys)", keys.display()))
    })?;
    let md = fs::metadata(&real).map_err(Error::io("read", &real))?;
    if !md.is_dir() {
        return Err(sign_err(format!(
            "the key directory {} is not a directory",
            keys.display()
        )));
    }
    if md.mode() & 0o077 != 0 {
        return Err(sign_err(format!(
            "the key directory {} is open to others (mode {:o}): chmod 700 it, and consider its keys exposed",
            keys.display(),
            md.mode() & 0o777
        )));
    }
    if let Ok(store) = fs::canonicalize(store) {
        if real.starts_with(&store) || store.starts_with(&real) {
            return Err(sign_err(format!(
                "the key directory {} is inside the store {} (or holds it): keys never go where the store is served from; keep them elsewhere",
                keys.display(),
                store.display()
            )));
        }
    }
    Ok(real)
}

/// A new Ed25519 key for `role`, written `ROLE-KEYID16.pk8` (0600, never overwriting).
fn new_key(
    dir: &Path,
    role: RoleType,
    rng: &SystemRandom,
) -> Result<(Decoded<Hex>, tough::schema::key::Key, PathBuf)> {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(rng)
        .map_err(|e| sign_err(format!("cannot make a key: {e}")))?;
    let pair = parse_keypair(pkcs8.as_ref())
        .map_err(|e| sign_err(format!("cannot make a key: {}", chain(&e))))?;
    let key = pair.tuf_key();
    let id = key
        .key_id()
        .map_err(|e| sign_err(format!("cannot make a key: {}", chain(&e))))?;
    let hex_id = hex::encode(&*id);
    let path = dir.join(format!("{role}-{}{KEY_SUFFIX}", &hex_id[..16]));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(Error::io("create", &path))?;
    f.write_all(pkcs8.as_ref())
        .and_then(|()| f.sync_all())
        .map_err(Error::io("write", &path))?;
    sync_dir(dir)?;
    Ok((id, key, path))
}

/// Every key of a key directory (not `retired/`).
fn load_keys(dir: &Path) -> Result<Vec<Box<dyn KeySource>>> {
    let mut keys: Vec<Box<dyn KeySource>> = Vec::new();
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(Error::io("read", dir))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(KEY_SUFFIX))
        .collect();
    names.sort();
    for path in names {
        keys.push(Box::new(LocalKeySource { path }));
    }
    Ok(keys)
}

/// Moves the files of keys no longer used to `KEYDIR/retired/`.
fn retire(dir: &Path, ids: &[Decoded<Hex>]) -> Result<()> {
    let retired = dir.join("retired");
    let mut by_file = BTreeMap::new();
    for e in fs::read_dir(dir).map_err(Error::io("read", dir))?.flatten() {
        let p = e.path();
        if !p.to_string_lossy().ends_with(KEY_SUFFIX) {
            continue;
        }
        let Ok(bytes) = fs::read(&p) else { continue };
        let Ok(pair) = parse_keypair(&bytes) else {
            continue;
        };
        if let Ok(id) = pair.tuf_key().key_id() {
            by_file.insert(p, id);
        }
    }
    for (p, id) in by_file {
        if ids.contains(&id) {
            fs::DirBuilder::new()
                .recursive(true)
                .create(&retired)
                .map_err(Error::io("create", &retired))?;
            let to = retired.join(p.file_name().expect("a file"));
            fs::rename(&p, &to).map_err(Error::io("move", &p))?;
        }
    }
    sync_dir(dir)
}
