//! Build-time tasks. `xtask assets OUT_DIR` writes, from the clap parsers themselves (so they
//! never drift from the binaries):
//!
//! - `OUT_DIR/man/refreshctl.1`, one `refreshctl-SUBCOMMAND.1` per subcommand, `refreshd.8`;
//! - `OUT_DIR/completions/refreshctl.bash`, `_refreshctl` (zsh), `refreshctl.fish`.
//!
//! `make` runs it; `make install` puts the results in place (see the Makefile).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use clap_mangen::roff::{bold, italic, roman, Inline, Roff};
use clap_mangen::Man;

const USAGE: &str = "usage: xtask assets OUT_DIR  (man pages into OUT_DIR/man, shell completions into OUT_DIR/completions)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args.as_slice() {
        [task, out] if task == "assets" => PathBuf::from(out),
        _ => {
            eprintln!("xtask: {USAGE}");
            return ExitCode::from(2);
        }
    };
    match assets(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn assets(out: &Path) -> Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // Pages of subcommands that no longer exist must not be installed.
    for entry in fs::read_dir(&man).with_context(|| format!("cannot read {}", man.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("refreshctl") && name.ends_with(".1") {
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    man_pages(&man)?;
    shell_completions(&completions)
}

// ---- man pages ----

/// One exit code of refreshctl and what it means.
struct ExitStatus {
    code: String,
    meaning: String,
}

/// refreshctl's `--help` ends with its exit codes (`  N  meaning` lines) and a few notes: the
/// man pages take both from there, the one place they are written.
fn exit_codes(cli: &clap::Command) -> Result<(Vec<ExitStatus>, Vec<String>)> {
    let text = cli
        .get_after_help()
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut codes = Vec::new();
    let mut notes = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed == "Exit codes:" {
            continue;
        }
        let mut parts = trimmed.splitn(2, char::is_whitespace);
        match (parts.next(), parts.next()) {
            (Some(code), Some(meaning))
                if line.starts_with(' ') && code.bytes().all(|b| b.is_ascii_digit()) =>
            {
                codes.push(ExitStatus {
                    code: code.to_owned(),
                    meaning: meaning.trim().to_owned(),
                });
            }
            _ => notes.push(trimmed.to_owned()),
        }
    }
    if codes.is_empty() {
        bail!("refreshctl's --help no longer lists its exit codes (\"  N  meaning\" lines after \"Exit codes:\"); the man pages take them from there");
    }
    Ok((codes, notes))
}

fn man_pages(dir: &Path) -> Result<()> {
    let mut cli = refreshd_client::cli::Cli::command().disable_help_subcommand(true);
    // Propagates the global options (--root, --socket) into the subcommands and names them
    // `refreshctl-SUB` (file and title) and `refreshctl SUB` (synopsis).
    cli.build();
    let (codes, notes) = exit_codes(&cli)?;
    // Every refreshctl page's footer names refreshctl, not the subcommand alone.
    let source = format!("refreshctl {}", cli.get_version().unwrap_or_default());
    // A page per command, nested ones too (`refreshctl store init` is refreshctl-store-init).
    let mut subs: Vec<(String, clap::Command)> = Vec::new();
    for s in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("refreshctl-{}", s.get_name());
        let nested: Vec<_> = s
            .get_subcommands()
            .filter(|n| !n.is_hide_set())
            .map(|n| (format!("{name}-{}", n.get_name()), n.clone()))
            .collect();
        subs.push((name, s.clone()));
        subs.extend(nested);
    }

    let pages: Vec<String> = subs.iter().map(|(p, _)| p.clone()).collect();
    let mut see_also: Vec<(String, &str)> = pages.iter().map(|p| (p.clone(), "1")).collect();
    see_also.push(("refreshd".into(), "8"));
    write_page(dir, Man::new(cli.clone()), true, true, &notes, |r| {
        client_sections(r, &codes);
        see_also_section(r, &see_also);
    })?;

    for (own, sub) in subs {
        let mut see_also: Vec<(String, &str)> = vec![("refreshctl".into(), "1")];
        see_also.extend(
            pages
                .iter()
                .filter(|p| **p != own)
                .map(|p| (p.clone(), "1")),
        );
        see_also.push(("refreshd".into(), "8"));
        let nested = sub.has_subcommands();
        write_page(
            dir,
            Man::new(sub).source(&source),
            nested,
            false,
            &[],
            |r| {
                client_sections(r, &codes);
                see_also_section(r, &see_also);
            },
        )?;
    }

    let daemon = refreshd::daemon::Args::command();
    write_page(dir, Man::new(daemon).section("8"), false, true, &[], |r| {
        daemon_sections(r);
        see_also_section(
            r,
            &[
                ("refreshctl".into(), "1"),
                ("systemd.service".into(), "5"),
                ("systemd.socket".into(), "5"),
                ("tmpfiles.d".into(), "5"),
                ("journalctl".into(), "1"),
            ],
        );
    })
}

/// clap_mangen's sections with ours after them, then the version (subcommands have none of
/// their own). clap_mangen's after-help section ("EXTRA") is left out: what it would say is in
/// EXIT STATUS and DESCRIPTION.
fn write_page(
    dir: &Path,
    man: Man,
    subcommands: bool,
    version: bool,
    notes: &[String],
    ours: impl FnOnce(&mut Roff),
) -> Result<()> {
    let title = man.get_filename();
    let title = title.rsplit_once('.').map_or(&*title, |(name, _)| name);
    let man = man.manual("refreshd").date("").title(title.to_uppercase());
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    let io = (|| -> std::io::Result<()> {
        man.render_title(&mut page)?;
        // Unhyphenated, names stay whole: `refreshctl-refresh(1)` can be searched for.
        let mut r = Roff::new();
        r.control("nh", []);
        r.to_writer(&mut page)?;
        man.render_name_section(&mut page)?;
        man.render_synopsis_section(&mut page)?;
        man.render_description_section(&mut page)?;
        let mut r = Roff::new();
        description_notes(&mut r, notes);
        r.to_writer(&mut page)?;
        man.render_options_section(&mut page)?;
        if subcommands {
            man.render_subcommands_section(&mut page)?;
        }
        let mut r = Roff::new();
        ours(&mut r);
        r.to_writer(&mut page)?;
        if version {
            man.render_version_section(&mut page)?;
        }
        Ok(())
    })();
    io.context("cannot render a man page")?;
    write_file(&path, &page)
}

fn description_notes(r: &mut Roff, notes: &[String]) {
    for note in notes {
        r.control("PP", []);
        r.text([roman(note.as_str())]);
    }
}

fn client_sections(r: &mut Roff, codes: &[ExitStatus]) {
    r.control("SH", ["EXIT STATUS"]);
    for c in codes {
        r.control("TP", []);
        r.text([bold(c.code.as_str())]);
        r.text([roman(c.meaning.as_str())]);
    }

    r.control("SH", ["ENVIRONMENT"]);
    r.control("TP", []);
    r.text([bold(refreshd_client::cli::args::SOCKET_ENV)]);
    r.text([
        roman("refreshd's socket, used when neither "),
        bold("--socket"),
        roman(" nor "),
        bold("--root"),
        roman(" is given."),
    ]);

    r.control("SH", ["FILES"]);
    r.control("TP", []);
    r.text([italic("/run/refreshd.socket")]);
    r.text([
        roman("refreshd's API socket ("),
        italic("DIR/run/refreshd.socket"),
        roman(" with "),
        bold("--root"),
        roman(" "),
        italic("DIR"),
        roman(
            "). Reading commands work for every user; changes need root or refreshd's admin group.",
        ),
    ]);
}

fn daemon_sections(r: &mut Roff) {
    r.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in [
        ("0", "stopped in order (SIGTERM or SIGINT): running tasks reached an end and everything is persisted"),
        ("1", "could not start or failed; the reason is printed on standard error as one line"),
        ("2", "usage error (bad arguments)"),
    ] {
        r.control("TP", []);
        r.text([bold(code)]);
        r.text([roman(meaning)]);
    }

    r.control("SH", ["ENVIRONMENT"]);
    for (name, meaning) in [
        ("RUST_LOG", "what is logged, as a tracing filter (default: info)"),
        ("LISTEN_FDS, LISTEN_PID", "set by systemd (refreshd.socket): refreshd serves on the socket it passes, so clients keep connecting while the daemon restarts"),
        ("NOTIFY_SOCKET, WATCHDOG_USEC", "set by systemd (Type=notify): readiness, status and watchdog pings"),
        ("JOURNAL_STREAM", "set by systemd: logs go to the journal with the fields SNAP, CHANGE and TASK"),
        ("NO_COLOR", "no colour in logs on a terminal"),
    ] {
        r.control("TP", []);
        r.text([bold(name)]);
        r.text([roman(meaning)]);
    }

    r.control("SH", ["FILES"]);
    r.text([
        roman("Every path below is under the root ("),
        bold("--root"),
        roman(", default /)."),
    ]);
    for (path, meaning) in [
        ("/run/refreshd.socket", "the API socket (created by refreshd.socket under systemd)"),
        ("/run/refreshd/", "the runtime directory: daemon.lock (the running daemon's pid), runctl/ (the markers launches and refreshes agree through)"),
        ("/var/lib/refreshd/state.db", "the state: snaps, changes and tasks (SQLite)"),
        ("/var/lib/refreshd/blobs/", "one image per installed revision"),
        ("/var/lib/refreshd/uploads/", "uploads until their change takes them"),
        ("/var/lib/refreshd/launch/", "how confine-hook starts each app of each revision"),
        ("/usr/lib/refreshd/confine-hook", "the launcher every app start goes through (setuid root); /snap/bin/NAME links to it"),
        ("/usr/lib/refreshd/refresh-release-agent", "the cgroup v1 release agent, found next to refreshd unless --release-agent names another"),
        ("/snap/NAME/REV/", "a revision's payload; /snap/NAME/current links the current one"),
        ("/var/snap/NAME/", "system data of a snap, per revision and common"),
        ("/etc/systemd/system/snap.NAME.APP.service", "the units of snaps' services"),
    ] {
        r.control("TP", []);
        r.text([italic(path)]);
        r.text([roman(meaning)]);
    }
}

fn see_also_section(r: &mut Roff, pages: &[(String, &str)]) {
    r.control("SH", ["SEE ALSO"]);
    let mut line: Vec<Inline> = Vec::new();
    for (i, (name, section)) in pages.iter().enumerate() {
        if i > 0 {
            line.push(roman(", "));
        }
        line.push(bold(name.as_str()));
        line.push(roman(format!("({section})")));
    }
    r.text(line);
}

// ---- completions ----

fn shell_completions(dir: &Path) -> Result<()> {
    let mut cli = refreshd_client::cli::Cli::command();
    for (shell, file) in [
        (Shell::Bash, "refreshctl.bash"),
        (Shell::Zsh, "_refreshctl"),
        (Shell::Fish, "refreshctl.fish"),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cli, "refreshctl", &mut script);
        write_file(&dir.join(file), &script)?;
    }
    Ok(())
}

/// Writes beside the final name and renames, so a page is never seen half written.
fn write_file(path: &Path, content: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".xtask-tmp");
    let tmp = PathBuf::from(tmp);
    let mut f =
        fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(content)
        .and_then(|()| f.flush())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}
