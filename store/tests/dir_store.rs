//! A directory store: publish real snaps, read the index, fetch, verify, resume.

mod common;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use refreshd_store::{publish, publish_with_progress, Entry, Error, Store};

fn open(dir: &Path) -> Store {
    Store::open_with(dir.to_str().unwrap(), test_config()).unwrap()
}

#[test]
fn publish_two_revisions_fetch_verify_and_resume() {
    if !have_squashfs_tools() {
        return skip("squashfs-tools not installed");
    }
    let tmp = scratch("dir");
    let store_dir = tmp.path().join("store");
    fs::create_dir(&store_dir).unwrap();
    let v1 = make_snap(tmp.path(), "hello", "1.0", 200_000);
    let v2 = make_snap(tmp.path(), "hello", "1.1", 300_000);

    let e1 = publish(&store_dir, &v1, "stable").unwrap();
    let mut copied = vec![];
    let e2 = publish_with_progress(&store_dir, &v2, "beta", &mut |done, total| {
        copied.push((done, total))
    })
    .unwrap();
    assert_eq!((e1.revision, e2.revision), (1, 2));
    // The copy's progress: from nothing to the whole file, never backwards.
    assert_eq!(copied.first(), Some(&(0, e2.size)));
    assert_eq!(copied.last(), Some(&(e2.size, e2.size)));
    assert!(copied.windows(2).all(|w| w[0].0 < w[1].0), "{copied:?}");
    assert_eq!(e1.path, "blobs/hello_1.snap");
    assert_eq!(e2.version, "1.1");
    assert_eq!(e2.size, fs::metadata(&v2).unwrap().len());
    assert_eq!(e2.sha3_384, sha3_hex(&fs::read(&v2).unwrap()));
    assert!(
        !store_dir.join("v1/snaps").read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("tmp")),
        "no temporary file is left"
    );

    // Both address forms read the same index.
    let file_url = format!("file://{}", store_dir.display());
    for store in [open(&store_dir), Store::open(&file_url).unwrap()] {
        let index = store.snap("hello").unwrap().expect("hello is in the store");
        assert_eq!(index.channel("stable"), Some(&e1));
        assert_eq!(index.channel("beta"), Some(&e2));
        assert_eq!(index.latest(), Some(&e2));
        assert!(store.snap("absent").unwrap().is_none());
    }

    // Fetch, verify.
    let store = open(&store_dir);
    let dl = tmp.path().join("downloads");
    fs::create_dir(&dl).unwrap();
    let dest = dl.join("hello_2.snap");
    let mut progress = Progress::default();
    let stats = store
        .fetch(&e2, &dest, &mut progress.record(), &never)
        .unwrap();
    assert_eq!(fs::read(&dest).unwrap(), fs::read(&v2).unwrap());
    assert_eq!(stats.bytes_fetched, e2.size);
    assert_eq!((stats.partial_at_start, stats.resumed_from), (0, 0));
    assert_eq!(stats.attempts, 1);
    assert!(!stats.restarted);
    assert_eq!(progress.last(), Some((e2.size, e2.size)));
    assert!(!dl.join("hello_2.snap.partial").exists());

    // Resume: cut the finished download in half and make it the partial again.
    let half = e2.size / 2;
    let partial = dl.join("hello_2.snap.partial");
    fs::rename(&dest, &partial).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&partial)
        .unwrap()
        .set_len(half)
        .unwrap();
    let mut progress = Progress::default();
    let stats = store
        .fetch(&e2, &dest, &mut progress.record(), &never)
        .unwrap();
    assert_eq!(stats.partial_at_start, half);
    assert_eq!(stats.resumed_from, half);
    assert_eq!(
        stats.bytes_fetched,
        e2.size - half,
        "only the missing half is read"
    );
    assert_eq!(progress.calls.first(), Some(&(half, e2.size)));
    assert_eq!(fs::read(&dest).unwrap(), fs::read(&v2).unwrap());
    assert!(!partial.exists());

    // A complete partial is only verified.
    fs::copy(&dest, &partial).unwrap();
    let stats = store.fetch(&e2, &dest, &mut |_, _| {}, &never).unwrap();
    assert_eq!((stats.attempts, stats.bytes_fetched), (0, 0));

    // Publishing again moves the channel to the next revision.
    let e3 = publish(&store_dir, &v2, "stable").unwrap();
    assert_eq!(e3.revision, 3);
    let index = store.snap("hello").unwrap().unwrap();
    assert_eq!(index.channel("stable").unwrap().revision, 3);
    assert_eq!(index.channel("beta").unwrap().revision, 2);
    assert_eq!(index.revisions().count(), 3);
}

