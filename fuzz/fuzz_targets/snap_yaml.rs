//! `meta/snap.yaml` from a hostile snap: `refreshd_snap::yaml::parse`, and the name rules it
//! applies.
//!
//! Properties: no panic; every refusal is one line starting with `snap.yaml`; and whatever is
//! accepted keeps the promises later code relies on without checking again (names go into
//! paths and unit names, commands into argv and launch descriptions, environment into execve
//! and unit files). The name rules of `refreshd_snap` (the daemon) and `refreshd_runctl`
//! (confine-hook, the release agent) must agree on every input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use refreshd_snap::name::{
    validate_app_name, validate_hook_name, validate_instance_name, validate_snap_name,
    validate_version, InstanceName,
};
use refreshd_snap::yaml::{self, SnapYaml};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        names(s);
    }
    match yaml::parse(data) {
        Ok(y) => accepted(&y),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "refusal is not one line: {msg:?}");
            assert!(
                msg.starts_with("snap.yaml"),
                "refusal does not say snap.yaml: {msg:?}"
            );
        }
    }
});

/// The whole input as a name of every kind: daemon and launcher rules agree, and what they
/// accept is a plain path component.
fn names(s: &str) {
    let b = s.as_bytes();
    let snap = validate_snap_name(s).is_ok();
    assert_eq!(snap, refreshd_runctl::valid_snap_name(b), "snap name {s:?}");
    let instance = validate_instance_name(s).is_ok();
    assert_eq!(
        instance,
        refreshd_runctl::valid_instance_name(b),
        "instance name {s:?}"
    );
    let app = validate_app_name(s).is_ok();
    assert_eq!(app, refreshd_runctl::valid_app_name(b), "app name {s:?}");
    let hook = validate_hook_name(s).is_ok();
    if instance {
        let n: InstanceName = s.parse().expect("validated instance name parses");
        assert_eq!(n.as_str(), s);
        assert!(validate_snap_name(n.snap_name()).is_ok());
        assert_eq!(
            n.snap_name().len() + n.instance_key().map_or(0, |k| k.len() + 1),
            s.len()
        );
        assert!(s.len() <= refreshd_runctl::MAX_INSTANCE_NAME);
    }
    for (ok, what) in [
        (snap, "snap"),
        (instance, "instance"),
        (app, "app"),
        (hook, "hook"),
    ] {
        if ok {
            path_component(s, what);
        }
    }
    if validate_version(s).is_ok() {
        assert!(
            !s.is_empty() && s.len() <= 32 && !s.contains(['/', '\0', '\n', ' ']),
            "version {s:?}"
        );
    }
    for e in [
        validate_snap_name(s).err(),
        validate_app_name(s).err(),
        validate_hook_name(s).err(),
        validate_version(s).err(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(
            !e.to_string().contains('\n'),
            "name error is not one line: {e}"
        );
    }
}

/// A name that is safe to use as one path component and one word of a unit name.
fn path_component(s: &str, what: &str) {
    assert!(!s.is_empty() && s.len() <= 128, "{what} name {s:?}: length");
    assert!(
        s != "." && s != "..",
        "{what} name {s:?} is a dot component"
    );
    assert!(
        s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
        "{what} name {s:?} has a character outside [A-Za-z0-9_-]"
    );
}

fn accepted(y: &SnapYaml) {
    assert!(
        validate_snap_name(&y.name).is_ok(),
        "accepted name {:?}",
        y.name
    );
    assert!(
        refreshd_runctl::valid_snap_name(y.name.as_bytes()),
        "launcher refuses {:?}",
        y.name
    );
    assert!(
        validate_version(&y.version).is_ok(),
        "accepted version {:?}",
        y.version
    );
    if let Some(summary) = &y.summary {
        assert!(
            !summary.chars().any(char::is_control),
            "summary {summary:?}"
        );
        assert!(summary.chars().count() <= yaml::MAX_SUMMARY_CHARS);
    }
    if let Some(d) = &y.description {
        assert!(d.chars().count() <= yaml::MAX_DESCRIPTION_CHARS);
    }
    environment(&y.environment);
    for (name, app) in &y.apps {
        assert!(validate_app_name(name).is_ok(), "accepted app {name:?}");
        assert!(
            refreshd_runctl::valid_app_name(name.as_bytes()),
            "launcher refuses app {name:?}"
        );
        path_component(name, "app");
        command(&app.command);
        assert!(!app.program().is_empty(), "app {name:?}: empty program");
        assert!(app.args().all(|a| !a.is_empty() && !a.contains(' ')));
        if let Some(stop) = &app.stop_command {
            assert!(app.daemon.is_some(), "stop-command on a non-service");
            command(stop);
        }
        if app.stop_timeout.is_some() {
            assert!(app.daemon.is_some(), "stop-timeout on a non-service");
            assert!(
                app.stop_timeout_duration().is_some(),
                "stop-timeout accepted but unparsable"
            );
        }
        if app.refresh_mode.is_some() {
            assert!(app.daemon.is_some(), "refresh-mode on a non-service");
        }
        environment(&app.environment);
    }
    for (name, hook) in &y.hooks {
        assert!(validate_hook_name(name).is_ok(), "accepted hook {name:?}");
        path_component(name, "hook");
        environment(&hook.environment);
    }
    assert!(y.daemons().all(|(_, a)| a.daemon.is_some()));
    // The serde impls store and reload an accepted value (refreshd keeps it as JSON too).
    let json = serde_json::to_string(y).expect("accepted snap.yaml serializes");
    let back: SnapYaml = serde_json::from_str(&json).expect("serialized snap.yaml reloads");
    assert_eq!(&back, y);
}

/// A command goes into argv (split on spaces) and into a launch description line.
fn command(cmd: &str) {
    assert!(!cmd.trim().is_empty(), "empty command accepted");
    assert!(
        !cmd.chars().any(char::is_control),
        "control character in command {cmd:?}"
    );
    let program = cmd.split(' ').find(|w| !w.is_empty()).unwrap_or("");
    assert!(!program.starts_with('/'), "absolute program {cmd:?}");
    assert!(
        !program.split('/').any(|p| p == ".."),
        "program {cmd:?} leaves the snap"
    );
    assert!(
        cmd.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/. _#:$-".contains(c)),
        "command {cmd:?} has a character outside snapd's set"
    );
}

fn environment(env: &std::collections::BTreeMap<String, String>) {
    for (k, v) in env {
        let b = k.as_bytes();
        assert!(
            !b.is_empty() && (b[0].is_ascii_alphabetic() || b[0] == b'_'),
            "variable {k:?}"
        );
        assert!(
            b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_'),
            "variable {k:?}"
        );
        assert!(
            !v.contains(['\0', '\n', '\r']),
            "value of {k:?} has NUL or a line break"
        );
    }
}
