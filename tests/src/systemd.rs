//! A real systemd, booted as PID 1 of throwaway namespaces on a throwaway root, for tests that
//! need to drive systemd itself (units for apps' daemons, stopping and starting them).
//!
//! How it boots (see [`BOOT_SCRIPT`]):
//!
//! * a cgroup of its own, `<cgroup2 mount>/refreshd-systemd-<pid>-<n>`, which the namespace's
//!   first process joins before it unshares the cgroup namespace, so that inside systemd sees
//!   that cgroup as the root of the hierarchy;
//! * new pid, mount, cgroup, uts, ipc and network namespaces (`unshare`), with every mount
//!   private: systemd sets per-network-namespace sysctls (`net.unix.max_dgram_qlen`) at boot;
//! * the root is an overlay: lower `/`, upper and work on a tmpfs that only the namespace sees,
//!   so nothing systemd or a test writes reaches the host's files; `/proc` is the namespace's
//!   own with `/proc/sys` read-only (systemd raises machine-wide limits such as `fs.file-max`
//!   at boot, and the host's must stay as they are: [`HOST_SYSCTLS`] are compared at teardown),
//!   `/sys` a recursive bind with a fresh cgroup2 mount (rooted at the cgroup above) on
//!   `/sys/fs/cgroup`, `/dev` a recursive bind, `/run` and `/tmp` fresh tmpfs (so
//!   systemd-tmpfiles never sees the host's `/tmp`), `/results` a bind of a host directory
//!   ([`Systemd::results_dir`]), `/dev/console` a pty whose output the harness keeps
//!   ([`Systemd::console`]);
//! * `pivot_root` into it, then `exec /lib/systemd/systemd --system` with `container=` set,
//!   the documented way to run systemd in a container: it then logs to the console rather than
//!   the kernel log, and skips what it only does on real hardware (clock, kernel modules...).
//!
//! Users log in as on a machine ([`Systemd::login`]): created in the overlay, a PAM session
//! held open through pam_systemd (logind, the system bus), their own manager user@UID.service;
//! [`Systemd::user_command`] runs a command from a session of theirs.
//!
//! Units that touch host-wide state (gettys, clock, sysctl, binfmt, kernel modules, /dev,
//! audit, timers, network and database servers...) and most generators are masked in the
//! overlay before boot: see [`DEFAULT_MASKS`] and [`KEPT_GENERATORS`].
//!
//! Teardown ([`Drop`], or [`Systemd::shutdown`] to see what went wrong): SIGKILL the
//! namespace's init (the pid namespace dies with it, and with it every mount the instance
//! made), `cgroup.kill` its cgroup for good measure, remove the cgroup directories depth
//! first, then the host directory. If the test process dies without unwinding, the kernel
//! kills the instance too (`PR_SET_PDEATHSIG` on `unshare`, `--kill-child` on its child).
//!
//! Never boot systemd on the host's root: the boot script refuses to exec systemd unless it
//! is in a new mount namespace and has pivoted into the overlay.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The systemd binary booted as PID 1.
pub const SYSTEMD: &str = "/lib/systemd/systemd";

/// Where the results directory is bound inside.
pub const RESULTS: &str = "/results";

/// PATH for everything the harness runs, inside and out.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Units masked (linked to /dev/null in the overlay's /etc/systemd/system) before boot. A name
/// with `*` or `?` is a pattern, expanded against the units installed on the host; other names
/// are masked whether installed or not. Templates (`getty@.service`) mask every instance.
pub const DEFAULT_MASKS: &[&str] = &[
    // Terminals: the host's consoles and ttys are not ours.
    "getty@.service",
    "serial-getty@.service",
    "console-getty.service",
    "container-getty@.service",
    "autovt@.service",
    "getty-static.service",
    // The clock.
    "systemd-timesyncd.service",
    "systemd-time-wait-sync.service",
    "hwclock.service",
    "ntp*.service",
    "chrony*.service",
    // Kernel settings, modules, binfmt, audit: global, not namespaced.
    "systemd-sysctl.service",
    "procps.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "systemd-modules-load.service",
    "kmod-static-nodes.service",
    "kmod.service",
    "modprobe@.service",
    "systemd-journald-audit.socket",
    "auditd.service",
    "apparmor.service",
    "sys-kernel-config.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    // /dev is the host's (a bind): udev, device nodes, hardware.
    "systemd-udev*",
    "udev*.service",
    "systemd-hwdb-update.service",
    "systemd-tmpfiles-setup-dev.service",
    "systemd-tmpfiles-setup-dev-early.service",
    "systemd-pstore.service",
    "systemd-random-seed.service",
    "systemd-rfkill.service",
    "systemd-rfkill.socket",
    "systemd-backlight@.service",
    "systemd-hibernate-resume@.service",
    "systemd-fsck*",
    "systemd-quotacheck.service",
    "quotaon.service",
    "systemd-repart.service",
    "systemd-growfs*",
    "systemd-pcrphase*",
    "systemd-boot-check-no-failures.service",
    "cryptdisks*.service",
    "lvm2*",
    "mdmonitor*",
    "multipathd*",
    "iscsi*",
    "open-iscsi*",
    "smartd*",
    "smartmontools*",
    "irqbalance*",
    // First boot and image management.
    "systemd-firstboot.service",
    "systemd-machine-id-commit.service",
    "systemd-sysext.service",
    "systemd-confext.service",
    // Periodic jobs and cleaners.
    "*.timer",
    "systemd-tmpfiles-clean.service",
    "cron*.service",
    "anacron*",
    "atd.service",
    "apt-daily*",
    "unattended-upgrades*",
    "packagekit*",
    "fstrim*",
    "e2scrub*",
    "man-db*",
    "dpkg-db-backup*",
    "logrotate*",
    // Network: the instance has a network namespace of its own (only `lo`).
    "networking.service",
    "ifup@.service",
    "systemd-networkd*",
    "systemd-network-generator.service",
    "systemd-resolved.service",
    "NetworkManager*",
    "wpa_supplicant*",
    "ModemManager*",
    "avahi*",
    "ssh*",
    "rsync.service",
    // Servers installed on the host for other purposes.
    "postgresql*",
    "pg_*",
    "mysql*",
    "mariadb*",
    "redis*",
    "memcached*",
    "nginx*",
    "apache2*",
    "httpd*",
    "docker*",
    "containerd*",
    "podman*",
    "snapd*",
    "cups*",
    "bluetooth*.service",
    "rsyslog*",
    // Local hooks and leftovers.
    "rc-local.service",
    "x11-common.service",
    "systemd-ask-password-wall.path",
    "systemd-ask-password-console.path",
];

