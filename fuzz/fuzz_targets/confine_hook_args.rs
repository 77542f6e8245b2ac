//! confine-hook's command line and environment, both the caller's to choose (it is setuid
//! root): `args::parse` (argv[0] included), then `env::Env::from_caller`, `env::build` and
//! `env::reroot_home` as a launch calls them.
//!
//! The input is NUL-separated items in sections split by an empty item (`\0\0`): argv
//! (argv[0] first), then the caller's environment (`NAME=VALUE`), then the passwd home and a
//! byte choosing the root (`/` or `/tmp/r`).
//!
//! Properties: no panic; a parsed instance and app name are valid by the runctl rules (plain
//! path components: no `/`, `.`, NUL); argv[0] with a `..` component is refused; the app's
//! environment holds only allow-listed caller variables (so never `LD_*`, `GCONV_PATH`,
//! `PATH` or `HOME` from the caller), with the caller's value intact, plus the launcher's own
//! variables, whose values the caller cannot change; `HOME` and `SNAP_USER_*` lie under the
//! re-rooted home, which lies under the root.

#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use confine_hook::fuzzing::{allowed, build, parse, reroot_home, Env, SnapVars, MAX_VALUE};
use libfuzzer_sys::fuzz_target;

/// Variables the launcher sets itself.
const OURS: &[&str] = &[
    "PATH",
    "USER",
    "LOGNAME",
    "SNAP",
    "SNAP_NAME",
    "SNAP_INSTANCE_NAME",
    "SNAP_INSTANCE_KEY",
    "SNAP_REVISION",
    "SNAP_VERSION",
    "SNAP_DATA",
    "SNAP_COMMON",
    "SNAP_USER_DATA",
    "SNAP_USER_COMMON",
    "HOME",
];

fuzz_target!(|data: &[u8]| {
    let mut sections =
        data.split(|&b| b == 0)
            .fold(vec![vec![]], |mut acc: Vec<Vec<&[u8]>>, item| {
                if item.is_empty() {
                    acc.push(vec![]);
                } else {
                    acc.last_mut().unwrap().push(item);
                }
                acc
            });
    sections.resize(3, vec![]);
    let argv: Vec<OsString> = sections[0]
        .iter()
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    let caller: Vec<(Vec<u8>, Vec<u8>)> = sections[1]
        .iter()
        .map(|kv| match kv.iter().position(|&b| b == b'=') {
            Some(i) => (kv[..i].to_vec(), kv[i + 1..].to_vec()),
            None => (kv.to_vec(), vec![]),
        })
        .collect();
    let home = sections[2].first().copied().unwrap_or(b"/home/alice");
    let root: &[u8] = match sections[2].get(1) {
        Some(b) if b[0] % 2 == 1 => b"/tmp/r",
        _ => b"/",
    };

    let Ok(target) = parse(&argv) else {
        return;
    };
    let argv0 = argv[0].as_bytes();
    assert!(
        !argv0.split(|&b| b == b'/').any(|p| p == b".."),
        "argv[0] {argv0:?} with \"..\" accepted"
    );
    let base = argv0.rsplit(|&b| b == b'/').next().unwrap();
    if base != b"confine-hook" {
        assert!(!target.stop, "--command=stop through a launcher");
        assert_eq!(
            target.args,
            &argv[1..],
            "a launcher's arguments all go to the app"
        );
    }
    for (what, name) in [("instance", &target.instance), ("app", &target.app)] {
        assert!(
            !name.is_empty() && !name.contains(&b'/') && !name.contains(&0),
            "{what} {name:?}"
        );
        assert!(
            name.as_slice() != b"." && name.as_slice() != b"..",
            "{what} {name:?}"
        );
    }
    assert!(
        refreshd_runctl::valid_instance_name(&target.instance),
        "instance {:?}",
        target.instance
    );
    assert!(
        refreshd_runctl::valid_app_name(&target.app),
        "app {:?}",
        target.app
    );
    assert!(refreshd_runctl::valid_snap_name(target.snap_name()));

    let home = reroot_home(root, home);
    if root == b"/" {
        assert!(!home.is_empty());
    } else {
        assert!(
            home.starts_with(root) && (home.len() == root.len() || home[root.len()] == b'/'),
            "home {home:?} is not under the root"
        );
    }
    let vars = SnapVars {
        root,
        instance: &target.instance,
        snap_name: target.snap_name(),
        instance_key: target.instance_key(),
        revision: b"x1",
        version: b"1.0",
        user: b"alice",
        home: &home,
    };
    // As refreshd writes them from a validated snap.yaml: one uses a caller variable.
    let launch = vec![
        ("GREETING".to_owned(), "hi from ${TERM} in $LANG".to_owned()),
        ("PATH".to_owned(), "$SNAP/bin:$PATH".to_owned()),
        ("DATA".to_owned(), "$SNAP_USER_DATA/x".to_owned()),
    ];
    let env = build(Env::from_caller(caller.clone()), &vars, &launch);
    let clean = build(Env::default(), &vars, &launch);
    // Joined as the launcher joins: no doubled slash after a home of `/`.
    let sep: &[u8] = if home.ends_with(b"/") { b"" } else { b"/" };
    let user_dir = [home.as_slice(), sep, b"snap/", &target.instance, b"/"].concat();
    let mut seen: Vec<Vec<u8>> = vec![];
    for entry in env.to_cstrings() {
        let entry = entry.as_bytes();
        let eq = entry.iter().position(|&b| b == b'=').expect("NAME=VALUE");
        let (name, value) = (&entry[..eq], &entry[eq + 1..]);
        assert!(!seen.iter().any(|s| s == name), "{name:?} twice");
        seen.push(name.to_vec());
        let named = |n: &str| n.as_bytes() == name;
        if OURS.iter().any(|n| named(n)) || launch.iter().any(|(k, _)| named(k)) {
            if name != b"GREETING" {
                assert_eq!(Some(value), clean.get(name), "the caller changed {name:?}");
            }
            if name == b"HOME" || name.starts_with(b"SNAP_USER_") {
                assert!(
                    value.starts_with(&user_dir),
                    "{name:?}={value:?} not under the home"
                );
            }
        } else {
            assert!(allowed(name), "caller variable {name:?} reached the app");
            assert!(
                !name.starts_with(b"LD_") && name != b"GCONV_PATH",
                "{name:?} reached the app"
            );
            let last = caller
                .iter()
                .rev()
                .find(|(k, v)| k == name && v.len() <= MAX_VALUE && !v.contains(&0));
            assert_eq!(
                last.map(|(_, v)| v.as_slice()),
                Some(value),
                "value of {name:?}"
            );
        }
    }
    for (k, v) in &caller {
        if !allowed(k)
            && !OURS.iter().any(|n| n.as_bytes() == k)
            && !launch.iter().any(|(n, _)| n.as_bytes() == k)
        {
            assert!(env.get(k).is_none(), "caller variable {k:?}={v:?} passed");
        }
    }
});
