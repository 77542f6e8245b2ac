//! Smoke test of the systemd harness: a real systemd boots as PID 1 in throwaway namespaces,
//! runs units, logs a user in (a session, their own manager), and leaves nothing behind on the
//! host.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use refreshd_tests::systemd::{self, BootOpts, Systemd, HOST_SYSCTLS};
use refreshd_tests::{skip, text};

fn can_run() -> bool {
    match systemd::can_run() {
        Ok(()) => true,
        Err(why) => {
            skip(&why);
            false
        }
    }
}

fn mountinfo() -> HashSet<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// What is left to check once an instance is dropped.
struct Traces {
    id: String,
    pid: i32,
    cgroup: PathBuf,
    dir: PathBuf,
}

impl Traces {
    fn of(sd: &Systemd) -> Traces {
        Traces {
            id: sd.id().to_owned(),
            pid: sd.pid(),
            cgroup: sd.cgroup().to_owned(),
            dir: sd.dir().to_owned(),
        }
    }

    fn assert_gone(&self) {
        // The init was reaped by unshare, which was reaped by the harness: the pid may only
        // have been reused by an unrelated process since.
        let comm = fs::read_to_string(format!("/proc/{}/comm", self.pid)).unwrap_or_default();
        assert_ne!(
            comm.trim(),
            "systemd",
            "{}: pid {} lives on",
            self.id,
            self.pid
        );
        assert!(
            !self.cgroup.exists(),
            "{}: cgroup {} is left",
            self.id,
            self.cgroup.display()
        );
        assert!(
            !self.dir.exists(),
            "{}: {} is left",
            self.id,
            self.dir.display()
        );
        let mounts: Vec<String> = mountinfo()
            .into_iter()
            .filter(|l| l.contains(&self.id))
            .collect();
        assert!(mounts.is_empty(), "{}: mounts left: {mounts:#?}", self.id);
        // No process on the host is in the instance's namespaces any more.
        let leftovers = processes_named("systemd")
            .into_iter()
            .filter(|&p| {
                fs::read_to_string(format!("/proc/{p}/cgroup"))
                    .unwrap_or_default()
                    .contains(&self.id)
            })
            .collect::<Vec<_>>();
        assert!(
            leftovers.is_empty(),
            "{}: processes left: {leftovers:?}",
            self.id
        );
    }
}

fn processes_named(name: &str) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/comm"))
                .map(|c| c.trim() == name)
                .unwrap_or(false)
        })
        .collect()
}

fn boot() -> Systemd {
    boot_with(BootOpts::default())
}