#[test]
fn publish_refuses_what_is_not_a_snap() {
    if !have_squashfs_tools() {
        return skip("squashfs-tools not installed");
    }
    let tmp = scratch("refuse");
    let store_dir = tmp.path().join("store");
    fs::create_dir(&store_dir).unwrap();

    let text = tmp.path().join("notes.snap");
    fs::write(&text, "just text").unwrap();
    let e = publish(&store_dir, &text, "stable").unwrap_err();
    assert!(matches!(e, Error::Publish { .. }), "{e}");
    assert!(e.to_string().contains("bad magic"), "{e}");

    let good = make_snap(tmp.path(), "hello", "1.0", 100_000);
    let bytes = fs::read(&good).unwrap();
    let cut = tmp.path().join("cut.snap");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = publish(&store_dir, &cut, "stable").unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");

    let e = publish(&store_dir, &good, "no good").unwrap_err();
    assert!(matches!(e, Error::BadChannel { .. }), "{e}");

    // Nothing was published, and no temporary file is left.
    assert!(!store_dir.join("v1/snaps/hello.json").exists());
    let leftovers: Vec<_> = fs::read_dir(store_dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn publish_keeps_unknown_keys_and_refuses_a_broken_index() {
    if !have_squashfs_tools() {
        return skip("squashfs-tools not installed");
    }
    let tmp = scratch("keys");
    let store_dir = tmp.path().join("store");
    fs::create_dir(&store_dir).unwrap();
    let snap = make_snap(tmp.path(), "hello", "1.0", 10_000);
    publish(&store_dir, &snap, "stable").unwrap();
    let index_path = store_dir.join("v1/snaps/hello.json");

    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    v["publisher"] = "someone".into();
    fs::write(&index_path, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = publish(&store_dir, &snap, "edge").unwrap();
    assert_eq!(e.revision, 2);
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    assert_eq!(v["publisher"], "someone");
    assert_eq!(v["channels"]["edge"], 2);
    assert_eq!(v["channels"]["stable"], 1);

    fs::write(
        &index_path,
        b"{\"format\": 1, \"name\": \"hello\", \"revisions\": [",
    )
    .unwrap();
    let e = publish(&store_dir, &snap, "stable").unwrap_err();
    assert!(matches!(e, Error::IndexJson { .. }), "{e}");
    assert!(
        !store_dir.join("blobs/hello_3.snap").exists(),
        "no blob without an index entry"
    );
}

#[test]
fn concurrent_publishes_get_distinct_revisions() {
    if !have_squashfs_tools() {
        return skip("squashfs-tools not installed");
    }
    let tmp = scratch("concurrent");
    let store_dir = tmp.path().join("store");
    fs::create_dir(&store_dir).unwrap();
    let snap = make_snap(tmp.path(), "hello", "1.0", 50_000);
    let mut revisions: Vec<u32> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| publish(&store_dir, &snap, "stable").unwrap().revision))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    revisions.sort();
    assert_eq!(revisions, [1, 2, 3, 4]);
    let index = open(&store_dir).snap("hello").unwrap().unwrap();
    assert_eq!(index.revisions().count(), 4);
    assert_eq!(index.channel("stable").unwrap().revision, 4);
}

#[test]
fn a_corrupt_blob_is_deleted_and_reported() {
    let tmp = scratch("corrupt");
    let store_dir = tmp.path().join("store");
    let blob = noise(100_000, 1);
    let mut bad = blob.clone();
    bad[50_000] ^= 1;
    write_blob(&store_dir, "blobs/hello_1.snap", &bad);
    write_index(
        &store_dir,
        "hello",
        1,
        blob.len() as u64,
        &sha3_hex(&blob),
        "blobs/hello_1.snap",
    );
    let store = open(&store_dir);
    let entry = store
        .snap("hello")
        .unwrap()
        .unwrap()
        .channel("stable")
        .cloned()
        .unwrap();
    let dest = tmp.path().join("hello_1.snap");
    let e = store
        .fetch(&entry, &dest, &mut |_, _| {}, &never)
        .unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("tampered"), "{e}");
    assert!(!dest.exists());
    assert!(!tmp.path().join("hello_1.snap.partial").exists());
}

