//! The daemon: start-up checks, recovery after a crash, serving, and an orderly shutdown.
//!
//! Global set-up (lock, database, recovery) happens before the async runtime starts; [`run`]
//! takes the listener and a shutdown token from its caller, so tests can run a daemon in-process.

use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use nix::fcntl::{Flock, FlockArg};
use refreshd_state::{PrunePolicy, Select, State};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::api::{self, limits, ApiState};
use crate::db::{Db, Reads};
use crate::engine::Engine;
use crate::fsutil;
use crate::layout::Layout;
use crate::ops::{Ops, Workers};
use crate::tasks::services;
use crate::tasks::{self, install, Ctx, MountMode, SnapSetup};
use crate::tracking::{self, Tracking};

/// How long a shutdown waits for running task handlers to reach their end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    name = "refreshd",
    version,
    about = "Refreshes snap-style applications safely while people use them"
)]
pub struct Args {
    /// Directory every path of the daemon lives under (state, runtime dir, snaps, data, homes).
    #[arg(long, default_value = "/", value_name = "DIR")]
    pub root: PathBuf,
    /// Group whose members may change state besides root (by name or number).
    #[arg(long, value_name = "GROUP")]
    pub admin_group: Option<String>,
    /// Largest snap file accepted for upload, in bytes.
    #[arg(long, default_value_t = 8 << 30, value_name = "BYTES")]
    pub max_upload: u64,
    /// Delete finished changes older than this many hours.
    #[arg(long, default_value_t = 24, value_name = "HOURS")]
    pub prune_age_hours: u32,
    /// Keep at most this many finished changes.
    #[arg(long, default_value_t = 500, value_name = "N")]
    pub prune_count: u32,
    /// Unpack payloads instead of loop-mounting them, even where loop devices work.
    #[arg(long)]
    pub extract: bool,
    /// How to know when a snap's processes are gone (auto: where systemd is PID 1, the scopes
    /// of its managers apps are launched into — whatever cgroup backend is named; else the v1
    /// freezer with the release agent, else polling it, else cgroup v2, else the apps'
    /// environment in /proc; none: do not wait for running apps).
    #[arg(long, value_enum, default_value = "auto")]
    pub tracking: tracking::Choice,
    /// The release agent binary registered on the v1 freezer hierarchy (default: next to
    /// refreshd).
    #[arg(long, value_name = "PATH")]
    pub release_agent: Option<PathBuf>,
    /// Where new revisions come from: a directory (or file:///DIR) or http(s)://HOST/BASE
    /// serving the store layout (docs/store.md).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// How long the store may stay silent (connecting, answering, or in the middle of a
    /// download) before an attempt is given up and retried (10s, 2m); docs/store.md.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = refreshd_snap::text::parse_duration)]
    pub store_timeout: Duration,
    /// A PEM file of the certificate authorities to trust for an https:// store instead of the
    /// Mozilla roots built in: a private store's own CA, or the system's bundle.
    #[arg(long, value_name = "FILE")]
    pub store_ca: Option<PathBuf>,
    /// The root metadata of the signed store to trust (default ROOT/etc/refreshd/store-root.json,
    /// as `refreshctl store init` made it): every index and blob is verified through the
    /// store's signed metadata from it; docs/store.md.
    #[arg(long, value_name = "FILE")]
    pub store_root: Option<PathBuf>,
    /// Use a store that is not signed, trusting whoever serves it or sits on the way to it: for
    /// development only (`refreshctl status` says so on every call).
    #[arg(long)]
    pub insecure_unsigned_store: bool,
    /// Interval of the polling fallback, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub poll_interval_ms: u64,
    /// How snaps' services are run: systemd units (auto: when systemd is PID 1 and the root is
    /// /), or not at all (none: unit files are written, nothing is started or stopped).
    #[arg(long, value_enum, default_value = "auto")]
    pub services: services::Choice,
    /// How long a snap's hook may run before it is stopped, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub hook_timeout: u64,
    /// After a refresh, how long making one user's data of the new revision may take, as that
    /// user (10s, 2m); a user whose copy takes longer gets it at their next launch instead.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = refreshd_snap::text::parse_duration)]
    pub user_data_budget: Duration,
    /// How long the snapshot of a removed snap's data is kept (refreshctl saved) before it is
    /// deleted (12h, 31d).
    #[arg(long, default_value = "31d", value_name = "DURATION", value_parser = refreshd_snap::text::parse_duration)]
    pub snapshot_retention: Duration,
    /// How many revisions of each snap to keep, the current one included (2 to 20).
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u32).range(2..=20))]
    pub retain: u32,
    /// Refresh every snap with an update this often (30m, 6h, 1d; held snaps are skipped, apps
    /// are waited for); off when absent.
    #[arg(long, value_name = "EVERY", value_parser = refreshd_snap::text::parse_duration)]
    pub auto_refresh: Option<Duration>,
    /// Tell logged-in desktop users when a refresh waits for their app and when it is done
    /// (session: on their session bus; none: never).
    #[arg(long, value_enum, default_value = "session")]
    pub notify: crate::notify::Mode,
    /// Remind a user of a refresh still waiting at most this often (1d, 4h); off when absent.
    #[arg(long, value_name = "EVERY", value_parser = refreshd_snap::text::parse_duration)]
    pub notify_reminder: Option<Duration>,
    /// The refreshd-notify binary run as each user (default: next to refreshd).
    #[arg(long, value_name = "PATH")]
    pub notify_helper: Option<PathBuf>,
    /// The most connections the API serves at once, at most half the open-file limit; users
    /// other than root together may have all but the last eighth (docs/api.md, "Limits").
    #[arg(long, default_value_t = limits::CONNECTIONS, value_name = "N")]
    pub api_connections: usize,
    /// The most connections one user other than root may have open to the API.
    #[arg(long, default_value_t = limits::USER_CONNECTIONS, value_name = "N")]
    pub api_user_connections: usize,
    /// The most requests one user other than root may have in progress at once.
    #[arg(long, default_value_t = limits::USER_REQUESTS, value_name = "N")]
    pub api_user_requests: usize,
    /// The most watch streams one user other than root may have open at once.
    #[arg(long, default_value_t = limits::USER_STREAMS, value_name = "N")]
    pub api_user_streams: usize,
    /// How long an API connection may go without sending a complete request head — after
    /// connecting, after its previous answer, or while sending one — before it is closed.
    #[arg(long, default_value = limits::HEADER_TIMEOUT, value_name = "DURATION", value_parser = refreshd_snap::text::parse_duration)]
    pub api_header_timeout: Duration,
}

