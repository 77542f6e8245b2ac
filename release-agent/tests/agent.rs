//! The real agent binaries, run as the kernel runs them, against the real `/run/refreshd`
//! registry and default runctl directory (root only).

mod common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::chown;
use std::path::PathBuf;

use common::*;
use nix::fcntl::{Flock, FlockArg};

/// Every runctl-ish file a careless agent might remove for one of the hostile arguments:
/// markers of invalid names, real-looking markers of valid names under the wrong directory,
/// and targets of `..` walks out of the directory.
const RUNCTL_DECOYS: &[&str] = &[
    "snap.x.running",
    "snap..running",
    "snap.running",
    "snap.Hello.running",
    "snap.hello.running",
    "snap.hello.lock",
    "snap.hello.inhibited",
    "snap.hello/",
    "snap.hello/.running",
    "snap.x/",
    "snap.x/etc.running",
];

/// Decoys beside the runctl directory, for `..` walks.
const SCRATCH_DECOYS: &[&str] = &[
    "etc/",
    "etc/passwd",
    "etc.running",
    "x.running",
    "snap.hello.running",
];

fn hostile_args(id: &str, bad_ids: &[String]) -> Vec<Vec<OsString>> {
    let long = "a".repeat(5000);
    let mut args: Vec<Vec<u8>> = vec![
        b"../x".to_vec(),
        b"snap.".to_vec(),
        b"/refreshd/snap.".to_vec(),
        b"/refreshd/snap.x/../../etc".to_vec(),
        format!("/refreshd/snap.{long}").into_bytes(),
        long.clone().into_bytes(),
        b"".to_vec(),
        b"/".to_vec(),
        b"\xff\xfe".to_vec(),
        b"/refreshd/snap.hel\xfflo".to_vec(),
    ];
    for tail in [
        "snap.".to_string(),
        "snap.x".to_string(),
        "snap.x/../../etc".to_string(),
        "snap.hello/".to_string(),
        "snap.hello\n".to_string(),
        "snap.hello/../snap.hello".to_string(),
        "snap.Hello".to_string(),
        "x/snap.hello".to_string(),
        "/snap.hello".to_string(),
        "../snap.hello".to_string(),
        "snap.hello.running".to_string(),
        format!("snap.{long}"),
    ] {
        args.push(format!("/refreshd.{id}/{tail}").into_bytes());
    }
    for prefix in [
        format!("refreshd.{id}/snap.hello"),
        format!("//refreshd.{id}/snap.hello"),
        format!("/refreshd.{id}"),
        format!("/refreshd.{id}/"),
        format!("/refreshd..{id}/snap.hello"),
    ] {
        args.push(prefix.into_bytes());
    }
    let mut non_utf8 = format!("/refreshd.{id}/snap.hel").into_bytes();
    non_utf8.extend_from_slice(b"\xfflo");
    args.push(non_utf8);
    let mut trailing = format!("/refreshd.{id}/snap.hello").into_bytes();
    trailing.push(0xff);
    args.push(trailing);
    // IDs the registry holds entries for, but which are not IDs: valid names behind them.
    for bad in bad_ids {
        for name in ["x", "hello"] {
            args.push(format!("/refreshd.{bad}/snap.{name}").into_bytes());
        }
    }
    let mut calls: Vec<Vec<OsString>> = args.iter().map(|a| vec![os(a)]).collect();
    // Argument counts other than one, with arguments that alone would remove a marker.
    let valid = OsString::from(format!("/refreshd.{id}/snap.hello"));
    calls.push(vec![]);
    calls.push(vec![valid.clone(), valid.clone()]);
    calls.push(vec![valid.clone(), "extra".into(), "more".into()]);
    calls.push(vec!["".into(), valid]);
    calls
}

#[test]
fn hostile_arguments_touch_nothing() {
    if !is_root() {
        return skip("not root: needs the real /run/refreshd registry");
    }
    let registry = match registry() {
        Ok(r) => r,
        Err(why) => return skip(&why),
    };
    let id = unique_id("hostile_arguments_touch_nothing");
    let t = scratch();
    let runctl = t.path().join("runctl");
    let mut keep = populate(t.path(), &["runctl/"]);
    keep.extend(populate(&runctl, RUNCTL_DECOYS));
    keep.extend(populate(t.path(), SCRATCH_DECOYS));
    let _entry = Registered::new(&id, &runctl);

    // Registry entries whose names are near-IDs, each to a runctl dir with valid markers.
    let bad_ids = vec![
        id.to_uppercase(),
        id[..15].to_string(),
        format!("{id}0"),
        format!("{}g", &id[..15]),
        format!("{}-", &id[..15]),
    ];
    let mut bad_entries = Vec::new();
    for (i, bad) in bad_ids.iter().enumerate() {
        let dir = t.path().join(format!("bad{i}"));
        keep.extend(populate(
            t.path(),
            &[&format!("bad{i}/"), &format!("bad{i}/snap.x.running")],
        ));
        keep.extend(populate(&dir, &["snap.hello.running"]));
        bad_entries.push(Registered::new(bad, &dir));
    }
    let mut keep_links: Vec<PathBuf> = bad_entries.iter().map(|e| e.link.clone()).collect();
    keep_links.push(registry.join(&id));

    keep.extend(keep_links);
    let mut failures = Failures::default();
    for agent in agents() {
        for args in hostile_args(&id, &bad_ids) {
            let shown = format!("{} {}", agent.display(), show(&args));
            failures.check(&shown, run_agent(&agent, &args), &keep);
        }
    }
    failures.assert_none();
}

