//! The publisher's side of a directory store: `publish`, and `store init`, `migrate`, `resign`
//! and `rotate-key` for a signed store (docs/store.md). Everything here works on files; refreshd
//! is not asked anything.
//!
//! The store's signing runs its own small runtime to drive `tough`, which cannot start inside
//! refreshctl's: each command runs on a blocking thread.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use refreshd_snap::text::{format_duration, printable};
use refreshd_store::{Expiries, InitOptions, RoleKeys, RoleType, Signed};
use serde_json::json;

use super::args::{ExpiresFlag, JsonFlag, NewStore, Role, StoreCommand};
use super::commands::{display_name, display_path as shown, print, print_json};
use super::exit::UsageError;
use super::format::{Clock, Paint};
use super::progress::Meter;

/// Where refreshd looks for the root it pins (`refreshd --store-root` overrides it).
pub const PINNED_ROOT: &str = "/etc/refreshd/store-root.json";

/// `refreshctl publish`.
pub async fn publish(
    store: PathBuf,
    keys: Option<PathBuf>,
    file: PathBuf,
    channel: String,
    json: bool,
) -> Result<()> {
    blocking(move || publish_now(&store, keys.as_deref(), &file, &channel, json)).await
}

/// `refreshctl store COMMAND`.
pub async fn run(command: StoreCommand, clock: &Clock, paint: Paint) -> Result<()> {
    let clock = clock.clone();
    blocking(move || match command {
        StoreCommand::Init { store, new } => made(&store, &new, false, paint),
        StoreCommand::Migrate { store, new } => made(&store, &new, true, paint),
        StoreCommand::Resign {
            store,
            keys,
            roles,
            expires,
            json: JsonFlag { json },
        } => resign(&store, &keys, &roles, &expires, json, &clock),
        StoreCommand::RotateKey {
            role,
            store,
            keys,
            expires,
            json: JsonFlag { json },
        } => rotate(&store, &keys, role, &expires, json, &clock),
    })
    .await
}

async fn blocking(f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    tokio::task::spawn_blocking(f)
        .await
        .context("the store's work stopped before it ended")?
}

fn publish_now(
    store: &Path,
    keys: Option<&Path>,
    file: &Path,
    channel: &str,
    json: bool,
) -> Result<()> {
    let mut meter = Meter::on_stderr(format!("Publishing {}", display_name(file)));
    let mut progress = |done, total| {
        if let Some(m) = &mut meter {
            m.show(done, total);
        }
    };
    let published = refreshd_store::publish_signed(store, file, channel, keys, &mut progress);
    if let Some(m) = &mut meter {
        m.finish();
    }
    let e = published.map_err(|e| match e.says_publish() {
        true => anyhow::Error::new(e),
        false => anyhow::Error::new(e).context(format!("cannot publish {}", file.display())),
    })?;
    let signed = keys.is_some();
    if json {
        return print_json(&json!({
            "name": e.name,
            "version": e.version,
            // A revision is a string everywhere in the API ("1", "x1").
            "revision": e.revision.to_string(),
            "channel": channel,
            "store": store,
            "path": e.path,
            "size": e.size,
            "sha3-384": e.sha3_384,
            "signed": signed,
        }));
    }
    print(&format!(
        "Published {} {} as revision {} in channel {channel} of {}{}\n",
        e.name,
        e.version,
        e.revision,
        shown(store),
        if signed { " (signed)" } else { "" }
    ))
}

