//! What each refreshctl command does.

use std::io::{self, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, Result};
use refreshd_snap::text::printable;
use serde::Serialize;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::args::{ChangeJson, Command, JsonFlag, NoWait};
use super::exit::{ChangeFailed, InProgress, Interrupted, UsageError};
use super::format::{self, for_terminal, Clock, Paint};
use super::progress::{human, Follower, Meter, Mode, Width};
use crate::client::{Client, ClientError};
use crate::types::{Change, ErrorKind, Hold, NoteKind, RefreshNote, Select, StoreInfo};

/// Runs `command`. Times in text are shown against `clock`; `paint` colours standard output.
pub async fn run(command: Command, client: &Client, clock: &Clock, paint: Paint) -> Result<()> {
    match command {
        Command::BootRefresh {
            timeout,
            json: JsonFlag { json },
        } => super::boot::run(client, timeout, json).await,
        Command::Status {
            name: None,
            json: JsonFlag { json },
        } => {
            let info = client.system_info().await.doing("get refreshd's status")?;
            if let Some(w) = info.store.as_ref().and_then(StoreInfo::warning) {
                warn(&w);
            }
            if json {
                return print_json(&info);
            }
            print(&format::system_info(&info, clock))
        }
        Command::Status {
            name: Some(name),
            json: JsonFlag { json },
        } => {
            let status = client
                .snap_status(&name)
                .await
                .doing(&format!("get the status of {name}"))?;
            if let Some(w) = &status.warning {
                warn(w);
            }
            if json {
                return print_json(&status);
            }
            print(&format::snap_status(&status, clock, paint))
        }
        Command::List(JsonFlag { json }) => {
            let snaps = client.snaps().await.doing("list snaps")?;
            if json {
                return print_json(&snaps);
            }
            if snaps.is_empty() {
                eprintln!("No snaps are installed yet; install one with: refreshctl install FILE");
                return Ok(());
            }
            print(&format::snaps(&snaps, clock))
        }
        Command::Install {
            file,
            name,
            channel,
            wait: no_wait,
            json: ChangeJson { json },
        } => {
            let by_name = store_name(&file)?;
            if by_name.is_some() && name.is_some() {
                return Err(UsageError(
                    "--name goes with a FILE; a snap from the store is installed under its own name".into(),
                )
                .into());
            }
            if by_name.is_none() && channel.is_some() {
                return Err(UsageError(
                    "--channel goes with a store NAME; a FILE is installed as it is".into(),
                )
                .into());
            }
            let id = match by_name {
                Some(snap) => client
                    .install_from_store(snap, channel.as_deref())
                    .await
                    .doing(&format!("install {snap}"))?,
                // What is wrong with the file is said with its name (refreshd never sees it).
                None => upload(client, &file, name.as_deref())
                    .await
                    .map_err(|e| match e {
                        ClientError::Api {
                            kind: ErrorKind::InvalidSnap | ErrorKind::TooLarge,
                            ..
                        } => anyhow::Error::new(e)
                            .context(format!("cannot install {}", display_path(&file))),
                        e => Err::<(), _>(e)
                            .doing(&format!("install {}", file.display()))
                            .unwrap_err(),
                    })?,
            };
            let Some(change) = conclude(client, id, no_wait, json).await? else {
                return Ok(());
            };
            let installed = match change.snap.as_deref().or(name.as_deref()) {
                Some(snap) => {
                    let snap = client.snap(snap).await.doing("get the installed snap")?;
                    let snap = for_terminal(&snap);
                    format!("Installed {} {}\n", snap.name, snap.revision)
                }
                None => format!("Installed {} (change {id})\n", display_name(&file)),
            };
            print(&installed)
        }
        Command::Refresh {
            names,
            channel,
            list,
            hold,
            unhold,
            json,
            wait: no_wait,
        } => {
            if list {
                return refresh_list(client, clock, json).await;
            }
            if let Some(hold) = hold {
                return hold_refreshes(client, clock, &names, hold, json).await;
            }
            if unhold {
                return unhold_refreshes(client, &names, json).await;
            }
            if channel.is_some() && names.len() != 1 {
                return Err(UsageError(
                    "--channel goes with exactly one NAME; refresh the others separately".into(),
                )
                .into());
            }
            refresh(client, &names, channel.as_deref(), no_wait, json).await
        }
        Command::Revert {
            name,
            revision,
            wait: no_wait,
            json: ChangeJson { json },
        } => {
            let id = client
                .revert(&name, revision.as_deref())
                .await
                .doing(&format!("revert {name}"))?;
            if conclude(client, id, no_wait, json).await?.is_none() {
                return Ok(());
            }
            let snap = client.snap(&name).await.doing("get the reverted snap")?;
            let snap = for_terminal(&snap);
            print(&format!("Reverted {} to {}\n", snap.name, snap.revision))
        }
        Command::Pack {
            dir,
            output,
            json: JsonFlag { json },
        } => {
            let out = match output {
                Some(o) => o,
                None => {
                    let yaml = std::fs::read(dir.join("meta/snap.yaml"))
                        .with_context(|| format!("cannot read {}/meta/snap.yaml", dir.display()))?;
                    let y = refreshd_snap::yaml::parse(&yaml)?;
                    format!("{}_{}.snap", y.name, y.version).into()
                }
            };
            let shown = display_path(&dir);
            let mut meter = Meter::on_stderr(format!("Packing {shown}"));
            let mut progress = |p: refreshd_snap::PackProgress| {
                if let Some(m) = &mut meter {
                    let files = match p.files {
                        1 => "1 file".to_string(),
                        n => format!("{n} files"),
                    };
                    m.set_head(format!("Packing {shown} ({files}, {})", human(p.bytes)));
                    m.show(p.read, p.bytes);
                }
            };
            let packed = refreshd_snap::pack_with_progress(&dir, &out, &mut progress);
            if let Some(m) = &mut meter {
                m.finish();
            }
            packed.map_err(|e| match e.says_pack() {
                true => anyhow::Error::new(e),
                false => anyhow::Error::new(e).context(format!("cannot pack {}", dir.display())),
            })?;
            if json {
                return print_json(&serde_json::json!({ "file": out }));
            }
            print(&format!("Built {}\n", out.display()))
        }
        Command::Publish {
            store,
            keys,
            file,
            channel,
            json: JsonFlag { json },
        } => super::store::publish(store, keys, file, channel, json).await,
        Command::Store(command) => super::store::run(command, clock, paint).await,
        Command::Remove {
            name,
            purge,
            wait: no_wait,
            json: ChangeJson { json },
        } => {
            let id = client
                .remove(&name, purge)
                .await
                .doing(&format!("remove {name}"))?;
            if conclude(client, id, no_wait, json).await?.is_none() {
                return Ok(());
            }
            print(&super::snapshots::after_remove(client, clock, &name, id).await)
        }
        Command::Saved { name, json } => {
            super::snapshots::saved(client, clock, name.as_deref(), json).await
        }
        Command::Restore { set, wait, json } => {
            super::snapshots::restore(client, set, wait, json).await
        }
        Command::Forget { set, json } => super::snapshots::forget(client, set, json).await,
        Command::Changes {
            all,
            name,
            snap,
            json,
        } => {
            let snap = name.or(snap);
            let select = if all { Select::All } else { Select::InProgress };
            let changes = client
                .changes(select, snap.as_deref())
                .await
                .doing("list changes")?;
            if json.json {
                return print_json(&changes);
            }
            if changes.is_empty() {
                let which = if all { "" } else { " in progress" };
                match snap {
                    Some(snap) => eprintln!("No changes{which} for snap {snap:?}."),
                    None => eprintln!("No changes{which}."),
                }
                return Ok(());
            }
            print(&format::changes(&changes, clock, paint))
        }
        Command::Tasks { id, json } => {
            let change = client.change(id).await.doing(&format!("get change {id}"))?;
            if json.json {
                return print_json(&change);
            }
            print(&format::tasks(&change, clock, paint))
        }
        Command::Watch { id, json } => {
            let mode = if json.json {
                Mode::Json
            } else if io::stdout().is_terminal() {
                Mode::Live
            } else {
                Mode::Lines
            };
            let shown = Follower::new(io::stdout(), mode).width(Width::Stdout);
            let change = follow(client, id, shown, &mut Signals::default()).await?;
            check(&change)?;
            if mode != Mode::Json {
                let change = for_terminal(&change);
                print(&format!(
                    "Change {} ({}) is {}\n",
                    change.id, change.summary, change.status
                ))?;
            }
            Ok(())
        }
        Command::Abort {
            id,
            json: JsonFlag { json },
        } => {
            let change = client
                .abort(id)
                .await
                .doing(&format!("abort change {id}"))?;
            if json {
                return print_json(&change);
            }
            let change = for_terminal(&change);
            let text = if change.ready {
                format!("Change {id} ({}) is {}\n", change.summary, change.status)
            } else {
                format!(
                    "Aborting change {id} ({}); follow it with: refreshctl watch {id}\n",
                    change.summary
                )
            };
            print(&text)
        }
    }
}

