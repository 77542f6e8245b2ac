//! The systemd world of section 10: a systemd booted as PID 1 by the tests' harness
//! (`refreshd_tests::systemd`, pure cgroup2), refreshd installed in it by `make install` and
//! running from its own units, the no-op snap installed from a store, and a user logged in
//! through PAM (a session of theirs, their manager user@UID.service running). The same timing
//! loop as on the host ([`crate::spaced::TIMER`]) runs there from a session of that user.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context as _};
use refreshd_tests::installed::{Installed, STORE};
use refreshd_tests::systemd::BootOpts;
use refreshd_tests::text;

use crate::spaced::{self, Cmd, Plan, Scratch, Times, World, SNAP, TIMER};
use crate::util::Ctx;

/// The user logged in inside (the instance's own /etc/passwd: nothing on the host).
const USER: &str = "rfdbench";
/// Where the floor's setuid helper is installed inside (the instance's overlay).
const LIBEXEC: &str = "/var/lib/refreshd-bench";

pub fn measure(ctx: &Ctx, dir: &Path, snap: &Path) -> anyhow::Result<World> {
    let w = Installed::boot(
        BootOpts::default(),
        &format!("--insecure-unsigned-store --store {STORE}"),
    );
    let sd = &w.sd;
    println!(
        "    booted in {:.1} s ({}); installing {SNAP} from the store",
        sd.boot_time().as_secs_f64(),
        sd.boot_state()
    );
    w.publish(snap);
    w.ctl_ok(&["install", SNAP]);
    let state = sd.show("refreshd.service", "ActiveState");
    if state != "active" {
        let journal = w.journal("refreshd.service");
        bail!(
            "refreshd.service is {state}, not active, after `refreshctl install` inside (its \
             journal ends: {})",
            journal.lines().last().unwrap_or("nothing")
        );
    }
    let login = sd.login(USER);

    let direct = format!("/snap/{SNAP}/current/bin/noop");
    let mounts = [(sd.cgroup().to_owned(), "/sys/fs/cgroup".to_owned())];
    let scratch = Scratch::new(&mounts)?;
    let seen: Vec<String> = scratch.groups.iter().map(|g| g.1.clone()).collect();
    let helper = spaced::floor_helper(dir, &seen, &direct)?;
    // Files reach the instance through its results directory (bound at /results); the
    // setuid helper is installed from there into the overlay, root's and the user's group's.
    let results = sd.results_dir();
    fs::copy(&helper, results.join("floor"))?;
    let floor = format!("{LIBEXEC}/floor");
    let out = sd.run(&[
        "sh",
        "-c",
        r#"set -e
install -d -m 0755 "$1"
install -o root -g "$(id -gn "$2")" -m 4750 /results/floor "$3"
rm /results/floor"#,
        "sh",
        LIBEXEC,
        USER,
        &floor,
    ]);
    if !out.status.success() {
        bail!(
            "cannot install the floor's helper inside: {}",
            text(&out.stderr).trim()
        );
    }
    spaced::timer_binary(&results.join("timer"))?;

    let launched_in = sd.user_run_ok(&login, &format!("/snap/bin/{SNAP}.where"));
    let plan = Plan::sized(
        ctx,
        vec![
            Cmd::new("direct", &[&direct]),
            Cmd::new("floor", &[&floor]),
            Cmd::new("launch", &[&format!("/snap/bin/{SNAP}")]),
            Cmd {
                optional: true,
                ..Cmd::new(
                    "systemd-run --user --scope",
                    &["systemd-run", "--user", "--scope", "--quiet", &direct],
                )
            },
        ],
    );
    fs::write(results.join("plan.json"), serde_json::to_vec(&plan)?)?;
    println!(
        "    timing from a session of {USER} (user@{}.service)",
        login.uid
    );
    let out = sd
        .user_command(
            &login,
            &format!(
                "exec timeout 900 /results/timer {TIMER} /results/plan.json /results/times.json"
            ),
        )
        .output()
        .context("cannot run the timing loop inside")?;
    if !out.status.success() {
        bail!(
            "the timing loop failed inside ({}): {}",
            out.status,
            text(&out.stderr).trim()
        );
    }
    let times: Times = serde_json::from_slice(
        &fs::read(results.join("times.json")).context("the timing loop wrote no times")?,
    )?;
    drop(scratch);
    Ok(World {
        name: "systemd world",
        times,
        floor_joins: spaced::joins(&["cgroup2".to_owned()]),
        launched_in,
        absent: None,
    })
}