/// `store init` (`adopt` false) and `store migrate`: what was made, and the root every machine
/// must install, said last so that it is what stays on the screen.
fn made(store: &Path, new: &NewStore, adopt: bool, paint: Paint) -> Result<()> {
    let role = |keys, threshold| RoleKeys { keys, threshold };
    let opts = InitOptions {
        expiries: expiries(Expiries::default(), &new.expires),
        root: role(new.root_keys, new.root_threshold),
        targets: role(new.targets_keys, new.targets_threshold),
        snapshot: role(new.snapshot_keys, new.snapshot_threshold),
        timestamp: role(new.timestamp_keys, new.timestamp_threshold),
    };
    let done = if adopt {
        // Every blob is read and hashed: a large store takes a while.
        let mut meter = Meter::on_stderr(format!(
            "Signing the snaps of {} (every blob is hashed)",
            shown(store)
        ));
        if let Some(m) = &mut meter {
            m.show(0, 0);
        }
        let done = refreshd_store::migrate(store, &new.keys, &opts);
        if let Some(m) = &mut meter {
            m.finish();
        }
        done
    } else {
        refreshd_store::init(store, &new.keys, &opts)
    };
    let what = if adopt { "convert the store" } else { INIT };
    let done = done.map_err(|e| store_error(e, what, store))?;
    let e = &opts.expiries;
    let lifetimes = [
        ("root", e.root),
        ("targets", e.targets),
        ("snapshot", e.snapshot),
        ("timestamp", e.timestamp),
    ];
    if new.json.json {
        return print_json(&json!({
            "store": store,
            "keys": new.keys,
            "key-files": done.keys,
            "root": done.root_file,
            "root-sha256": done.root_sha256,
            "snaps": done.snaps,
            "expires": lifetimes
                .iter()
                .map(|(r, d)| (r.to_string(), json!(format_duration(*d))))
                .collect::<serde_json::Map<_, _>>(),
        }));
    }
    let (s, k) = (shown(store), shown(&new.keys));
    let mut out = if adopt {
        let names: Vec<String> = done
            .snaps
            .iter()
            .map(|n| printable(n).into_owned())
            .collect();
        let what = match &names[..] {
            [] => format!("{s} (it holds no snaps)"),
            [one] => format!("the snap {one} of {s}"),
            many => format!("the {} snaps of {s} ({})", many.len(), many.join(", ")),
        };
        format!("Signed {what}, with new keys in {k} (the directory 0700, each key 0600):\n")
    } else {
        format!(
            "Made a signed store in {s}, with its keys in {k} (the directory 0700, each key 0600):\n"
        )
    };
    for key in &done.keys {
        let name = key.file_name().unwrap_or_default().to_string_lossy();
        let role = name.split('-').next().unwrap_or_default();
        out.push_str(&format!("  {role:<10} {}\n", shown(key)));
    }
    let lifetimes: Vec<String> = lifetimes
        .iter()
        .map(|(r, d)| format!("{r} {}", format_duration(*d)))
        .collect();
    out.push_str(&format!(
        "Signatures last: {}. Re-sign the timestamp daily, from a timer:\n  refreshctl store resign --store {s} --keys {k}\n",
        lifetimes.join(", ")
    ));
    out.push_str(&format!(
        "Publish with:\n  refreshctl publish --store {s} --keys {k} FILE\n"
    ));
    if adopt {
        out.push_str(
            "Machines that read it unsigned (refreshd --insecure-unsigned-store) keep working: \
             install the root on each, then drop that option.\n",
        );
    }
    out.push('\n');
    out.push_str(&paint.bold(&format!(
        "Install {} on every machine as {PINNED_ROOT} (sha256 {}).",
        shown(&done.root_file),
        done.root_sha256
    )));
    out.push('\n');
    out.push_str(&format!(
        "Keep the root key(s) {} offline: only the targets, snapshot and timestamp keys are needed to publish.\n",
        shown(&new.keys.join("root-*.pk8"))
    ));
    print(&out)
}

fn resign(
    store: &Path,
    keys: &Path,
    roles: &[Role],
    expires: &ExpiresFlag,
    json: bool,
    clock: &Clock,
) -> Result<()> {
    // What resign signs: the roles named, the snapshot with targets, the timestamp always.
    let mut signs: HashSet<Role> = roles.iter().copied().collect();
    signs.insert(Role::Timestamp);
    if signs.contains(&Role::Targets) {
        signs.insert(Role::Snapshot);
    }
    unsigned_expiry(expires, &signs, |r| {
        format!("add --role {} to re-sign it", r.as_str())
    })?;
    let roles: Vec<RoleType> = roles.iter().map(|r| role_type(*r)).collect();
    let lifetimes = expiries(recorded(store)?, expires);
    let signed = refreshd_store::resign(store, keys, &roles, &lifetimes)
        .map_err(|e| store_error(e, "re-sign", store))?;
    if json {
        return print_json(&json!({ "store": store, "roles": roles_json(&signed) }));
    }
    let mut out = format!("Re-signed {}:\n", shown(store));
    out.push_str(&versions(&signed, &lifetimes, clock));
    print(&out)
}

fn rotate(
    store: &Path,
    keys: &Path,
    role: Role,
    expires: &ExpiresFlag,
    json: bool,
    clock: &Clock,
) -> Result<()> {
    // What a rotation signs: a new root, the role rotated and the ones that pin it.
    let mut signs: HashSet<Role> = [Role::Root, Role::Timestamp, role].into_iter().collect();
    if role == Role::Targets {
        signs.insert(Role::Snapshot);
    }
    unsigned_expiry(expires, &signs, |_| {
        format!("rotating the {} keys does not sign it", role.as_str())
    })?;
    let lifetimes = expiries(recorded(store)?, expires);
    let signed = refreshd_store::rotate_key(store, keys, role_type(role), &lifetimes)
        .map_err(|e| store_error(e, "rotate the keys of", store))?;
    let root_version = signed
        .roles
        .iter()
        .find(|(r, _, _)| r == "root")
        .map(|(_, v, _)| *v);
    if json {
        return print_json(&json!({
            "store": store,
            "role": role.as_str(),
            "roles": roles_json(&signed),
            "root": signed.new_root,
        }));
    }
    let (s, k) = (shown(store), shown(keys));
    let mut out = format!(
        "Replaced the {} keys of {s}: the new ones are in {k}, the old ones moved to {}:\n",
        role.as_str(),
        shown(&keys.join("retired"))
    );
    out.push_str(&versions(&signed, &lifetimes, clock));
    let version = root_version.map(|v| v.to_string()).unwrap_or_default();
    if role == Role::Root {
        let file = signed
            .new_root
            .as_deref()
            .map(shown)
            .unwrap_or_else(|| format!("{s}/tuf/{version}.root.json"));
        out.push_str(&format!(
            "Machines reach root version {version} by themselves at their next look-up; give new machines {file} as {PINNED_ROOT}.\n\
             Keep the new root key(s) {} offline.\n",
            shown(&keys.join("root-*.pk8"))
        ));
    } else {
        out.push_str(&format!(
            "Machines reach root version {version} by themselves at their next look-up: nothing to install.\n"
        ));
    }
    print(&out)
}

