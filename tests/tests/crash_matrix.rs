//! The crash matrix: SIGKILL of refreshd at every task boundary of every kind of change, at
//! every boundary of its undo, at random points inside the data copies and the download, and in
//! some iterations once more during the recovery. After each, the daemon is started again, the
//! change must end (Done, or Error and undone when a task was failed on purpose), and the one
//! invariant checker (`crash_common::check`) must pass. docs/crash-matrix.md says what is cut
//! where, and how to run it longer (`scripts/crash-matrix.sh`) or again from a seed.

mod crash_common;
// The store crate's nginx harness, shared rather than copied.
#[path = "../../store/tests/common/nginx.rs"]
mod nginx;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use crash_common::*;
use refreshd_tests::*;

const SNAP: &str = "matrix";

/// Random cuts per kind in the short run (CI); `CRASH_MATRIX_ITERATIONS` sets it.
const DEFAULT_ITERATIONS: u64 = 2;

/// How long an armed daemon may take to reach its failpoint: it reaches it within a second or
/// two; running out means the point is never reached (a boundary the matrix expects is gone).
const DEATH_LIMIT: Duration = Duration::from_secs(60);

/// Size of the payload noise of the snaps served over HTTP, so a download has many chunks to
/// be cut between.
const HTTP_PAYLOAD: usize = 300_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    InstallFile,
    InstallStore,
    RefreshDir,
    RefreshHttp,
    Revert,
    Remove,
}

/// An install from a file has the same tasks without `download`.
const INSTALL_STORE_TASKS: &[&str] = &[
    "download",
    "prepare",
    "mount",
    "setup-data",
    "link",
    "launchers",
    "start-services",
];
const REVERT_TASKS: &[&str] = &[
    "wait-for-apps",
    "stop-services",
    "link",
    "launchers",
    "lift-inhibition",
    "start-services",
];
const REMOVE_TASKS: &[&str] = &[
    "wait-for-apps",
    "stop-services",
    "unlink",
    "unmount",
    "save-data",
    "discard",
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::InstallFile => "install-file",
            Kind::InstallStore => "install-store",
            Kind::RefreshDir => "refresh-dir",
            Kind::RefreshHttp => "refresh-http",
            Kind::Revert => "revert",
            Kind::Remove => "remove",
        }
    }

    /// Every task of the change, in order: asserted against each change the matrix makes, so a
    /// task added to a chain cannot go uncut.
    fn tasks(self) -> &'static [&'static str] {
        match self {
            Kind::InstallFile => &INSTALL_STORE_TASKS[1..],
            Kind::InstallStore => INSTALL_STORE_TASKS,
            Kind::RefreshDir | Kind::RefreshHttp => REFRESH_TASKS,
            Kind::Revert => REVERT_TASKS,
            Kind::Remove => REMOVE_TASKS,
        }
    }

    fn change_kind(self) -> &'static str {
        match self {
            Kind::InstallFile | Kind::InstallStore => "install",
            Kind::RefreshDir | Kind::RefreshHttp => "refresh",
            Kind::Revert => "revert",
            Kind::Remove => "remove",
        }
    }

    fn refresh(self) -> bool {
        matches!(self, Kind::RefreshDir | Kind::RefreshHttp)
    }

    fn index(self, task: &str) -> Option<usize> {
        self.tasks().iter().position(|t| *t == task)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Boundary,
    RandomBoundary,
    RandomCopy,
    RandomDownload,
}

/// One run of the matrix: where the daemon is killed, and what else is done to it.
#[derive(Clone, Debug)]
struct Cut {
    class: Class,
    /// The failpoints of the first daemon (`REFRESHD_FAILPOINTS`).
    first: String,
    /// The failpoint of the daemon that recovers, killed once more (a double kill).
    second: Option<String>,
    /// A task fails on purpose (`fail-do:` the last one): the change must end in Error, undone.
    fault: bool,
    /// The task the first kill is in (its index in the chain), and whether in its undo.
    at: (usize, bool),
    /// The first kill is a task's `before-do` (the task has not started) or inside it.
    entering: bool,
    /// For a cut inside the download: the byte it is cut at.
    download_at: Option<u64>,
    /// The pre-copy is lost while refreshd is down (it is best effort: a failed one leaves
    /// setup-data to copy everything), so the cut lands in a full copy.
    lose_precopy: bool,
}