pub fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_tracing();
    // Before any thread starts: this unsets LISTEN_FDS and LISTEN_PID.
    let inherited = match crate::systemd::take_listener() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("refreshd: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match start(args, inherited) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Once, on stderr (the journal under systemd), as one line.
            eprintln!("refreshd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Under systemd, structured entries straight to the journal: each event's fields become
/// journal fields (`SNAP`, `CHANGE`, `TASK`, ...), so `journalctl SNAP=hello` finds a snap's
/// story. Elsewhere, text on stderr: colour only on a terminal, no timestamps when a service
/// manager adds its own.
fn init_tracing() {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if crate::systemd::stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(journal) => {
                tracing_subscriber::registry()
                    .with(filter)
                    .with(
                        journal
                            .with_field_prefix(None)
                            .with_syslog_identifier("refreshd".to_owned()),
                    )
                    .init();
                return;
            }
            Err(e) => eprintln!("refreshd: cannot log to the journal ({e}); logging to stderr"),
        }
    }
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(escaped_fields())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    if std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some() {
        b.without_time().init();
    } else {
        b.init();
    }
}

/// How the fields of a log line on stderr are written: escaped ([`printable`]), the message
/// bare and the others as `name=value`. A message or field often holds what a user chose (a
/// file name in a task log, a command line): a newline there must not start a forged line,
/// nor an escape sequence reach the terminal of whoever reads the log. (The journal stores
/// each field as data and shows unprintable ones as such.)
///
/// [`printable`]: refreshd_snap::text::printable
fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        let text = refreshd_snap::text::printable(&text);
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{}={text}", field.name())
        }
    })
    .delimited(" ")
}

/// A daemon set up and ready to serve.
pub struct Daemon {
    pub layout: Layout,
    pub engine: Engine,
    pub api: Arc<ApiState>,
    /// `--auto-refresh`: how often snaps are refreshed by themselves.
    pub auto_refresh: Option<Duration>,
    /// The socket came from systemd (refreshd.socket): it is systemd's to keep and remove.
    pub socket_activated: bool,
    _lock: Flock<File>,
}

