//! The index of a snap from a hostile store: `SnapIndex::parse`, `validate_blob_path`,
//! `validate_channel`.
//!
//! Properties: no panic; every refusal is one line; an accepted blob path never leaves the
//! store (relative, no `..` or `.` component, no empty component, no NUL or backslash, only
//! `[A-Za-z0-9._+~/-]`), an accepted size is 1..=MAX_BLOB_SIZE, an accepted sha3-384 is 96
//! lowercase hex digits, every channel points at a listed revision, and every entry passes
//! `Entry::validate` (the check `Store::fetch` repeats before any request).

#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use refreshd_store::{
    validate_blob_path, validate_channel, Entry, SnapIndex, MAX_BLOB_SIZE, MAX_CHANNEL_LEN,
    MAX_PATH_LEN,
};

/// The name the index is fetched as; the corpus uses it.
const NAME: &str = "hello";

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if validate_blob_path(s).is_ok() {
            blob_path(s);
        }
        match validate_channel(s) {
            Ok(()) => channel(s),
            Err(e) => one_line(&e.to_string()),
        }
    }
    match SnapIndex::parse(NAME, data) {
        Ok(index) => accepted(&index),
        Err(e) => one_line(&e.to_string()),
    }
});

fn one_line(msg: &str) {
    assert!(
        !msg.contains(['\n', '\r']),
        "refusal is not one line: {msg:?}"
    );
}

fn accepted(index: &SnapIndex) {
    assert_eq!(index.name(), NAME);
    let mut revisions = 0;
    for e in index.revisions() {
        revisions += 1;
        entry(e);
        assert_eq!(index.revision(e.revision), Some(e));
    }
    assert_eq!(
        index.latest().map(|e| e.revision),
        index.revisions().map(|e| e.revision).max()
    );
    for (name, rev) in index.channels() {
        channel(name);
        let e = index
            .channel(name)
            .expect("a channel points at a listed revision");
        assert_eq!(e.revision, rev);
    }
    assert!(revisions > 0 || index.channels().next().is_none());
}

fn entry(e: &Entry) {
    assert_eq!(e.name, NAME);
    assert!(e.revision > 0);
    e.validate()
        .expect("an entry from an accepted index validates");
    assert!(e.size > 0 && e.size <= MAX_BLOB_SIZE, "size {}", e.size);
    assert_eq!(e.sha3_384.len(), 96);
    assert!(
        e.sha3_384
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
        "sha3-384 {:?} is not lowercase hex",
        e.sha3_384
    );
    blob_path(&e.path);
}

/// An accepted blob path names a file under the store, and the same one as a URL path.
fn blob_path(p: &str) {
    assert!(!p.is_empty() && p.len() <= MAX_PATH_LEN);
    assert!(!p.starts_with('/'), "absolute blob path {p:?}");
    assert!(!p.contains(['\0', '\\', '%', '?', '#']), "blob path {p:?}");
    assert!(
        !p.split('/').any(|c| c.is_empty() || c == "." || c == ".."),
        "blob path {p:?}"
    );
    assert!(
        p.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-+~/".contains(&c)),
        "blob path {p:?} needs escaping"
    );
    let store = Path::new("/srv/store");
    let joined = store.join(p);
    assert!(joined.starts_with(store), "{p:?} leaves the store");
    assert!(
        Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_))),
        "blob path {p:?} has a non-plain component"
    );
}

/// An accepted channel is 1 to 3 plain, `/`-separated parts.
fn channel(c: &str) {
    assert!(validate_channel(c).is_ok());
    assert!(!c.is_empty() && c.len() <= MAX_CHANNEL_LEN);
    let parts: Vec<&str> = c.split('/').collect();
    assert!((1..=3).contains(&parts.len()), "channel {c:?}");
    // Never a path (only a key of the index), so "." and ".." parts are plain words here.
    assert!(parts.iter().all(|p| !p.is_empty()), "channel {c:?}");
    assert!(
        c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b)),
        "channel {c:?}"
    );
}
