//! A signed store at the library's level: made, published to, re-signed, rotated and migrated
//! with the repository functions, read over real nginx through the pinned root. The attacks
//! through refreshd, as a user meets them, are in tests/tests/signed_store.rs.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::nginx::{store_root, Nginx};
use common::*;
use refreshd_store::{
    init, migrate, publish, publish_signed, resign, rotate_key, Error, Expiries, InitOptions,
    RoleType, Store, StoreConfig, TrustConfig,
};

struct Signed {
    _tmp: tempfile::TempDir,
    store: PathBuf,
    keys: PathBuf,
    root: PathBuf,
    trust: PathBuf,
}

fn signed_store(tag: &str) -> Signed {
    let tmp = scratch(tag);
    let store = store_root(tmp.path());
    let keys = tmp.path().join("keys");
    let made = init(&store, &keys, &InitOptions::default()).unwrap();
    let root = tmp.path().join("pinned-root.json");
    fs::copy(&made.root_file, &root).unwrap();
    let trust = tmp.path().join("trust");
    Signed {
        store,
        keys,
        root,
        trust,
        _tmp: tmp,
    }
}

impl Signed {
    fn config(&self) -> StoreConfig {
        StoreConfig {
            trust: Some(TrustConfig {
                root: self.root.clone(),
                state_dir: self.trust.clone(),
            }),
            ..test_config()
        }
    }

    fn open(&self, url: &str) -> Store {
        Store::open_with(url, self.config()).unwrap()
    }

    fn publish(&self, snap: &Path) -> refreshd_store::Entry {
        publish_signed(
            &self.store,
            snap,
            "stable",
            Some(&self.keys),
            &mut |_, _| {},
        )
        .unwrap()
    }
}

fn refused(e: Error, what: &str) {
    let msg = e.to_string();
    assert!(matches!(e, Error::Untrusted { .. }), "{msg}");
    assert!(msg.contains(what), "{what:?} not in: {msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn init_publish_two_revisions_and_fetch_over_http() {
    if !have_squashfs_tools() {
        return skip("squashfs-tools not installed");
    }
    let s = signed_store("signed-http");
    let mode = fs::metadata(&s.keys).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(
        !walk(&s.store).iter().any(|p| p.ends_with(".pk8")),
        "a key in the store"
    );
    let v1 = make_snap(s._tmp.path(), "hello", "1.0", 50_000);
    let v2 = make_snap(s._tmp.path(), "hello", "1.1", 60_000);
    let e1 = s.publish(&v1);
    let Some(nginx) = Nginx::start(&s.store, "") else {
        return skip("nginx not installed");
    };
    let store = s.open(&nginx.url());
    assert!(store.is_signed());
    assert_eq!(
        store.snap("hello").unwrap().unwrap().channel("stable"),
        Some(&e1)
    );
    let e2 = s.publish(&v2);
    let got = store.snap("hello").unwrap().unwrap();
    assert_eq!(got.channel("stable"), Some(&e2));
    assert!(store.snap("absent").unwrap().is_none());
    let dest = s._tmp.path().join("got.snap");
    store.fetch(&e2, &dest, &mut |_, _| {}, &never).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), fs::read(&v2).unwrap());

    // Publishing without keys, or with keys to an unsigned store, is refused up front.
    let e = publish(&s.store, &v1, "stable").unwrap_err();
    assert!(e.to_string().contains("--keys"), "{e}");
}