fn start(args: Args, inherited: Option<std::os::unix::net::UnixListener>) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let mut daemon = Daemon::setup(&args, shutdown.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(api_priority)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = rt.block_on(async move {
        // Before the socket appears: whoever sees it may stop the daemon at once, and is owed
        // an orderly shutdown (the release agent unregistered, the cgroups removed).
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut int) = (
            signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        );
        let listener = match inherited {
            Some(l) => daemon.adopt(l)?,
            None => daemon.bind()?,
        };
        let sig = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            info!("shutting down");
            sig.cancel();
        });
        daemon.run(listener).await
    });
    // Requests' blocking work left behind (a store look-up that waits for a silent store) is
    // not waited for: the state is already on disk.
    rt.shutdown_timeout(Duration::from_secs(1));
    served
}

impl Daemon {
    /// Everything before serving: refuse a foreign root, take the root's lock, open the state,
    /// and repair what a crash may have left.
    pub fn setup(args: &Args, shutdown: CancellationToken) -> anyhow::Result<Daemon> {
        // A root that is not there is a mistyped path more often than a wish for a new tree:
        // nothing is made in its place.
        if !args.root.is_dir() {
            bail!(
                "root {} is not a directory; create it first (mkdir -p {}) or give an existing one to --root",
                args.root.display(),
                args.root.display()
            );
        }
        let root = args
            .root
            .canonicalize()
            .with_context(|| format!("cannot resolve root {}", args.root.display()))?;
        let layout = Layout::new(&root);
        if layout.snapd_state().exists() {
            bail!(
                "{} is managed by snapd ({} exists); two managers must not share one tree: stop snapd or use another --root",
                root.display(),
                layout.snapd_state().display()
            );
        }
        layout.ensure_dirs().with_context(|| {
            format!(
                "cannot create refreshd's directories under {}",
                root.display()
            )
        })?;
        let lock = lock_root(&layout)?;
        let admin_gid = args.admin_group.as_deref().map(resolve_group).transpose()?;

        let mount_mode = if !args.extract && refreshd_snap::loop_available() {
            MountMode::Loop
        } else {
            MountMode::Extract
        };
        info!(
            root = %root.display(),
            mount_mode = mount_mode.as_str(),
            "starting refreshd {}{}",
            env!("CARGO_PKG_VERSION"),
            if mount_mode == MountMode::Extract {
                " (payloads are extracted: no loop devices, not root, or --extract)"
            } else {
                " (payloads are loop-mounted)"
            }
        );

        let agent = match &args.release_agent {
            Some(p) => p.clone(),
            None => std::env::current_exe()
                .context("cannot find refreshd's own path")?
                .with_file_name("refresh-release-agent"),
        };
        let tracking = Arc::new(Tracking::setup(
            &layout,
            &tracking::Options {
                choice: args.tracking,
                release_agent: agent,
                poll_interval: Duration::from_millis(args.poll_interval_ms.max(10)),
            },
        )?);
        if !layout.hook().exists() {
            warn!(
                "confine-hook is not installed at {}: launchers will not work until it is",
                layout.hook().display()
            );
        }
        // Its errors name the database.
        let mut state = State::open(&layout.state_db())?;
        let (store, store_root) = match &args.store {
            Some(url) => {
                let mut config = store_config(args.store_timeout, args.store_ca.clone());
                config.trust = store_trust(args, &layout, url)?;
                let root = config.trust.as_ref().map(|t| t.root.clone());
                let store = refreshd_store::Store::open_with(url, config).map_err(|e| match e {
                    // These say which store already.
                    e @ (refreshd_store::Error::BadUrl { .. }
                    | refreshd_store::Error::StoreDir { .. }) => anyhow::Error::new(e),
                    e => anyhow::Error::new(e).context(format!("cannot use the store {url}")),
                })?;
                (Some(Arc::new(store)), root)
            }
            None => (None, None),
        };
        let services = services::Services::setup(&layout, args.services)?;
        info!(
            services = services.kind.as_str(),
            "services: {}", services.reason
        );
        let ctx = Arc::new(Ctx {
            layout: layout.clone(),
            mount_mode,
            tracking,
            store,
            store_root,
            services,
            hook_timeout: Duration::from_secs(args.hook_timeout.max(1)),
            retain: args.retain as usize,
            user_data_budget: args.user_data_budget.max(Duration::from_secs(1)),
            notify: Arc::new(crate::notify::Notifier::from_options(
                &layout,
                args.notify,
                args.notify_reminder,
                args.notify_helper.clone(),
            )?),
            shutdown_delay: crate::shutdown_delay::ShutdownDelays::new(
                root == std::path::Path::new("/"),
            ),
            saved: Arc::new(crate::tasks::snapshot::Saved::new(
                args.snapshot_retention.max(Duration::from_secs(1)),
            )),
        });
        recover(&ctx, &mut state)?;

        let prune = PrunePolicy {
            max_age_ms: i64::from(args.prune_age_hours) * 3600 * 1000,
            max_count: args.prune_count,
        };
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let engine = Engine::observed(
            Db::new(state),
            tasks::handlers(ctx.clone()),
            prune,
            metrics.clone(),
        );
        let reads = Reads::open(&layout.state_db(), limits::READERS, limits::WAIT)?;
        let ops = Arc::new(Ops {
            engine: engine.clone(),
            ctx,
            reads,
            workers: Workers::new(limits::WORKERS, limits::WAIT),
            shutdown,
        });
        let api = Arc::new(ApiState {
            ops,
            metrics,
            started: jiff::Timestamp::now(),
            admin_gid,
            max_upload: args.max_upload,
            limits: limits::Limits::new(api_limits(args)),
            plan: Default::default(),
            watches: Default::default(),
        });
        Ok(Daemon {
            layout,
            engine,
            api,
            auto_refresh: args.auto_refresh,
            socket_activated: false,
            _lock: lock,
        })
    }