/// Generators that may run; every other one installed is masked. They run at every boot and
/// daemon-reload and write units from host configuration (init scripts, crypttab, partition
/// tables, database clusters...).
pub const KEPT_GENERATORS: &[&str] = &[
    "systemd-fstab-generator",
    "systemd-debug-generator",
    "systemd-run-generator",
    "systemd-system-update-generator",
];

/// Where unit files and generators are installed on the host.
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];
const GENERATOR_DIRS: &[&str] = &[
    "/etc/systemd/system-generators",
    "/usr/local/lib/systemd/system-generators",
    "/lib/systemd/system-generators",
    "/usr/lib/systemd/system-generators",
];

/// Prefix of the instances' cgroups (and of their host directories).
const PREFIX: &str = "refreshd-systemd-";

/// The boot script, `sh BOOT_SCRIPT stage1` run by `unshare --pid --fork --mount ...`.
/// Environment: DIR (host work directory), CG (the instance's cgroup), MARK (the instance id),
/// CONSOLE (pty for /dev/console, or empty), HOST_MNT_NS (the host's mount namespace), DISK
/// (a host directory holding the overlay's upper and work directories, kept across boots; empty:
/// a tmpfs that dies with the instance).
const BOOT_SCRIPT: &str = r#"set -eu
umask 022
case "$1" in
stage1)
  # PID 1 of the new pid namespace. Join the instance's cgroup, then make it the root of a
  # new cgroup namespace: inside, systemd owns "/" of the hierarchy.
  echo 0 > "$CG/cgroup.procs"
  exec unshare --cgroup -- sh "$DIR/boot.sh" stage2
  ;;
stage2)
  [ "$(readlink /proc/self/ns/mnt)" != "$HOST_MNT_NS" ] || { echo "not in a new mount namespace" >&2; exit 1; }
  mount --make-rprivate /
  B="$DIR/base"
  mount -t tmpfs -o mode=0755 "$MARK" "$B"
  if [ -n "$DISK" ]; then U="$DISK/upper"; W="$DISK/work"; mkdir -p "$U" "$W"
  else U="$B/upper"; W="$B/work"; mkdir "$U" "$W"; fi
  mkdir "$B/root"
  R="$B/root"
  mount -t overlay -o "lowerdir=/,upperdir=$U,workdir=$W" "$MARK" "$R"
  mount -t proc -o nosuid,nodev,noexec proc "$R/proc"
  # Machine-wide sysctls are not namespaced: the instance may read them, never write them.
  mount --bind "$R/proc/sys" "$R/proc/sys"
  mount -o remount,bind,ro,nosuid,nodev,noexec "$R/proc/sys"
  mount --rbind /sys "$R/sys"
  umount -R "$R/sys/fs/cgroup"
  mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 "$R/sys/fs/cgroup"
  mount --rbind /dev "$R/dev"
  mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R/run"
  mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
  mkdir -p "$R/results"
  mount --bind "$DIR/results" "$R/results"
  if [ -n "$CONSOLE" ] && [ -e "$R/dev/console" ]; then
    mount --bind "$CONSOLE" "$R/dev/console"
  fi
  mkdir -p "$R/etc/systemd/system" "$R/etc/systemd/system-generators"
  while IFS= read -r u; do
    [ -z "$u" ] || ln -sfn /dev/null "$R/etc/systemd/$u"
  done < "$DIR/masks"
  cp -R --remove-destination "$DIR/seed/." "$R/"
  echo "$MARK" > "$R/.refreshd-systemd-root"
  cd "$R"
  pivot_root . .
  umount -l .
  cd /
  [ "$(cat /.refreshd-systemd-root)" = "$MARK" ] || { echo "not in the overlay root" >&2; exit 1; }
  mount --make-rshared /
  exec env -i container=refreshd-tests "$SYSTEMD" --system
  ;;
esac
exit 1
"#;

/// A file put into the overlay before systemd starts (units that must exist at boot, say).
#[derive(Clone, Debug)]
pub struct SeedFile {
    /// Absolute path inside.
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
}

