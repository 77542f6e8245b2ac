//! End to end on the real kernel: the agent installed as the cgroup-v1 freezer hierarchy's
//! `release_agent` removes a registered daemon's marker when the last process of its snap's
//! group exits.

mod common;

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::fcntl::{Flock, FlockArg};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// The mount point of the root of the cgroup-v1 hierarchy that has the freezer controller,
/// from `/proc/self/mountinfo` (never assumed to be /sys/fs/cgroup/freezer).
fn freezer_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<_> = left.split(' ').collect();
        let right: Vec<_> = right.split(' ').collect();
        let (root, mount) = (*left.get(3)?, *left.get(4)?);
        let (fstype, superopts) = (*right.first()?, *right.get(2)?);
        (fstype == "cgroup" && root == "/" && superopts.split(',').any(|o| o == "freezer"))
            .then(|| PathBuf::from(mount))
    })
}

/// The hierarchy's `release_agent` set to our binary; on drop, cleared again unless it was
/// already set to that binary before — or unless some refreshd is using it meanwhile.
///
/// A daemon tracking with v1 (e.g. `tests/tests/tracking.rs` running in parallel) sets the
/// agent only when the value is empty, and with the same test build it finds ours already there
/// and keeps it. Clearing it under that daemon would make its apps' exits go unnoticed, so the
/// value is left while any other `refreshd*` group exists in the hierarchy.
struct AgentSetting {
    file: PathBuf,
    ours: String,
    clear: bool,
}

impl AgentSetting {
    /// Err(why to skip) when another release agent is installed.
    fn install(mount: &Path, agent: &Path) -> Result<AgentSetting, String> {
        let file = mount.join("release_agent");
        let before = fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let before = before.trim_end_matches('\n');
        let ours = agent.to_str().expect("agent path is UTF-8");
        if !before.is_empty() && before != ours {
            let existing = Path::new(before);
            // Another build of this agent (another checkout) speaks the same protocol: use it,
            // as refreshd does. A path that no longer exists serves no one: replace it.
            if existing.exists() {
                if existing.file_name() == agent.file_name() {
                    return Ok(AgentSetting {
                        file,
                        ours: before.to_owned(),
                        clear: false,
                    });
                }
                return Err(format!(
                    "{} is set to a foreign agent ({before}); not overwriting it",
                    file.display()
                ));
            }
        }
        fs::write(&file, ours).map_err(|e| format!("writing {}: {e}", file.display()))?;
        Ok(AgentSetting {
            file,
            ours: ours.to_owned(),
            clear: before.is_empty(),
        })
    }
}

impl Drop for AgentSetting {
    fn drop(&mut self) {
        if !self.clear || refreshd_groups(self.file.parent().unwrap()) {
            return;
        }
        match fs::read_to_string(&self.file) {
            Ok(now) if now.trim_end_matches('\n') == self.ours => {}
            _ => return, // Changed meanwhile: not ours to clear any more.
        }
        // A write of nothing leaves the value; the kernel strips the newline and stores "".
        if let Err(e) = fs::write(&self.file, "\n") {
            eprintln!("clearing {}: {e}", self.file.display());
        }
    }
}

/// Whether the hierarchy holds a `refreshd` or `refreshd.ID` group (a daemon at work).
fn refreshd_groups(mount: &Path) -> bool {
    fs::read_dir(mount).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            e.path().is_dir() && (name == "refreshd" || name.starts_with("refreshd."))
        })
    })
}

/// `MOUNT/refreshd.ID/snap.NAME`, both with notify_on_release, and a process in the child;
/// on drop the process is killed and both groups are removed (child first).
struct Groups {
    parent: PathBuf,
    child: PathBuf,
    process: Option<Child>,
}

impl Groups {
    fn new(mount: &Path, id: &str, name: &str) -> io::Result<Groups> {
        let parent = mount.join(format!("refreshd.{id}"));
        fs::create_dir(&parent)?;
        let mut g = Groups {
            child: parent.join(format!("snap.{name}")),
            parent,
            process: None,
        };
        fs::write(g.parent.join("notify_on_release"), "1")?;
        fs::create_dir(&g.child)?;
        fs::write(g.child.join("notify_on_release"), "1")?;
        let child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()?;
        let pid = child.id();
        g.process = Some(child);
        fs::write(g.child.join("cgroup.procs"), pid.to_string())?;
        let procs = fs::read_to_string(g.child.join("cgroup.procs"))?;
        assert!(
            procs.lines().any(|l| l == pid.to_string()),
            "{pid} not in {}: {procs:?}",
            g.child.display()
        );
        Ok(g)
    }

    /// Kills the process and reaps it: the group is empty when this returns.
    fn empty(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        self.empty();
        for dir in [&self.child, &self.parent] {
            if let Err(e) = fs::remove_dir(dir) {
                if e.kind() != io::ErrorKind::NotFound {
                    eprintln!("removing {}: {e}", dir.display());
                }
            }
        }
    }
}

/// Waits until `name` is deleted from the directory `inotify` watches, or `timeout` passes.
fn wait_for_delete(inotify: &Inotify, name: &str, timeout: Duration) -> Result<Instant, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no IN_DELETE of {name} within {timeout:?}"));
        }
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
        let events = match inotify.read_events() {
            Ok(events) => events,
            Err(nix::errno::Errno::EAGAIN) => continue,
            Err(e) => return Err(format!("reading inotify events: {e}")),
        };
        let now = Instant::now();
        if events.iter().any(|ev| {
            ev.mask.contains(AddWatchFlags::IN_DELETE) && ev.name.as_deref() == Some(name.as_ref())
        }) {
            return Ok(now);
        }
    }
}

#[test]
fn kernel_runs_the_agent_when_a_group_empties() {
    if !is_root() {
        return skip("not root: needs to write the freezer hierarchy's release_agent");
    }
    let Some(mount) = freezer_mount() else {
        return skip("no cgroup-v1 hierarchy with the freezer controller is mounted");
    };
    if let Err(why) = registry() {
        return skip(&why);
    }
    let agent = kernel_agent();
    // release_agent is one value per hierarchy: runs of this test in other processes take turns.
    let _lock = Flock::lock(fs::File::open(&mount).unwrap(), FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    // And daemons wait to register or unregister theirs (refreshd/src/tracking/agent.rs): one
    // stopping beside this test, seeing no other daemon's group, would clear the value.
    let agent_lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(refreshd_runctl::AGENT_LOCK)
        .unwrap();
    let _agent_lock = Flock::lock(agent_lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    let _setting = match AgentSetting::install(&mount, &agent) {
        Ok(s) => s,
        Err(why) => return skip(&why),
    };

    let id = unique_id("kernel_runs_the_agent_when_a_group_empties");
    let t = scratch();
    let runctl = t.path().join("runctl");
    let keep = populate(t.path(), &["runctl/", "runctl/snap.hello.lock"]);
    let marker = populate(&runctl, &["snap.hello.running"]).remove(0);
    let _entry = Registered::new(&id, &runctl);
    let mut groups = Groups::new(&mount, &id, "hello").expect("making the cgroups");

    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).unwrap();
    inotify
        .add_watch(&runctl, AddWatchFlags::IN_DELETE)
        .unwrap();
    let killed = Instant::now();
    groups.empty();
    let deleted = wait_for_delete(&inotify, "snap.hello.running", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{} as release agent: {e}", agent.display()));
    println!(
        "{}: marker removed {:?} after the kill",
        agent.display(),
        deleted - killed
    );
    assert!(!exists(&marker));
    assert_all_exist(&keep, "the release");
}