    /// Binds the API socket (mode 0666: anyone may connect; each request is authorized).
    pub fn bind(&self) -> anyhow::Result<UnixListener> {
        let path = self.layout.socket();
        // We hold the root's lock, so a socket file left here is stale.
        fsutil::remove_file_if_exists(&path)?;
        let l = UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666))?;
        info!(socket = %path.display(), "listening");
        Ok(l)
    }

    /// Serves on the socket systemd passed (socket activation): connections made while no
    /// daemon ran wait in its backlog and are answered now.
    pub fn adopt(&mut self, l: std::os::unix::net::UnixListener) -> anyhow::Result<UnixListener> {
        let path = self.layout.socket();
        crate::systemd::check_listener(&l, &path)?;
        let l = UnixListener::from_std(l).context("cannot serve on the socket systemd passed")?;
        self.socket_activated = true;
        info!(socket = %path.display(), "listening on the socket systemd passed");
        Ok(l)
    }

    /// Serves until the shutdown token fires; then stops accepting, lets handlers reach an
    /// end (at most [`SHUTDOWN_GRACE`]), and returns with everything persisted.
    ///
    /// The engine, and what feeds it (the tracking and login watchers, auto-refresh, systemd's
    /// status and watchdog), run on a thread with a runtime of their own ([`spawn_engine`]);
    /// the API serves on the caller's runtime. However busy clients keep the API's threads,
    /// the engine's steps are never queued behind their requests.
    pub async fn run(self, listener: UnixListener) -> anyhow::Result<()> {
        let shutdown = self.api.ops.shutdown.clone();
        let engine = spawn_engine(self.api.clone(), self.auto_refresh).await?;
        crate::systemd::ready("ready");
        let served = api::serve(listener, self.api.clone()).await;
        shutdown.cancel();
        crate::systemd::stopping("stopping: letting running tasks reach an end");
        let _ = engine.await;
        self.api.ops.reads.close();
        self.api.ops.ctx.tracking.unregister_agent();
        self.api.ops.ctx.tracking.remove_unused_groups();
        if !self.socket_activated {
            let _ = fs::remove_file(self.layout.socket());
        }
        info!("stopped");
        served.context("API server failed")
    }
}

/// The engine's thread: a runtime of its own running the engine and what feeds it, until the
/// shutdown token fires and the engine has let its handlers reach an end. Returns once they
/// are started (or failed to), with a receiver that completes when the thread is done.
async fn spawn_engine(
    api: Arc<ApiState>,
    auto_refresh: Option<Duration>,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let shutdown = api.ops.shutdown.clone();
    std::thread::Builder::new()
        .name("refreshd-engine".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = started_tx.send(Err(
                        anyhow::Error::new(e).context("cannot start the engine's runtime")
                    ));
                    return;
                }
            };
            rt.block_on(async move {
                let engine = api.ops.engine.clone();
                if let Err(e) = tracking::spawn_watcher(
                    api.ops.ctx.tracking.clone(),
                    engine.clone(),
                    shutdown.clone(),
                ) {
                    let _ = started_tx.send(Err(e.context("cannot watch for apps exiting")));
                    return;
                }
                crate::notify::spawn_login_watcher(
                    api.ops.ctx.notify.clone(),
                    engine.clone(),
                    shutdown.clone(),
                );
                let auto = crate::autorefresh::start(api.ops.clone(), auto_refresh).await;
                let expiry = crate::ops::snapshots::spawn_expiry(api.ops.clone());
                crate::systemd::spawn_status(engine.clone(), shutdown.clone());
                crate::systemd::spawn_watchdog(engine.clone(), shutdown.clone());
                let _ = started_tx.send(Ok(()));
                engine.run(shutdown, SHUTDOWN_GRACE).await;
                let _ = auto.await;
                let _ = expiry.await;
            });
            // Whatever is still running has had its grace: nothing waits for it.
            rt.shutdown_timeout(Duration::from_secs(1));
            let _ = done_tx.send(());
        })
        .context("cannot start the engine's thread")?;
    match started_rx.await {
        Ok(r) => r.map(|()| done_rx),
        Err(_) => bail!("the engine's thread ended while starting"),
    }
}