impl Cut {
    /// A cut with no second kill, no fault, not in the download, the pre-copy kept.
    fn new(class: Class, first: String, at: (usize, bool), entering: bool) -> Cut {
        Cut {
            class,
            first,
            second: None,
            fault: false,
            at,
            entering,
            download_at: None,
            lose_precopy: false,
        }
    }

    fn label(&self) -> String {
        match &self.second {
            Some(s) => format!("{} then {s}", self.first),
            None => self.first.clone(),
        }
    }
}

/// Every boundary of `kind`: before and after each task's do; and with its last task failed on
/// purpose, before and after each undo.
fn boundary_cuts(kind: Kind) -> Vec<Cut> {
    let tasks = kind.tasks();
    let mut cuts = vec![];
    for (i, t) in tasks.iter().enumerate() {
        for when in ["before-do", "after-do"] {
            cuts.push(Cut::new(
                Class::Boundary,
                format!("{when}:{t}"),
                (i, false),
                when == "before-do",
            ));
        }
    }
    let last = tasks[tasks.len() - 1];
    for (i, t) in tasks[..tasks.len() - 1].iter().enumerate() {
        for when in ["before-undo", "after-undo"] {
            cuts.push(Cut {
                fault: true,
                ..Cut::new(
                    Class::Boundary,
                    format!("fail-do:{last},{when}:{t}"),
                    (i, true),
                    when == "before-undo",
                )
            });
        }
    }
    cuts
}

/// What a snap must look like, owned (see `crash_common::Want`).
#[derive(Clone, Debug)]
enum Expect {
    Removed,
    Installed {
        rev: Option<String>,
        version: String,
        data: Data,
    },
}

/// Snapshot `set` of the snap holds `data` of `rev`: the system's, root's own and `common`.
fn saved_as(r: &Path, set: u64, rev: &str, data: &Data) -> Result<(), String> {
    let saved = format!(".saved-{set}-{SNAP}");
    let sys = r.join("var/snap").join(&saved);
    diff(
        "the saved system data",
        &snapshot(&sys.join(rev), &[]),
        &data.system,
    )?;
    diff(
        "the saved common data",
        &snapshot(&sys.join("common"), &[]),
        &data.common,
    )?;
    if let Some(home) = &data.home {
        let h = r.join("root/snap").join(&saved).join(rev);
        diff("root's saved data", &snapshot(&h, &[]), home)?;
    }
    Ok(())
}

/// The change a cut is made in, and what must hold once it ends either way.
struct Plan {
    args: Vec<String>,
    before: Expect,
    after: Expect,
}

#[derive(Default)]
struct Figures {
    kills: u64,
    survived: u64,
    boundaries: u64,
    random_copy: u64,
    random_download: u64,
    double_kills: u64,
}

/// A store entry the matrix published: (revision, size, path in the store).
#[derive(Clone)]
struct Published {
    rev: String,
    size: u64,
    path: String,
}

struct Matrix {
    kind: Kind,
    seed: u64,
    rng: Rng,
    root: Root,
    store: std::path::PathBuf,
    store_url: String,
    nginx: Option<nginx::Nginx>,
    /// Every version built: its source tree, what the payload must match.
    srcs: HashMap<String, SnapSrc>,
    /// Revision -> version, for revisions on disk.
    versions: HashMap<String, String>,
    /// Revision -> the data it must hold.
    data: HashMap<String, Data>,
    current: Option<String>,
    built: u32,
    /// The newest change id seen, so a lost change is told from an old one.
    last_id: u64,
    last_published: Option<Published>,
    fig: Figures,
}

fn iterations() -> u64 {
    std::env::var("CRASH_MATRIX_ITERATIONS")
        .ok()
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("CRASH_MATRIX_ITERATIONS={v:?} is not a number"))
        })
        .unwrap_or(DEFAULT_ITERATIONS)
}

fn seed() -> u64 {
    match std::env::var("CRASH_MATRIX_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CRASH_MATRIX_SEED={v:?} is not a number")),
        Err(_) => (unix_ns() as u64) % 1_000_000_000,
    }
}

