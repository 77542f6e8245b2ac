//! The attacks The Update Framework names, made on a signed store served by a real nginx on
//! 127.0.0.1 and met through a real refreshd and refreshctl: arbitrary software, rollback (also
//! across a restart), indefinite freeze, endless data, mix-and-match, fast-forward (and its
//! recovery by key rotation), a malicious mirror, a key under the threshold, a wrong root.
//!
//! Each refusal is one line from `refreshctl` naming what was refused; nothing changes on the
//! machine (the list of snaps, the current revision and what it runs, blobs, mounts, no partial
//! download, the app left running, no change made unless a download was refused); and the
//! honest store works again afterwards. The store is made, published to, re-signed and rotated
//! with the store crate's own functions (what `refreshctl store` runs); what an attacker serves
//! is forged here with `tough`, with the keys the attack says it holds. The client at library
//! level: store/tests/signed_store.rs.

use std::collections::HashMap;
use std::fs;
use std::num::NonZeroU64;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::SystemRandom;
use refreshd_store::{
    init, publish_signed, resign, rotate_key, Entry, Expiries, InitOptions, RoleKeys, RoleType,
};
use refreshd_tests::store::*;
use refreshd_tests::*;
use tough::editor::signed::SignedRole;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::decoded::Decoded;
use tough::schema::{
    Hashes, KeyHolder, Metafile, Role, Root as TufRoot, Signed, Snapshot, Target, Targets,
    Timestamp,
};
use tough::TargetName;

// The store crate's nginx harness, shared rather than copied.
#[path = "../../store/tests/common/nginx.rs"]
mod nginx;

/// A scratch root whose daemon is pinned to the root of a signed store beside it, served by
/// nginx. Fields drop in order: the app and the daemon before the root is unmounted and deleted.
struct World {
    app: Option<App>,
    daemon: Option<Daemon>,
    nginx: nginx::Nginx,
    store: PathBuf,
    keys: PathBuf,
    /// The store's `1.root.json`, as its operator hands it out.
    pinned: PathBuf,
    seed: u64,
    root: Root,
}

impl World {
    /// A signed store made with `opts`, served; no daemon yet. None (with a skip) when this
    /// machine cannot run the test.
    fn new(tag: &str, opts: &InitOptions) -> Option<World> {
        if !root_with("loop mounts and a daemon of its own", &[("nginx", "nginx")]) {
            return None;
        }
        let root = Root::new(tag);
        let store = root.aux("store");
        let keys = root.aux("keys");
        let made = init(&store, &keys, opts).unwrap();
        let pinned = root.aux("store-root.json");
        fs::copy(&made.root_file, &pinned).unwrap();
        let nginx = nginx::Nginx::start(&store, "").expect("nginx is installed");
        Some(World {
            app: None,
            daemon: None,
            nginx,
            store,
            keys,
            pinned,
            seed: 0,
            root,
        })
    }

    /// NAME 1.0 published, and installed by a daemon pinned to the store's root.
    fn installed(tag: &str, name: &str) -> Option<World> {
        let mut w = World::new(tag, &InitOptions::default())?;
        w.publish(name, "1.0");
        w.start();
        ok(&ctl(w.r(), &["install", name]));
        Some(w)
    }

    fn r(&self) -> &Path {
        self.root.path()
    }

    fn url(&self) -> String {
        self.nginx.url()
    }

    /// (Re)starts the daemon with these arguments.
    fn start_args(&mut self, args: &[&str]) {
        self.daemon = None;
        self.daemon = Some(Daemon::start_with(
            self.root.path(),
            DaemonOpts {
                extra_args: args.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            },
        ));
    }

    /// (Re)starts the daemon with the store at `url`, pinned to the store's root.
    fn start_at(&mut self, url: &str) {
        let pinned = self.pinned.clone();
        self.start_args(&[
            "--store",
            url,
            "--store-root",
            pinned.to_str().unwrap(),
            "--store-timeout",
            "2s",
        ]);
    }

    fn start(&mut self) {
        self.start_at(&self.url());
    }

    /// Publishes a build of NAME VERSION to `stable`, signed.
    fn publish(&mut self, name: &str, version: &str) -> Entry {
        self.publish_sized(name, version, 4096)
    }

    fn publish_sized(&mut self, name: &str, version: &str, payload: usize) -> Entry {
        self.seed += 1;
        let file = self.root.aux(&format!("{name}_{version}.snap"));
        build_snap(&file, name, version, payload, self.seed);
        publish_signed(
            &self.store,
            &file,
            "stable",
            Some(&self.keys),
            &mut |_, _| {},
        )
        .unwrap()
    }