#[test]
fn tampering_rollback_and_expiry_are_refused_and_trust_survives_reopening() {
    if !have_squashfs_tools() {
        return skip("squashfs-tools not installed");
    }
    let s = signed_store("signed-attacks");
    let url = s.store.to_str().unwrap().to_owned();
    let v1 = make_snap(s._tmp.path(), "hello", "1.0", 50_000);
    s.publish(&v1);
    let old_meta = copy_meta(&s.store);
    let v2 = make_snap(s._tmp.path(), "hello", "1.1", 60_000);
    let e2 = s.publish(&v2);
    assert_eq!(
        s.open(&url).snap("hello").unwrap().unwrap().latest(),
        Some(&e2)
    );

    // Rollback: the older moment served again, to a client opened afresh (trust was kept).
    let new_meta = copy_meta(&s.store);
    restore_meta(&s.store, &old_meta);
    refused(s.open(&url).snap("hello").unwrap_err(), "rollback");
    restore_meta(&s.store, &new_meta);
    assert!(s.open(&url).snap("hello").unwrap().is_some());

    // An index rewritten to match a replaced blob: its signed hash gives it away.
    let hashed = fs::read_dir(s.store.join("v1/snaps"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().len() > 70)
        .collect::<Vec<_>>();
    let saved: Vec<_> = hashed
        .iter()
        .map(|p| (p.clone(), fs::read(p).unwrap()))
        .collect();
    for p in &hashed {
        let text = fs::read_to_string(p)
            .unwrap()
            .replace(&e2.sha3_384, &"0".repeat(96));
        fs::write(p, text).unwrap();
    }
    refused(
        s.open(&url).snap("hello").unwrap_err(),
        "does not match its signed",
    );
    for (p, b) in saved {
        fs::write(p, b).unwrap();
    }

    // Expiry: a timestamp signed to expire at once (metadata times are whole seconds, so it
    // is already past) is refused, saying which role and when.
    let now = Expiries {
        timestamp: std::time::Duration::ZERO,
        ..Expiries::default()
    };
    resign(&s.store, &s.keys, &[], &now).unwrap();
    let e = s.open(&url).snap("hello").unwrap_err();
    refused(e, "timestamp metadata expired at");
    resign(&s.store, &s.keys, &[], &Expiries::default()).unwrap();
    assert!(s.open(&url).snap("hello").unwrap().is_some());

    // A rotated timestamp key: the client walks to the new root; a timestamp signed with the
    // retired key is refused from then on.
    let old_keys = s._tmp.path().join("old-keys");
    copy_dir(&s.keys, &old_keys);
    rotate_key(&s.store, &s.keys, RoleType::Timestamp, &Expiries::default()).unwrap();
    assert!(s.open(&url).snap("hello").unwrap().is_some());
    assert!(s.keys.join("retired").read_dir().unwrap().count() == 1);
    let rotated = copy_meta(&s.store);
    // The retired key signs a timestamp over the store as it was before the rotation.
    let stale = s._tmp.path().join("stale");
    fs::create_dir(&stale).unwrap();
    copy_tree(&s.store, &stale);
    restore_meta(&stale, &new_meta);
    resign(&stale, &old_keys, &[], &Expiries::default()).unwrap();
    let mut forged = rotated.clone();
    let ts = fs::read(stale.join("tuf/timestamp.json")).unwrap();
    forged
        .iter_mut()
        .find(|(n, _)| n == "timestamp.json")
        .unwrap()
        .1 = ts;
    restore_meta(&s.store, &forged);
    refused(
        s.open(&url).snap("hello").unwrap_err(),
        "not signed by enough of the keys",
    );
    restore_meta(&s.store, &rotated);
    assert!(s.open(&url).snap("hello").unwrap().is_some());
}

#[test]
fn the_publisher_refuses_what_would_weaken_the_store() {
    if !have_squashfs_tools() {
        return skip("squashfs-tools not installed");
    }
    let tmp = scratch("publisher");
    let store = store_root(tmp.path());
    // Keys inside the store, or a key directory open to others: refused.
    let e = init(&store, &store.join("keys"), &InitOptions::default()).unwrap_err();
    assert!(e.to_string().contains("inside the store"), "{e}");
    assert!(!store.join("keys").join("root").exists());
    let open_keys = tmp.path().join("open-keys");
    fs::create_dir(&open_keys).unwrap();
    fs::set_permissions(&open_keys, fs::Permissions::from_mode(0o755)).unwrap();
    let e = init(&store, &open_keys, &InitOptions::default()).unwrap_err();
    assert!(e.to_string().contains("chmod 700"), "{e}");
    assert!(!store.join("tuf").exists());

    // A threshold of two targets keys: a directory with one of them cannot publish.
    let opts = InitOptions {
        targets: refreshd_store::RoleKeys {
            keys: 2,
            threshold: 2,
        },
        ..InitOptions::default()
    };
    let keys = tmp.path().join("keys");
    init(&store, &keys, &opts).unwrap();
    let e = init(&store, &tmp.path().join("keys2"), &opts).unwrap_err();
    assert!(e.to_string().contains("signed store already"), "{e}");
    let one = tmp.path().join("one-key");
    copy_dir(&keys, &one);
    let targets: Vec<_> = fs::read_dir(&one)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("targets-"))
        .collect();
    assert_eq!(targets.len(), 2);
    fs::remove_file(targets[0].path()).unwrap();
    let before = copy_meta(&store);
    let snap = make_snap(tmp.path(), "hello", "1.0", 20_000);
    let e = publish_signed(&store, &snap, "stable", Some(&one), &mut |_, _| {}).unwrap_err();
    assert!(
        e.to_string().contains("holds 1 of the 2 targets key(s)"),
        "{e}"
    );
    assert_eq!(copy_meta(&store), before, "nothing is written");
    assert!(!store.join("v1/snaps/hello.json").exists());

    // Metadata in the store that its keys did not sign is not signed over.
    publish_signed(&store, &snap, "stable", Some(&keys), &mut |_, _| {}).unwrap();
    let ts = store.join("tuf/timestamp.json");
    let text = fs::read_to_string(&ts)
        .unwrap()
        .replace("\"spec_version\": \"1.0.0\"", "\"spec_version\": \"1.0.1\"");
    fs::write(&ts, text).unwrap();
    let e = resign(&store, &keys, &[], &Expiries::default()).unwrap_err();
    assert!(e.to_string().contains("tampered with"), "{e}");
}

