//! Section 4, continued: what a signed store costs. The same small snap refreshed from an
//! unsigned store (the baseline) and from a signed one (TUF: `init` with default options, each
//! revision published with `publish_signed`, the daemon pinned to the store's root with
//! `--store-root`), from a local directory and over HTTP from nginx on 127.0.0.1, in the same
//! rounds; `refreshctl refresh --list` (a look-up of every installed snap, no change made) with
//! 1 and 10 snaps installed; and one look-up in this process, the verification alone.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use refreshd_store::{InitOptions, Store, StoreConfig, TrustConfig};
use refreshd_tests::{self as h, Daemon, DaemonOpts, Root, Value};

use crate::download::nginx::Nginx;
use crate::refresh::{strace_during, Breakdown, Traced};
use crate::report::{num, Figure, Section, Stats};
use crate::util::Ctx;

/// The snap refreshed: `tracking_snap`'s two shell-script apps, about 4 KiB as squashfs.
const NAME: &str = "rs";
/// Snaps installed beside it for the 10-snap look-up: `rl1`…`rl9`.
const OTHERS: usize = 9;
/// The most the signed refresh may cost, in unsigned refreshes.
const TARGET: f64 = 1.2;

/// How the store is reached.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    Dir,
    Http,
}

impl Via {
    fn label(self) -> &'static str {
        match self {
            Via::Dir => "directory store",
            Via::Http => "over HTTP (nginx, 127.0.0.1)",
        }
    }
}

/// One daemon on a scratch root, with what was timed against it.
struct Setup {
    via: Via,
    signed: bool,
    // Before `root`: the daemon stops before its root is unmounted and removed.
    daemon: Daemon,
    root: Root,
    refresh: Vec<Duration>,
    /// The timed refreshes' changes, as `refreshctl tasks ID --json` shows them.
    changes: Vec<Value>,
    list: [Vec<Duration>; 2],
}

impl Setup {
    fn name(&self) -> String {
        format!(
            "{}, {}",
            if self.signed { "signed" } else { "unsigned" },
            self.via.label()
        )
    }
}

/// Where the stores are: both served by one nginx when it is installed.
struct Stores {
    unsigned: PathBuf,
    signed: PathBuf,
    keys: PathBuf,
    /// The root a client pins (a copy of `SIGNED/tuf/1.root.json`, as its operator hands it out).
    pinned: PathBuf,
    nginx: Option<Nginx>,
}

impl Stores {
    fn url(&self, via: Via, signed: bool) -> String {
        let dir = if signed { &self.signed } else { &self.unsigned };
        match (via, &self.nginx) {
            (Via::Http, Some(n)) => {
                format!("{}/{}", n.url(), dir.file_name().unwrap().to_string_lossy())
            }
            _ => dir.to_string_lossy().into_owned(),
        }
    }

    /// Publishes `blob` to both stores; it must become `revision`.
    fn publish(&self, blob: &Path, revision: u32) -> anyhow::Result<()> {
        let what = |e: refreshd_store::Error| match e.says_publish() {
            true => anyhow::Error::new(e),
            false => anyhow::Error::new(e).context(format!("cannot publish {}", blob.display())),
        };
        let a = refreshd_store::publish(&self.unsigned, blob, "stable").map_err(what)?;
        let b = refreshd_store::publish_signed(
            &self.signed,
            blob,
            "stable",
            Some(&self.keys),
            &mut |_, _| {},
        )
        .map_err(what)?;
        if a.revision != revision || b.revision != revision {
            bail!(
                "{} published as revisions {} (unsigned) and {} (signed), expected {revision}",
                blob.display(),
                a.revision,
                b.revision
            );
        }
        Ok(())
    }
}