impl Matrix {
    /// A root ready for `kind`'s cuts; `None` (after a skip) when something is missing.
    fn new(kind: Kind) -> Option<Matrix> {
        if !root_with(
            "loop mounts, a setuid launcher, SIGKILL of a root daemon",
            &[],
        ) {
            return None;
        }
        let seed = seed();
        println!(
            "crash-matrix: kind={} seed={seed} iterations={} (CRASH_MATRIX_SEED={seed} repeats it)",
            kind.name(),
            iterations()
        );
        // Each kind draws its own sequence from the one seed printed.
        let rng = Rng::new(seed ^ (kind as u64 + 1).wrapping_mul(0x1000_0000_01b3));
        let root = Root::new(&format!("cm-{}", kind.name()));
        let store = root.aux("store");
        fs::create_dir(&store).unwrap();
        let (nginx, store_url) = if kind == Kind::RefreshHttp {
            let Some(n) = nginx::Nginx::start(&store, "") else {
                skip("nginx not installed (nginx)");
                return None;
            };
            let url = n.url();
            (Some(n), url)
        } else {
            (None, store.to_str().unwrap().to_owned())
        };
        let mut m = Matrix {
            kind,
            seed,
            rng,
            root,
            store,
            store_url,
            nginx,
            srcs: HashMap::new(),
            versions: HashMap::new(),
            data: HashMap::new(),
            current: None,
            built: 0,
            last_id: 0,
            last_published: None,
            fig: Figures::default(),
        };
        match kind {
            Kind::RefreshDir | Kind::RefreshHttp | Kind::Revert => {
                let p = m.publish();
                let d = m.daemon(None);
                m.ctl_ok(&["install", SNAP]);
                m.last_id = newest_change_id(m.r()).unwrap_or(0);
                drop(d);
                let r = m.r().to_owned();
                fill(&system_dir(&r, SNAP, &p.rev), &mut m.rng, 80);
                fill(&home_dir(&r, SNAP, &p.rev), &mut m.rng, 30);
                fs::write(
                    r.join("var/snap").join(SNAP).join("common/shared"),
                    m.rng.bytes(500),
                )
                .unwrap();
                m.data.insert(p.rev.clone(), data_now(&r, SNAP, &p.rev));
                m.current = Some(p.rev);
            }
            Kind::Remove => {
                m.publish();
            }
            Kind::InstallFile | Kind::InstallStore => {}
        }
        Some(m)
    }

    fn r(&self) -> &Path {
        self.root.path()
    }

    fn daemon(&self, failpoints: Option<&str>) -> Daemon {
        Daemon::start_with(self.r(), store_opts(&self.store_url, failpoints))
    }

    /// A change the matrix needs done, with a daemon running.
    fn ctl_ok(&self, args: &[&str]) {
        let out = ctl(self.r(), args);
        assert!(
            out.status.success(),
            "refreshctl {args:?} (seed {}): {}",
            self.seed,
            text(&out.stderr)
        );
    }

    /// Builds the next version of the snap.
    fn build(&mut self) -> String {
        self.built += 1;
        let v = format!("1.{}", self.built);
        let src = snap_src(SNAP, &v);
        if self.kind == Kind::RefreshHttp {
            fs::write(src.dir.path().join("payload"), self.rng.bytes(HTTP_PAYLOAD)).unwrap();
        }
        self.srcs.insert(v.clone(), src);
        v
    }

    /// Builds and publishes the next version to the store's stable channel.
    fn publish(&mut self) -> Published {
        let v = self.build();
        let blob = self.root.aux(&format!("{SNAP}-{v}.snap"));
        self.srcs[&v].build(&blob);
        let e = refreshd_store::publish(&self.store, &blob, "stable").unwrap();
        fs::remove_file(&blob).unwrap();
        let p = Published {
            rev: e.revision.to_string(),
            size: e.size,
            path: e.path.clone(),
        };
        self.versions.insert(p.rev.clone(), v);
        self.last_published = Some(p.clone());
        p
    }

    fn installed(&self, rev: &str) -> Expect {
        Expect::Installed {
            rev: Some(rev.to_owned()),
            version: self.versions[rev].clone(),
            data: self.data[rev].clone(),
        }
    }

