//! `scripts/demo.sh --systemd`: the demo's main job in a throwaway systemd world (systemd as
//! PID 1 of namespaces of its own, a cgroup2 hierarchy, logind; tests/src/systemd.rs), with
//! refreshd installed by `make install` and run by its units (tests/src/installed.rs). A user
//! logs in and starts the sample snap's app from their session; the demo shows the app's cgroup
//! as the kernel says it, and a refresh that waits for the app and completes once it exits.
//! Everything happens inside the world, which is torn down at the end: the host keeps nothing.
//! Needs root and the binaries built (`cargo build --workspace --bins`).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ExitCode, Stdio};

use refreshd_tests::installed::{repo_root, task_status, Installed};
use refreshd_tests::systemd::{self, BootOpts, Login, Systemd};

/// The signed store inside, and its keys (kept out of it, out of the daemon's reach).
const STORE: &str = "/srv/refreshd-store";
const KEYS: &str = "/root/store-keys";
/// Who logs in.
const USER: &str = "demo";

fn main() -> ExitCode {
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("demo.sh --systemd: {why}");
            ExitCode::FAILURE
        }
    }
}

/// The demo; an error says what went wrong (the world is torn down on the way out).
fn demo() -> Result<(), String> {
    systemd::can_run().map_err(|why| format!("cannot boot a systemd world here: {why}"))?;
    if refreshd_tests::find_program("mksquashfs").is_none() {
        return Err("mksquashfs is missing: install squashfs-tools".into());
    }
    let started = std::time::Instant::now();
    step("installing refreshd with `make install` into a throwaway systemd world: systemd is PID 1 of namespaces of its own, on an overlay of /, with a cgroup2 hierarchy; refreshd.socket is enabled (refreshd starts on the first request)");
    let w = Installed::boot(BootOpts::default(), &format!("--store {STORE}"));
    let sd = &w.sd;
    println!(
        "   booted in {:.1?}: {}; PID 1 is {}",
        sd.boot_time(),
        sd.boot_state(),
        sd.run_ok(&["cat", "/proc/1/comm"]).trim()
    );
    let demo = Demo { w: &w };

    step("the store's operator makes a signed store; its keys go to a directory of their own, never inside it");
    demo.ctl(&["store", "init", "--store", STORE, "--keys", KEYS])?;
    step("packing the sample snap (examples/hello) into a .snap file and publishing it, signed");
    let src = sd.results_dir().join("hello");
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(repo_root().join("examples/hello"))
        .arg(&src)
        .output()
        .expect("cp");
    if !out.status.success() {
        return Err(format!(
            "copying examples/hello into the world failed: {}",
            text(&out.stderr).trim()
        ));
    }
    demo.ctl(&["pack", "/results/hello", "-o", "/root/hello_1.0.snap"])?;
    demo.ctl(&[
        "publish",
        "--store",
        STORE,
        "--keys",
        KEYS,
        "/root/hello_1.0.snap",
    ])?;
    step("the machine's admin pins the store's root where refreshd looks for it");
    demo.root(&[
        "install",
        "-D",
        "-m",
        "644",
        &format!("{STORE}/tuf/1.root.json"),
        "/etc/refreshd/store-root.json",
    ])?;
    step(&format!(
        "refreshd (started by systemd on this first request) installs hello from {STORE}, verified from that root"
    ));
    demo.ctl(&["install", "hello"])?;
    demo.ctl(&["list"])?;
    println!("-- running it through its launcher (twice: its data persists between runs)");
    demo.root(&["/snap/bin/hello"])?;
    demo.root(&["/snap/bin/hello"])?;

    step(&format!(
        "{USER} logs in: a session of theirs (through PAM and logind), and their own systemd manager"
    ));
    let login = sd.login(USER);
    println!(
        "   {USER} is uid {}; user@{}.service runs {USER}'s manager ({})",
        login.uid,
        login.uid,
        text(&sd.user_systemctl(&login, &["is-system-running"]).stdout).trim()
    );

    step("version 1.1 is published; then, while an app of hello runs, hello is refreshed: the refresh waits for the app, never kills it");
    demo.root(&["cp", "-a", "/results/hello", "/root/hello-1.1"])?;
    demo.root(&[
        "sed",
        "-i",
        "s/^version: .*/version: '1.1'/",
        "/root/hello-1.1/meta/snap.yaml",
    ])?;
    demo.ctl(&["pack", "/root/hello-1.1", "-o", "/root/hello_1.1.snap"])?;
    demo.ctl(&[
        "publish",
        "--store",
        STORE,
        "--keys",
        KEYS,
        "/root/hello_1.1.snap",
    ])?;
    println!("-- {USER} starts hello.nap from their session; it naps until they end it");
    let nap_cmd = "/snap/bin/hello.nap 600";
    println!("{USER}$ {nap_cmd} &");
    let mut nap = Reaped(
        sd.user_command(&login, &format!("exec {nap_cmd}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning the app"),
    );
    let mut nap_out = BufReader::new(nap.0.stdout.take().expect("piped"));
    let mut first = String::new();
    nap_out.read_line(&mut first).expect("reading the app");
    print!("{first}");
    // "hello.nap (revision 1) running as pid PID for 600 s"
    let pid: u32 = first
        .split_once(" as pid ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("hello.nap said {first:?}, not its pid"))?;
    println!("-- where the app runs, as the kernel says");
    demo.root(&["cat", &format!("/proc/{pid}/cgroup")])?;

    println!(
        "-- the refresh is asked for while hello.nap runs; it downloads and pre-copies, then waits"
    );
    println!("$ refreshctl refresh hello --no-wait");
    let change = w.ctl_ok(&["refresh", "hello", "--no-wait"]);
    let change = change.trim();
    println!("{change}");
    let id: u64 = change
        .parse()
        .map_err(|_| format!("refreshctl refresh printed {change:?}, not a change's id"))?;
    let mut watch = w.watch(id);
    let pid_named = format!("pid {pid} ");
    if !watch
        .until(|c| task_status(c, "wait-for-apps") == "Wait" && c.to_string().contains(&pid_named))
    {
        return Err(format!(
            "the refresh did not come to wait for pid {pid}: {}\n--- refreshd's journal ---\n{}",
            watch.last,
            w.journal("refreshd.service")
        ));
    }
    drop(watch);
    println!("-- its tasks: wait-for-apps names the running app (pid, user, command line)");
    demo.ctl(&["tasks", change])?;
    demo.ctl(&["status", "hello"])?;

    println!("-- {USER} ends the app: its nap (a sleep) is cut short, and hello.nap exits");
    let children = sd.run_ok(&["cat", &format!("/proc/{pid}/task/{pid}/children")]);
    let sleep = children
        .split_whitespace()
        .next()
        .ok_or_else(|| format!("hello.nap (pid {pid}) has no child to end"))?;
    demo.user(&login, &format!("kill {sleep}"))?;
    let mut rest = String::new();
    nap_out.read_to_string(&mut rest).expect("reading the app");
    print!("{rest}");
    let status = nap.0.wait().expect("waiting for the app");
    if !status.success() {
        return Err(format!("hello.nap ended with {status}"));
    }
    println!("-- following the refresh: it completes the moment the app exits");
    demo.ctl(&["watch", change])?;
    println!("-- revision 2, with revision 1's data copied");
    demo.root(&["/snap/bin/hello"])?;
    demo.ctl(&["list"])?;
    demo.ctl(&["changes", "--all"])?;

    step("tearing the world down: its processes, mounts, cgroups and files go; the host's sysctls are checked");
    let Installed { sd } = w;
    sd.shutdown().map_err(|e| format!("teardown: {e}"))?;
    println!("== done in {:.1?}", started.elapsed());
    Ok(())
}

/// A child process (the app's `nsenter`), killed and reaped if the demo ends first: the app
/// itself dies with the world.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

struct Demo<'a> {
    w: &'a Installed,
}

impl Demo<'_> {
    fn sd(&self) -> &Systemd {
        &self.w.sd
    }

    /// `refreshctl ARGS` inside as root, its output as it comes; fails the demo if it fails.
    fn ctl(&self, args: &[&str]) -> Result<(), String> {
        println!("$ refreshctl {}", shell_words(args));
        let mut cmd = vec![refreshd_tests::installed::REFRESHCTL];
        cmd.extend_from_slice(args);
        self.run(&cmd)?;
        println!();
        Ok(())
    }

    /// A command inside as root.
    fn root(&self, cmd: &[&str]) -> Result<(), String> {
        println!("$ {}", shell_words(cmd));
        self.run(cmd)
    }

    fn run(&self, cmd: &[&str]) -> Result<(), String> {
        let status = self
            .sd()
            .command(cmd)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .expect("running nsenter");
        if !status.success() {
            return Err(format!(
                "{} failed ({status})\n--- refreshd's journal ---\n{}",
                cmd.join(" "),
                self.w.journal("refreshd.service")
            ));
        }
        Ok(())
    }

    /// A shell command of the user's, from a session of theirs.
    fn user(&self, login: &Login, shell_cmd: &str) -> Result<(), String> {
        println!("{}$ {shell_cmd}", login.name);
        let status = self
            .sd()
            .user_command(login, shell_cmd)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .expect("running nsenter");
        if !status.success() {
            return Err(format!("{shell_cmd} as {} failed ({status})", login.name));
        }
        Ok(())
    }
}

/// `words` as one would type them in a shell.
fn shell_words(words: &[&str]) -> String {
    let plain = |w: &str| {
        !w.is_empty()
            && w.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@%+,".contains(&b))
    };
    words
        .iter()
        .map(|w| {
            if plain(w) {
                (*w).to_owned()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn step(what: &str) {
    println!("== {what}");
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