fn boot_with(opts: BootOpts) -> Systemd {
    let sd = Systemd::boot(opts).unwrap_or_else(|e| panic!("{e:#}"));
    println!(
        "{}: booted in {:.2?}, {}",
        sd.id(),
        sd.boot_time(),
        sd.boot_state()
    );
    if sd.boot_state() != "running" {
        println!("failed units:\n{}", sd.failed_units());
    }
    assert!(
        matches!(sd.boot_state(), "running" | "degraded"),
        "{}",
        sd.boot_state()
    );
    sd
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn boots_runs_units_and_leaves_nothing_behind() {
    if !can_run() {
        return;
    }
    // Were systemd ever booted on the host's root, systemd-tmpfiles would empty /tmp.
    let planted = tempfile::Builder::new()
        .prefix("refreshd-systemd-planted-")
        .tempfile_in("/tmp")
        .unwrap();
    let before = mountinfo();

    let sd = boot();
    let traces = Traces::of(&sd);

    let sysctls = systemd::host_sysctls();
    // It is PID 1 of its own world, in a container as far as it knows.
    for ns in ["pid", "mnt", "cgroup", "uts", "ipc", "net"] {
        let ours = fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let theirs = sd.run_ok(&["readlink", &format!("/proc/self/ns/{ns}")]);
        assert_ne!(ours.to_str().unwrap(), theirs.trim(), "{ns} namespace");
    }
    assert_eq!(sd.run_ok(&["cat", "/proc/1/comm"]).trim(), "systemd");
    // It reads the machine's sysctls and cannot write them (systemd raises fs.file-max at
    // boot when it may); its network's are its own.
    let write = sd.run(&[
        "sh",
        "-c",
        "cat /proc/sys/fs/file-max > /proc/sys/fs/file-max",
    ]);
    assert!(!write.status.success(), "/proc/sys is writable inside");
    assert!(
        text(&write.stderr).contains("Read-only file system"),
        "{}",
        text(&write.stderr)
    );
    assert_eq!(
        systemd::host_sysctls(),
        sysctls,
        "a boot changed the host's sysctls"
    );
    assert_eq!(
        sd.run_ok(&["systemd-detect-virt", "--container"]).trim(),
        "container-other"
    );
    // Its cgroup is the root of the cgroup2 hierarchy it sees.
    let cg = sd.run_ok(&["cat", "/proc/1/cgroup"]);
    assert!(cg.lines().any(|l| l == "0::/init.scope"), "{cg}");
    let running = sd.run_ok(&[
        "systemctl",
        "list-units",
        "--plain",
        "--no-legend",
        "--state=running",
    ]);
    println!("running units:\n{running}");
    for server in ["nginx", "postgresql", "cron", "ssh", "getty", "timesyncd"] {
        assert!(!running.contains(server), "{server} runs:\n{running}");
    }
    // The instance's /tmp is its own, the host's /tmp is untouched.
    assert!(!sd.host_path(planted.path().to_str().unwrap()).exists());
    assert!(planted.path().exists());

    // A transient unit.
    let out = sd.run_timeout(
        &[
            "systemd-run",
            "--unit=refreshd-smoke-transient",
            "--service-type=oneshot",
            "--wait",
            "--quiet",
            "touch",
            "/results/transient",
        ],
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "systemd-run: {}", text(&out.stderr));
    assert!(sd.results_dir().join("transient").exists());

    // A unit file, as refreshd will write them.
    sd.write_file(
        "/etc/systemd/system/refreshd-smoke.service",
        "[Unit]\nDescription=refreshd harness smoke test\n\n\
         [Service]\nType=oneshot\nRemainAfterExit=yes\n\
         ExecStart=/bin/sh -c 'echo started > /results/ok'\n\
         ExecStop=/bin/sh -c 'echo stopped > /results/ok'\n",
    );
    sd.write_file(
        "/etc/systemd/system/refreshd-smoke-daemon.service",
        "[Service]\nExecStart=/bin/sleep infinity\n",
    );
    sd.run_ok(&["systemctl", "daemon-reload"]);
    sd.run_ok(&["systemctl", "start", "refreshd-smoke.service"]);
    assert_eq!(
        fs::read_to_string(sd.results_dir().join("ok")).unwrap(),
        "started\n"
    );
    assert_eq!(sd.show("refreshd-smoke.service", "ActiveState"), "active");
    sd.run_ok(&["systemctl", "stop", "refreshd-smoke.service"]);
    assert_eq!(
        fs::read_to_string(sd.results_dir().join("ok")).unwrap(),
        "stopped\n"
    );
    assert_eq!(sd.show("refreshd-smoke.service", "ActiveState"), "inactive");

    // A long-running service: in its own cgroup, which the host sees below the instance's.
    sd.run_ok(&["systemctl", "start", "refreshd-smoke-daemon.service"]);
    assert_eq!(
        sd.show("refreshd-smoke-daemon.service", "ActiveState"),
        "active"
    );
    let main_pid: i32 = sd
        .show("refreshd-smoke-daemon.service", "MainPID")
        .parse()
        .unwrap();
    assert!(main_pid > 1);
    let group = sd
        .cgroup()
        .join("system.slice/refreshd-smoke-daemon.service");
    let procs = fs::read_to_string(group.join("cgroup.procs")).unwrap();
    assert_eq!(procs.lines().count(), 1, "{procs}");
    sd.run_ok(&["systemctl", "stop", "refreshd-smoke-daemon.service"]);
    assert_eq!(
        sd.show("refreshd-smoke-daemon.service", "ActiveState"),
        "inactive"
    );
    wait_for("the daemon's cgroup to go", Duration::from_secs(10), || {
        !group.exists()
    });

    let state = sd.state();
    println!("state after the units: {state}");
    assert!(matches!(state.as_str(), "running" | "degraded"), "{state}");

    // Teardown also says if the host's sysctls changed since the boot.
    sd.shutdown().expect("teardown");
    traces.assert_gone();
    assert_eq!(
        systemd::host_sysctls(),
        sysctls,
        "the instance changed the host's sysctls"
    );
    assert!(planted.path().exists(), "the host's /tmp was cleaned");
    let new: Vec<String> = mountinfo().difference(&before).cloned().collect();
    println!("mounts new on the host since boot (others' tests): {new:#?}");
    assert!(
        new.iter()
            .all(|l| !l.contains(" overlay ") && !l.contains("cgroup2")),
        "mounts left: {new:#?}"
    );
}

#[test]
fn two_instances_in_parallel() {
    if !can_run() {
        return;
    }
    let started = Instant::now();
    let (a, b) = std::thread::scope(|s| {
        let (a, b) = (s.spawn(boot), s.spawn(boot));
        (a.join().unwrap(), b.join().unwrap())
    });
    println!("both up in {:.2?}", started.elapsed());
    // Booted from threads that have exited since: the instances live on.
    std::thread::sleep(Duration::from_millis(200));
    let (ta, tb) = (Traces::of(&a), Traces::of(&b));
    assert_ne!(ta.pid, tb.pid);
    assert_ne!(ta.cgroup, tb.cgroup);
    assert_ne!(
        a.run_ok(&["cat", "/etc/machine-id"]),
        b.run_ok(&["cat", "/etc/machine-id"])
    );
    // Each has only a loopback of its own.
    let links = |sd: &Systemd| -> Vec<String> {
        sd.run_ok(&["cat", "/proc/net/dev"])
            .lines()
            .skip(2)
            .filter_map(|l| Some(l.split(':').next()?.trim().to_owned()))
            .collect()
    };
    assert_eq!(links(&a), ["lo"]);
    assert_eq!(links(&b), ["lo"]);
    assert_ne!(
        a.run_ok(&["readlink", "/proc/self/ns/net"]),
        b.run_ok(&["readlink", "/proc/self/ns/net"])
    );
    for (sd, name) in [(&a, "a"), (&b, "b")] {
        assert!(matches!(sd.state().as_str(), "running" | "degraded"));
        sd.write_file("/etc/refreshd-which", name);
        sd.run_ok(&[
            "systemd-run",
            "--wait",
            "--quiet",
            "--service-type=oneshot",
            "cp",
            "/etc/refreshd-which",
            "/results/which",
        ]);
    }
    // Each wrote into its own overlay and its own results directory.
    assert_eq!(
        fs::read_to_string(a.results_dir().join("which")).unwrap(),
        "a"
    );
    assert_eq!(
        fs::read_to_string(b.results_dir().join("which")).unwrap(),
        "b"
    );
    assert!(!Path::new("/etc/refreshd-which").exists());

    a.shutdown().expect("teardown of a");
    ta.assert_gone();
    // b did not notice.
    assert!(matches!(b.state().as_str(), "running" | "degraded"));
    drop(b);
    tb.assert_gone();
}

#[test]
fn failed_boot_says_why_and_cleans_up() {
    if !can_run() {
        return;
    }
    // A start job that never ends holds the boot up past the deadline.
    let opts = BootOpts {
        timeout: Duration::from_secs(5),
        ..BootOpts::default()
    }
    .with_file(
        "/etc/systemd/system/refreshd-hang.service",
        "[Service]\nType=oneshot\nExecStart=/bin/sleep infinity\nTimeoutStartSec=infinity\n",
        0o644,
    )
    .with_file(
        "/etc/systemd/system/multi-user.target.d/refreshd-hang.conf",
        "[Unit]\nWants=refreshd-hang.service\n",
        0o644,
    );
    let started = Instant::now();
    let err = match Systemd::boot(opts) {
        Ok(sd) => panic!("booted {} with a hanging start job", sd.id()),
        Err(e) => format!("{e:#}"),
    };
    println!("failed in {:.2?}:\n{err}", started.elapsed());
    assert!(err.contains("did not come up"), "{err}");
    // The journal and the console say what it was waiting for.
    assert!(err.contains("--- journalctl"), "{err}");
    assert!(err.contains("--- console ---"), "{err}");
    assert!(err.contains("refreshd-hang.service"), "{err}");
    let dir = err
        .split_whitespace()
        .nth(2)
        .map(PathBuf::from)
        .expect("dir in the message");
    assert!(!dir.exists(), "{} is left", dir.display());
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let id = name.rsplit_once('-').unwrap().0;
    let cgroup = refreshd_tests::cgroup_mounts().1.unwrap().join(id);
    assert!(!cgroup.exists(), "{} is left", cgroup.display());
    let leftovers: Vec<String> = mountinfo().into_iter().filter(|l| l.contains(id)).collect();
    assert!(leftovers.is_empty(), "mounts left: {leftovers:#?}");
}

#[test]
fn host_sysctls_a_boot_could_change_are_compared() {
    // systemd raises these at boot when it may (fs.nr_open and fs.file-max to the maximum,
    // net.unix.max_dgram_qlen to 512): teardown must compare them.
    for name in ["fs/nr_open", "fs/file-max", "net/unix/max_dgram_qlen"] {
        assert!(HOST_SYSCTLS.contains(&name), "{name} is not compared");
    }
    let values = systemd::host_sysctls();
    assert_eq!(values.len(), HOST_SYSCTLS.len());
    for (name, value) in values {
        if Path::new("/proc/sys").join(name).exists() {
            assert!(!value.is_empty(), "{name} read as empty");
        }
    }
}

#[test]
fn a_user_logs_in_and_has_a_manager_of_their_own() {
    if !can_run() {
        return;
    }
    let sysctls = systemd::host_sysctls();
    let sd = boot();
    let name = format!("rdlogin{}", std::process::id() % 100_000);
    let login = sd.login(&name);
    println!("{name} logged in as uid {}", login.uid);
    assert_eq!(login.name, name);
    assert!(login.uid >= 1000, "uid {}", login.uid);
    // Made in the instance's overlay, not on the host.
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        !passwd.lines().any(|l| l.starts_with(&format!("{name}:"))),
        "{name} was added to the host's /etc/passwd"
    );
    assert!(!Path::new("/home").join(&name).exists());
    let uid = login.uid;

    // A command of theirs runs as them, with a login's environment, in a session scope.
    let out = sd.user_run_ok(
        &login,
        "id -un; id -u; echo \"$XDG_RUNTIME_DIR\"; echo \"$HOME\"; cat /proc/self/cgroup",
    );
    println!("a command of {name}'s:\n{out}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(name.as_str()));
    assert_eq!(lines.next(), Some(uid.to_string().as_str()));
    assert_eq!(lines.next(), Some(format!("/run/user/{uid}").as_str()));
    assert_eq!(lines.next(), Some(format!("/home/{name}").as_str()));
    let session = lines
        .find(|l| l.starts_with("0::"))
        .expect("a cgroup2 line");
    let scope = session
        .strip_prefix(&format!("0::/user.slice/user-{uid}.slice/session-"))
        .and_then(|s| s.strip_suffix(".scope"))
        .unwrap_or_else(|| panic!("not in a session scope of {name}: {session}"));
    assert!(!scope.is_empty(), "{session}");

    // Their manager runs (the holder's session keeps it up after the command's closed).
    assert_eq!(
        sd.show(&format!("user@{uid}.service"), "ActiveState"),
        "active"
    );
    let out = sd.user_systemctl(&login, &["is-system-running"]);
    let state = text(&out.stdout).trim().to_owned();
    assert!(
        matches!(state.as_str(), "running" | "degraded"),
        "{name}'s manager is {state:?}: {}",
        text(&out.stderr)
    );
    let sessions = sd.run_ok(&["loginctl", "list-sessions", "--no-legend"]);
    println!("sessions:\n{sessions}");
    assert!(
        sessions
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some(name.as_str())),
        "no session of {name} stays open:\n{sessions}"
    );
    assert!(sd
        .host_path(&format!("/run/user/{uid}/systemd/private"))
        .exists());

    // A scope of their manager's, as an app launched from their session gets.
    let out = sd.user_run_ok(
        &login,
        "systemd-run --user --scope --quiet cat /proc/self/cgroup",
    );
    let app = out
        .lines()
        .find(|l| l.starts_with("0::"))
        .unwrap_or_else(|| panic!("no cgroup2 line in {out:?}"));
    println!("systemd-run --user --scope: {app}");
    let prefix = format!("0::/user.slice/user-{uid}.slice/user@{uid}.service/app.slice/run-");
    assert!(
        app.starts_with(&prefix) && app.ends_with(".scope"),
        "{app} is not a scope in {name}'s app.slice"
    );

    // Nothing of the login reached the host's sysctls (logind, the user's manager).
    assert_eq!(
        systemd::host_sysctls(),
        sysctls,
        "the host's sysctls changed"
    );
    sd.shutdown().expect("teardown");
    assert_eq!(
        systemd::host_sysctls(),
        sysctls,
        "the instance changed the host's sysctls"
    );
}