pub fn run(ctx: &Ctx, s: &mut Section) -> anyhow::Result<()> {
    let runs = ctx.n(20, 3);
    let warmup = ctx.n(2, 1);
    let list_runs = ctx.n(30, 3);
    let lookups = ctx.n(200, 10);
    let dir = tempfile::Builder::new()
        .prefix("signed-")
        .tempdir_in(&ctx.work)?;
    let d = dir.path();

    let unsigned = d.join("www/unsigned");
    fs::create_dir_all(&unsigned)?;
    let signed = d.join("www/signed");
    let keys = d.join("keys");
    let made = refreshd_store::init(&signed, &keys, &InitOptions::default())
        .context("cannot make the signed store")?;
    let pinned = d.join("store-root.json");
    fs::copy(&made.root_file, &pinned)?;
    // nginx's default keep-alive (75 s), as a store's server has it: the test harness's own
    // configuration closes every connection after one response. The harness panics when nginx
    // is there but does not start: then only the HTTP rows are skipped.
    let www = d.join("www");
    let started = std::panic::catch_unwind(|| Nginx::start(&www, "keepalive_timeout 75s;"));
    let (nginx, no_http) = match started {
        Ok(Some(n)) => (Some(n), None),
        Ok(None) => (
            None,
            Some("nginx is not installed (Debian package nginx)".to_owned()),
        ),
        Err(p) => (
            None,
            Some(format!(
                "nginx did not start ({})",
                // The harness's message, then nginx's own log: its first line says why.
                p.downcast_ref::<String>()
                    .and_then(|m| m.lines().skip(1).find(|l| !l.trim().is_empty()))
                    .unwrap_or("no message")
                    .trim()
            )),
        ),
    };
    let stores = Stores {
        unsigned,
        signed,
        keys,
        pinned,
        nginx,
    };

    let revisions = 1 + warmup + runs;
    println!(
        "    building {} revisions of a small snap and {OTHERS} other snaps",
        revisions
    );
    let blob = |name: &str, i: usize| {
        let b = d.join(format!("{name}-{i}.snap"));
        h::tracking_snap(&b, name, &format!("{i}.0"), false);
        b
    };
    let blobs: Vec<PathBuf> = (1..=revisions).map(|i| blob(NAME, i)).collect();
    stores.publish(&blobs[0], 1)?;

    let vias: &[Via] = if stores.nginx.is_some() {
        &[Via::Dir, Via::Http]
    } else {
        &[Via::Dir]
    };
    let mut setups = vec![];
    for &via in vias {
        for signed in [false, true] {
            let root = Root::new(&format!(
                "bench-signed-{}-{}",
                setups.len(),
                std::process::id()
            ));
            let url = stores.url(via, signed);
            let mut args = vec!["--store".to_owned(), url];
            if signed {
                args.push("--store-root".into());
                args.push(stores.pinned.to_string_lossy().into_owned());
            } else {
                args.push("--insecure-unsigned-store".into());
            }
            let daemon = Daemon::start_with(
                root.path(),
                DaemonOpts {
                    extra_args: args,
                    ..Default::default()
                },
            );
            let out = h::ctl(root.path(), &["install", NAME]);
            if !out.status.success() {
                bail!("install {NAME} failed: {}", h::text(&out.stderr).trim());
            }
            setups.push(Setup {
                via,
                signed,
                daemon,
                root,
                refresh: vec![],
                changes: vec![],
                list: [vec![], vec![]],
            });
        }
    }

    println!(
        "    {warmup} warm-up and {runs} timed refreshes from each of {} stores",
        setups.len()
    );
    for i in 1..=warmup + runs {
        stores.publish(&blobs[i], i as u32 + 1)?;
        let n = setups.len();
        // Each round starts with the next setup: none is always first after the publish.
        for j in 0..n {
            let su = &mut setups[(i + j) % n];
            let r = su.root.path();
            let wall = timed_ctl(r, &["refresh", NAME])?;
            let current = fs::read_link(r.join(format!("snap/{NAME}/current")))?;
            if current != Path::new(&(i + 1).to_string()) {
                bail!(
                    "{}: after refresh {i}, current is {current:?}, not {}",
                    su.name(),
                    i + 1
                );
            }
            if i > warmup {
                su.refresh.push(wall);
                let id = h::newest_change(r).to_string();
                su.changes.push(h::ctl_json(r, &["tasks", &id, "--json"]));
            }
        }
    }

    println!("    `refresh --list` with 1 snap installed");
    list_rounds(&mut setups, 0, list_runs)?;
    println!("    installing {OTHERS} more snaps");
    for k in 1..=OTHERS {
        let name = format!("rl{k}");
        stores.publish(&blob(&name, 1), 1)?;
        for su in &setups {
            let out = h::ctl(su.root.path(), &["install", &name]);
            if !out.status.success() {
                bail!("install {name} failed: {}", h::text(&out.stderr).trim());
            }
        }
    }
    println!("    `refresh --list` with {} snaps installed", OTHERS + 1);
    list_rounds(&mut setups, 1, list_runs)?;

    let traced_n = ctx.n(10, 2);
    println!("    {traced_n} more `refresh --list` against each directory store under strace");
    let traced = trace_lists(ctx, &setups, traced_n);
    println!("    {lookups} look-ups in this process from each store");
    let inproc = in_process(d, &stores, vias, lookups)?;

    for &via in vias {
        let pair = |signed: bool| {
            setups
                .iter()
                .find(|su| su.via == via && su.signed == signed)
                .expect("a setup per store")
        };
        let (u, g) = (pair(false), pair(true));
        compare(
            s,
            &format!("`refreshctl refresh` of a small snap, {}", via.label()),
            true,
            Stats::ms(&u.refresh),
            Stats::ms(&g.refresh),
            Some(TARGET),
            "",
        );
        for (k, n) in [1, OTHERS + 1].into_iter().enumerate() {
            compare(
                s,
                &format!(
                    "`refreshctl refresh --list`, {n} snap{} installed, {}",
                    if n == 1 { "" } else { "s" },
                    via.label()
                ),
                true,
                Stats::ms(&u.list[k]),
                Stats::ms(&g.list[k]),
                None,
                "",
            );
        }
    }
    for l in &inproc {
        compare(
            s,
            &format!(
                "one look-up in this process (`Store::snap`), {}",
                l.via.label()
            ),
            false,
            Stats::ms(&l.unsigned),
            Stats::ms(&l.signed),
            None,
            &l.requests.map_or(String::new(), |(u, g)| {
                format!(
                    "; requests nginx served per look-up: {} signed, {} unsigned",
                    num(g),
                    num(u)
                )
            }),
        );
    }

    s.note(format!(
        "**Signed and unsigned stores.** Two stores in the run's scratch directory (ext4): one \
         unsigned, filled with `refreshd_store::publish`, and one made by \
         `refreshd_store::init` with default options (one Ed25519 key per role, consistent \
         snapshots) and filled with `publish_signed`, which signs new targets, snapshot and \
         timestamp metadata on every publish. {}Each store has a daemon of its own per way of \
         reaching it, on its own scratch root: `refreshd --root ROOT --insecure-unsigned-store \
         --store URL`, or `refreshd --root ROOT --store URL --store-root FILE` pinned to a copy \
         of the signed store's `tuf/1.root.json` (its verified metadata kept in \
         `ROOT/var/lib/refreshd/store-trust`). The snap `{NAME}` (the same as above, about 4 KiB \
         as squashfs) is installed in each from its store. Each round publishes the next \
         revision to both stores (not timed) and then times `refreshctl --root ROOT refresh \
         {NAME}` from fork to exit against every daemon, the order rotating from round to \
         round ({warmup} untimed warm-up rounds, then {runs}); the new `current` link is \
         checked after each. A signed look-up fetches and verifies the store's metadata \
         (`ROOT_VERSION+1.root.json`, which is missing unless the root was rotated, then \
         `timestamp.json`, the snapshot and the targets it names) and keeps it, then reads \
         the snap's index through its signed target (`v1/snaps/SHA256.{NAME}.json`); an \
         unsigned look-up reads `v1/snaps/{NAME}.json`. Both then download the same blob and \
         check its sha3-384.",
        match no_http {
            None =>
                "Both are served by one nginx on 127.0.0.1 (the tests' harness, with \
                     nginx's default keep-alive of 75 s so that a look-up's requests may share \
                     a connection), and read directly as directories. ",
            Some(_) => "",
        }
    ));
    s.note(format!(
        "**`refresh --list`** asks the daemon for the updates of every installed snap: one \
         look-up of the store (for a signed store, one verification of its metadata) and one \
         index read per snap, nothing changed. Timed the same way, {list_runs} rounds over the \
         daemons, first with `{NAME}` alone installed and up to date, then with {OTHERS} more \
         snaps (`rl1`…`rl{OTHERS}`, one revision each, installed from the stores). **In this \
         process**: `Store::open_with` (the daemon's settings; for the signed store a \
         `TrustConfig` with the same pinned root and a state directory of its own) and \
         `Store::snap(\"{NAME}\")` timed {lookups} times per store, signed and unsigned \
         alternating: the verification alone, with no daemon, API or refreshctl around it."
    ));
    for &via in vias {
        let pair = |signed: bool| {
            let su = setups
                .iter()
                .find(|su| su.via == via && su.signed == signed)
                .expect("a setup per store");
            Breakdown::of(&su.changes, &su.refresh)
        };
        s.note(format!(
            "**Where the signed refresh's time goes, {}**: medians over the timed runs, from \
             each change's record as in the table above. The look-up comes before the change \
             exists, in \"outside the change\"; the tasks after it read nothing signed.\n\n{}",
            via.label(),
            pair(false)?.compare(&pair(true)?, "unsigned", "signed")
        ));
    }
    match traced {
        Ok(t) => s.note(describe_traces(&t, traced_n)),
        Err(e) => s.note(format!(
            "The system calls of a signed look-up could not be counted: {e:#}."
        )),
    }
    if let Some(why) = no_http {
        s.note(format!(
            "**Over HTTP: skipped**, because {why}: only the directory store's rows are shown."
        ));
    }
    Ok(())
}