/// The hostile arguments without an ID aim at the real default runctl directory: decoys there
/// are shared names, so the tests that plant them serialize on a lock of that directory.
#[test]
fn hostile_arguments_spare_the_default_runctl() {
    if !is_root() {
        return skip("not root: needs the real /run/refreshd/runctl");
    }
    let dir = match default_runctl() {
        Ok(d) => d,
        Err(why) => return skip(&why),
    };
    let _lock = Flock::lock(fs::File::open(&dir).unwrap(), FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    let mut created = Created::default();
    let mut keep = Vec::new();
    for d in [
        "snap.x.running",
        "snap..running",
        "snap.running",
        "snap.Hello.running",
    ] {
        if !exists(&dir.join(d)) {
            keep.push(created.file(dir.join(d)));
        }
    }
    if !exists(&dir.join("snap.x")) {
        created.dir(dir.join("snap.x"));
        keep.push(created.file(dir.join("snap.x").join("etc.running")));
    }
    let long = "a".repeat(5000);
    let args: Vec<Vec<u8>> = vec![
        b"/refreshd/snap.".to_vec(),
        b"/refreshd/snap.x".to_vec(),
        b"/refreshd/snap.x/../../etc".to_vec(),
        b"/refreshd/snap.x/etc".to_vec(),
        b"/refreshd/snap.Hello".to_vec(),
        b"/refreshd//snap.x".to_vec(),
        b"/refreshd/../refreshd/snap.x".to_vec(),
        b"/refreshd/snap.x\xff".to_vec(),
        format!("/refreshd/snap.{long}").into_bytes(),
    ];
    let mut failures = Failures::default();
    for agent in agents() {
        for a in &args {
            let shown = format!("{} {}", agent.display(), show(&[os(a)]));
            failures.check(&shown, run_agent(&agent, &[os(a)]), &keep);
        }
    }
    failures.assert_none();
}

#[test]
fn removes_the_marker_of_a_registered_daemon() {
    if !is_root() {
        return skip("not root: needs the real /run/refreshd registry");
    }
    if let Err(why) = registry() {
        return skip(&why);
    }
    let id = unique_id("removes_the_marker_of_a_registered_daemon");
    let t = scratch();
    let runctl = t.path().join("runctl");
    let keep = populate(
        t.path(),
        &[
            "runctl/",
            "runctl/snap.hello.lock",
            "runctl/snap.hello.inhibited",
            "runctl/snap.other.running",
            "runctl/snap.hello_k1.lock",
            "snap.hello.running",
        ],
    );
    let _entry = Registered::new(&id, &runctl);
    for agent in agents() {
        let shown = agent.display();
        for name in ["hello", "hello_k1"] {
            let marker = runctl.join(format!("snap.{name}.running"));
            fs::write(&marker, "").unwrap();
            let arg = format!("/refreshd.{id}/snap.{name}");
            assert_eq!(run_agent(&agent, &[&arg]).code(), Some(0), "{shown} {arg}");
            assert!(!exists(&marker), "{shown} {arg}: marker left");
            assert_all_exist(&keep, &format!("{shown} {arg}"));
            // Already gone: nothing to do, still success.
            assert_eq!(run_agent(&agent, &[&arg]).code(), Some(0), "{shown} {arg}");
        }
    }
}

#[test]
fn removes_the_marker_of_the_default_daemon() {
    if !is_root() {
        return skip("not root: needs the real /run/refreshd/runctl");
    }
    let dir = match default_runctl() {
        Ok(d) => d,
        Err(why) => return skip(&why),
    };
    let id = unique_id("removes_the_marker_of_the_default_daemon");
    let name = format!("ra-{id}");
    let mut created = Created::default();
    let keep = vec![
        created.file(dir.join(format!("snap.{name}.lock"))),
        created.file(dir.join(format!("snap.{name}.inhibited"))),
    ];
    let marker = dir.join(format!("snap.{name}.running"));
    for agent in agents() {
        created.file(marker.clone());
        let arg = format!("/refreshd/snap.{name}");
        assert_eq!(run_agent(&agent, &[&arg]).code(), Some(0));
        assert!(!exists(&marker), "{} {arg}: marker left", agent.display());
        assert_all_exist(&keep, &arg);
    }
}

#[test]
fn missing_pieces_are_success() {
    if !is_root() {
        return skip("not root: needs the real /run/refreshd registry");
    }
    if let Err(why) = registry() {
        return skip(&why);
    }
    let id = unique_id("missing_pieces_are_success");
    let t = scratch();
    let _dangling = Registered::new(&id, &t.path().join("no-such-runctl"));
    let unregistered = unique_id("missing_pieces_are_success, unregistered");
    for agent in agents() {
        for arg in [
            format!("/refreshd.{id}/snap.hello"),
            format!("/refreshd.{unregistered}/snap.hello"),
            format!("/refreshd/snap.ra-{id}"),
        ] {
            assert_eq!(run_agent(&agent, &[&arg]).code(), Some(0), "{arg}");
        }
    }
}

#[test]
fn refuses_a_runctl_not_owned_by_root() {
    if !is_root() {
        return skip("not root: needs the real /run/refreshd registry and chown");
    }
    if let Err(why) = registry() {
        return skip(&why);
    }
    let id = unique_id("refuses_a_runctl_not_owned_by_root");
    let t = scratch();
    let runctl = t.path().join("runctl");
    let keep = populate(t.path(), &["runctl/", "runctl/snap.hello.running"]);
    chown(&runctl, Some(65534), Some(65534)).unwrap();
    let _entry = Registered::new(&id, &runctl);
    for agent in agents() {
        let arg = format!("/refreshd.{id}/snap.hello");
        assert_eq!(run_agent(&agent, &[&arg]).code(), Some(0));
        assert_all_exist(&keep, &format!("{} {arg}", agent.display()));
    }
}
