//! refreshctl's command line.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use refreshd_store::{Expiries, RoleKeys};

use crate::types::Hold;

/// The environment variable naming refreshd's socket.
pub const SOCKET_ENV: &str = "REFRESHD_SOCKET";

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the operation failed (including a change that ended in Error or Undone)
  2  usage error (bad arguments)
  3  refreshd is unreachable
  4  permission denied
  5  conflict with a change in progress
  130  interrupted (Ctrl-C) while waiting for a change; the change goes on

--json prints refreshd's API objects as documented in docs/api.md.";

/// Where every command's help lists the options all commands take, apart from its own.
const GLOBAL: &str = "Global options";

/// Installs, removes and follows snaps through refreshd.
#[derive(Parser, Debug)]
#[command(name = "refreshctl", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// The root refreshd manages; its socket is DIR/run/refreshd.socket [default: /]
    #[arg(long, value_name = "DIR", global = true, help_heading = GLOBAL)]
    pub root: Option<PathBuf>,

    /// refreshd's socket; overrides --root. Without either, $REFRESHD_SOCKET if set
    #[arg(long, value_name = "PATH", global = true, help_heading = GLOBAL)]
    pub socket: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum Command {
    /// Show refreshd's version, root and activity; with NAME, what a refresh of that snap waits
    /// for: its change in progress and the snap's processes, with their owners and command lines
    Status {
        /// A snap's instance name
        #[arg(value_name = "NAME")]
        name: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List installed snaps
    List(JsonFlag),
    /// Install a snap from a local .snap file, or by name from refreshd's store
    Install {
        /// A .snap file (a path with a `/`, or a name ending in .snap), else the name of a
        /// snap in the store
        file: PathBuf,
        /// Install as this parallel instance (NAME_KEY)
        #[arg(long, value_name = "INSTANCE")]
        name: Option<String>,
        /// The store channel to install from (default: stable)
        #[arg(long, value_name = "CHANNEL")]
        channel: Option<String>,
        #[command(flatten)]
        wait: NoWait,
        #[command(flatten)]
        json: ChangeJson,
    },
    /// Refresh snaps to the newest revision of their channel in refreshd's store (every snap
    /// with an update when none is named); list updates; hold or unhold refreshes
    Refresh {
        /// The snaps' instance names [default: every snap with an update; held ones are
        /// skipped, named ones are refreshed even if held]
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// Follow this channel from now on (with one NAME)
        #[arg(long, value_name = "CHANNEL", requires = "names")]
        channel: Option<String>,
        /// List the snaps with an update (current → store revision), changing nothing
        #[arg(long, conflicts_with_all = ["names", "channel", "no_wait", "hold", "unhold"])]
        list: bool,
        /// Hold refreshes of NAMEs (of every installed snap when none is named) for DURATION
        /// (30m, 2h, 7d, 1h30m) or forever; auto-refresh and `refresh` without names skip them
        #[arg(
            long,
            value_name = "DURATION",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "forever",
            conflicts_with_all = ["channel", "no_wait", "unhold"]
        )]
        hold: Option<Hold>,
        /// Lift the hold of NAMEs (of every installed snap when none is named)
        #[arg(long, conflicts_with_all = ["channel", "no_wait"])]
        unhold: bool,
        /// Print JSON (schema: docs/api.md) instead of text: the updates with --list, the snaps
        /// with --hold/--unhold, else the changes made (ready ones, unless --no-wait)
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        wait: NoWait,
    },
    /// Go back to the previous revision of a snap, and its own data as it was
    Revert {
        /// The snap's instance name
        name: String,
        /// The kept revision to go to (default: the one before the current); see
        /// `refreshctl status`
        #[arg(long, value_name = "REV")]
        revision: Option<String>,
        #[command(flatten)]
        wait: NoWait,
        #[command(flatten)]
        json: ChangeJson,
    },
    /// Build a .snap from a directory holding meta/snap.yaml (like `snap pack`)
    Pack {
        /// The snap's source directory
        dir: PathBuf,
        /// Where to write the .snap (default: NAME_VERSION.snap in the current directory)
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Publish a .snap into a directory store, as the next revision of its channel (signed, in
    /// a signed store)
    Publish {
        /// The store directory (docs/store.md)
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
        /// The key directory that signs a signed store (refreshctl store init made it): its
        /// targets, snapshot and timestamp keys sign the new revision. Needed for a signed
        /// store, refused for an unsigned one
        #[arg(long, value_name = "KEYDIR")]
        keys: Option<PathBuf>,
        /// The .snap file
        file: PathBuf,
        /// The channel that gets the new revision
        #[arg(long, default_value = "stable", value_name = "CHANNEL")]
        channel: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Make a directory store signed, keep its signatures fresh, and change its keys
    /// (docs/store.md); see `refreshctl store COMMAND --help`
    #[command(subcommand, long_about = STORE_ABOUT)]
    Store(StoreCommand),
    /// Remove a snap, once none of its apps runs; its data is kept as a snapshot
    Remove {
        /// The snap's instance name
        name: String,
        /// Keep no snapshot of its data: delete it with the snap
        #[arg(long)]
        purge: bool,
        #[command(flatten)]
        wait: NoWait,
        #[command(flatten)]
        json: ChangeJson,
    },
    /// List the snapshots of removed snaps' data (kept for --snapshot-retention, 31 days)
    Saved {
        /// Only this snap's
        name: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Put a snapshot back as the data of its snap (installed again), once none of its apps runs
    Restore {
        /// The snapshot's set number (refreshctl saved)
        set: u64,
        #[command(flatten)]
        wait: NoWait,
        #[command(flatten)]
        json: ChangeJson,
    },
    /// Delete a snapshot now
    Forget {
        /// The snapshot's set number (refreshctl saved)
        set: u64,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List changes (those in progress unless --all)
    Changes {
        /// Only changes touching this snap
        #[arg(value_name = "NAME", conflicts_with = "snap")]
        name: Option<String>,
        /// Include changes that are ready
        #[arg(long)]
        all: bool,
        /// Only changes touching this snap (the same as NAME)
        #[arg(long, value_name = "NAME")]
        snap: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show the tasks of a change, their logs and errors
    Tasks {
        /// The change's id (see refreshctl changes)
        id: u64,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Follow a change until it is ready; exits 1 if it did not succeed
    Watch {
        /// The change's id (see refreshctl changes)
        id: u64,
        // With --json: every state of the change as a line of JSON (NDJSON).
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Abort a change: undo what it did, skip what it has not started
    Abort {
        /// The change's id (see refreshctl changes)
        id: u64,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Let refreshes that wait for apps to close go through now, and return once each has left
    /// its critical section (run early at boot by refreshd-boot.service, before anyone logs in)
    BootRefresh {
        /// Stop waiting after this long (30s, 5m); the refreshes go on in the background
        #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = refreshd_snap::text::parse_duration)]
        timeout: std::time::Duration,
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// `refreshctl store --help`, and its man page: what each command is for, in the order an
/// operator meets them.
const STORE_ABOUT: &str = "\
Make a directory store signed, keep its signatures fresh, and change its keys (docs/store.md).

A signed store carries metadata (The Update Framework) that refreshd verifies, from a root it \
pins, before it trusts any index or blob: whoever serves the store, or sits on the way to it, \
can then withhold updates but not choose what is installed. The keys live in a key directory \
of their own, never inside the store.

How a signed store is run:
  refreshctl store init --store DIR --keys KEYDIR
      then install DIR/tuf/1.root.json on every machine
  refreshctl publish --store DIR --keys KEYDIR FILE
      for each new revision
  refreshctl store resign --store DIR --keys KEYDIR
      daily, from a timer
  refreshctl store rotate-key ROLE --store DIR --keys KEYDIR
      when a key is lost or stolen
  refreshctl store migrate --store DIR --keys KEYDIR
      once, to sign a store that was not";

/// `refreshctl store COMMAND`: the publisher's side of a signed store, on the store's directory
/// and a key directory kept apart from it.
#[derive(Subcommand, Debug, PartialEq, Eq)]
pub enum StoreCommand {
    /// Make a new, empty signed store and its keys; prints the root every machine must install
    /// as /etc/refreshd/store-root.json
    Init {
        /// The store directory (created if missing; it must hold no snaps: convert a store
        /// that does with refreshctl store migrate)
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
        #[command(flatten)]
        new: NewStore,
    },
    /// Convert an unsigned directory store in place: every snap's index and blobs are checked
    /// and signed; prints the root every machine must install
    Migrate {
        /// The unsigned store directory (refreshctl publish made it)
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
        #[command(flatten)]
        new: NewStore,
    },
    /// Sign the timestamp again with a new expiry (and the roles named with --role): run it
    /// daily from a timer, or clients refuse the store once its timestamp expires
    Resign {
        /// The signed store directory
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
        /// The store's key directory: the keys of the roles re-signed (the timestamp's, by
        /// default)
        #[arg(long, value_name = "KEYDIR")]
        keys: PathBuf,
        /// Re-sign this role too (repeatable). targets re-signs the snapshot too; the timestamp
        /// is always re-signed; root makes a new root version, with the root keys
        #[arg(long = "role", value_enum, value_name = "ROLE")]
        roles: Vec<Role>,
        #[command(flatten)]
        expires: ExpiresFlag,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Replace every key of a role with a new one, in a new root version signed by the current
    /// root keys; the old keys move to KEYDIR/retired/
    RotateKey {
        /// The role whose keys are replaced
        #[arg(value_enum, value_name = "ROLE")]
        role: Role,
        /// The signed store directory
        #[arg(long, value_name = "DIR")]
        store: PathBuf,
        /// The store's key directory: the root keys (a new root version is signed with them)
        /// and those of the role; the new keys are made there
        #[arg(long, value_name = "KEYDIR")]
        keys: PathBuf,
        #[command(flatten)]
        expires: ExpiresFlag,
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// What `store init` and `store migrate` make: the keys, how many of each role, expiries.
#[derive(Args, Debug, PartialEq, Eq, Clone)]
pub struct NewStore {
    /// Where the new private keys are made: created mode 0700 if missing, it must hold no keys
    /// and never be inside the store. Keep the root keys offline afterwards
    #[arg(long, value_name = "KEYDIR")]
    pub keys: PathBuf,
    /// How many root keys to make
    #[arg(long, value_name = "N", default_value_t = RoleKeys::default().keys, value_parser = at_least_one(), help_heading = ROLE_KEYS)]
    pub root_keys: u32,
    /// How many root keys must sign a root
    #[arg(long, value_name = "N", default_value_t = RoleKeys::default().threshold, value_parser = at_least_one(), help_heading = ROLE_KEYS)]
    pub root_threshold: u32,
    /// How many targets keys to make (they sign what is published)
    #[arg(long, value_name = "N", default_value_t = RoleKeys::default().keys, value_parser = at_least_one(), help_heading = ROLE_KEYS)]
    pub targets_keys: u32,
    /// How many targets keys must sign
    #[arg(long, value_name = "N", default_value_t = RoleKeys::default().threshold, value_parser = at_least_one(), help_heading = ROLE_KEYS)]
    pub targets_threshold: u32,
    /// How many snapshot keys to make
    #[arg(long, value_name = "N", default_value_t = RoleKeys::default().keys, value_parser = at_least_one(), help_heading = ROLE_KEYS)]
    pub snapshot_keys: u32,
    /// How many snapshot keys must sign
    #[arg(long, value_name = "N", default_value_t = RoleKeys::default().threshold, value_parser = at_least_one(), help_heading = ROLE_KEYS)]
    pub snapshot_threshold: u32,
    /// How many timestamp keys to make
    #[arg(long, value_name = "N", default_value_t = RoleKeys::default().keys, value_parser = at_least_one(), help_heading = ROLE_KEYS)]
    pub timestamp_keys: u32,
    /// How many timestamp keys must sign
    #[arg(long, value_name = "N", default_value_t = RoleKeys::default().threshold, value_parser = at_least_one(), help_heading = ROLE_KEYS)]
    pub timestamp_threshold: u32,
    #[command(flatten)]
    pub expires: ExpiresFlag,
    #[command(flatten)]
    pub json: JsonFlag,
}

/// Where `store init --help` lists the options that size each role.
const ROLE_KEYS: &str = "Keys of each role";

/// `--expires ROLE=DURATION`, repeatable.
#[derive(Args, Debug, PartialEq, Eq, Clone, Default)]
pub struct ExpiresFlag {
    #[arg(
        long = "expires",
        value_name = "ROLE=DURATION",
        value_parser = parse_expiry,
        help = expires_help()
    )]
    pub expires: Vec<Expiry>,
}

/// One `--expires ROLE=DURATION`.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Expiry {
    pub role: Role,
    pub duration: std::time::Duration,
}

/// A role of a signed store's metadata (TUF).
#[derive(clap::ValueEnum, Debug, PartialEq, Eq, Clone, Copy, Hash)]
pub enum Role {
    /// Names every role's keys; signed offline, rarely
    Root,
    /// Lists every index and blob with its hashes; signed on every publish
    Targets,
    /// Pins the current targets version; signed on every publish
    Snapshot,
    /// Pins the current snapshot, and expires soon: re-signed daily
    Timestamp,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Targets => "targets",
            Role::Snapshot => "snapshot",
            Role::Timestamp => "timestamp",
        }
    }
}

/// The help of `--expires`, with the defaults the store signs with.
fn expires_help() -> String {
    let d = Expiries::default();
    let f = refreshd_snap::text::format_duration;
    format!(
        "How long ROLE's metadata stays valid once signed (repeatable) [default: root={}, targets={}, snapshot={}, timestamp={}]. Clients refuse a store whose metadata expired",
        f(d.root),
        f(d.targets),
        f(d.snapshot),
        f(d.timestamp)
    )
}

/// A count of keys: 0 is refused by the parser, a threshold above the count by the store.
fn at_least_one() -> clap::builder::RangedU64ValueParser<u32> {
    clap::builder::RangedU64ValueParser::new().range(1..=u64::from(u32::MAX))
}

fn parse_expiry(s: &str) -> Result<Expiry, String> {
    let shape =
        "write ROLE=DURATION, ROLE one of root, targets, snapshot, timestamp (timestamp=7d)";
    let Some((role, duration)) = s.split_once('=') else {
        return Err(format!("{s:?} is not ROLE=DURATION: {shape}"));
    };
    let role = <Role as clap::ValueEnum>::from_str(role, false)
        .map_err(|_| format!("{role:?} is not a role: {shape}"))?;
    let duration = refreshd_snap::text::parse_duration(duration).map_err(|e| e.to_string())?;
    // Shorter, and metadata could expire on its way to clients, or between two look-ups.
    if duration < std::time::Duration::from_secs(60) {
        return Err(format!(
            "{s:?} is too short: signed metadata must live at least 1m (a day or more is usual)"
        ));
    }
    Ok(Expiry { role, duration })
}

#[derive(Args, Debug, PartialEq, Eq, Default, Clone, Copy)]
pub struct JsonFlag {
    /// Print refreshd's JSON (schema: docs/api.md) instead of text
    #[arg(long)]
    pub json: bool,
}

/// `--json` of the commands that make a change.
#[derive(Args, Debug, PartialEq, Eq, Default, Clone, Copy)]
pub struct ChangeJson {
    /// Print the change as refreshd's JSON (schema: docs/api.md) instead of text: once it is
    /// ready, or as it is now with --no-wait
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, PartialEq, Eq, Default, Clone, Copy)]
pub struct NoWait {
    /// Print the change id and return at once instead of following the change
    #[arg(long)]
    pub no_wait: bool,
}

impl Cli {
    /// The socket to talk to: `--socket`, else `--root`, else `$REFRESHD_SOCKET`, else
    /// `/run/refreshd.socket`. A flag beats the environment because it was typed for this call.
    pub fn socket_path(&self, env: Option<OsString>) -> PathBuf {
        if let Some(socket) = &self.socket {
            return socket.clone();
        }
        if let Some(root) = &self.root {
            return socket_in(root);
        }
        match env {
            Some(env) if !env.is_empty() => PathBuf::from(env),
            _ => socket_in(Path::new("/")),
        }
    }
}

fn socket_in(root: &Path) -> PathBuf {
    root.join("run/refreshd.socket")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("refreshctl").chain(args.iter().copied()))
    }

    /// `Command::Refresh` for `names`, with the given fields changed from their defaults.
    macro_rules! refresh {
        ($names:expr $(, $field:ident: $value:expr)*) => {{
            let mut command = refresh($names);
            if let Command::Refresh { $($field,)* .. } = &mut command {
                $(*$field = $value;)*
            }
            command
        }};
    }

    fn refresh(names: &[&str]) -> Command {
        Command::Refresh {
            names: names.iter().map(|n| n.to_string()).collect(),
            channel: None,
            list: false,
            hold: None,
            unhold: false,
            json: false,
            wait: NoWait::default(),
        }
    }

    #[test]
    fn commands() {
        let json = JsonFlag { json: true };
        let cases: &[(&[&str], Command)] = &[
            (
                &["status"],
                Command::Status {
                    name: None,
                    json: JsonFlag::default(),
                },
            ),
            (&["status", "--json"], Command::Status { name: None, json }),
            (
                &["status", "hello", "--json"],
                Command::Status {
                    name: Some("hello".into()),
                    json,
                },
            ),
            (&["list", "--json"], Command::List(json)),
            (
                &["install", "hello.snap"],
                Command::Install {
                    file: "hello.snap".into(),
                    name: None,
                    channel: None,
                    wait: NoWait::default(),
                    json: ChangeJson::default(),
                },
            ),
            (
                &["install", "hello", "--channel", "beta", "--json"],
                Command::Install {
                    file: "hello".into(),
                    name: None,
                    channel: Some("beta".into()),
                    wait: NoWait::default(),
                    json: ChangeJson { json: true },
                },
            ),
            (
                &["refresh", "hello", "--no-wait"],
                refresh!(&["hello"], wait: NoWait { no_wait: true }),
            ),
            (&["refresh"], refresh(&[])),
            (&["refresh", "a", "b"], refresh(&["a", "b"])),
            (
                &["refresh", "hello", "--channel", "beta"],
                refresh!(&["hello"], channel: Some("beta".into())),
            ),
            (&["refresh", "--list"], refresh!(&[], list: true)),
            (
                &["refresh", "--list", "--json"],
                refresh!(&[], list: true, json: true),
            ),
            (
                &["refresh", "--hold"],
                refresh!(&[], hold: Some(Hold::Forever)),
            ),
            (
                &["refresh", "--hold=forever", "a"],
                refresh!(&["a"], hold: Some(Hold::Forever)),
            ),
            // A bare --hold before a name holds forever; the name is not its value.
            (
                &["refresh", "--hold", "a", "b"],
                refresh!(&["a", "b"], hold: Some(Hold::Forever)),
            ),
            (
                &["refresh", "--hold=1h30m", "a"],
                refresh!(&["a"], hold: Some(Hold::For(std::time::Duration::from_secs(5400)))),
            ),
            (
                &["refresh", "--unhold", "a"],
                refresh!(&["a"], unhold: true),
            ),
            (
                &["install", "--name", "hello_work", "--no-wait", "hello.snap"],
                Command::Install {
                    file: "hello.snap".into(),
                    name: Some("hello_work".into()),
                    channel: None,
                    wait: NoWait { no_wait: true },
                    json: ChangeJson::default(),
                },
            ),
            (
                &["remove", "hello", "--no-wait", "--json"],
                Command::Remove {
                    name: "hello".into(),
                    purge: false,
                    wait: NoWait { no_wait: true },
                    json: ChangeJson { json: true },
                },
            ),
            (
                &["revert", "hello", "--json"],
                Command::Revert {
                    name: "hello".into(),
                    revision: None,
                    wait: NoWait::default(),
                    json: ChangeJson { json: true },
                },
            ),
            (
                &["revert", "hello", "--revision", "x1"],
                Command::Revert {
                    name: "hello".into(),
                    revision: Some("x1".into()),
                    wait: NoWait::default(),
                    json: ChangeJson::default(),
                },
            ),
            (
                &["refresh", "hello", "--json"],
                refresh!(&["hello"], json: true),
            ),
            (
                &["refresh", "--hold", "--json"],
                refresh!(&[], hold: Some(Hold::Forever), json: true),
            ),
            (
                &["changes"],
                Command::Changes {
                    name: None,
                    all: false,
                    snap: None,
                    json: JsonFlag::default(),
                },
            ),
            (
                &["changes", "--all", "--snap", "hello", "--json"],
                Command::Changes {
                    name: None,
                    all: true,
                    snap: Some("hello".into()),
                    json,
                },
            ),
            (
                &["changes", "hello"],
                Command::Changes {
                    name: Some("hello".into()),
                    all: false,
                    snap: None,
                    json: JsonFlag::default(),
                },
            ),
            (
                &["tasks", "7"],
                Command::Tasks {
                    id: 7,
                    json: JsonFlag::default(),
                },
            ),
            (&["watch", "7", "--json"], Command::Watch { id: 7, json }),
            (
                &["abort", "12"],
                Command::Abort {
                    id: 12,
                    json: JsonFlag::default(),
                },
            ),
            (&["abort", "12", "--json"], Command::Abort { id: 12, json }),
        ];
        for (args, want) in cases {
            let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(&cli.command, want, "{args:?}");
        }
    }

    #[test]
    fn store_commands() {
        let cli = parse(&["publish", "--store", "s", "--keys", "k", "a.snap"]).unwrap();
        assert_eq!(
            cli.command,
            Command::Publish {
                store: "s".into(),
                keys: Some("k".into()),
                file: "a.snap".into(),
                channel: "stable".into(),
                json: JsonFlag::default(),
            }
        );
        let cli = parse(&[
            "store",
            "init",
            "--store",
            "s",
            "--keys",
            "k",
            "--root-keys",
            "3",
            "--root-threshold",
            "2",
            "--expires",
            "timestamp=1d",
            "--expires",
            "root=730d",
            "--json",
        ])
        .unwrap();
        let Command::Store(StoreCommand::Init { store, new }) = cli.command else {
            panic!("{:?}", cli.command);
        };
        assert_eq!(store, Path::new("s"));
        assert_eq!((new.root_keys, new.root_threshold), (3, 2));
        assert_eq!((new.targets_keys, new.targets_threshold), (1, 1));
        assert!(new.json.json);
        let day = std::time::Duration::from_secs(86400);
        assert_eq!(
            new.expires.expires,
            vec![
                Expiry {
                    role: Role::Timestamp,
                    duration: day
                },
                Expiry {
                    role: Role::Root,
                    duration: 730 * day
                },
            ]
        );
        let cli = parse(&[
            "store", "resign", "--store", "s", "--keys", "k", "--role", "targets", "--role", "root",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Store(StoreCommand::Resign { roles, .. }) if roles == [Role::Targets, Role::Root]
        ));
        let cli = parse(&["store", "rotate-key", "root", "--store", "s", "--keys", "k"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Store(StoreCommand::RotateKey {
                role: Role::Root,
                ..
            })
        ));
    }

    #[test]
    fn a_bad_expiry_says_how_to_write_one() {
        for (arg, want) in [
            ("7d", "is not ROLE=DURATION: write ROLE=DURATION"),
            ("soon=7d", "\"soon\" is not a role"),
            ("timestamp=7x", "invalid duration \"7x\": unknown unit"),
            (
                "timestamp=30s",
                "is too short: signed metadata must live at least 1m",
            ),
        ] {
            let err = parse(&[
                "store",
                "resign",
                "--store",
                "s",
                "--keys",
                "k",
                "--expires",
                arg,
            ])
            .unwrap_err();
            assert_eq!(err.exit_code(), 2);
            let first = err.to_string();
            let first = first.lines().next().unwrap();
            assert!(first.contains(want), "{arg}: {first}");
        }
    }

    #[test]
    fn usage_errors_exit_2() {
        for args in [
            &[][..],
            &["frobnicate"],
            &["tasks"],
            &["tasks", "seven"],
            &["tasks", "-1"],
            &["install"],
            &["abort", "1", "2"],
            &["list", "--no-wait"],
            &["status", "a", "b"],
            &["pack", "--no-wait", "dir"],
            &["refresh", "--hold=2x"],
            &["refresh", "--hold=0s", "a"],
            &["refresh", "--hold="],
            &["refresh", "--hold=1h", "--unhold"],
            &["refresh", "--list", "a"],
            &["refresh", "--list", "--hold"],
            &["refresh", "--list", "--no-wait"],
            &["refresh", "--channel", "beta"],
            &["refresh", "--unhold", "--channel", "beta", "a"],
            &["refresh", "--hold", "--no-wait", "a"],
            &["store"],
            &["store", "init", "--store", "s"],
            &[
                "store",
                "init",
                "--store",
                "s",
                "--keys",
                "k",
                "--root-keys",
                "0",
            ],
            &["store", "resign", "--keys", "k"],
            &["store", "rotate-key", "--store", "s", "--keys", "k"],
            &["store", "rotate-key", "all", "--store", "s", "--keys", "k"],
            &[
                "store", "resign", "--store", "s", "--keys", "k", "--role", "all",
            ],
        ] {
            let err = parse(args).expect_err(&format!("{args:?} should not parse"));
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn a_bad_hold_says_what_is_wrong_in_one_line() {
        let err = parse(&["refresh", "--hold=2x", "hello"]).unwrap_err();
        let text = err.to_string();
        let first = text.lines().next().unwrap();
        assert!(
            first.contains("invalid duration \"2x\": unknown unit")
                && first.contains("like 30s, 15m, 2h, 7d or 1h30m"),
            "{text}"
        );
    }

    #[test]
    fn help_and_version_exit_0() {
        for (args, kind) in [
            (&["--help"][..], ErrorKind::DisplayHelp),
            (&["tasks", "--help"], ErrorKind::DisplayHelp),
            (&["--version"], ErrorKind::DisplayVersion),
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.kind(), kind);
            assert_eq!(err.exit_code(), 0);
        }
        let help = parse(&["--help"]).unwrap_err().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
    }

    #[test]
    fn socket_choice() {
        let env = || Some(OsString::from("/tmp/env.socket"));
        let cases: &[(&[&str], Option<OsString>, &str)] = &[
            (&["status"], None, "/run/refreshd.socket"),
            (&["status"], env(), "/tmp/env.socket"),
            (&["status"], Some(OsString::new()), "/run/refreshd.socket"),
            (
                &["--root", "/srv/r", "status"],
                env(),
                "/srv/r/run/refreshd.socket",
            ),
            // Global options may come after the command too.
            (
                &["status", "--root", "/srv/r"],
                None,
                "/srv/r/run/refreshd.socket",
            ),
            (
                &["--root", "/srv/r", "--socket", "/tmp/s", "status"],
                env(),
                "/tmp/s",
            ),
        ];
        for (args, env, want) in cases {
            let cli = parse(args).unwrap();
            assert_eq!(cli.socket_path(env.clone()), Path::new(want), "{args:?}");
        }
    }

    /// Each command's help lists its own options, then apart from them the global ones.
    #[test]
    fn help_lists_a_commands_own_options_apart_from_the_global_ones() {
        for cmd in ["refresh", "install", "changes", "revert"] {
            let help = match parse(&[cmd, "--help"]) {
                Err(e) if e.kind() == ErrorKind::DisplayHelp => e.to_string(),
                other => panic!("{cmd} --help: {other:?}"),
            };
            let (own, global) = help
                .split_once("Global options:")
                .unwrap_or_else(|| panic!("{cmd}: no global options heading: {help}"));
            assert!(own.contains("Options:"), "{cmd}: {help}");
            for g in ["--root", "--socket"] {
                assert!(!own.contains(g) && global.contains(g), "{cmd}: {g}: {help}");
            }
        }
    }
}