/// Signed against unsigned, as two rows: the unsigned baseline, then the signed figure with
/// the ratio of the medians (and of the p90s in its note). `daemon`: the rows name its options.
fn compare(
    s: &mut Section,
    what: &str,
    daemon: bool,
    unsigned: Stats,
    signed: Stats,
    target: Option<f64>,
    extra: &str,
) {
    let (u, g) = match daemon {
        true => (
            "unsigned store (`--insecure-unsigned-store`)",
            "signed store (`--store-root`)",
        ),
        false => ("unsigned store", "signed store"),
    };
    s.push(Figure::new(format!("{what}: {u}"), "ms", unsigned.clone()));
    let ratio_p90 = signed.p90 / unsigned.p90;
    let mut f = Figure::new(format!("{what}: {g}"), "ms", signed.clone())
        .against("the unsigned store, same rounds", unsigned.clone())
        .note(format!(
            "p90 {} ms against {} ms unsigned: {}×; the median {} ms more{extra}",
            num(signed.p90),
            num(unsigned.p90),
            num(ratio_p90),
            num(signed.median - unsigned.median),
        ));
    if let Some(t) = target {
        let met = signed.median <= t * unsigned.median;
        f = f.target(format!("≤ {t}× the unsigned store"), met);
    }
    s.push(f);
}