    /// A build of NAME VERSION the store's operator never published (the attacker's): its
    /// index entry (size, sha3-384) and its bytes.
    fn evil(&mut self, name: &str, version: &str) -> (Entry, Vec<u8>) {
        self.seed += 1;
        let dir = self.root.aux(&format!("evil-{}", self.seed));
        fs::create_dir(&dir).unwrap();
        let file = self.root.aux(&format!("evil-{name}_{version}.snap"));
        build_snap(&file, name, version, 4096, 666 + self.seed);
        let e = refreshd_store::publish(&dir, &file, "stable").unwrap();
        let bytes = fs::read(dir.join(&e.path)).unwrap();
        (e, bytes)
    }

    /// Runs NAME.hold: every attack must leave it running.
    fn launch(&mut self, name: &str) {
        self.app = Some(App::launch(self.r(), &format!("{name}.hold")));
    }

    /// Lets the app exit (a refresh waits for it).
    fn release(&mut self) {
        if let Some(app) = self.app.take() {
            app.release();
        }
    }

    /// Asserts that refreshctl `args` (about snap `name`) is refused in one line holding every
    /// needle and that nothing changed: no change is made unless `download` (then the one made
    /// failed at its download), the machine shows the same picture, the app runs on. Returns
    /// the line.
    fn refused(&self, args: &[&str], name: &str, download: bool, needles: &[&str]) -> String {
        let before = picture(self.r(), name);
        let made = changes(self.r());
        let out = ctl(self.r(), args);
        let line = refused(&out, needles);
        println!("{args:?}: {line}");
        assert_eq!(out.status.code(), Some(1), "refreshctl's exit status");
        unchanged(self.r(), name, &before);
        if download {
            assert_eq!(changes(self.r()), made + 1);
            let failed = ctl_json(
                self.r(),
                &["tasks", &newest_change(self.r()).to_string(), "--json"],
            );
            assert_eq!(task(&failed, "download")["status"], "Error", "{failed}");
        } else {
            assert_eq!(changes(self.r()), made, "a change was made");
        }
        if let Some(app) = &self.app {
            assert!(alive(app.pid), "the app was stopped");
        }
        line
    }

    /// `refreshctl refresh NAME` goes through to `rev`, the honest store's.
    fn refreshes(&mut self, name: &str, rev: &str) {
        self.release();
        ok(&ctl(self.r(), &["refresh", name]));
        assert_eq!(hello(self.r(), name), format!("hello from {name} {rev}"));
    }

    /// Where the daemon keeps what it verified of the store pinned here.
    fn trust_dir(&self) -> PathBuf {
        let id = hex(digest(&SHA256, &fs::read(&self.pinned).unwrap()).as_ref());
        self.r()
            .join("var/lib/refreshd/store-trust")
            .join(&id[..16])
    }

    /// The version of `role` the daemon trusts now.
    fn trusted(&self, role: &str) -> u64 {
        let kept = fs::read(self.trust_dir().join(format!("{role}.json"))).unwrap();
        serde_json::from_slice::<Value>(&kept).unwrap()["signed"]["version"]
            .as_u64()
            .unwrap()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest(&SHA256, bytes).as_ref())
}

/// Every file of a store (the publishers' lock aside): a moment to serve again, or elsewhere.
#[derive(Clone)]
struct Files(Vec<(PathBuf, Vec<u8>)>);

impl Files {
    fn of(dir: &Path) -> Files {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            for e in fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(base, &p, out);
                } else if e.file_name() != refreshd_store::LOCK_FILE {
                    out.push((p.strip_prefix(base).unwrap().into(), fs::read(&p).unwrap()));
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        Files(out)
    }

    /// Makes `dir` hold exactly these files.
    fn put(&self, dir: &Path) {
        fs::create_dir_all(dir).unwrap();
        for e in fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_dir() {
                fs::remove_dir_all(e.path()).unwrap();
            } else if e.file_name() != refreshd_store::LOCK_FILE {
                fs::remove_file(e.path()).unwrap();
            }
        }
        for (rel, bytes) in &self.0 {
            let p = dir.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, bytes).unwrap();
        }
    }
}

/// A store's current metadata, as any client reads it: the newest root, the timestamp, and the
/// snapshot and targets it names.
struct Meta {
    root: TufRoot,
    timestamp: Timestamp,
    snapshot: Snapshot,
    targets: Targets,
}

fn read_signed<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    serde_json::from_slice::<Signed<T>>(&fs::read(path).unwrap())
        .unwrap()
        .signed
}

fn meta(store: &Path) -> Meta {
    let tuf = store.join("tuf");
    let timestamp: Timestamp = read_signed(&tuf.join("timestamp.json"));
    let snapshot: Snapshot = read_signed(&tuf.join(format!(
        "{}.snapshot.json",
        timestamp.meta["snapshot.json"].version
    )));
    let targets: Targets = read_signed(&tuf.join(format!(
        "{}.targets.json",
        snapshot.meta["targets.json"].version
    )));
    Meta {
        root: read_signed(&tuf.join("root.json")),
        timestamp,
        snapshot,
        targets,
    }
}