#[derive(Clone, Debug)]
pub struct BootOpts {
    /// How long systemd may take to reach `running` (or `degraded`).
    pub timeout: Duration,
    /// Units to mask on top of [`DEFAULT_MASKS`] (same syntax).
    pub extra_masks: Vec<String>,
    /// Files to put into the overlay before boot.
    pub files: Vec<SeedFile>,
    /// A host directory that keeps what the instance writes to its root (the overlay's upper
    /// directory) for the next boot on the same disk: a reboot. `/run` and `/tmp` are fresh at
    /// every boot, as on a machine. The caller owns (and removes) the directory; one instance
    /// at a time may use it.
    pub disk: Option<PathBuf>,
}

impl Default for BootOpts {
    fn default() -> Self {
        BootOpts {
            timeout: Duration::from_secs(60),
            extra_masks: vec![],
            files: vec![],
            disk: None,
        }
    }
}

impl BootOpts {
    /// Adds a file to put into the overlay before boot.
    pub fn with_file(mut self, path: &str, content: impl AsRef<[u8]>, mode: u32) -> Self {
        self.files.push(SeedFile {
            path: path.to_owned(),
            content: content.as_ref().to_vec(),
            mode,
        });
        self
    }
}

/// Whether this machine can boot the harness; `Err(why)` to skip otherwise.
pub fn can_run() -> Result<(), String> {
    if !crate::is_root() {
        return Err("systemd harness needs root".into());
    }
    if !Path::new(SYSTEMD).exists() {
        return Err(format!("{SYSTEMD} is not installed"));
    }
    let fss = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    for fs_type in ["overlay", "cgroup2", "tmpfs"] {
        if !fss
            .lines()
            .any(|l| l.split_whitespace().last() == Some(fs_type))
        {
            return Err(format!("the kernel has no {fs_type} filesystem"));
        }
    }
    if crate::cgroup_mounts().1.is_none() {
        return Err("no cgroup2 hierarchy is mounted".into());
    }
    if !Path::new("/proc/self/ns/cgroup").exists() {
        return Err("the kernel has no cgroup namespaces".into());
    }
    for tool in [
        "unshare",
        "nsenter",
        "pivot_root",
        "mount",
        "umount",
        "timeout",
    ] {
        if which(tool).is_none() {
            return Err(format!("{tool} is not installed"));
        }
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    PATH.split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// A systemd booted as PID 1 in namespaces of its own. Torn down on drop.
pub struct Systemd {
    id: String,
    /// Host pid of the namespace's init (systemd), once known.
    pid: Option<i32>,
    pidfd: Option<OwnedFd>,
    /// `unshare`, the parent of the namespace's init.
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    cgroup: PathBuf,
    console: Arc<Mutex<Vec<u8>>>,
    console_slave: Option<fs::File>,
    console_reader: Option<JoinHandle<()>>,
    boot_time: Duration,
    state: String,
    /// The host's [`HOST_SYSCTLS`] before the boot: teardown says if any changed.
    sysctls: Vec<(&'static str, String)>,
    /// The processes holding users' sessions open ([`Systemd::login`]): they die with the
    /// instance, and are reaped at teardown.
    holders: Mutex<Vec<Child>>,
}

/// A user logged in to an instance ([`Systemd::login`]): a session of theirs stays open, so
/// their manager (user@UID.service) runs, until the instance is torn down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    pub name: String,
    pub uid: u32,
}

impl Systemd {
    /// Boots an instance and returns once `systemctl is-system-running --wait` says `running`
    /// or `degraded`. On failure the error carries the boot script's output, the console and
    /// the journal; whatever was set up is torn down.
    pub fn boot(opts: BootOpts) -> Result<Systemd> {
        can_run().map_err(|why| anyhow!(why))?;
        sweep_stale();
        let started = Instant::now();

        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("{id}-"))
            .tempdir()
            .context("creating the harness directory")?;
        let dir_path = dir.path().to_owned();
        let unified = crate::cgroup_mounts()
            .1
            .ok_or_else(|| anyhow!("no cgroup2 hierarchy is mounted"))?;
        let cgroup = unified.join(&id);

        let mut sd = Systemd {
            id: id.clone(),
            pid: None,
            pidfd: None,
            child: None,
            dir: Some(dir),
            dir_path: dir_path.clone(),
            cgroup: cgroup.clone(),
            console: Arc::new(Mutex::new(Vec::new())),
            console_slave: None,
            console_reader: None,
            boot_time: Duration::ZERO,
            state: String::new(),
            sysctls: host_sysctls(),
            holders: Mutex::new(vec![]),
        };

        sd.prepare(&opts)?;
        let console = sd.open_console()?;
        if let Err(e) = fs::create_dir(&cgroup) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(e).with_context(|| format!("creating {}", cgroup.display()));
            }
            // A leftover of an earlier process with our pid: empty, or not ours to reuse.
            remove_cgroup_tree(&cgroup, Duration::from_secs(1))
                .and_then(|()| fs::create_dir(&cgroup))
                .with_context(|| format!("reusing the stale {}", cgroup.display()))?;
        }

        let log = fs::File::create(dir_path.join("boot.log"))?;
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--uts",
            "--ipc",
            "--net",
        ]);
        cmd.args(["--propagation", "private", "--", "sh"])
            .arg(dir_path.join("boot.sh"))
            .arg("stage1")
            .env_clear()
            .env("PATH", PATH)
            .env("DIR", &dir_path)
            .env("CG", &cgroup)
            .env("MARK", &id)
            .env("SYSTEMD", SYSTEMD)
            .env("CONSOLE", console.unwrap_or_default())
            .env("HOST_MNT_NS", fs::read_link("/proc/self/ns/mnt")?)
            .env("DISK", opts.disk.as_deref().unwrap_or(Path::new("")))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // If the test process dies without unwinding, unshare dies, and with --kill-child so
        // does the namespace's init.
        let pdeathsig = || {
            // SAFETY: prctl is async-signal-safe and touches no memory.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the closure only calls prctl, which is fine between fork and exec.
        unsafe {
            cmd.pre_exec(pdeathsig);
        }
        sd.child = Some(spawn_from_spawner_thread(cmd).context("spawning unshare")?);

        let deadline = started + opts.timeout;
        if let Err(e) = sd.wait_running(deadline) {
            return Err(anyhow!("{}", sd.boot_failure(&format!("{e:#}"))));
        }
        sd.boot_time = started.elapsed();
        Ok(sd)
    }

    /// Writes boot.sh, the mask list and the seed files into the host directory.
    fn prepare(&self, opts: &BootOpts) -> Result<()> {
        let dir = &self.dir_path;
        // Services inside, whatever their user, may leave results.
        let results = dir.join("results");
        fs::create_dir(&results)?;
        fs::set_permissions(&results, fs::Permissions::from_mode(0o1777))?;
        fs::create_dir(dir.join("base"))?;
        fs::write(dir.join("boot.sh"), BOOT_SCRIPT)?;

        let mut masks: Vec<String> = vec![];
        let installed = installed_names(UNIT_DIRS);
        for pat in DEFAULT_MASKS
            .iter()
            .copied()
            .chain(opts.extra_masks.iter().map(String::as_str))
        {
            if pat.contains(['*', '?']) {
                masks.extend(
                    installed
                        .iter()
                        .filter(|n| glob_match(pat, n))
                        .map(|n| format!("system/{n}")),
                );
            } else {
                masks.push(format!("system/{pat}"));
            }
        }
        masks.extend(
            installed_names(GENERATOR_DIRS)
                .into_iter()
                .filter(|g| !KEPT_GENERATORS.contains(&g.as_str()))
                .map(|g| format!("system-generators/{g}")),
        );
        masks.retain(|m| !m.contains('\n') && m.matches('/').count() == 1);
        masks.sort();
        masks.dedup();
        fs::write(dir.join("masks"), masks.join("\n") + "\n")?;

        let seed = dir.join("seed");
        fs::create_dir(&seed)?;
        let machine_id = fs::read_to_string("/proc/sys/kernel/random/uuid")?.replace('-', "");
        let defaults = [
            // Each instance a machine of its own.
            SeedFile {
                path: "/etc/machine-id".into(),
                content: machine_id.trim().as_bytes().to_vec(),
                mode: 0o444,
            },
            // Not the host's kernel log in the instance's journal...
            SeedFile {
                path: "/etc/systemd/journald.conf.d/refreshd-tests.conf".into(),
                content: b"[Journal]\nReadKMsg=no\n".to_vec(),
                mode: 0o644,
            },
            // ...nor journald's own messages in the host's (its default log target is kmsg).
            SeedFile {
                path: "/etc/systemd/system/systemd-journald.service.d/refreshd-tests.conf".into(),
                content: b"[Service]\nEnvironment=SYSTEMD_LOG_TARGET=null\n".to_vec(),
                mode: 0o644,
            },
        ];
        for f in defaults.iter().chain(&opts.files) {
            let rel = f
                .path
                .strip_prefix('/')
                .filter(|r| !r.split('/').any(|c| c == ".." || c.is_empty()))
                .ok_or_else(|| anyhow!("seed file path must be absolute and plain: {}", f.path))?;
            let p = seed.join(rel);
            fs::create_dir_all(p.parent().unwrap())?;
            fs::write(&p, &f.content)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(f.mode))?;
        }
        Ok(())
    }

    /// A pty for the instance's /dev/console, read into `self.console` by a thread. Returns the
    /// slave's path, or None when there is no pty to be had (the console then goes nowhere).
    fn open_console(&mut self) -> Result<Option<String>> {
        use nix::fcntl::OFlag;
        use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
        let Ok(master) = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC) else {
            return Ok(None);
        };
        grantpt(&master)?;
        unlockpt(&master)?;
        let name = ptsname_r(&master)?;
        // Held open for the instance's life: a pty whose slave is closed by everyone makes the
        // master read EIO, and systemd opens and closes the console as it goes.
        let slave = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&name)?;
        let buf = self.console.clone();
        let reader = std::thread::Builder::new()
            .name(format!("{}-console", self.id))
            .spawn(move || {
                let mut master = master;
                let mut chunk = [0u8; 4096];
                loop {
                    match master.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => {
                            let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
                            b.extend(chunk[..n].iter().filter(|&&c| c != b'\r'));
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            })?;
        self.console_slave = Some(slave);
        self.console_reader = Some(reader);
        Ok(Some(name))
    }

    fn child_exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(st)) => Some(format!("the namespace exited ({st})")),
            _ => None,
        }
    }

    fn wait_running(&mut self, deadline: Instant) -> Result<()> {
        let unshare = self.child.as_ref().unwrap().id() as i32;
        // The namespace's init is unshare's only child.
        loop {
            if let Some(why) = self.child_exited() {
                bail!(why);
            }
            if let Some(pid) = child_of(unshare) {
                if let Some(fd) = pidfd_open(pid) {
                    // Still unshare's child now that we hold it: the pidfd is the init's.
                    if child_of(unshare) == Some(pid) {
                        self.pid = Some(pid);
                        self.pidfd = Some(fd);
                        break;
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("unshare never forked the namespace's init");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = self.pid.unwrap();
        // The boot script execs systemd once the root is in place; systemd's private socket
        // is there once it can answer systemctl.
        let socket = PathBuf::from(format!("/proc/{pid}/root/run/systemd/private"));
        loop {
            if let Some(why) = self.child_exited() {
                bail!(why);
            }
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "systemd" && socket.exists() {
                break;
            }
            if Instant::now() > deadline {
                bail!("systemd did not start (init is {:?})", comm.trim());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("systemd did not finish booting in time");
            }
            let secs = format!("{}", left.as_secs().max(1));
            let out = self.run(&[
                "timeout",
                "--kill-after=2",
                &secs,
                "systemctl",
                "is-system-running",
                "--wait",
            ]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            match state.as_str() {
                "running" | "degraded" => {
                    self.state = state;
                    return Ok(());
                }
                "" | "offline" | "unknown" | "initializing" | "starting" => {
                    if let Some(why) = self.child_exited() {
                        bail!(why);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => bail!(
                    "systemd is {state} ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            }
        }
    }

    /// Everything that tells why a boot failed.
    fn boot_failure(&mut self, why: &str) -> String {
        let mut s = format!(
            "systemd in {} did not come up: {why}\n--- boot script ---\n{}",
            self.dir_path.display(),
            fs::read_to_string(self.dir_path.join("boot.log")).unwrap_or_default()
        );
        if self.pid.is_some() && self.child_exited().is_none() {
            for cmd in [
                &["systemctl", "--no-pager", "--failed"][..],
                &["journalctl", "-b", "--no-pager", "-n", "300"][..],
            ] {
                let out = self.run_timeout(cmd, Duration::from_secs(10));
                s.push_str(&format!(
                    "--- {} ---\n{}{}",
                    cmd.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        // Give the console a moment to drain.
        std::thread::sleep(Duration::from_millis(100));
        s.push_str(&format!("--- console ---\n{}", self.console()));
        s
    }

    /// The instance's name: also its cgroup's, the overlay's and tmpfs' source.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Host pid of the namespace's init, systemd.
    pub fn pid(&self) -> i32 {
        self.pid.expect("booted")
    }

    /// The instance's cgroup on the host (the root of the hierarchy inside).
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The host directory holding the boot script, the results directory and the overlay's
    /// mount point. Removed on teardown.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// The host directory bound at [`RESULTS`] inside (mode 1777).
    pub fn results_dir(&self) -> PathBuf {
        self.dir_path.join("results")
    }

    /// How long boot took, from `boot` being called to `running`.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// `running` or `degraded`, as `is-system-running` said at the end of boot.
    pub fn boot_state(&self) -> &str {
        &self.state
    }

    /// What systemd wrote to its console so far, without terminal control sequences.
    pub fn console(&self) -> String {
        let raw = self
            .console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        String::from_utf8_lossy(&strip_csi(&raw)).into_owned()
    }

    /// The host's path to `inside` (absolute), through `/proc/PID/root`. For reading and
    /// listing: absolute symlinks inside resolve against the host's root when followed from
    /// here, so write with [`Systemd::write_file`].
    pub fn host_path(&self, inside: &str) -> PathBuf {
        assert!(inside.starts_with('/'), "{inside}: not absolute");
        PathBuf::from(format!("/proc/{}/root{inside}", self.pid()))
    }

    /// A command in all of the instance's namespaces and its root, with a clean environment
    /// (PATH only).
    pub fn command(&self, cmd: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.pid().to_string())
            .args(["-a", "--"])
            .args(cmd)
            .env_clear()
            .env("PATH", PATH)
            .current_dir("/")
            .stdin(Stdio::null());
        c
    }

    /// Runs `cmd` inside (see [`Systemd::command`]).
    pub fn run(&self, cmd: &[&str]) -> Output {
        self.command(cmd)
            .output()
            .unwrap_or_else(|e| panic!("running nsenter {cmd:?}: {e}"))
    }

    /// Runs `cmd` inside under `timeout(1)`.
    pub fn run_timeout(&self, cmd: &[&str], limit: Duration) -> Output {
        let secs = format!("{}", limit.as_secs().max(1));
        let mut full = vec!["timeout", "--kill-after=2", &secs];
        full.extend_from_slice(cmd);
        self.run(&full)
    }

    /// Runs `cmd` inside and returns its stdout, panicking with its output if it fails.
    pub fn run_ok(&self, cmd: &[&str]) -> String {
        let out = self.run(cmd);
        assert!(
            out.status.success(),
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `cmd` inside with `input` on its stdin.
    pub fn run_with_input(&self, cmd: &[&str], input: &[u8]) -> Output {
        let mut c = self.command(cmd);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c
            .spawn()
            .unwrap_or_else(|e| panic!("running nsenter {cmd:?}: {e}"));
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("wait nsenter");
        let _ = writer.join();
        out
    }

    /// Writes a file inside (in the overlay), creating its parent directories, with `mode`.
    /// Written from inside, so symlinks resolve as systemd would see them.
    pub fn write_file_mode(&self, inside: &str, content: impl AsRef<[u8]>, mode: u32) {
        assert!(inside.starts_with('/'), "{inside}: not absolute");
        let mode = format!("{mode:o}");
        let out = self.run_with_input(
            &[
                "sh",
                "-c",
                r#"set -e; umask 022; mkdir -p -- "$(dirname -- "$1")"; cat > "$1"; chmod "$2" "$1""#,
                "sh",
                inside,
                &mode,
            ],
            content.as_ref(),
        );
        assert!(
            out.status.success(),
            "writing {inside} inside failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Writes a file inside with mode 0644 (see [`Systemd::write_file_mode`]).
    pub fn write_file(&self, inside: &str, content: impl AsRef<[u8]>) {
        self.write_file_mode(inside, content, 0o644)
    }

    /// Reads a file inside (None if it cannot be read).
    pub fn read_file(&self, inside: &str) -> Option<Vec<u8>> {
        let out = self.run(&["cat", "--", inside]);
        out.status.success().then_some(out.stdout)
    }

    /// `systemctl ARGS` inside.
    pub fn systemctl(&self, args: &[&str]) -> Output {
        let mut cmd = vec!["systemctl", "--no-pager"];
        cmd.extend_from_slice(args);
        self.run(&cmd)
    }

    /// One property of a unit (`systemctl show -p PROP --value UNIT`).
    pub fn show(&self, unit: &str, prop: &str) -> String {
        self.run_ok(&["systemctl", "show", "-p", prop, "--value", unit])
            .trim()
            .to_owned()
    }

    /// `systemctl is-system-running` now.
    pub fn state(&self) -> String {
        String::from_utf8_lossy(&self.run(&["systemctl", "is-system-running"]).stdout)
            .trim()
            .to_owned()
    }

    /// `systemctl --failed`, for messages.
    pub fn failed_units(&self) -> String {
        String::from_utf8_lossy(
            &self
                .systemctl(&["--failed", "--plain", "--no-legend"])
                .stdout,
        )
        .into_owned()
    }

    /// The journal of this boot, for messages.
    pub fn journal(&self) -> String {
        let out = self.run_timeout(
            &["journalctl", "-b", "--no-pager", "-o", "short-monotonic"],
            Duration::from_secs(20),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts systemd-logind and the system bus (a no-op when they run: multi-user.target wants
    /// them), creates the user `name` inside (`useradd -m`: in the overlay, never on the host),
    /// and opens a session for them through PAM (`runuser -l`, which goes through pam_systemd)
    /// that stays open: a holder process in the session's `session-N.scope`, for the rest of
    /// the instance's life. A session rather than linger, so that the user is logged in as on a
    /// machine (logind has a session of theirs, its leader alive). Returns once the session's
    /// user@UID.service is active, `/run/user/UID/systemd/private` exists and the user's
    /// manager has finished starting up. Panics with what went wrong otherwise.
    pub fn login(&self, name: &str) -> Login {
        self.run_ok(&[
            "systemctl",
            "start",
            "systemd-logind.service",
            "dbus.service",
        ]);
        let out = self.run(&["useradd", "-m", "-s", "/bin/sh", "--", name]);
        assert!(
            out.status.success(),
            "useradd {name} inside failed (pick a name no one has): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let uid: u32 = self
            .run_ok(&["id", "-u", "--", name])
            .trim()
            .parse()
            .expect("id -u prints a number");
        let login = Login {
            name: name.to_owned(),
            uid,
        };

        // The holder says which cgroup its session put it in, then sleeps until the instance
        // dies.
        let mut holder = self
            .user_command(&login, "cat /proc/self/cgroup && exec sleep infinity")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running nsenter runuser: {e}"));
        let stdout = holder.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in io::BufRead::lines(io::BufReader::new(stdout)) {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let cgroup = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(l) if l.starts_with("0::") => break l,
                Ok(_) => {}
                Err(_) => {
                    // Closed (runuser failed) or timed out: say why, then let teardown reap it.
                    let _ = holder.kill();
                    let status = holder.wait();
                    let mut err = String::new();
                    if let Some(mut e) = holder.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    panic!(
                        "{name}'s session did not open ({status:?}): {}\n--- logind ---\n{}",
                        err.trim(),
                        self.unit_journal("systemd-logind.service")
                    );
                }
            }
        };
        self.holders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(holder);
        let prefix = format!("0::/user.slice/user-{uid}.slice/session-");
        assert!(
            cgroup.starts_with(&prefix) && cgroup.ends_with(".scope"),
            "{name}'s session holder is in {cgroup:?}, not in a session scope of {prefix}"
        );

        // pam_systemd returns once the session's scope has started, which is ordered after
        // user@UID.service: this is a formality unless that failed. systemd sends no event that
        // can be waited on from here, hence the polling, with a deadline.
        let unit = format!("user@{uid}.service");
        let private = self.host_path(&format!("/run/user/{uid}/systemd/private"));
        loop {
            if private.exists() && self.show(&unit, "ActiveState") == "active" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{unit} is {} and {} is {}after 30 s\n{}",
                self.show(&unit, "ActiveState"),
                private.display(),
                if private.exists() { "" } else { "missing " },
                self.unit_journal(&unit)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = self.user_systemctl_timeout(
            &login,
            &["is-system-running", "--wait"],
            deadline.saturating_duration_since(Instant::now()),
        );
        let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            matches!(state.as_str(), "running" | "degraded"),
            "{name}'s manager is {state:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            self.unit_journal(&unit)
        );
        login
    }

    /// A command run from a session of `login`'s user, as them, with the environment a login
    /// gives (HOME, XDG_RUNTIME_DIR...): `runuser -l NAME -c SHELL_CMD` inside. Each is a PAM
    /// session of its own (through pam_systemd): its processes start in a `session-N.scope`.
    pub fn user_command(&self, login: &Login, shell_cmd: &str) -> Command {
        self.command(&["runuser", "-l", &login.name, "-c", shell_cmd])
    }

    /// Runs a [`Systemd::user_command`] and returns its stdout, panicking with its output if it
    /// fails.
    pub fn user_run_ok(&self, login: &Login, shell_cmd: &str) -> String {
        let out = self
            .user_command(login, shell_cmd)
            .output()
            .unwrap_or_else(|e| panic!("running nsenter runuser: {e}"));
        assert!(
            out.status.success(),
            "{shell_cmd:?} as {} failed ({}):\n{}{}",
            login.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `systemctl --user ARGS` of `login`'s manager (over its private socket, as the user; no
    /// session of its own), with a minute to answer.
    pub fn user_systemctl(&self, login: &Login, args: &[&str]) -> Output {
        self.user_systemctl_timeout(login, args, Duration::from_secs(60))
    }

    fn user_systemctl_timeout(&self, login: &Login, args: &[&str], limit: Duration) -> Output {
        let secs = format!("{}", limit.as_secs().max(1));
        let runtime = format!("XDG_RUNTIME_DIR=/run/user/{}", login.uid);
        let mut cmd = vec![
            "timeout",
            "--kill-after=2",
            &secs,
            "runuser",
            "-u",
            &login.name,
            "--",
            "env",
            &runtime,
            "systemctl",
            "--user",
            "--no-pager",
        ];
        cmd.extend_from_slice(args);
        self.run(&cmd)
    }

    /// A unit's journal, for messages.
    fn unit_journal(&self, unit: &str) -> String {
        let out = self.run_timeout(
            &[
                "journalctl",
                "--no-pager",
                "-o",
                "short-monotonic",
                "-u",
                unit,
            ],
            Duration::from_secs(20),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Tears the instance down now, reporting what could not be undone.
    pub fn shutdown(mut self) -> Result<(), String> {
        let problems = self.teardown();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    fn teardown(&mut self) -> Vec<String> {
        let mut problems = vec![];
        if let Some(fd) = self.pidfd.take() {
            pidfd_kill(&fd);
        } else if let Some(c) = self.child.as_mut() {
            // Boot failed before the init was known: killing unshare kills its child
            // (--kill-child); pick the child up first in case it has not set that up yet.
            if let Ok(None) = c.try_wait() {
                if let Some(fd) = child_of(c.id() as i32).and_then(pidfd_open) {
                    pidfd_kill(&fd);
                }
                let _ = c.kill();
            }
        }
        // Every process of the instance is in its cgroup (nsenter'd ones die with the pid
        // namespace): kill them all in one go, in case any outlives the init.
        let _ = fs::write(self.cgroup.join("cgroup.kill"), "1");
        // The sessions' holders died with the pid namespace: reap their nsenter.
        for mut h in std::mem::take(&mut *self.holders.lock().unwrap_or_else(|e| e.into_inner())) {
            if wait_timeout(&mut h, Duration::from_secs(10)).is_none() {
                problems.push(format!(
                    "session holder (pid {}) did not exit: killed",
                    h.id()
                ));
                let _ = h.kill();
                let _ = h.wait();
            }
        }
        if let Some(mut c) = self.child.take() {
            // unshare exits once it has reaped the init.
            if wait_timeout(&mut c, Duration::from_secs(30)).is_none() {
                problems.push(format!("unshare (pid {}) did not exit: killed", c.id()));
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Err(e) = remove_cgroup_tree(&self.cgroup, Duration::from_secs(20)) {
            problems.push(format!("cgroup {}: {e}", self.cgroup.display()));
        }
        drop(self.console_slave.take());
        if let Some(r) = self.console_reader.take() {
            let until = Instant::now() + Duration::from_secs(2);
            while !r.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if r.is_finished() {
                let _ = r.join();
            }
        }
        if let Some(d) = self.dir.take() {
            if let Err(e) = d.close() {
                problems.push(format!("removing {}: {e}", self.dir_path.display()));
            }
        }
        for ((name, was), (_, now)) in self.sysctls.iter().zip(host_sysctls()) {
            if *was != now {
                problems.push(format!("the host's {name} changed from {was} to {now}"));
            }
        }
        problems
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        let problems = self.teardown();
        if !problems.is_empty() {
            eprintln!(
                "systemd harness {}: teardown: {}",
                self.id,
                problems.join("; ")
            );
        }
    }
}

/// Machine-wide sysctls a booting systemd sets (or could) when it may: each instance must
/// leave them as they were (`net.*` ones are its network namespace's own).
pub const HOST_SYSCTLS: &[&str] = &[
    "fs/file-max",
    "fs/nr_open",
    "fs/inotify/max_user_instances",
    "fs/inotify/max_user_watches",
    "kernel/pid_max",
    "kernel/printk",
    "kernel/core_pattern",
    "kernel/sysrq",
    "vm/max_map_count",
    "net/unix/max_dgram_qlen",
    "net/core/somaxconn",
];

/// The host's values of [`HOST_SYSCTLS`] (empty for one that cannot be read).
pub fn host_sysctls() -> Vec<(&'static str, String)> {
    HOST_SYSCTLS
        .iter()
        .map(|n| {
            let v = fs::read_to_string(format!("/proc/sys/{n}")).unwrap_or_default();
            (*n, v.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .collect()
}

/// Spawns `cmd` from a thread that lives as long as the process, so that PR_SET_PDEATHSIG
/// (which fires when the *thread* that forked exits) means "when the test process dies".
fn spawn_from_spawner_thread(cmd: Command) -> io::Result<Child> {
    type Job = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("systemd-harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawner thread");
        tx
    });
    let (rtx, rrx) = mpsc::channel();
    tx.send((cmd, rtx))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    rrx.recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

/// The pid of a child of `ppid` (the first found), scanning /proc.
fn child_of(ppid: i32) -> Option<i32> {
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold anything, so split after its last ')'.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if parent == Some(ppid) {
            return Some(pid);
        }
    }
    None
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: a plain syscall; the fd it returns is ours alone.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a new, valid fd nothing else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn pidfd_kill(fd: &OwnedFd) {
    // SAFETY: a plain syscall on a pidfd we own.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

fn wait_timeout(c: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        match c.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

/// Removes a cgroup and everything below it, deepest first, retrying while its processes
/// finish dying.
fn remove_cgroup_tree(root: &Path, limit: Duration) -> io::Result<()> {
    fn dirs_depth_first(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    dirs_depth_first(&e.path(), out);
                }
            }
        }
        out.push(dir.to_owned());
    }
    let until = Instant::now() + limit;
    loop {
        if !root.exists() {
            return Ok(());
        }
        let mut dirs = vec![];
        dirs_depth_first(root, &mut dirs);
        let mut last = Ok(());
        for d in dirs {
            match fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => last = Err(e),
            }
        }
        match last {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= until => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Removes what instances of test processes that are gone left: those that died without
/// unwinding (the kernel killed their systemd, nothing removed the directories). Cgroups only
/// if empty.
fn sweep_stale() {
    let stale = |dir: &Path| -> Vec<PathBuf> {
        let Ok(rd) = fs::read_dir(dir) else {
            return vec![];
        };
        rd.flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_prefix(PREFIX)
                    .and_then(|r| r.split('-').next())
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_some_and(|owner| !Path::new(&format!("/proc/{owner}")).exists())
            })
            .map(|e| e.path())
            .collect()
    };
    if let Some(unified) = crate::cgroup_mounts().1 {
        for cg in stale(&unified) {
            let _ = remove_cgroup_tree(&cg, Duration::ZERO);
        }
    }
    for dir in stale(&std::env::temp_dir()) {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Names of the entries directly in `dirs` (unit files, generators).
fn installed_names(dirs: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = dirs
        .iter()
        .filter_map(|d| fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten())
        .filter(|e| !e.file_type().map(|t| t.is_dir()).unwrap_or(true))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Drops ANSI control sequences (`ESC [ params final`, `ESC x`): the status spinner, colours.
fn strip_csi(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != 0x1b {
            out.push(b[i]);
            i += 1;
        } else if b.get(i + 1) == Some(&b'[') {
            i += 2;
            while i < b.len() && !(0x40..=0x7e).contains(&b[i]) {
                i += 1;
            }
            i += 1;
        } else {
            i += 2;
        }
    }
    out
}

/// Shell-style matching of `*` and `?` (no classes).
fn glob_match(pat: &str, name: &str) -> bool {
    fn m(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|i| m(rest, &n[i..])),
            Some((b'?', rest)) => !n.is_empty() && m(rest, &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && m(rest, &n[1..]),
        }
    }
    m(pat.as_bytes(), name.as_bytes())
}

/// An interactive app started inside through its launcher (`/snap/bin/NAME`), held until
/// released. The app must print `started PID` first and exit after reading a line.
pub struct RunningApp {
    child: Child,
    /// The app's pid inside.
    pub pid: u32,
}

impl RunningApp {
    pub fn launch(sd: &Systemd, snap: &str) -> RunningApp {
        let mut child = sd
            .command(&[&format!("/snap/bin/{snap}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        io::BufRead::read_line(
            &mut io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let pid = line
            .strip_prefix("started ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the app said {line:?}"));
        RunningApp { child, pid }
    }

    /// Sends `note` (the app saves it) and waits for the app to exit successfully.
    pub fn release(mut self, note: &str) {
        let mut stdin = self.child.stdin.take().unwrap();
        writeln!(stdin, "{note}").unwrap();
        drop(stdin);
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("*.timer", "apt-daily.timer"));
        assert!(!glob_match("*.timer", "timers.target"));
        assert!(glob_match("systemd-udev*", "systemd-udevd-control.socket"));
        assert!(glob_match("pg_*", "pg_dump@.timer"));
        assert!(!glob_match("ssh*", "systemd-ssh.service"));
        assert!(glob_match("a?c", "abc"));
    }

    #[test]
    fn control_sequences() {
        assert_eq!(
            super::strip_csi(b"a\x1b[0;1;31mred\x1b[0m \x1bM\x1b[K[ ok ]"),
            b"ared [ ok ]"
        );
    }
}