/// `list_runs` rounds of `refreshctl refresh --list` against every daemon, the order rotating.
fn list_rounds(setups: &mut [Setup], slot: usize, list_runs: usize) -> anyhow::Result<()> {
    let n = setups.len();
    // One untimed round first: each daemon's first look-up of the stores as they are now.
    for round in 0..=list_runs {
        for j in 0..n {
            let su = &mut setups[(round + j) % n];
            let wall = timed_ctl(su.root.path(), &["refresh", "--list"])?;
            if round > 0 {
                su.list[slot].push(wall);
            }
        }
    }
    Ok(())
}

/// fork + exec + wait of `refreshctl --root ROOT ARGS`, which must succeed.
fn timed_ctl(root: &Path, args: &[&str]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let out = Command::new(h::bin("refreshctl"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("REFRESHD_SOCKET")
        .stdin(Stdio::null())
        .output()
        .context("cannot run refreshctl")?;
    let wall = t.elapsed();
    if !out.status.success() {
        bail!(
            "refreshctl {} failed: {}",
            args.join(" "),
            h::text(&out.stderr).trim()
        );
    }
    Ok(wall)
}

/// Look-ups timed in this process.
struct InProcess {
    via: Via,
    unsigned: Vec<Duration>,
    signed: Vec<Duration>,
    /// Over HTTP: the requests nginx logged per look-up, (unsigned, signed).
    requests: Option<(f64, f64)>,
}

fn in_process(d: &Path, stores: &Stores, vias: &[Via], n: usize) -> anyhow::Result<Vec<InProcess>> {
    let mut out = vec![];
    for (k, &via) in vias.iter().enumerate() {
        let state_dir = d.join(format!("trust-{k}"));
        let open = |signed: bool| -> anyhow::Result<Store> {
            let mut config = StoreConfig::default();
            if signed {
                config.trust = Some(TrustConfig {
                    root: stores.pinned.clone(),
                    state_dir: state_dir.clone(),
                });
            }
            Ok(Store::open_with(&stores.url(via, signed), config)?)
        };
        let (unsigned, signed) = (open(false)?, open(true)?);
        // Requests by store, from nginx's access log (`"GET /signed/tuf/timestamp.json …`).
        let logged = || match (via, &stores.nginx) {
            (Via::Http, Some(n)) => {
                let log = n.access_log();
                Some(["\"GET /unsigned/", "\"GET /signed/"].map(|p| log.matches(p).count()))
            }
            _ => None,
        };
        let before = logged();
        let mut times = [vec![], vec![]];
        // One untimed look-up each first (the signed one starts its kept state).
        for i in 0..=n {
            for (slot, store) in [&unsigned, &signed].into_iter().enumerate() {
                let t = Instant::now();
                let index = store.snap(NAME)?;
                let took = t.elapsed();
                if index.is_none() {
                    bail!("{} has no {NAME}", store.url());
                }
                if i > 0 {
                    times[slot].push(took);
                }
            }
        }
        let per = |a: usize, b: usize| (b - a) as f64 / (n + 1) as f64;
        let requests = before
            .zip(logged())
            .map(|(b, a)| (per(b[0], a[0]), per(b[1], a[1])));
        let [unsigned, signed] = times;
        out.push(InProcess {
            via,
            unsigned,
            signed,
            requests,
        });
    }
    Ok(out)
}

/// The daemon's system calls over `n` `refresh --list` (unsigned, then signed directory store).
fn trace_lists(ctx: &Ctx, setups: &[Setup], n: usize) -> anyhow::Result<[Traced; 2]> {
    let one = |signed: bool| {
        let su = setups
            .iter()
            .find(|su| su.via == Via::Dir && su.signed == signed)
            .expect("a daemon per directory store");
        strace_during(ctx, su.daemon.pid(), &mut || {
            for _ in 0..n {
                timed_ctl(su.root.path(), &["refresh", "--list"])?;
            }
            Ok(())
        })
    };
    Ok([one(false)?, one(true)?])
}

fn describe_traces([u, g]: &[Traced; 2], n: usize) -> String {
    let per = |t: &Traced, names: &[&str]| {
        let (calls, secs) = names
            .iter()
            .map(|c| t.get(c))
            .fold((0, 0.0), |a, x| (a.0 + x.0, a.1 + x.1));
        (calls as f64 / n as f64, secs * 1e3 / n as f64)
    };
    let waits = ["futex", "epoll_wait", "epoll_pwait", "restart_syscall"];
    let busy = |t: &Traced| {
        t.rows
            .iter()
            .filter(|r| !waits.contains(&r.0.as_str()))
            .map(|r| r.1)
            .sum::<u64>() as f64
            / n as f64
    };
    let kinds: [(&str, &[&str]); 7] = [
        ("fsync", &["fsync", "fdatasync"]),
        ("rename", &["rename", "renameat", "renameat2"]),
        ("unlink", &["unlink", "unlinkat"]),
        ("mkdir", &["mkdir", "mkdirat"]),
        ("openat", &["openat", "open"]),
        ("write", &["write", "pwrite64"]),
        ("thread starts", &["clone", "clone3"]),
    ];
    let counts: Vec<String> = kinds
        .iter()
        .map(|(k, names)| {
            let (a, b) = (per(u, names), per(g, names));
            format!("{k} {} against {}", num(b.0), num(a.0))
        })
        .collect();
    let (fs_calls, fs_ms) = per(g, &["fsync", "fdatasync"]);
    let mut busiest: Vec<&(String, u64, f64)> = g
        .rows
        .iter()
        .filter(|r| !waits.contains(&r.0.as_str()))
        .collect();
    busiest.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
    let top: Vec<String> = busiest
        .iter()
        .take(5)
        .map(|r| {
            format!(
                "`{}` {} calls, {} ms",
                r.0,
                num(r.1 as f64 / n as f64),
                num(r.2 * 1e3 / n as f64)
            )
        })
        .collect();
    format!(
        "**Where a signed look-up goes in the daemon.** {n} more `refresh --list` against each \
         directory store's daemon (10 snaps installed) ran with `strace -f -c -w` attached to \
         it ({} ms each under strace signed, {} ms unsigned). Per look-up, besides waiting \
         (futex, epoll), the signed daemon made {} system calls against {} unsigned: {}. The \
         signed daemon's busiest calls per look-up: {}. Its {} fsyncs ({} ms under strace) \
         keep what was verified durable: when nothing new was signed only tough's latest \
         known time changes, so a temporary file and then the directory are fsynced, 2 in all.",
        num(g.wall.as_secs_f64() * 1e3 / n as f64),
        num(u.wall.as_secs_f64() * 1e3 / n as f64),
        num(busy(g)),
        num(busy(u)),
        counts.join(", "),
        top.join("; "),
        num(fs_calls),
        num(fs_ms),
    )
}