/// Where the store serves the current index of `name` (`v1/snaps/SHA256.NAME.json`).
fn hashed_index(store: &Path, name: &str) -> PathBuf {
    let t =
        &meta(store).targets.targets[&TargetName::new(format!("v1/snaps/{name}.json")).unwrap()];
    store.join(format!("v1/snaps/{}.{name}.json", hex(&t.hashes.sha256)))
}

/// The key files of `role` in a key directory (`ROLE-KEYID.pk8`).
fn key_files(dir: &Path, role: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(&format!("{role}-")) && n.ends_with(".pk8")
        })
        .collect();
    v.sort();
    v
}

/// `role` signed with whichever of `keys` (key files) `root` names for it, however few: a thief
/// signs with what it holds, and the client judges the threshold.
fn sign<T: Role + serde::Serialize>(role: T, root: &TufRoot, keys: &[PathBuf]) -> Vec<u8> {
    let mut holder = root.clone();
    for r in holder.roles.values_mut() {
        r.threshold = NonZeroU64::MIN;
    }
    let keys: Vec<Box<dyn KeySource>> = keys
        .iter()
        .map(|p| Box::new(LocalKeySource { path: p.clone() }) as Box<dyn KeySource>)
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let signed = rt
        .block_on(SignedRole::new(
            role,
            &KeyHolder::Root(holder),
            &keys,
            &SystemRandom::new(),
        ))
        .expect("sign");
    signed.buffer().clone()
}

/// How one role names another's file: length, sha256, version.
fn metafile(bytes: &[u8], version: NonZeroU64) -> Metafile {
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: Decoded::from(digest(&SHA256, bytes).as_ref().to_vec()),
            _extra: HashMap::new(),
        }),
        version,
        _extra: HashMap::new(),
    }
}

/// A target as the store signs one: length, sha256, and a blob's sha3-384 in `custom`.
fn target(bytes: &[u8], sha3: Option<&str>) -> Target {
    let mut custom = HashMap::new();
    if let Some(s) = sha3 {
        custom.insert("sha3-384".to_owned(), Value::String(s.to_owned()));
    }
    Target {
        length: bytes.len() as u64,
        hashes: Hashes {
            sha256: Decoded::from(digest(&SHA256, bytes).as_ref().to_vec()),
            _extra: HashMap::new(),
        },
        custom,
        _extra: HashMap::new(),
    }
}

fn next(v: NonZeroU64) -> NonZeroU64 {
    v.checked_add(1).unwrap()
}

/// `days` from now (negative: ago), in whole seconds as metadata carries it.
fn days_from_now(days: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + days * 86400).unwrap()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