/// `--expires` for a role the command does not sign would silently do nothing: a usage error,
/// with `advice` for that role.
fn unsigned_expiry(
    expires: &ExpiresFlag,
    signs: &HashSet<Role>,
    advice: impl Fn(Role) -> String,
) -> Result<()> {
    match expires.expires.iter().find(|e| !signs.contains(&e.role)) {
        Some(e) => Err(UsageError(format!(
            "--expires {}={} is for a role this command does not sign: {}",
            e.role.as_str(),
            format_duration(e.duration),
            advice(e.role)
        ))
        .into()),
        None => Ok(()),
    }
}

/// Each role signed, its version and when it expires: `  timestamp  version 5, expires
/// 2026-12-14 17:32 UTC (in 7d)`. The lifetime is the one asked for: the time since refreshctl
/// started would say "6 days" for one signed a moment later.
fn versions(signed: &Signed, lifetimes: &Expiries, clock: &Clock) -> String {
    signed
        .roles
        .iter()
        .map(|(role, version, expires)| {
            let time = match expires.parse::<jiff::Timestamp>() {
                Ok(t) => clock.time(t),
                Err(_) => printable(expires).into_owned(),
            };
            let lifetime = match role.as_str() {
                "root" => Some(lifetimes.root),
                "targets" => Some(lifetimes.targets),
                "snapshot" => Some(lifetimes.snapshot),
                "timestamp" => Some(lifetimes.timestamp),
                _ => None,
            };
            let lifetime = lifetime
                .map(|d| format!(" (in {})", format_duration(d)))
                .unwrap_or_default();
            format!("  {role:<10} version {version}, expires {time}{lifetime}\n")
        })
        .collect()
}

fn roles_json(signed: &Signed) -> Vec<serde_json::Value> {
    signed
        .roles
        .iter()
        .map(|(role, version, expires)| {
            json!({ "role": role, "version": version, "expires": expires })
        })
        .collect()
}

/// The lifetimes the store signs with (recorded when it was made), before `--expires`.
fn recorded(store: &Path) -> Result<Expiries> {
    refreshd_store::lifetimes(store).map_err(|e| store_error(e, "read the lifetimes of", store))
}

fn expiries(base: Expiries, flag: &ExpiresFlag) -> Expiries {
    let mut e = base;
    for x in &flag.expires {
        let slot = match x.role {
            Role::Root => &mut e.root,
            Role::Targets => &mut e.targets,
            Role::Snapshot => &mut e.snapshot,
            Role::Timestamp => &mut e.timestamp,
        };
        *slot = x.duration;
    }
    e
}

fn role_type(role: Role) -> RoleType {
    match role {
        Role::Root => RoleType::Root,
        Role::Targets => RoleType::Targets,
        Role::Snapshot => RoleType::Snapshot,
        Role::Timestamp => RoleType::Timestamp,
    }
}

/// The store's messages say what is wrong and what to do, each on its own; a file that could
/// not be read or written is said with what was being done, and a store directory that is not
/// there (or not a directory) as that.
fn store_error(e: refreshd_store::Error, what: &str, store: &Path) -> anyhow::Error {
    let e @ refreshd_store::Error::Io { .. } = e else {
        return anyhow::Error::new(e);
    };
    let wrong = match std::fs::metadata(store) {
        Ok(m) if !m.is_dir() => "it is not a directory",
        // `store init` makes its directory: what failed is said as it is.
        Err(n) if n.kind() == std::io::ErrorKind::NotFound && what != INIT => {
            "there is no such directory"
        }
        _ => return anyhow::Error::new(e).context(format!("cannot {what} {}", shown(store))),
    };
    anyhow::anyhow!(
        "cannot {what} {}: {wrong}; give the store's directory (--store DIR)",
        shown(store)
    )
}

const INIT: &str = "make the signed store";