/// How much lower than the engine's the priority of the API's threads is (nice).
const API_NICE: i32 = 10;

/// Lowers the priority of the calling thread, one of the API's: when the machine is busy,
/// the engine's threads (which keep their priority) run first, so that clients keeping the API
/// busy take CPU from each other rather than from a critical section.
fn api_priority() {
    // On Linux, the process priority of "no pid" (0) is the calling thread's alone.
    if let Err(e) = rustix::process::setpriority_process(None, API_NICE) {
        debug!("cannot lower the priority of an API thread: {e}");
    }
}

/// The API's limits from the command line, kept within the descriptors this process may open.
fn api_limits(args: &Args) -> limits::Config {
    let fd_limit = limits::fd_limit();
    let (config, lowered) = limits::Config {
        connections: args.api_connections,
        user_connections: args.api_user_connections,
        user_requests: args.api_user_requests,
        user_streams: args.api_user_streams,
        header_timeout: args.api_header_timeout.max(Duration::from_secs(1)),
    }
    .fit(fd_limit);
    if lowered {
        warn!(
            "serving at most {} API connections, half the open-file limit of {fd_limit} (not --api-connections {}): raise LimitNOFILE to serve more",
            config.connections, args.api_connections
        );
    }
    info!(
        "API limits: {} connections, {} per user other than root ({} together), {} requests and {} watch streams per user, header timeout {:?}",
        config.connections,
        config.user_connections,
        config.users_total(),
        config.user_requests,
        config.user_streams,
        config.header_timeout
    );
    config
}

/// How the store is trusted: through the pinned root, or (`--insecure-unsigned-store`) not at
/// all. A store without a pinned root is refused: it would be trusted for being reachable.
fn store_trust(
    args: &Args,
    layout: &Layout,
    url: &str,
) -> anyhow::Result<Option<refreshd_store::TrustConfig>> {
    if args.insecure_unsigned_store {
        if let Some(root) = &args.store_root {
            anyhow::bail!(
                "--store-root {} and --insecure-unsigned-store contradict each other: give one",
                root.display()
            );
        }
        warn!(
            "the store {url} is not verified (--insecure-unsigned-store): whoever serves it, or sits on the way to it, chooses what is installed; for development only"
        );
        return Ok(None);
    }
    let root = args
        .store_root
        .clone()
        .unwrap_or_else(|| layout.store_root());
    if args.store_root.is_none() && !root.exists() {
        anyhow::bail!(
            "the store {url} is not trusted: no pinned store root at {}; install the root.json its operator gives there (refreshctl store init prints it) or pass --store-root FILE (for development only: --insecure-unsigned-store)",
            root.display()
        );
    }
    Ok(Some(refreshd_store::TrustConfig {
        root,
        state_dir: layout.store_trust(),
    }))
}

/// The store client's settings: `--store-timeout` bounds every wait on the store; connecting
/// never waits longer than the client's default either. `--store-ca` names the roots to trust.
fn store_config(timeout: Duration, ca_file: Option<PathBuf>) -> refreshd_store::StoreConfig {
    let timeout = timeout.max(Duration::from_secs(1));
    let mut config = refreshd_store::StoreConfig::default();
    config.connect_timeout = config.connect_timeout.min(timeout);
    config.read_timeout = timeout;
    config.ca_file = ca_file;
    config
}