fn write_json(p: &Path, v: &Value) {
    fs::write(p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

/// Pinned to the store's root (where refreshd looks by default), refreshd installs and
/// refreshes from the signed store; what it verified is kept where only root can read it.
#[test]
fn the_pinned_root_installs_from_the_signed_store_and_its_trust_is_root_only() {
    let Some(mut w) = World::new("signed-pinned", &InitOptions::default()) else {
        return;
    };
    w.publish("pinned", "1.0");
    let etc = w.r().join("etc/refreshd");
    fs::create_dir_all(&etc).unwrap();
    fs::copy(&w.pinned, etc.join("store-root.json")).unwrap();
    let url = w.url();
    w.start_args(&["--store", &url, "--store-timeout", "2s"]);
    ok(&ctl(w.r(), &["install", "pinned"]));
    assert_eq!(hello(w.r(), "pinned"), "hello from pinned 1");
    w.publish("pinned", "2.0");
    w.refreshes("pinned", "2");
    assert_eq!(
        w.trusted("timestamp"),
        meta(&w.store).timestamp.version.get()
    );

    let trust = w.r().join("var/lib/refreshd/store-trust");
    for dir in [trust.clone(), w.trust_dir()] {
        let md = fs::metadata(&dir).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o700, "{}", dir.display());
        assert_eq!((md.uid(), md.gid()), (0, 0), "{}", dir.display());
    }
    let mut kept = Vec::new();
    for e in fs::read_dir(w.trust_dir()).unwrap().flatten() {
        let md = e.metadata().unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(md.is_file(), "{name} left in the trust directory");
        assert_eq!(md.permissions().mode() & 0o7777, 0o600, "{name}");
        assert_eq!(md.uid(), 0, "{name}");
        kept.push(name);
    }
    kept.sort();
    assert_eq!(
        kept,
        [
            "latest_known_time.json",
            "root.json",
            "snapshot.json",
            "targets.json",
            "timestamp.json"
        ]
    );
}

/// Arbitrary software: a blob replaced and its index entry rewritten to match (sha3-384 and
/// size) is refused by the index's signed length and sha256; with only the unsigned index
/// rewritten the signed one is read, and the blob fails its signed sha3-384; another store,
/// signed with keys of its own (its own root too), served at the store's address is refused at
/// its first signed file, for a refresh and an install alike.
#[test]
fn arbitrary_software_without_the_keys_is_refused() {
    let Some(mut w) = World::installed("signed-arbitrary", "arb") else {
        return;
    };
    w.launch("arb");
    let e2 = w.publish("arb", "2.0");
    let honest = Files::of(&w.store);
    let (evil, evil_bytes) = w.evil("arb", "6.6.6");
    let rewrite = |p: &Path| {
        let mut v = read_json(p);
        v["revisions"]["2"]["sha3-384"] = evil.sha3_384.clone().into();
        v["revisions"]["2"]["size"] = evil.size.into();
        write_json(p, &v);
    };
    let blob = w.store.join(&e2.path);
    let plain = w.store.join("v1/snaps/arb.json");

    // The blob and the index entry replaced together, at both addresses of the index.
    fs::write(&blob, &evil_bytes).unwrap();
    rewrite(&plain);
    rewrite(&hashed_index(&w.store, "arb"));
    w.refused(
        &["refresh", "arb"],
        "arb",
        false,
        &[
            &format!("refused what the store {} serves", w.url()),
            "the index of arb",
            "nothing was installed or changed",
        ],
    );
    honest.put(&w.store);

    // Only the unsigned index rewritten (what an unsigned client would read): it is never
    // asked for, and the blob fails the sha3-384 the signed index gives.
    fs::write(&blob, &evil_bytes).unwrap();
    rewrite(&plain);
    w.refused(
        &["refresh", "arb"],
        "arb",
        true,
        &["arb revision 2", "corrupt or was tampered with"],
    );
    assert!(
        !w.nginx.access_log().contains("GET /v1/snaps/arb.json "),
        "the unsigned index was read:\n{}",
        w.nginx.access_log()
    );
    honest.put(&w.store);

    // Someone's own signed store, root and all, in place of this one.
    let other = w.root.aux("other-store");
    init(&other, &w.root.aux("other-keys"), &InitOptions::default()).unwrap();
    for (name, version) in [("arb", "1.0"), ("arb", "6.6.6"), ("arbnew", "1.0")] {
        let file = w.root.aux(&format!("other-{name}_{version}.snap"));
        build_snap(&file, name, version, 4096, 99);
        publish_signed(
            &other,
            &file,
            "stable",
            Some(&w.root.aux("other-keys")),
            &mut |_, _| {},
        )
        .unwrap();
    }
    Files::of(&other).put(&w.store);
    let forged = [
        "its timestamp metadata is not signed by enough of the keys the trusted root names",
        "pin that store's root",
    ];
    w.refused(&["refresh", "arb"], "arb", false, &forged);
    w.refused(&["install", "arbnew"], "arbnew", false, &forged);
    honest.put(&w.store);

    w.refreshes("arb", "2");
}

/// Rollback: the store's older moment served again (its channel pointed back at revision 1) is
/// refused; after a restart of refreshd too, since what it trusted was kept.
#[test]
fn rollback_is_refused_also_after_a_restart() {
    let Some(mut w) = World::installed("signed-rollback", "roll") else {
        return;
    };
    let old = Files::of(&w.store);
    let old_version = meta(&w.store).timestamp.version;
    assert_eq!(
        read_json(&hashed_index(&w.store, "roll"))["channels"]["stable"],
        1
    );
    w.publish("roll", "2.0");
    w.refreshes("roll", "2");
    w.launch("roll");
    let honest = Files::of(&w.store);
    let trusted = w.trusted("timestamp");
    assert!(trusted > old_version.get());

    // The moment before revision 2, served again.
    old.put(&w.store);
    let said = format!(
        "its timestamp metadata is version {old_version}, older than version {trusted} already trusted here (a rollback"
    );
    let needles = [said.as_str(), "serve its current signed metadata"];
    w.refused(&["refresh", "roll"], "roll", false, &needles);

    // A restart on the same root, then the old moment again.
    honest.put(&w.store);
    w.start();
    old.put(&w.store);
    w.refused(&["refresh", "roll"], "roll", false, &needles);
    assert_eq!(w.trusted("timestamp"), trusted);

    honest.put(&w.store);
    w.publish("roll", "3.0");
    w.refreshes("roll", "3");
}

/// Indefinite freeze: a timestamp (validly signed) that expired three hours ago is refused,
/// naming the role and since when; so is each other role signed to expire at once (its next
/// look-up is already later). The operator's re-signing puts the store right each time.
#[test]
fn expired_metadata_is_refused_naming_the_role_and_since_when() {
    let Some(mut w) = World::installed("signed-freeze", "freeze") else {
        return;
    };
    w.launch("freeze");
    w.publish("freeze", "2.0");

    // A timestamp signed by its own key, three hours past its expiry: what a mirror or cache
    // that stopped updating goes on serving.
    let m = meta(&w.store);
    let expired =
        jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - 3 * 3600).unwrap();
    let mut ts = m.timestamp.clone();
    ts.version = next(ts.version);
    ts.expires = expired;
    fs::write(
        w.store.join("tuf/timestamp.json"),
        sign(ts, &m.root, &key_files(&w.keys, "timestamp")),
    )
    .unwrap();
    w.refused(
        &["refresh", "freeze"],
        "freeze",
        false,
        &[
            &format!("its timestamp metadata expired at {expired} (3 h ago)"),
            "freeze attack",
            "refreshctl store resign",
        ],
    );
    resign(&w.store, &w.keys, &[], &Expiries::default()).unwrap();

    // The store's own signing, with no lifetime: expired by the next look-up, no wait.
    for role in [RoleType::Snapshot, RoleType::Targets, RoleType::Root] {
        let mut now = Expiries::default();
        match role {
            RoleType::Snapshot => now.snapshot = Duration::ZERO,
            RoleType::Targets => now.targets = Duration::ZERO,
            _ => now.root = Duration::ZERO,
        }
        resign(&w.store, &w.keys, &[role], &now).unwrap();
        let m = meta(&w.store);
        let at = match role {
            RoleType::Snapshot => m.snapshot.expires,
            RoleType::Targets => m.targets.expires,
            _ => m.root.expires,
        };
        w.refused(
            &["refresh", "freeze"],
            "freeze",
            false,
            &[
                &format!("its {role} metadata expired at {at}"),
                "refreshctl store resign",
            ],
        );
        resign(&w.store, &w.keys, &[role], &Expiries::default()).unwrap();
    }
    w.refreshes("freeze", "2");
}