#[test]
fn blobs_of_the_wrong_size_are_refused() {
    let tmp = scratch("size");
    let store_dir = tmp.path().join("store");
    let blob = noise(10_000, 2);
    write_blob(&store_dir, "blobs/hello_1.snap", &blob);
    let store = open(&store_dir);
    let dest = tmp.path().join("hello_1.snap");
    for (declared, large) in [
        (blob.len() as u64 - 1, true),
        (blob.len() as u64 + 1, false),
    ] {
        let entry = Entry {
            name: "hello".into(),
            revision: 1,
            version: "1.0".into(),
            sha3_384: sha3_hex(&blob),
            size: declared,
            path: "blobs/hello_1.snap".into(),
        };
        let e = store
            .fetch(&entry, &dest, &mut |_, _| {}, &never)
            .unwrap_err();
        if large {
            assert!(matches!(e, Error::BlobTooLarge { .. }), "{e}");
        } else {
            assert!(matches!(e, Error::BlobTooSmall { .. }), "{e}");
        }
        assert!(!dest.exists());
        assert!(!tmp.path().join("hello_1.snap.partial").exists());
    }
}

#[test]
fn a_symlink_out_of_the_store_is_refused() {
    let tmp = scratch("symlink");
    let store_dir = tmp.path().join("store");
    let outside = tmp.path().join("secret");
    fs::write(&outside, b"secret").unwrap();
    fs::create_dir_all(store_dir.join("blobs")).unwrap();
    std::os::unix::fs::symlink(&outside, store_dir.join("blobs/hello_1.snap")).unwrap();
    write_index(
        &store_dir,
        "hello",
        1,
        6,
        &sha3_hex(b"secret"),
        "blobs/hello_1.snap",
    );
    let store = open(&store_dir);
    let entry = store
        .snap("hello")
        .unwrap()
        .unwrap()
        .channel("stable")
        .cloned()
        .unwrap();
    let dest = tmp.path().join("hello_1.snap");
    let e = store
        .fetch(&entry, &dest, &mut |_, _| {}, &never)
        .unwrap_err();
    assert!(e.to_string().contains("revisions.1.path"), "{e}");
    assert!(e.to_string().contains("outside the store"), "{e}");
    assert!(!dest.exists());
}

#[test]
fn a_cancelled_fetch_keeps_its_partial_and_the_next_resumes() {
    let tmp = scratch("cancel");
    let store_dir = tmp.path().join("store");
    // Several chunks (128 KiB each).
    let blob = noise(1_000_000, 3);
    write_blob(&store_dir, "blobs/hello_1.snap", &blob);
    write_index(
        &store_dir,
        "hello",
        1,
        blob.len() as u64,
        &sha3_hex(&blob),
        "blobs/hello_1.snap",
    );
    let store = open(&store_dir);
    let entry = store
        .snap("hello")
        .unwrap()
        .unwrap()
        .channel("stable")
        .cloned()
        .unwrap();
    let dest = tmp.path().join("hello_1.snap");

    let stop = AtomicBool::new(false);
    let e = store
        .fetch(
            &entry,
            &dest,
            &mut |done, _| {
                if done > 0 {
                    stop.store(true, Ordering::SeqCst)
                }
            },
            &|| stop.load(Ordering::SeqCst),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Cancelled { .. }), "{e}");
    let kept = fs::metadata(tmp.path().join("hello_1.snap.partial"))
        .unwrap()
        .len();
    assert!(kept > 0 && kept < blob.len() as u64, "kept {kept}");

    let stats = store.fetch(&entry, &dest, &mut |_, _| {}, &never).unwrap();
    assert_eq!(stats.resumed_from, kept);
    assert_eq!(stats.bytes_fetched, blob.len() as u64 - kept);
    assert_eq!(fs::read(&dest).unwrap(), blob);
}

#[test]
fn a_second_fetch_to_the_same_destination_is_busy() {
    let tmp = scratch("busy");
    let store_dir = tmp.path().join("store");
    let blob = noise(1000, 4);
    write_blob(&store_dir, "blobs/hello_1.snap", &blob);
    write_index(
        &store_dir,
        "hello",
        1,
        blob.len() as u64,
        &sha3_hex(&blob),
        "blobs/hello_1.snap",
    );
    let store = open(&store_dir);
    let entry = store
        .snap("hello")
        .unwrap()
        .unwrap()
        .channel("stable")
        .cloned()
        .unwrap();
    let dest = tmp.path().join("hello_1.snap");
    let partial = tmp.path().join("hello_1.snap.partial");
    let held = fs::File::create(&partial).unwrap();
    let held = nix::fcntl::Flock::lock(held, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let e = store
        .fetch(&entry, &dest, &mut |_, _| {}, &never)
        .unwrap_err();
    assert!(matches!(e, Error::Busy { .. }), "{e}");
    drop(held);
    store.fetch(&entry, &dest, &mut |_, _| {}, &never).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), blob);
}

#[test]
fn opening_a_missing_directory_says_so() {
    let tmp = scratch("missing");
    let e = Store::open(tmp.path().join("nope").to_str().unwrap())
        .err()
        .expect("a missing store directory is an error");
    assert!(matches!(e, Error::StoreDir { .. }), "{e}");
}