/// One daemon per root: an exclusive lock held for the daemon's life, with its pid inside.
fn lock_root(layout: &Layout) -> anyhow::Result<Flock<File>> {
    let path = layout.daemon_lock();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let mut lock = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut f, _)) => {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            bail!(
                "another refreshd (pid {}) is already running on {}; stop it first",
                pid.trim(),
                layout.root().display()
            );
        }
    };
    lock.set_len(0)?;
    lock.rewind()?;
    write!(lock, "{}", std::process::id())?;
    Ok(lock)
}

fn resolve_group(g: &str) -> anyhow::Result<u32> {
    if let Ok(n) = g.parse() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(g) {
        Ok(Some(gr)) => Ok(gr.gid.as_raw()),
        _ => bail!("no group named {g:?} (--admin-group); create it or name an existing one"),
    }
}

/// Repairs what a crash may have left, before anything runs: temporaries go, uploads no change
/// owns go, and every recorded revision is mounted again (after a reboot none is).
fn recover(ctx: &Ctx, state: &mut State) -> anyhow::Result<()> {
    let l = &ctx.layout;
    let mut swept = 0;
    for dir in [l.blobs(), l.bin_dir(), l.snaps_dir(), l.at_var_snap()] {
        swept += fsutil::sweep_tmp(&dir).unwrap_or(0);
    }
    for snap in state.snaps()? {
        for dir in [l.snap_dir(&snap.name), l.data_dir(&snap.name)] {
            swept += fsutil::sweep_tmp(&dir).unwrap_or(0);
        }
    }
    // Uploads still owned by an unfinished change stay; the rest were never taken.
    let mut owned: Vec<PathBuf> = vec![];
    for c in state.changes(Select::InProgress, None)? {
        if let Ok(ss) = serde_json::from_value::<SnapSetup>(c.data) {
            owned.extend(ss.upload);
        }
    }
    for e in fs::read_dir(l.uploads())?.flatten() {
        if !owned.contains(&e.path()) {
            let _ = fs::remove_file(e.path());
            swept += 1;
        }
    }
    if swept > 0 {
        info!("removed {swept} leftovers of an interrupted run");
    }
    // Inhibitions whose change is over (or gone) would block launches forever.
    let unfinished: Vec<u64> = state
        .changes(Select::InProgress, None)?
        .iter()
        .map(|c| c.id)
        .collect();
    let tr = &ctx.tracking;
    for name in tr.marked(refreshd_runctl::Marker::Inhibited) {
        match tr
            .inhibition_owner(&name)
            .filter(|c| unfinished.contains(c))
        {
            // Still owned: rewritten with this daemon's pid and boot, so waiting launchers do
            // not say refreshd is gone.
            // A failure (a full run directory) leaves the old marker, which still inhibits:
            // only its pid and boot are stale, not a reason to refuse to start.
            Some(change) => {
                if let Err(e) = tr.inhibit(&name, change) {
                    warn!(snap = %name, "{e}");
                }
            }
            None => {
                info!(snap = %name, "lifting an inhibition no unfinished change owns");
                tr.lift(&name)?;
            }
        }
    }
    // The picture of running apps comes from the kernel, not from before the restart.
    tr.rescan();
    // Each payload is checked against its recorded blob, not taken as it is found: a mount or
    // tree left by an earlier run may show another image.
    for snap in state.snaps()? {
        for rev in state.revisions(&snap.name)? {
            let dir = l.rev_dir(&snap.name, &rev.revision);
            let blob = l.blob(&snap.name, &rev.revision);
            if dir.exists() && blob.exists() {
                match install::mount_verified(ctx, &snap.name, &rev.revision, &rev.sha3_384) {
                    Ok(Some(note)) => info!(snap = %snap.name, revision = %rev.revision, "{note}"),
                    Ok(None) => {}
                    Err(e) => {
                        warn!(snap = %snap.name, revision = %rev.revision, "cannot mount: {e:#}")
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// A line of the log (on stderr) made of what a user chose — a file name in a task log, a
    /// command line in a field — stays one line, with nothing a terminal would act on.
    #[test]
    fn log_lines_cannot_be_forged() {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(super::escaped_fields())
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let evil = "x\u{1b}[2J\r\n2026-01-01T00:00:00Z  INFO refreshd: all good\u{9b}\u{202e}";
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(snap = evil, path = %evil, "copied {evil}");
        });
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(
            !out.trim_end_matches('\n')
                .chars()
                .any(refreshd_snap::text::escapes),
            "{out:?}"
        );
        assert!(out.contains(r"copied x\u{1b}[2J\r\n2026"), "{out}");
        assert!(out.contains("snap="), "{out}");
    }
}