/// Endless data: a timestamp over the size a timestamp may have (and one over what is read of
/// any metadata file), an index longer than its signed length, and a blob longer than its
/// signed length are refused; the blob no further than its signed length, since the blob
/// directory is a tmpfs with room for that and a page or two (writing more would fail ENOSPC,
/// with another message).
#[test]
fn endless_data_is_refused_at_the_signed_length() {
    let Some(mut w) = World::new("signed-endless", &InitOptions::default()) else {
        return;
    };
    w.publish("endless", "1.0");
    let blobs = w.r().join("var/lib/refreshd/blobs");
    fs::create_dir_all(&blobs).unwrap();
    let mount = |opts: &str| {
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(&blobs)
            .status()
            .unwrap()
            .success()
    };
    if !mount("size=64m,mode=0700") {
        return skip("cannot mount a tmpfs");
    }
    w.start();
    ok(&ctl(w.r(), &["install", "endless"]));
    w.launch("endless");
    let e2 = w.publish_sized("endless", "2.0", 512 * 1024);
    let used = {
        let s = nix::sys::statvfs::statvfs(&blobs).unwrap();
        (s.blocks() - s.blocks_free()) * s.fragment_size()
    };
    let st = std::process::Command::new("mount")
        .args(["-o", &format!("remount,size={}", used + e2.size + 8192)])
        .arg(&blobs)
        .status()
        .unwrap();
    assert!(st.success());
    let honest = Files::of(&w.store);

    // The signed timestamp padded with whitespace: still valid JSON, validly signed.
    let ts_path = w.store.join("tuf/timestamp.json");
    let ts = fs::read(&ts_path).unwrap();
    for (pad, said) in [
        (2 << 20, "larger than the 1048576 bytes allowed"),
        (20 << 20, "larger than 16777216 bytes"),
    ] {
        let mut huge = ts.clone();
        huge.resize(ts.len() + pad, b' ');
        fs::write(&ts_path, &huge).unwrap();
        w.refused(
            &["refresh", "endless"],
            "endless",
            false,
            &["tuf/timestamp.json", said, "endless data"],
        );
    }
    honest.put(&w.store);

    // The index with a megabyte of whitespace after it: read no further than its signed length.
    let index = hashed_index(&w.store, "endless");
    let signed_len = fs::metadata(&index).unwrap().len();
    let mut longer = fs::read(&index).unwrap();
    longer.resize(longer.len() + (1 << 20), b' ');
    fs::write(&index, &longer).unwrap();
    w.refused(
        &["refresh", "endless"],
        "endless",
        false,
        &[
            "the index of endless",
            &format!("larger than the {signed_len} bytes signed for it"),
        ],
    );
    honest.put(&w.store);

    // The blob with 4 MiB more, served by nginx (with its true length).
    let blob = w.store.join(&e2.path);
    let mut longer = fs::read(&blob).unwrap();
    longer.extend(noise(4 << 20, 7));
    fs::write(&blob, &longer).unwrap();
    w.refused(
        &["refresh", "endless"],
        "endless",
        true,
        &[
            "endless revision 2",
            "larger than the",
            &e2.size.to_string(),
        ],
    );
    honest.put(&w.store);

    w.refreshes("endless", "2");
}