#[test]
fn an_unsigned_store_is_migrated_by_one_command() {
    if !have_squashfs_tools() {
        return skip("squashfs-tools not installed");
    }
    let tmp = scratch("migrate");
    let store = store_root(tmp.path());
    let v1 = make_snap(tmp.path(), "hello", "1.0", 50_000);
    let e1 = publish(&store, &v1, "stable").unwrap();
    let keys = tmp.path().join("keys");
    let e = init(&store, &keys, &InitOptions::default()).unwrap_err();
    assert!(e.to_string().contains("refreshctl store migrate"), "{e}");
    let made = migrate(&store, &keys, &InitOptions::default()).unwrap();
    assert_eq!(made.snaps, vec!["hello".to_owned()]);
    let s = Signed {
        root: made.root_file.clone(),
        trust: tmp.path().join("trust"),
        store: store.clone(),
        keys,
        _tmp: tmp,
    };
    let url = store.to_str().unwrap();
    assert_eq!(
        s.open(url).snap("hello").unwrap().unwrap().latest(),
        Some(&e1)
    );
    // Unsigned readers still read it.
    let plain = Store::open_with(url, test_config()).unwrap();
    assert!(plain.snap("hello").unwrap().is_some());
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

fn copy_meta(store: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(store.join("tuf"))
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn restore_meta(store: &Path, files: &[(String, Vec<u8>)]) {
    let dir = store.join("tuf");
    fs::remove_dir_all(&dir).unwrap();
    fs::create_dir(&dir).unwrap();
    for (n, b) in files {
        fs::write(dir.join(n), b).unwrap();
    }
}

fn copy_tree(from: &Path, to: &Path) {
    for e in fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            fs::create_dir_all(&dest).unwrap();
            copy_tree(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    fs::set_permissions(to, fs::Permissions::from_mode(0o700)).unwrap();
    for e in fs::read_dir(from).unwrap().flatten() {
        if e.path().is_file() {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_publish_cut_before_signing_is_signed_by_the_next() {
    if !have_squashfs_tools() {
        return skip("squashfs-tools not installed");
    }
    let s = signed_store("signed-cut");
    let url = s.store.to_str().unwrap().to_owned();
    s.publish(&make_snap(s._tmp.path(), "hello", "1.0", 20_000));
    // What a publish killed between its index and its signing leaves: revision 2 in the index
    // and its blob, no target for it (made by hiding tuf/ from an unsigned publish).
    let (tuf, hidden) = (s.store.join("tuf"), s.store.join("tuf.hidden"));
    fs::rename(&tuf, &hidden).unwrap();
    publish(
        &s.store,
        &make_snap(s._tmp.path(), "hello", "2.0", 20_000),
        "stable",
    )
    .unwrap();
    fs::rename(&hidden, &tuf).unwrap();
    let e3 = s.publish(&make_snap(s._tmp.path(), "hello", "3.0", 20_000));
    let index = s.open(&url).snap("hello").unwrap().unwrap();
    let revs: Vec<u32> = index.revisions().map(|e| e.revision).collect();
    assert_eq!(revs, vec![1, 2, 3]);
    assert_eq!(index.latest(), Some(&e3));
}

#[test]
fn rotating_the_root_keys_is_followed_by_clients_pinned_to_the_first_root() {
    if !have_squashfs_tools() {
        return skip("squashfs-tools not installed");
    }
    let s = signed_store("signed-root-rotation");
    let url = s.store.to_str().unwrap().to_owned();
    let e1 = s.publish(&make_snap(s._tmp.path(), "hello", "1.0", 20_000));
    assert_eq!(
        s.open(&url).snap("hello").unwrap().unwrap().latest(),
        Some(&e1)
    );
    let old_root_keys: Vec<_> = fs::read_dir(&s.keys)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("root-"))
        .map(|e| e.file_name())
        .collect();
    assert_eq!(old_root_keys.len(), 1);
    let signed = rotate_key(&s.store, &s.keys, RoleType::Root, &Expiries::default()).unwrap();
    let new_root = signed.new_root.expect("a new root version");
    assert!(
        new_root.ends_with("tuf/2.root.json"),
        "{}",
        new_root.display()
    );
    assert!(s.keys.join("retired").join(&old_root_keys[0]).exists());
    // A client pinned to the first root walks to the second (signed by the old root keys and
    // the new ones) and keeps reading; publishing goes on with the same online keys.
    let e2 = s.publish(&make_snap(s._tmp.path(), "hello", "2.0", 20_000));
    assert_eq!(
        s.open(&url).snap("hello").unwrap().unwrap().latest(),
        Some(&e2)
    );
    // A machine given the new root reads the store too.
    let fresh = Signed {
        root: new_root,
        trust: s._tmp.path().join("trust-new"),
        store: s.store.clone(),
        keys: s.keys.clone(),
        _tmp: scratch("signed-root-rotation-fresh"),
    };
    assert_eq!(
        fresh.open(&url).snap("hello").unwrap().unwrap().latest(),
        Some(&e2)
    );
    // The retired root key alone can no longer sign a root: a rotation with it is refused.
    let old = s._tmp.path().join("old-root-key");
    fs::create_dir(&old).unwrap();
    fs::set_permissions(&old, fs::Permissions::from_mode(0o700)).unwrap();
    for e in fs::read_dir(&s.keys).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if e.path().is_file() && !n.starts_with("root-") {
            fs::copy(e.path(), old.join(&n)).unwrap();
        }
    }
    fs::copy(
        s.keys.join("retired").join(&old_root_keys[0]),
        old.join(&old_root_keys[0]),
    )
    .unwrap();
    let e = rotate_key(&s.store, &old, RoleType::Timestamp, &Expiries::default()).unwrap_err();
    assert!(e.to_string().contains("root"), "{e}");
}
