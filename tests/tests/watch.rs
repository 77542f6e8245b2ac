//! `refreshctl watch` follows a change across a daemon restart: it reconnects and, since the
//! first line after a reconnect is the current state, loses nothing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use refreshd_tests::*;

#[test]
fn watch_survives_a_daemon_restart() {
    if !mksquashfs_available() {
        skip("mksquashfs not installed (squashfs-tools)");
        return;
    }
    let root = Root::new("watch");
    let r = root.path();
    let blob = root.aux("hello.snap");
    hello_snap(&blob, "hello", "1.0");
    // Parked at link until this daemon goes away.
    let d = Daemon::start_with(
        r,
        DaemonOpts {
            failpoints: Some("park-do:link"),
            ..Default::default()
        },
    );
    let out = ctl(r, &["install", blob.to_str().unwrap(), "--no-wait"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = ctl_json(r, &["changes", "--json"])[0]["id"]
        .as_u64()
        .unwrap();

    let mut watch = Command::new(bin("refreshctl"))
        .arg("--root")
        .arg(r)
        .args(["watch", &id.to_string(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(root.aux("watch.err")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    // Event-driven: read until the watch reports the parked task.
    loop {
        let l = lines.next().expect("watch ended early").unwrap();
        let v: Value = serde_json::from_str(&l).unwrap();
        if v["status"] == "Wait" {
            break;
        }
    }
    // An orderly restart (SIGTERM), without the failpoint: the parked task runs again.
    assert!(d.stop().success());
    let _d = Daemon::start(r);
    let mut last = Value::Null;
    for l in lines {
        last = serde_json::from_str(&l.unwrap()).unwrap();
    }
    let st = watch.wait().unwrap();
    assert!(
        st.success(),
        "watch exited {st:?}: {}",
        std::fs::read_to_string(root.aux("watch.err")).unwrap()
    );
    assert_eq!(last["ready"], true, "{last}");
    assert_eq!(last["status"], "Done", "{last}");
    assert_eq!(ctl_json(r, &["list", "--json"])[0]["name"], "hello");
}