/// Mix-and-match: the current timestamp served with the snapshot of an older moment under the
/// name it signs, or the current snapshot with older targets, or the current targets with an
/// index of another moment: each refused.
#[test]
fn metadata_of_different_moments_mixed_is_refused() {
    let Some(mut w) = World::installed("signed-mix", "mix") else {
        return;
    };
    w.launch("mix");
    let old = meta(&w.store);
    let old_index = fs::read(hashed_index(&w.store, "mix")).unwrap();
    w.publish("mix", "2.0");
    let now = meta(&w.store);
    let honest = Files::of(&w.store);
    let tuf = w.store.join("tuf");

    for role in ["snapshot", "targets"] {
        let (was, is) = match role {
            "snapshot" => (
                old.timestamp.meta["snapshot.json"].version,
                now.timestamp.meta["snapshot.json"].version,
            ),
            _ => (
                old.snapshot.meta["targets.json"].version,
                now.snapshot.meta["targets.json"].version,
            ),
        };
        let file = format!("tuf/{is}.{role}.json");
        fs::copy(tuf.join(format!("{was}.{role}.json")), w.store.join(&file)).unwrap();
        w.refused(
            &["refresh", "mix"],
            "mix",
            false,
            &[&file, "different moments"],
        );
        honest.put(&w.store);
    }

    fs::write(hashed_index(&w.store, "mix"), &old_index).unwrap();
    w.refused(
        &["refresh", "mix"],
        "mix",
        false,
        &[
            "the index of mix",
            "does not match its signed length and sha256",
            "another moment",
        ],
    );
    honest.put(&w.store);

    w.refreshes("mix", "2");
}

