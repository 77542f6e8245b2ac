//! What the store tests share: snaps to publish, and what a refusal must look like from the
//! user's side (one line) and the machine's (nothing changed).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::{ctl_json, noise, temporaries, text, SnapSrc};

/// A snap whose `NAME` app says hello (naming its revision) and whose `NAME.hold` runs until
/// told, with `payload` bytes of noise so that a download can be stopped in the middle.
pub fn build_snap(out: &Path, name: &str, version: &str, payload: usize, seed: u64) {
    let src = SnapSrc::new(&format!(
        "name: {name}\nversion: '{version}'\napps:\n  {name}:\n    command: bin/hello\n  hold:\n    command: bin/hold\n"
    ))
    .file("bin/hello", "#!/bin/sh\necho \"hello from $SNAP_NAME $SNAP_REVISION\"\n", 0o755)
    .file(
        "bin/hold",
        "#!/bin/sh\necho \"started $$ $(date +%s%N) $SNAP_REVISION\"\nread line\necho \"exit $(date +%s%N)\"\n",
        0o755,
    );
    fs::write(src.dir.path().join("payload"), noise(payload, seed | 1)).unwrap();
    src.build(out);
}

/// Asserts a refreshctl call failed with one error line on stderr (besides the progress of a
/// change it followed) containing every needle; returns that line.
pub fn refused(out: &Output, needles: &[&str]) -> String {
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "expected a refusal: {}{err}",
        text(&out.stdout)
    );
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    assert!(
        err.ends_with(&format!("{}\n", lines[0])),
        "the error comes last: {err}"
    );
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} not in: {err}");
    }
    lines[0].to_owned()
}

/// Asserts a refreshctl call succeeded, showing what it said when it did not.
pub fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The revision `snap/NAME/current` points at ("" when none).
pub fn current(root: &Path, name: &str) -> String {
    fs::read_link(root.join(format!("snap/{name}/current")))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// What the launcher says: the revision that runs ("" when there is no launcher).
pub fn hello(root: &Path, name: &str) -> String {
    std::process::Command::new(root.join("snap/bin").join(name))
        .output()
        .map(|out| text(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The files in the daemon's blob directory.
pub fn blobs(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root.join("var/lib/refreshd/blobs"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// How many changes the daemon has made.
pub fn changes(root: &Path) -> usize {
    ctl_json(root, &["changes", "--all", "--json"])
        .as_array()
        .unwrap()
        .len()
}

/// Asserts that `name` is exactly as installed at revision `rev` (its only one): current,
/// running, one blob, one mounted revision, nothing half done.
pub fn untouched(root: &Path, name: &str, rev: &str) {
    assert_eq!(current(root, name), rev, "current of {name}");
    assert_eq!(hello(root, name), format!("hello from {name} {rev}"));
    let mine: Vec<String> = blobs(root)
        .into_iter()
        .filter(|b| b.starts_with(&format!("{name}_")))
        .collect();
    assert_eq!(mine, [format!("{name}_{rev}.snap")], "blobs of {name}");
    let revs: Vec<String> = fs::read_dir(root.join("snap").join(name))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "current")
        .collect();
    assert_eq!(revs, [rev], "revision directories of {name}");
    let prefix = root.join("snap").join(name);
    let mounts: Vec<PathBuf> = refreshd_snap::mounts_under(root)
        .unwrap()
        .into_iter()
        .filter(|m| m.starts_with(&prefix))
        .collect();
    assert!(
        mounts.iter().all(|m| m == &prefix.join(rev)),
        "mounts: {mounts:?}"
    );
    assert!(temporaries(root).is_empty(), "{:?}", temporaries(root));
}

/// True while process `pid` exists.
pub fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// What the user and the machine see of snap `name`: the daemon's list of snaps, the current
/// revision and what its launcher runs, its blobs, revision directories and mounts. The same
/// picture before and after an operation (with no temporaries left) means it changed nothing.
#[derive(Debug, PartialEq)]
pub struct Picture {
    list: crate::Value,
    current: String,
    hello: String,
    blobs: Vec<String>,
    revisions: Vec<String>,
    mounts: Vec<PathBuf>,
}

pub fn picture(root: &Path, name: &str) -> Picture {
    let mut revisions: Vec<String> = fs::read_dir(root.join("snap").join(name))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    revisions.sort();
    let prefix = root.join("snap").join(name);
    Picture {
        list: ctl_json(root, &["list", "--json"]),
        current: current(root, name),
        hello: hello(root, name),
        blobs: blobs(root),
        revisions,
        mounts: refreshd_snap::mounts_under(root)
            .unwrap()
            .into_iter()
            .filter(|m| m.starts_with(&prefix))
            .collect(),
    }
}

/// Asserts that `root` shows `before` again, with no temporaries.
pub fn unchanged(root: &Path, name: &str, before: &Picture) {
    assert_eq!(&picture(root, name), before, "the machine changed");
    assert!(temporaries(root).is_empty(), "{:?}", temporaries(root));
}