/// `refresh --json` (without --list, --hold, --unhold): the changes made, each as
/// `GET /v1/changes/ID` shows it, and the notes of `POST /v1/refresh` (docs/api.md).
#[derive(Serialize)]
struct Refreshed<'a> {
    changes: &'a [Change],
    notes: &'a [RefreshNote],
}

/// `refresh` (every snap with an update, held ones skipped) or `refresh A B ...` (`--channel`
/// with one name): one change per snap, followed together; what was skipped is said on stderr.
/// A named snap with no update says so on stdout and is no failure; one name whose snap has a
/// change in progress is a conflict (exit code 5).
async fn refresh(
    client: &Client,
    names: &[String],
    channel: Option<&str>,
    no_wait: NoWait,
    json: bool,
) -> Result<()> {
    let what = if names.is_empty() {
        "refresh snaps".to_string()
    } else {
        format!("refresh {}", names.join(" "))
    };
    let result = client.refresh_many(names, channel).await.doing(&what)?;
    let errors: Vec<&str> = result
        .notes
        .iter()
        .filter(|n| n.kind == NoteKind::Error)
        .map(|n| n.snap.as_str())
        .collect();
    // One snap named that cannot be refreshed: its note is the error (a change in progress is
    // a conflict).
    let one_failed = match (names, &result.notes[..]) {
        ([_], [note]) if note.kind == NoteKind::Busy => Some(anyhow::Error::from(InProgress(
            printable(&note.message).into_owned(),
        ))),
        ([_], [note]) if note.kind == NoteKind::Error => {
            Some(anyhow::anyhow!("{}", printable(&note.message)))
        }
        _ => None,
    };
    if json {
        // The changes run side by side in refreshd; following them one after the other misses
        // nothing, since a watch starts with the change's current state.
        let mut changes = vec![];
        let mut failed = None;
        let mut signals = Signals::default();
        for (i, &id) in result.changes.iter().enumerate() {
            let change = settle(client, id, no_wait, &mut signals)
                .await
                .map_err(|e| still_going(e, &result.changes[i..]))?;
            if !no_wait.no_wait {
                if let Err(e) = check(&change) {
                    failed.get_or_insert(e);
                }
            }
            changes.push(change);
        }
        print_json(&Refreshed {
            changes: &changes,
            notes: &result.notes,
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(e) = one_failed {
            return Err(e);
        }
        if !errors.is_empty() {
            anyhow::bail!("cannot check {} for updates", errors.join(", "));
        }
        return Ok(());
    }
    if let Some(e) = one_failed {
        return Err(e);
    }
    let named = !names.is_empty();
    let mut told = String::new();
    for note in &result.notes {
        match note.kind {
            NoteKind::Refreshing if note.hold.is_none() => {}
            // A snap named and up to date is the answer, not a remark.
            NoteKind::UpToDate if named => {
                told.push_str(&format!("{}\n", printable(&note.message)))
            }
            // Without names, every snap is considered: only what needs a look is told.
            NoteKind::UpToDate => {}
            _ => eprintln!("{}", printable(&note.message)),
        }
    }
    print(&told)?;
    if result.changes.is_empty() {
        let up_to_date = |k: NoteKind| k == NoteKind::UpToDate;
        if errors.is_empty() && !named {
            if result.notes.iter().all(|n| up_to_date(n.kind)) {
                print("All snaps are up to date.\n")?;
            } else if result
                .notes
                .iter()
                .all(|n| up_to_date(n.kind) || n.kind == NoteKind::NotFromStore)
            {
                print("All snaps from the store are up to date.\n")?;
            } else {
                print("Nothing was refreshed.\n")?;
            }
        }
    } else if no_wait.no_wait {
        let ids: String = result.changes.iter().map(|id| format!("{id}\n")).collect();
        print(&ids)?;
    } else {
        let mut failed = None;
        let mut signals = Signals::default();
        for (i, &id) in result.changes.iter().enumerate() {
            let change = follow(client, id, progress_on_stderr(), &mut signals)
                .await
                .map_err(|e| still_going(e, &result.changes[i..]))?;
            match check(&change) {
                Ok(()) => {
                    let name = change.snap.clone().unwrap_or_default();
                    let snap = client.snap(&name).await.doing("get the refreshed snap")?;
                    let snap = for_terminal(&snap);
                    print(&format!("Refreshed {} to {}\n", snap.name, snap.revision))?;
                }
                // The first failure ends the command (and is said last); any other is said
                // as it comes.
                Err(e) => match failed {
                    None => failed = Some(e),
                    Some(_) => eprintln!("error: {}", super::exit::one_line(&e)),
                },
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
    }
    if !errors.is_empty() {
        anyhow::bail!("cannot check {} for updates (see above)", errors.join(", "));
    }
    Ok(())
}

/// `refresh --list`: the updates there are, and changes nothing.
async fn refresh_list(client: &Client, clock: &Clock, json: bool) -> Result<()> {
    let plan = client.refresh_plan().await.doing("list updates")?;
    let skipped = plan
        .notes
        .iter()
        .filter(|n| n.kind == NoteKind::NotFromStore);
    if json {
        print_json(&plan)?;
    } else {
        // What is not looked up is said, so that "up to date" never covers it.
        for n in skipped.clone() {
            eprintln!("{}", printable(&n.message));
        }
        if !plan.updates.is_empty() {
            print(&format::updates(&plan.updates, clock))?;
        } else if skipped.count() == 0 {
            eprintln!("All snaps are up to date.");
        } else {
            eprintln!("All snaps from the store are up to date.");
        }
    }
    let errors: Vec<&str> = plan
        .notes
        .iter()
        .filter(|n| n.kind == NoteKind::Error)
        .map(|n| {
            if !json {
                eprintln!("{}", printable(&n.message));
            }
            n.snap.as_str()
        })
        .collect();
    if !errors.is_empty() {
        anyhow::bail!("cannot check {} for updates", errors.join(", "));
    }
    Ok(())
}

async fn hold_refreshes(
    client: &Client,
    clock: &Clock,
    names: &[String],
    hold: Hold,
    json: bool,
) -> Result<()> {
    let snaps = match client.hold(names, hold).await {
        // `--hold 2h`: the duration was read as a snap's name (it takes an equals sign).
        Err(ClientError::Api {
            kind: ErrorKind::NotFound,
            message,
            ..
        }) if names.iter().any(|n| matches!(n.parse(), Ok(Hold::For(_)))) => {
            let d = names
                .iter()
                .find(|n| matches!(n.parse(), Ok(Hold::For(_))))
                .map(String::as_str)
                .unwrap_or_default();
            return Err(UsageError(format!(
                "{message}; to hold for {d}, write --hold={d} (--hold takes its duration after an equals sign)"
            ))
            .into());
        }
        r => r.doing("hold refreshes")?,
    };
    if json {
        return print_json(&snaps);
    }
    if snaps.is_empty() {
        eprintln!("No snaps are installed; there is nothing to hold.");
        return Ok(());
    }
    let snaps = for_terminal(&snaps);
    let text: String = snaps
        .iter()
        .map(|s| {
            let held = format::hold(s.hold.as_deref(), clock).unwrap_or_else(|| "held".into());
            format!("Refreshes of {} are {held}\n", s.name)
        })
        .collect();
    print(&text)
}

async fn unhold_refreshes(client: &Client, names: &[String], json: bool) -> Result<()> {
    let snaps = client.unhold(names).await.doing("unhold refreshes")?;
    if json {
        return print_json(&snaps);
    }
    if snaps.is_empty() {
        eprintln!("No snaps are installed; there is nothing to unhold.");
        return Ok(());
    }
    let snaps = for_terminal(&snaps);
    let text: String = snaps
        .iter()
        .map(|s| format!("Refreshes of {} are no longer held\n", s.name))
        .collect();
    print(&text)
}

fn progress_on_stderr() -> Follower<io::Stderr> {
    let mode = if io::stderr().is_terminal() {
        Mode::Live
    } else {
        Mode::Lines
    };
    Follower::new(io::stderr(), mode).width(Width::Stderr)
}

/// `install FILE`'s upload, with a bar on a terminal: a large snap takes a while to send, and
/// refreshd reads and hashes it as it comes.
async fn upload(client: &Client, file: &Path, name: Option<&str>) -> Result<u64, ClientError> {
    let Some(mut meter) = Meter::on_stderr(format!("Uploading {}", display_name(file))) else {
        return client.install_file(file, name).await;
    };
    let (sent, mut seen) = tokio::sync::watch::channel((0, 0));
    let upload = client.install_file_with_progress(file, name, sent);
    tokio::pin!(upload);
    let result = loop {
        tokio::select! {
            result = &mut upload => break result,
            Ok(()) = seen.changed() => {
                let (done, total) = *seen.borrow_and_update();
                meter.show(done, total);
            }
        }
    };
    meter.finish();
    result
}

/// The signals that matter while refreshctl follows changes: Ctrl-C stops the waiting (the
/// changes go on in refreshd); a resized terminal gets the live line redrawn at its new width.
/// Taken when the first change is followed, so that Ctrl-C before that (during an upload, say)
/// ends refreshctl as usual; then kept for every change the command follows, so that a Ctrl-C
/// between two of them is not lost.
#[derive(Default)]
struct Signals {
    interrupt: Option<Signal>,
    resize: Option<Signal>,
    taken: bool,
}

impl Signals {
    /// A signal that cannot be had keeps its usual effect.
    fn take(&mut self) {
        if !self.taken {
            self.taken = true;
            self.interrupt = signal(SignalKind::interrupt()).ok();
            self.resize = signal(SignalKind::window_change()).ok();
        }
    }
}

/// The next delivery of `signal`; never, without one.
async fn next(signal: &mut Option<Signal>) {
    if let Some(s) = signal {
        if s.recv().await.is_some() {
            return;
        }
    }
    std::future::pending().await
}

/// An interruption while following `rest[0]` leaves it and the changes after it going on.
fn still_going(err: anyhow::Error, rest: &[u64]) -> anyhow::Error {
    match err.downcast::<Interrupted>() {
        Ok(_) => Interrupted(rest.to_vec()).into(),
        Err(err) => err,
    }
}

/// Change `id` as it is now (`--no-wait`), or followed like `watch` until it is ready, with
/// the progress on stderr so that stdout carries only the result.
async fn settle(
    client: &Client,
    id: u64,
    no_wait: NoWait,
    signals: &mut Signals,
) -> Result<Change> {
    if no_wait.no_wait {
        client.change(id).await.doing(&format!("get change {id}"))
    } else {
        follow(client, id, progress_on_stderr(), signals).await
    }
}

/// How the commands that make a change end. With `--no-wait`: its id, or with `--json` the
/// change as it is now. Else the change is followed until ready; with `--json` it is printed
/// (a failure is still the command's, after). Returns the change when it succeeded and text
/// is to follow.
pub(super) async fn conclude(
    client: &Client,
    id: u64,
    no_wait: NoWait,
    json: bool,
) -> Result<Option<Change>> {
    if no_wait.no_wait && !json {
        print(&format!("{id}\n"))?;
        return Ok(None);
    }
    let change = settle(client, id, no_wait, &mut Signals::default()).await?;
    if json {
        print_json(&change)?;
        if !no_wait.no_wait {
            check(&change)?;
        }
        return Ok(None);
    }
    check(&change)?;
    Ok(Some(change))
}

/// Shows every state of change `id` until it is ready, and returns the ready one; or, on
/// Ctrl-C, clears the live line and ends with [`Interrupted`] (the change is not aborted).
async fn follow<W: Write>(
    client: &Client,
    id: u64,
    mut shown: Follower<W>,
    signals: &mut Signals,
) -> Result<Change> {
    signals.take();
    let mut watch = client.watch(id);
    let mut last = None;
    loop {
        let next_state = tokio::select! {
            // Ctrl-C first: a stream with states ready must not hold it up.
            biased;
            () = next(&mut signals.interrupt) => {
                let _ = shown.finish();
                return Err(Interrupted(vec![id]).into());
            }
            () = next(&mut signals.resize) => {
                shown.redraw().context("cannot write progress")?;
                continue;
            }
            next_state = watch.next() => next_state,
        };
        let Some(change) = next_state else {
            break;
        };
        let change = match change {
            Ok(change) => change,
            Err(err) => {
                let _ = shown.finish();
                return Err(err).doing(&format!("follow change {id}"));
            }
        };
        shown.show(&change).context("cannot write progress")?;
        last = Some(change);
    }
    shown.finish().context("cannot write progress")?;
    last.with_context(|| format!("refreshd's watch of change {id} ended without any state"))
}

/// A ready change that did not succeed is the command's failure (exit code 1).
fn check(change: &Change) -> Result<()> {
    if change.status.is_failure() {
        return Err(ChangeFailed(Box::new(change.clone())).into());
    }
    Ok(())
}

/// What `install X` installs, as `snap install` reads it: X names a file if it is a path (holds
/// a `/`) or ends in `.snap`, and then it must be a snap file; anything else is the name of a
/// snap in the store (`Some`), whatever files the current directory holds.
fn store_name(x: &Path) -> Result<Option<&str>> {
    let text = x.to_str();
    if let Some(name) = text.filter(|t| !t.contains('/') && !t.ends_with(".snap")) {
        return Ok(Some(name));
    }
    let shown = display_path(x);
    match std::fs::metadata(x) {
        Ok(m) if m.is_dir() => {
            anyhow::bail!("{shown} is a directory; pack it first: refreshctl pack {shown}")
        }
        Ok(m) if !m.is_file() => anyhow::bail!("{shown} is not a snap file (not a regular file)"),
        Ok(_) => Ok(None),
        Err(e) => anyhow::bail!("cannot read the snap file {shown}: {e}"),
    }
}

pub(super) fn display_path(p: &Path) -> String {
    printable(&p.to_string_lossy()).into_owned()
}

pub(super) fn display_name(file: &Path) -> String {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.display().to_string());
    printable(&name).into_owned()
}

/// A warning on stderr, one line, said on every call that shows what it is about (an unverified
/// store): refreshd's text, escaped.
fn warn(text: &str) {
    let label = Paint::detect(io::stderr().is_terminal()).yellow("warning:");
    eprintln!("{label} {}", printable(text));
}

pub(super) fn print(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write to standard output")
}

pub(super) fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let mut text = format::json_for_terminal(value).context("cannot encode JSON")?;
    text.push('\n');
    print(&text)
}

/// Context for client errors. The server's own messages (API errors) and the unreachable
/// message already say what failed and what to do, so they are left alone; the rest get told
/// what we were doing.
pub(super) trait Doing<T> {
    fn doing(self, what: &str) -> Result<T>;
}

impl<T> Doing<T> for std::result::Result<T, ClientError> {
    fn doing(self, what: &str) -> Result<T> {
        self.map_err(|err| match err {
            ClientError::Api { .. } | ClientError::Unreachable { .. } => err.into(),
            _ => anyhow::Error::new(err).context(format!("cannot {what}")),
        })
    }
}