/// Fast-forward: a thief of the online timestamp key serves timestamp version 1000, which is
/// validly signed and so taken; the honest store's lower version is then refused as a rollback
/// (the message says to rotate the key) until the operator rotates the timestamp key: the new
/// root makes refreshd forget version 1000, and the stolen key signs nothing any more.
#[test]
fn a_fast_forward_is_recovered_by_rotating_the_stolen_key() {
    let Some(mut w) = World::installed("signed-ff", "ff") else {
        return;
    };
    w.launch("ff");
    let honest = Files::of(&w.store);
    let stolen = w.root.aux("stolen");
    fs::create_dir(&stolen).unwrap();
    let stolen: Vec<PathBuf> = key_files(&w.keys, "timestamp")
        .into_iter()
        .map(|k| {
            let to = stolen.join(k.file_name().unwrap());
            fs::copy(&k, &to).unwrap();
            to
        })
        .collect();
    let before = meta(&w.store);
    let forge = |store: &Path, version: u64| {
        let mut ts = before.timestamp.clone();
        ts.version = NonZeroU64::new(version).unwrap();
        ts.expires = days_from_now(7);
        fs::write(
            store.join("tuf/timestamp.json"),
            sign(ts, &before.root, &stolen),
        )
        .unwrap();
    };

    // The thief's timestamp, version 1000: validly signed, so taken.
    forge(&w.store, 1000);
    let out = ctl(w.r(), &["refresh", "ff"]);
    ok(&out);
    assert!(
        text(&out.stdout).contains("has no updates available"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(w.trusted("timestamp"), 1000);

    // The honest store, one publish on: its version is far below 1000.
    honest.put(&w.store);
    w.publish("ff", "2.0");
    let version = meta(&w.store).timestamp.version;
    w.refused(
        &["refresh", "ff"],
        "ff",
        false,
        &[
            &format!("its timestamp metadata is version {version}, older than version 1000 already trusted here"),
            "refreshctl store rotate-key timestamp",
        ],
    );

    // The operator's recovery: new timestamp keys, in a new root the daemon walks to.
    rotate_key(&w.store, &w.keys, RoleType::Timestamp, &Expiries::default()).unwrap();
    w.refreshes("ff", "2");
    let now = meta(&w.store).timestamp.version.get();
    assert!(now < 1000);
    assert_eq!(w.trusted("timestamp"), now);

    // The stolen key signs nothing now.
    let honest = Files::of(&w.store);
    forge(&w.store, 2000);
    w.refused(
        &["refresh", "ff"],
        "ff",
        false,
        &["its timestamp metadata is not signed by enough of the keys the trusted root names"],
    );
    honest.put(&w.store);
    ok(&ctl(w.r(), &["refresh", "ff"]));
}

/// A malicious mirror used as the store's address: a second nginx serving altered files (a
/// build of its own as revision 2, its index, and every metadata file up to the timestamp
/// rewritten to name them, with the signatures they had), then serving a stale copy of the
/// store (an older moment, validly signed): both refused; the store itself works again after.
#[test]
fn a_malicious_mirror_is_refused() {
    let Some(mut w) = World::installed("signed-mirror", "mirror") else {
        return;
    };
    let stale = Files::of(&w.store);
    w.publish("mirror", "2.0");
    w.refreshes("mirror", "2");
    w.launch("mirror");
    let honest = Files::of(&w.store);
    let dir = w.root.aux("mirror");
    honest.put(&dir);
    let mirror = nginx::Nginx::start(&dir, "").expect("nginx is installed");

    // The altered copy.
    let (evil, evil_bytes) = w.evil("mirror", "2.0");
    let m = meta(&dir);
    fs::write(dir.join("blobs/mirror_2.snap"), &evil_bytes).unwrap();
    let mut index = read_json(&hashed_index(&dir, "mirror"));
    index["revisions"]["2"]["sha3-384"] = evil.sha3_384.clone().into();
    index["revisions"]["2"]["size"] = evil.size.into();
    let index = serde_json::to_vec(&index).unwrap();
    fs::write(
        dir.join(format!("v1/snaps/{}.mirror.json", sha256_hex(&index))),
        &index,
    )
    .unwrap();
    let rehash = |v: &mut Value, bytes: &[u8]| {
        v["length"] = bytes.len().into();
        v["hashes"]["sha256"] = sha256_hex(bytes).into();
    };
    let tuf = dir.join("tuf");
    let targets_file = tuf.join(format!("{}.targets.json", m.targets.version));
    let mut targets = read_json(&targets_file);
    rehash(
        &mut targets["signed"]["targets"]["v1/snaps/mirror.json"],
        &index,
    );
    rehash(
        &mut targets["signed"]["targets"]["blobs/mirror_2.snap"],
        &evil_bytes,
    );
    targets["signed"]["targets"]["blobs/mirror_2.snap"]["custom"]["sha3-384"] =
        evil.sha3_384.clone().into();
    write_json(&targets_file, &targets);
    let snapshot_file = tuf.join(format!("{}.snapshot.json", m.snapshot.version));
    let mut snapshot = read_json(&snapshot_file);
    rehash(
        &mut snapshot["signed"]["meta"]["targets.json"],
        &fs::read(&targets_file).unwrap(),
    );
    write_json(&snapshot_file, &snapshot);
    let mut timestamp = read_json(&tuf.join("timestamp.json"));
    rehash(
        &mut timestamp["signed"]["meta"]["snapshot.json"],
        &fs::read(&snapshot_file).unwrap(),
    );
    write_json(&tuf.join("timestamp.json"), &timestamp);

    w.start_at(&mirror.url());
    w.refused(
        &["refresh", "mirror"],
        "mirror",
        false,
        &[
            &format!("refused what the store {} serves", mirror.url()),
            "its timestamp metadata is not signed by enough of the keys the trusted root names",
        ],
    );

    // A mirror that stopped syncing before revision 2: validly signed, older than trusted.
    stale.put(&dir);
    w.refused(
        &["refresh", "mirror"],
        "mirror",
        false,
        &["its timestamp metadata is version", "(a rollback"],
    );

    // The store itself again.
    w.start();
    w.publish("mirror", "3.0");
    w.refreshes("mirror", "3");
}

/// A compromised key under the threshold: in a store whose targets need 2 of 2 keys, targets
/// signed by one of them (with the online keys for snapshot and timestamp, as a thief of the
/// publisher's machine would hold) are refused; the operator's publish with both works.
#[test]
fn targets_signed_under_the_threshold_are_refused() {
    let opts = InitOptions {
        targets: RoleKeys {
            keys: 2,
            threshold: 2,
        },
        ..InitOptions::default()
    };
    let Some(mut w) = World::new("signed-threshold", &opts) else {
        return;
    };
    w.publish("thresh", "1.0");
    w.start();
    ok(&ctl(w.r(), &["install", "thresh"]));
    w.launch("thresh");
    let honest = Files::of(&w.store);
    let targets_keys = key_files(&w.keys, "targets");
    assert_eq!(targets_keys.len(), 2);

    // Revision 2 of the thief's making, on stable.
    let (evil, evil_bytes) = w.evil("thresh", "2.0");
    let m = meta(&w.store);
    let mut index = read_json(&hashed_index(&w.store, "thresh"));
    index["revisions"]["2"] = serde_json::json!({
        "version": "2.0",
        "sha3-384": evil.sha3_384,
        "size": evil.size,
        "path": "blobs/thresh_2.snap",
    });
    index["channels"]["stable"] = 2.into();
    let index = serde_json::to_vec(&index).unwrap();
    fs::write(
        w.store
            .join(format!("v1/snaps/{}.thresh.json", sha256_hex(&index))),
        &index,
    )
    .unwrap();
    fs::write(w.store.join("blobs/thresh_2.snap"), &evil_bytes).unwrap();
    let mut targets = m.targets.clone();
    targets.version = next(targets.version);
    targets.targets.insert(
        TargetName::new("v1/snaps/thresh.json").unwrap(),
        target(&index, None),
    );
    targets.targets.insert(
        TargetName::new("blobs/thresh_2.snap").unwrap(),
        target(&evil_bytes, Some(&evil.sha3_384)),
    );
    // One of the two targets keys; the snapshot and timestamp keys for the rest.
    let tv = targets.version;
    let targets = sign(targets, &m.root, &targets_keys[..1]);
    let tuf = w.store.join("tuf");
    fs::write(tuf.join(format!("{tv}.targets.json")), &targets).unwrap();
    let mut snapshot = m.snapshot.clone();
    snapshot.version = next(snapshot.version);
    snapshot
        .meta
        .insert("targets.json".into(), metafile(&targets, tv));
    let sv = snapshot.version;
    let snapshot = sign(snapshot, &m.root, &key_files(&w.keys, "snapshot"));
    fs::write(tuf.join(format!("{sv}.snapshot.json")), &snapshot).unwrap();
    let mut timestamp = m.timestamp.clone();
    timestamp.version = next(timestamp.version);
    timestamp
        .meta
        .insert("snapshot.json".into(), metafile(&snapshot, sv));
    fs::write(
        tuf.join("timestamp.json"),
        sign(timestamp, &m.root, &key_files(&w.keys, "timestamp")),
    )
    .unwrap();

    w.refused(
        &["refresh", "thresh"],
        "thresh",
        false,
        &[
            "its targets metadata is not signed by enough of the keys the trusted root names",
            "threshold of 2 not met",
        ],
    );
    honest.put(&w.store);
    w.publish("thresh", "2.0");
    w.refreshes("thresh", "2");
}

/// A wrong root: refreshd pinned to another store's root refuses this store (an install
/// installs nothing) and, pinned to its own, installs. With no root pinned and no
/// `--insecure-unsigned-store`, or a pinned root that is not one, refreshd does not start, in
/// one line saying what to do.
#[test]
fn another_stores_root_is_refused_and_no_root_does_not_start() {
    let Some(mut w) = World::new("signed-wrong-root", &InitOptions::default()) else {
        return;
    };
    w.publish("rooted", "1.0");
    let other = init(
        &w.root.aux("other-store"),
        &w.root.aux("other-keys"),
        &InitOptions::default(),
    )
    .unwrap();
    // Pinned to another store's root.
    let url = w.url();
    w.start_args(&[
        "--store",
        &url,
        "--store-root",
        other.root_file.to_str().unwrap(),
        "--store-timeout",
        "2s",
    ]);
    w.refused(
        &["install", "rooted"],
        "rooted",
        false,
        &[
            "is not signed by enough of the keys the trusted root names",
            "pin that store's root",
        ],
    );
    assert!(!w.r().join("snap/rooted").exists());
    // Pinned to its own.
    w.start();
    ok(&ctl(w.r(), &["install", "rooted"]));
    assert_eq!(hello(w.r(), "rooted"), "hello from rooted 1");
    w.daemon = None;

    // No root pinned, a missing one, one that is no root.
    let default_root = w.r().join("etc/refreshd/store-root.json");
    let not_a_root = w.store.join("tuf/timestamp.json");
    let cases: [(Vec<&str>, Vec<String>); 3] = [
        (
            vec!["--store", &url],
            vec![
                format!(
                    "the store {url} is not trusted: no pinned store root at {}",
                    default_root.display()
                ),
                "--insecure-unsigned-store".into(),
            ],
        ),
        (
            vec!["--store", &url, "--store-root", "/nonexistent/root.json"],
            vec!["cannot use the pinned store root /nonexistent/root.json".into()],
        ),
        (
            vec![
                "--store",
                &url,
                "--store-root",
                not_a_root.to_str().unwrap(),
            ],
            vec![format!(
                "cannot use the pinned store root {}: not TUF root metadata",
                not_a_root.display()
            )],
        ),
    ];
    for (args, needles) in cases {
        let out = Daemon::refused_start(
            w.r(),
            DaemonOpts {
                extra_args: args.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            },
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let said: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("refreshd: "))
            .collect();
        assert_eq!(said.len(), 1, "one line: {err}");
        assert!(err.ends_with(&format!("{}\n", said[0])), "last: {err}");
        for n in &needles {
            assert!(said[0].contains(n.as_str()), "{n:?} not in: {}", said[0]);
        }
        println!("{args:?}: {}", said[0]);
    }
    assert_eq!(hello(w.r(), "rooted"), "hello from rooted 1");
}
