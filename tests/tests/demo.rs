//! `bash scripts/demo.sh --systemd` runs to the end: in a throwaway systemd world, a logged-in
//! user's app runs in a scope of the user's own manager, and a refresh waits for it, then
//! completes once it exits.

use std::process::{Command, Stdio};
use std::time::Instant;

use refreshd_tests::installed::{build, repo_root};
use refreshd_tests::systemd;
use refreshd_tests::{skip, text};

#[test]
fn systemd_demo_refreshes_a_snap_while_a_users_app_runs_in_their_manager() {
    if let Err(why) = systemd::can_run() {
        skip(&why);
        return;
    }
    let started = Instant::now();
    let mut demo = Command::new("bash");
    demo.args(["scripts/demo.sh", "--systemd"])
        .current_dir(repo_root())
        .stdin(Stdio::null());
    // The demo builds first: as from a shell, so that it finds the build the tests run up to
    // date. What cargo and nextest set for a test (CARGO_MANIFEST_DIR, the libraries' path...)
    // would make build scripts run again, and the binaries the other tests use be rebuilt.
    for (var, _) in std::env::vars_os() {
        let name = var.to_string_lossy();
        if (name.starts_with("CARGO") && name != "CARGO_HOME")
            || name.starts_with("NEXTEST")
            || name.starts_with("RUST_")
            || name == "LD_LIBRARY_PATH"
        {
            demo.env_remove(&var);
        }
    }
    let out = demo
        .env("CARGO_TARGET_DIR", build().target)
        .output()
        .expect("running bash");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    println!("{stdout}\n--- stderr ---\n{stderr}");
    println!("demo.sh --systemd took {:.1?}", started.elapsed());
    assert!(
        out.status.success(),
        "demo.sh --systemd failed ({})",
        out.status
    );
    let lines: Vec<&str> = stdout.lines().collect();

    // "   demo is uid 1001; ..."
    let uid: u32 = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("demo is uid "))
        .and_then(|r| r.split(';').next())
        .and_then(|u| u.parse().ok())
        .expect("the demo says the user's uid");
    // "hello.nap (revision 1) running as pid PID for 600 s"
    let pid: u32 = lines
        .iter()
        .find_map(|l| l.strip_prefix("hello.nap (revision 1) running as pid "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("the app says its pid");

    // The kernel's word on where the app runs: a scope of the user's manager, made for it.
    let shown = lines
        .iter()
        .position(|l| *l == format!("$ cat /proc/{pid}/cgroup"))
        .expect("the demo shows the app's cgroup");
    let cgroup = lines[shown + 1..]
        .iter()
        .find(|l| l.starts_with("0::"))
        .expect("a cgroup2 line in /proc/PID/cgroup");
    let scope = cgroup
        .strip_prefix(&format!(
            "0::/user.slice/user-{uid}.slice/user@{uid}.service/app.slice/snap.hello.nap.refreshd-"
        ))
        .and_then(|s| s.strip_suffix(".scope"))
        .unwrap_or_else(|| {
            panic!("the app is not in a scope of user@{uid}.service's app.slice: {cgroup}")
        });
    assert!(
        scope.len() == 16 && scope.bytes().all(|b| b.is_ascii_hexdigit()),
        "{cgroup}"
    );

    // The refresh waited for that app, and completed once it exited.
    assert!(
        stdout.contains(&format!(
            "pid {pid} (user demo): /bin/sh /snap/hello/1/bin/nap 600"
        )),
        "the refresh did not name the app it waits for"
    );
    let exited = lines
        .iter()
        .position(|l| *l == "hello.nap exits")
        .expect("the app exits");
    let done = lines
        .iter()
        .position(|l| l.starts_with("Change ") && l.ends_with(" (Refresh \"hello\" to 2) is Done"))
        .expect("the refresh completes");
    assert!(exited < done, "the refresh completed before the app exited");
    assert!(
        lines[done..]
            .iter()
            .any(|l| l.starts_with("hello from hello 1.1 (revision 2), run 3")),
        "revision 2 does not run with revision 1's data"
    );
    assert!(lines.iter().any(|l| l.starts_with("== done in ")));
}
