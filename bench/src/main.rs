//! `refreshd-bench`: measures refreshd against baselines measured in the same run and writes a
//! report (markdown and JSON). Run through `scripts/bench.sh`, which installs the tools and
//! builds the release binaries this finds next to itself. Measures and reports; never judges a
//! time as a failure (a missed target is reported, with its cause, in the notes).

mod copy;
mod download;
mod exit_notice;
mod launch;
mod machine;
mod refresh;
mod report;
mod scale;
mod sdworld;
mod signed;
mod sizes;
mod spaced;
mod unblock;
mod util;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use clap::Parser;

use report::{Report, Section};
use util::Ctx;

#[derive(Parser)]
#[command(
    name = "refreshd-bench",
    about = "Benchmarks refreshd against baselines measured in the same run"
)]
struct Args {
    /// Where report.md and report.json are written.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Only these sections (numbers, comma-separated; 0 is the machine's own baselines).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Fewer repetitions and smaller data: a smoke run, not figures to publish.
    #[arg(long)]
    quick: bool,
    /// The command line to print in the report as the way to reproduce it.
    #[arg(long, default_value = "bash scripts/bench.sh")]
    command: String,
}

type Run = fn(&Ctx, &mut Section) -> anyhow::Result<()>;

const SECTIONS: &[(&str, &str, Run)] = &[
    ("0.", "The machine's own floor", machine::floor),
    ("1.", "Launch overhead", launch::run),
    ("2.", "Exit-to-notice latency", exit_notice::run),
    ("3.", "Unblock latency", unblock::run),
    ("4.", "Refresh end to end", refresh::run),
    ("5.", "copy-data", copy::run),
    ("6.", "Download", download::run),
    ("7.", "Idle daemon, and 8. Scale", scale::run),
    ("9.", "Release agent and confine-hook", sizes::run),
    (
        "10.",
        "Spaced launches, hybrid and systemd worlds",
        spaced::run,
    ),
];

fn main() -> std::process::ExitCode {
    // Section 10's timing loop: this binary, re-executed as an unprivileged user.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(spaced::TIMER) {
        return spaced::timer_main(&argv[2..]);
    }
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("refreshd-bench: run as root (loop mounts, cgroups, a setuid launcher, dropping caches): sudo bash scripts/bench.sh");
        return std::process::ExitCode::from(2);
    }
    let work = match tempfile::Builder::new().prefix("refreshd-bench-").tempdir() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("refreshd-bench: cannot make a scratch directory: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let ctx = Ctx {
        quick: args.quick,
        work: work.path().to_owned(),
    };
    let t0 = Instant::now();
    let started = jiff_free_now();
    catch_interrupt();
    let mut sections = vec![];
    for (id, title, f) in SECTIONS {
        if INTERRUPTED.load(Ordering::SeqCst) {
            println!("interrupted: the remaining sections are skipped");
            break;
        }
        let num = id.trim_end_matches('.');
        if !args.only.is_empty() && !args.only.iter().any(|o| o == num) {
            continue;
        }
        println!("== {id} {title}");
        let mut s = Section::new(id, title);
        let t = Instant::now();
        // A broken section is reported as such; the others still run.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&ctx, &mut s)));
        s.error = match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(p) => Some(
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into()),
            ),
        };
        s.seconds = t.elapsed().as_secs_f64();
        if let Some(e) = &s.error {
            println!("    FAILED: {e}");
        }
        println!("    ({:.0} s)", s.seconds);
        sections.push(s);
    }
    let report = Report {
        machine: machine::describe(),
        command: args.command.clone(),
        started,
        seconds: t0.elapsed().as_secs_f64(),
        sections,
    };
    let failed = report.sections.iter().any(|s| s.error.is_some());
    if let Err(e) = write(&args.out, &report) {
        eprintln!(
            "refreshd-bench: cannot write the report to {}: {e:#}",
            args.out.display()
        );
        return std::process::ExitCode::FAILURE;
    }
    println!(
        "report: {0}/report.md, {0}/report.json ({1:.0} s)",
        args.out.display(),
        report.seconds
    );
    if INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("refreshd-bench: interrupted; the report holds the sections that ran");
        return std::process::ExitCode::from(130);
    }
    if failed {
        eprintln!("refreshd-bench: some sections failed to run (see the report)");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C (SIGINT) or SIGTERM stops the run after the current section, whose guards then
/// unmount, detach and remove what it made: dying at once would leave mounts, loop devices,
/// cgroups and a test user behind. (The section's own children get the terminal's SIGINT too,
/// so the section ends quickly.)
fn catch_interrupt() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if let Err(e) = unsafe { sigaction(sig, &act) } {
            eprintln!("refreshd-bench: cannot catch {sig}: {e}");
        }
    }
}

fn write(out: &std::path::Path, report: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("report.md"), report.markdown())?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(report)? + "\n",
    )?;
    Ok(())
}

/// UTC now as `YYYY-MM-DD HH:MM UTC` (from `date`, to keep the binary free of a time crate).
fn jiff_free_now() -> String {
    util::sh("date -u '+%Y-%m-%d %H:%M UTC'")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