    /// Readies the change the next cut is made in.
    fn prepare(&mut self) -> Plan {
        let fresh = Data::default();
        match self.kind {
            Kind::InstallFile => {
                let v = self.build();
                let blob = self.root.aux("install.snap");
                self.srcs[&v].build(&blob);
                Plan {
                    args: vec![
                        "install".into(),
                        blob.to_str().unwrap().into(),
                        "--no-wait".into(),
                    ],
                    before: Expect::Removed,
                    after: Expect::Installed {
                        rev: None,
                        version: v,
                        data: fresh,
                    },
                }
            }
            Kind::InstallStore => {
                let p = self.publish();
                Plan {
                    args: vec!["install".into(), SNAP.into(), "--no-wait".into()],
                    before: Expect::Removed,
                    after: Expect::Installed {
                        rev: Some(p.rev.clone()),
                        version: self.versions[&p.rev].clone(),
                        data: fresh,
                    },
                }
            }
            Kind::RefreshDir | Kind::RefreshHttp => {
                let cur = self.current.clone().unwrap();
                let p = self.publish();
                self.data.insert(p.rev.clone(), self.data[&cur].clone());
                Plan {
                    args: vec!["refresh".into(), SNAP.into(), "--no-wait".into()],
                    before: self.installed(&cur),
                    after: self.installed(&p.rev),
                }
            }
            Kind::Revert => {
                // A clean refresh first, then its data changes: the revert goes back to the
                // revision before it, whose data is as it was left.
                let cur = self.current.clone().unwrap();
                let p = self.publish();
                let d = self.daemon(None);
                self.ctl_ok(&["refresh", SNAP]);
                let list = ctl_json(self.r(), &["list", "--json"]);
                self.last_id = newest_change_id(self.r()).unwrap_or(0);
                drop(d);
                let r = self.r().to_owned();
                let (copied, was) = (data_now(&r, SNAP, &p.rev), &self.data[&cur]);
                assert!(
                    copied.system == was.system && copied.home == was.home,
                    "seed {}: the refresh before the revert did not carry the data",
                    self.seed
                );
                mutate(&system_dir(&r, SNAP, &p.rev), &mut self.rng, &p.rev);
                mutate(&home_dir(&r, SNAP, &p.rev), &mut self.rng, &p.rev);
                self.data.insert(p.rev.clone(), data_now(&r, SNAP, &p.rev));
                self.current = Some(p.rev.clone());
                let revs: Vec<String> = list[0]["revisions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect();
                let pos = revs.iter().position(|v| *v == p.rev).unwrap();
                let target = revs[pos - 1].clone();
                Plan {
                    args: vec!["revert".into(), SNAP.into(), "--no-wait".into()],
                    before: self.installed(&p.rev),
                    after: self.installed(&target),
                }
            }
            Kind::Remove => {
                let d = self.daemon(None);
                self.ctl_ok(&["install", SNAP]);
                self.last_id = newest_change_id(self.r()).unwrap_or(0);
                drop(d);
                let rev = self.last_published.clone().unwrap().rev;
                let r = self.r().to_owned();
                fill(&system_dir(&r, SNAP, &rev), &mut self.rng, 30);
                fill(&home_dir(&r, SNAP, &rev), &mut self.rng, 10);
                fs::write(r.join("var/snap").join(SNAP).join("common/c"), "c").unwrap();
                self.data.insert(rev.clone(), data_now(&r, SNAP, &rev));
                Plan {
                    args: vec!["remove".into(), SNAP.into(), "--no-wait".into()],
                    before: self.installed(&rev),
                    after: Expect::Removed,
                }
            }
        }
    }

    /// After the check: the state the next cut starts from.
    fn settle(&mut self, done: bool, plan: &Plan) {
        let now = if done { &plan.after } else { &plan.before };
        match (self.kind, now) {
            (Kind::InstallFile | Kind::InstallStore, Expect::Installed { .. }) => {
                let _d = self.daemon(None);
                self.ctl_ok(&["remove", SNAP]);
                self.last_id = newest_change_id(self.r()).unwrap_or(0);
            }
            (Kind::Remove, Expect::Installed { .. }) => {
                let _d = self.daemon(None);
                self.ctl_ok(&["remove", SNAP]);
                self.last_id = newest_change_id(self.r()).unwrap_or(0);
            }
            (
                Kind::RefreshDir | Kind::RefreshHttp | Kind::Revert,
                Expect::Installed { rev, .. },
            ) => {
                let rev = rev.clone().unwrap();
                // The app goes on writing its data before the next refresh.
                let r = self.r().to_owned();
                let tag = format!("{}-{}", rev, self.fig.kills);
                mutate(&system_dir(&r, SNAP, &rev), &mut self.rng, &tag);
                mutate(&home_dir(&r, SNAP, &rev), &mut self.rng, &tag);
                self.data.insert(rev.clone(), data_now(&r, SNAP, &rev));
                self.current = Some(rev);
            }
            _ => {}
        }
        // Revisions gone from disk (discarded by cleanup) need no expectations.
        let r = self.r().to_owned();
        self.data.retain(|rev, _| {
            system_dir(&r, SNAP, rev).exists() || self.current.as_deref() == Some(rev)
        });
    }

    /// Waits for an armed daemon to kill itself.
    fn await_death(&self, d: Daemon, failpoint: &str) -> Result<(), String> {
        let pid = d.pid();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(d.wait());
        });
        match rx.recv_timeout(DEATH_LIMIT) {
            Ok(st) if killed_by_sigkill(st) => Ok(()),
            Ok(st) => Err(format!(
                "refreshd exited ({st:?}) instead of dying at {failpoint}"
            )),
            Err(_) => {
                // Ours: started by this test.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = rx.recv();
                Err(format!(
                    "{failpoint} was not reached within {DEATH_LIMIT:?}: a boundary the matrix expects is missing"
                ))
            }
        }
    }

    fn fail(&self, cut: &Cut, msg: &str) -> ! {
        let log = fs::read_to_string(self.root.aux("refreshd.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "crash-matrix FAILED: kind={} seed={} cut={} (CRASH_MATRIX_SEED={} repeats the run)\n{msg}\n--- refreshd log (last lines) ---\n{}",
            self.kind.name(),
            self.seed,
            cut.label(),
            self.seed,
            tail.join("\n")
        );
    }

    /// One cut: the change, the kill(s), the recovery, the check.
    fn run(&mut self, cut: &Cut) {
        let started = std::time::Instant::now();
        let mut plan = self.prepare();
        let log_from = self.nginx.as_ref().map(|n| n.access_log().len());
        let args: Vec<&str> = plan.args.iter().map(String::as_str).collect();
        let d = self.daemon(Some(&cut.first));
        let _ = ctl(self.r(), &args);
        if let Err(e) = self.await_death(d, &cut.first) {
            self.fail(cut, &e);
        }
        let mut kills = 1;
        if let Err(e) = self.check_cut_copy(cut, &plan) {
            self.fail(cut, &e);
        }
        if let Err(e) = self.check_inhibition_while_down(cut) {
            self.fail(cut, &e);
        }
        // Killed before its critical section, a refresh leaves the apps free to run: their
        // data may change while refreshd is down, and the refresh must carry the change.
        let (i, undo) = cut.at;
        let wait = self.kind.index("wait-for-apps");
        if !undo && wait.is_some_and(|w| i < w || (i == w && cut.entering)) {
            self.write_while_down(&mut plan);
        }
        if cut.lose_precopy {
            self.lose_precopy(&plan);
        }
        if let Some(second) = &cut.second {
            let d = self.daemon(Some(second));
            if let Err(e) = self.await_death(d, second) {
                self.fail(cut, &format!("the recovery: {e}"));
            }
            kills += 1;
            self.fig.double_kills += 1;
        }
        self.fig.kills += kills;
        let d = self.daemon(None);
        let id = newest_change_id(self.r()).unwrap_or(0);
        if id <= self.last_id {
            self.fail(
                cut,
                "the change was lost: no change newer than the last one",
            );
        }
        self.last_id = id;
        let ch = watch_until(self.r(), id, |_| false);
        if ch["ready"] != true {
            self.fail(cut, &format!("the change is stuck: {ch}"));
        }
        let want_status = if cut.fault { "Error" } else { "Done" };
        if ch["kind"] != self.kind.change_kind() || ch["status"] != want_status {
            self.fail(
                cut,
                &format!(
                    "expected a {} change ending {want_status}, got {}",
                    self.kind.change_kind(),
                    short(&ch)
                ),
            );
        }
        let kinds = task_kinds(&ch);
        if kinds != self.kind.tasks() {
            self.fail(
                cut,
                &format!(
                    "the change's tasks are {kinds:?}, the matrix cuts {:?}: add the new ones",
                    self.kind.tasks()
                ),
            );
        }
        let now = if cut.fault { &plan.before } else { &plan.after };
        let res = match now {
            Expect::Removed => check(self.r(), SNAP, &Want::Removed),
            Expect::Installed { rev, version, data } => check(
                self.r(),
                SNAP,
                &Want::Installed {
                    rev: rev.as_deref(),
                    payload: self.srcs[version].dir.path(),
                    data,
                },
            ),
        };
        if let Err(e) = res {
            self.fail(cut, &format!("{e}\nchange: {}", short(&ch)));
        }
        // A remove keeps the data it had, exactly, as the snapshot named by its change.
        if let (Kind::Remove, false, Expect::Installed { rev, data, .. }) =
            (self.kind, cut.fault, &plan.before)
        {
            if let Err(e) = saved_as(self.r(), id, rev.as_deref().unwrap_or_default(), data) {
                self.fail(cut, &format!("{e}\nchange: {}", short(&ch)));
            }
        }
        if let (Some(at), Some(from)) = (cut.download_at, log_from) {
            if let Err(e) = self.check_resume(&ch, at, from) {
                self.fail(cut, &e);
            }
        }
        self.fig.survived += kills;
        drop(d);
        match cut.class {
            Class::Boundary => self.fig.boundaries += 1,
            Class::RandomBoundary => {}
            Class::RandomCopy => self.fig.random_copy += 1,
            Class::RandomDownload => self.fig.random_download += 1,
        }
        self.settle(!cut.fault, &plan);
        println!(
            "crash-matrix: {} {:?} {}: survived ({} ms)",
            self.kind.name(),
            cut.class,
            cut.label(),
            started.elapsed().as_millis()
        );
    }

    /// Right after a kill on the way forward: launches are kept out (the inhibition marker
    /// stands) exactly while the change is inside its critical section, refreshd dead or not.
    fn check_inhibition_while_down(&self, cut: &Cut) -> Result<(), String> {
        let (i, undo) = cut.at;
        let (Some(w), Some(l)) = (
            self.kind.index("wait-for-apps"),
            self.kind.index("lift-inhibition"),
        ) else {
            return Ok(());
        };
        if undo {
            return Ok(());
        }
        let entered = i > w || (i == w && !cut.entering);
        let left = i > l || (i == l && !cut.entering);
        let inside = entered && !left;
        let marker = self
            .r()
            .join(format!("run/refreshd/runctl/snap.{SNAP}.inhibited"));
        match (inside, marker.exists()) {
            (true, false) => Err("killed inside the critical section, but launches are not held (no inhibition marker)".into()),
            (false, true) => Err("killed outside the critical section, but launches are held (an inhibition marker)".into()),
            _ => Ok(()),
        }
    }

    /// Right after a kill inside a data copy: no directory whose copy was cut stands under its
    /// final name (a half-copied revision must never look complete).
    fn check_cut_copy(&self, cut: &Cut, plan: &Plan) -> Result<(), String> {
        let Some((task, n)) = cut
            .first
            .strip_prefix("mid-copy:")
            .and_then(|p| p.split_once('@'))
        else {
            return Ok(());
        };
        let n: u64 = n.parse().unwrap();
        let Expect::Installed { rev: Some(new), .. } = &plan.after else {
            return Ok(());
        };
        let (sys, _) = self.entries();
        let r = self.r();
        let (system, home) = (system_dir(r, SNAP, new), home_dir(r, SNAP, new));
        // The daemon copies only the system's data (the pre-copy makes a staging directory,
        // setup-data the final one); root's own data is made later by root's copy as a user
        // (the `user-data` task), which no cut inside the daemon reaches.
        let cut_system = task == "precopy-data" || n <= sys;
        for (cut_here, dir) in [(cut_system, &system), (cut_system, &home)] {
            if cut_here && fs::symlink_metadata(dir).is_ok() {
                return Err(format!(
                    "{} stands under its final name after a kill in the middle of its copy",
                    dir.display()
                ));
            }
        }
        Ok(())
    }

    /// Removes the pre-copy's staging directories of the new revision.
    fn lose_precopy(&self, plan: &Plan) {
        let Expect::Installed { rev: Some(new), .. } = &plan.after else {
            return;
        };
        let r = self.r();
        for dir in [
            r.join("var/snap").join(SNAP),
            r.join("root/snap").join(SNAP),
        ] {
            let staging = dir.join(format!(".{new}.refreshd-staging"));
            if staging.exists() {
                fs::remove_dir_all(&staging).unwrap();
            }
        }
    }

    /// The app writes to its data while refreshd is down (before the critical section).
    fn write_while_down(&mut self, plan: &mut Plan) {
        let Some(cur) = self.current.clone() else {
            return;
        };
        let r = self.r().to_owned();
        let tag = format!("down-{}", self.fig.kills);
        mutate(&system_dir(&r, SNAP, &cur), &mut self.rng, &tag);
        mutate(&home_dir(&r, SNAP, &cur), &mut self.rng, &tag);
        let now = data_now(&r, SNAP, &cur);
        self.data.insert(cur.clone(), now.clone());
        if let Expect::Installed { data, .. } = &mut plan.before {
            *data = now.clone();
        }
        // A refresh copies it into the new revision; a revert leaves it behind.
        if self.kind.refresh() {
            if let Expect::Installed { data, rev, .. } = &mut plan.after {
                *data = now.clone();
                self.data.insert(rev.clone().unwrap(), now);
            }
        }
    }

    /// After a download cut at byte `at`: the recovery resumed where the partial ended, with a
    /// range request (206 in nginx's access log) for exactly the rest of the blob.
    fn check_resume(&self, ch: &Value, at: u64, log_from: usize) -> Result<(), String> {
        let p = self.last_published.as_ref().unwrap();
        let log = task_log(ch, "download").join("\n");
        let num = |key: &str| -> Option<u64> {
            let at = log.rfind(key)? + key.len();
            log[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        let fetched = num("downloaded ").ok_or(format!("no download line: {log}"))?;
        let resumed = num("resumed at byte ").unwrap_or(0);
        if resumed < at.min(p.size) {
            return Err(format!(
                "the download resumed at byte {resumed}, before the {at} bytes written when it was cut: {log}"
            ));
        }
        if resumed + fetched != p.size {
            return Err(format!(
                "resumed at {resumed} and fetched {fetched} bytes of a {}-byte blob: {log}",
                p.size
            ));
        }
        let access = self.nginx.as_ref().unwrap().access_log();
        let lines: Vec<(u16, u64)> = access[log_from..]
            .lines()
            .filter(|l| l.contains(&p.path))
            .filter_map(|l| {
                let mut f = l.split('"').nth(2)?.split_whitespace();
                Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
            })
            .collect();
        if resumed < p.size {
            match lines.last() {
                Some(&(206, n)) if n == fetched => {}
                other => {
                    return Err(format!(
                        "nginx's last answer for the blob is {other:?}, expected 206 with {fetched} bytes; all: {lines:?}"
                    ))
                }
            }
        }
        if lines.iter().filter(|(s, _)| *s == 200).count() != 1 {
            return Err(format!(
                "the whole blob was asked for more than once: {lines:?}"
            ));
        }
        Ok(())
    }

    /// Entries of the current revision's data: the system's (which the daemon's copies walk)
    /// and root's home data (which root's own copy, as a user, walks).
    fn entries(&self) -> (u64, u64) {
        let d = &self.data[self.current.as_deref().unwrap()];
        (
            d.system.len() as u64,
            d.home.as_ref().map_or(0, |h| h.len() as u64),
        )
    }

    /// A random cut: inside a copy or the download where the kind has them, else at a random
    /// boundary.
    /// The `n`-th random cut: the first two of a refresh are inside a copy and (over HTTP)
    /// inside the download, so that the short run has both.
    fn random_cut(&mut self, n: u64) -> Cut {
        let mut choices = vec![Class::RandomBoundary];
        if self.kind.refresh() {
            choices.extend([Class::RandomCopy, Class::RandomCopy]);
            if n > 1 && self.rng.one_in(3) {
                // Killed as setup-data starts, the pre-copy lost meanwhile, then killed again
                // inside the full copy that replaces it.
                let (sys, _) = self.entries();
                return Cut {
                    second: Some(format!("mid-copy:setup-data@{}", self.rng.range(1, sys))),
                    lose_precopy: true,
                    ..Cut::new(
                        Class::RandomCopy,
                        "before-do:setup-data".into(),
                        (self.kind.index("setup-data").unwrap(), false),
                        true,
                    )
                };
            }
        }
        if self.kind == Kind::RefreshHttp {
            choices.extend([Class::RandomDownload, Class::RandomDownload]);
        }
        let class = match n {
            0 if self.kind.refresh() => Class::RandomCopy,
            1 if self.kind == Kind::RefreshHttp => Class::RandomDownload,
            _ => *self.rng.pick(&choices),
        };
        match class {
            Class::RandomCopy => {
                let (sys, _) = self.entries();
                let n = self.rng.range(1, sys);
                let task = if self.rng.one_in(2) {
                    "precopy-data"
                } else {
                    "setup-data"
                };
                Cut::new(
                    Class::RandomCopy,
                    format!("mid-copy:{task}@{n}"),
                    (self.kind.index(task).unwrap(), false),
                    true,
                )
            }
            Class::RandomDownload => {
                // The blob published next is this cut's; its size is about the payload's.
                let b = self.rng.range(1, HTTP_PAYLOAD as u64 - 1);
                Cut {
                    download_at: Some(b),
                    ..Cut::new(
                        Class::RandomDownload,
                        format!("mid-download@{b}"),
                        (0, false),
                        true,
                    )
                }
            }
            _ => {
                let all = boundary_cuts(self.kind);
                let mut c = self.rng.pick(&all).clone();
                c.class = Class::RandomBoundary;
                c
            }
        }
    }

    /// A second kill, during the recovery from `cut`: a point the recovery is sure to reach.
    fn second_for(&mut self, cut: &Cut) -> String {
        let tasks = self.kind.tasks();
        let (i, undo) = cut.at;
        let mut points = vec![];
        if undo {
            for t in &tasks[..=i] {
                points.push(format!("before-undo:{t}"));
                points.push(format!("after-undo:{t}"));
            }
            return self.rng.pick(&points).clone();
        }
        for t in &tasks[i..] {
            points.push(format!("before-do:{t}"));
            points.push(format!("after-do:{t}"));
        }
        let sys = if self.kind.refresh() {
            self.entries().0
        } else {
            0
        };
        if self.kind.index("precopy-data").is_some_and(|p| p >= i) && sys > 0 {
            // The pre-copy walks everything again when it runs again.
            points.push(format!("mid-copy:precopy-data@{}", self.rng.range(1, sys)));
        }
        if let Some(s) = self.kind.index("setup-data").filter(|_| sys > 0) {
            // A re-run of setup-data walks the whole system directory again (kept entries of
            // the pre-copy included).
            if s > i || (s == i && cut.entering) {
                points.push(format!("mid-copy:setup-data@{}", self.rng.range(1, sys)));
            }
        }
        if self.kind == Kind::RefreshHttp && i == 0 && cut.entering {
            let from = cut.download_at.unwrap_or(0) + 1;
            points.push(format!(
                "mid-download@{}",
                self.rng
                    .range(from.min(HTTP_PAYLOAD as u64 - 1), HTTP_PAYLOAD as u64 - 1)
            ));
        }
        self.rng.pick(&points).clone()
    }

    fn report(&self) {
        let f = &self.fig;
        println!(
            "figures: crash-matrix: kind={} kills_injected={} survived={} boundaries={} random_copy={} random_download={} double_kills={} seed={}",
            self.kind.name(),
            f.kills,
            f.survived,
            f.boundaries,
            f.random_copy,
            f.random_download,
            f.double_kills,
            self.seed
        );
        assert_eq!(f.kills, f.survived);
    }
}

/// A change without its task logs, for messages.
fn short(ch: &Value) -> String {
    let tasks: Vec<String> = ch["tasks"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    format!(
                        "{}={}",
                        t["kind"].as_str().unwrap_or("?"),
                        t["status"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "change {} {} {} [{}] error={}",
        ch["id"],
        ch["kind"],
        ch["status"],
        tasks.join(" "),
        ch["error"]
    )
}

/// Every boundary, then `CRASH_MATRIX_ITERATIONS` random cuts (every so often with a second
/// kill during the recovery).
fn matrix(kind: Kind) {
    let Some(mut m) = Matrix::new(kind) else {
        return;
    };
    // To look at one cut again: only the cuts whose failpoints contain this run.
    let only = std::env::var("CRASH_MATRIX_ONLY").unwrap_or_default();
    for cut in boundary_cuts(kind) {
        if cut.label().contains(&only) {
            m.run(&cut);
        }
    }
    for n in 0..iterations() {
        let mut cut = m.random_cut(n);
        if cut.second.is_none() && (n.is_multiple_of(3) || m.rng.one_in(3)) {
            cut.second = Some(m.second_for(&cut));
        }
        if cut.label().contains(&only) {
            m.run(&cut);
        }
    }
    m.report();
}

/// One test per kind, each running the whole matrix for it.
macro_rules! matrix_tests {
    ($($test:ident => $kind:ident,)*) => {
        $(
            #[test]
            fn $test() {
                matrix(Kind::$kind);
            }
        )*
    };
}

matrix_tests! {
    crash_matrix_install_file => InstallFile,
    crash_matrix_install_store => InstallStore,
    crash_matrix_refresh_dir_store => RefreshDir,
    crash_matrix_refresh_http => RefreshHttp,
    crash_matrix_revert => Revert,
    crash_matrix_remove => Remove,
}
