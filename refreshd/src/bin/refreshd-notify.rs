//! refreshd-notify: shows one desktop notification on a session bus and prints its id.
//!
//! refreshd runs it as the user whose session it is — never as root on a user's bus — with a
//! clean environment and a time limit (docs/notifications.md). It connects to the bus socket
//! itself and goes on only when the process on the other end (the bus daemon) runs as the same
//! user, then calls `org.freedesktop.Notifications.Notify`.
//!
//! ```text
//! refreshd-notify [--bus PATH] --summary TEXT [--body TEXT] [--urgency low|normal|critical]
//! ```
//!
//! Without `--bus`, the bus is `DBUS_SESSION_BUS_ADDRESS` (a `unix:path=` address). Exit status
//! 0 with the notification's id on stdout; 1 with one line on stderr saying what went wrong.

#![deny(unsafe_code)]

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use zbus::zvariant::Value;

#[derive(Debug, Parser)]
#[command(
    name = "refreshd-notify",
    version,
    about = "Shows a desktop notification on a session bus and prints its id"
)]
struct Args {
    /// The session bus socket (default: DBUS_SESSION_BUS_ADDRESS, a unix:path= address).
    #[arg(long, value_name = "PATH")]
    bus: Option<PathBuf>,
    /// The notification's one-line summary.
    #[arg(long)]
    summary: String,
    /// Its body.
    #[arg(long, default_value = "")]
    body: String,
    /// The application the notification is from.
    #[arg(long, default_value = "refreshd")]
    app_name: String,
    /// An icon name from the icon theme, or none.
    #[arg(long, default_value = "")]
    icon: String,
    #[arg(long, value_enum, default_value = "normal")]
    urgency: Urgency,
    /// The id of a notification of this session to replace (0: none).
    #[arg(long, default_value_t = 0, value_name = "ID")]
    replaces: u32,
    /// How long the server shows it, in milliseconds (-1: the server's default, 0: until
    /// dismissed).
    #[arg(long, default_value_t = -1, value_name = "MS", allow_negative_numbers = true)]
    expire_ms: i32,
    /// How long to wait for the bus and the server before giving up, in seconds.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    timeout: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Urgency {
    Low,
    Normal,
    Critical,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(id) => {
            println!("{id}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("refreshd-notify: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<u32> {
    let bus = match &args.bus {
        Some(p) => p.clone(),
        None => bus_from_env()?,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let limit = Duration::from_secs(args.timeout.max(1));
    rt.block_on(async {
        tokio::time::timeout(limit, notify(args, &bus, limit))
            .await
            .unwrap_or_else(|_| {
                bail!(
                    "no answer from the session bus {} within {} s",
                    bus.display(),
                    limit.as_secs()
                )
            })
    })
}

/// The socket of a `unix:path=` address; other transports are not for a local session.
fn bus_from_env() -> anyhow::Result<PathBuf> {
    let addr = std::env::var("DBUS_SESSION_BUS_ADDRESS")
        .context("no --bus and no DBUS_SESSION_BUS_ADDRESS: say which session bus to use")?;
    let path = addr
        .split(';')
        .find_map(|a| a.strip_prefix("unix:path="))
        .and_then(|rest| unescape(rest.split(',').next()?))
        .with_context(|| {
            format!("DBUS_SESSION_BUS_ADDRESS={addr:?} has no unix:path= address; pass --bus PATH")
        })?;
    Ok(PathBuf::from(path))
}

/// Undoes a D-Bus address value's `%XX` escapes.
fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

async fn notify(args: &Args, bus: &std::path::Path, limit: Duration) -> anyhow::Result<u32> {
    let stream = tokio::net::UnixStream::connect(bus)
        .await
        .with_context(|| format!("cannot connect to the session bus {}", bus.display()))?;
    // The bus daemon must be this user's own: a socket put there by someone else is not
    // talked to, whatever its path says.
    let me = nix::unistd::geteuid().as_raw();
    let peer = stream
        .peer_cred()
        .with_context(|| format!("cannot tell who serves {}", bus.display()))?
        .uid();
    if peer != me {
        bail!(
            "{} is served by uid {peer}, not by this user (uid {me}): not this user's session bus",
            bus.display()
        );
    }
    if let Ok(md) = std::fs::symlink_metadata(bus) {
        if md.uid() != me {
            bail!(
                "{} belongs to uid {}, not to this user (uid {me})",
                bus.display(),
                md.uid()
            );
        }
    }
    let conn = zbus::connection::Builder::unix_stream(stream)
        .method_timeout(limit)
        .build()
        .await
        .with_context(|| format!("cannot open the session bus {}", bus.display()))?;
    let urgency: u8 = match args.urgency {
        Urgency::Low => 0,
        Urgency::Normal => 1,
        Urgency::Critical => 2,
    };
    let mut hints: HashMap<&str, Value<'_>> = HashMap::new();
    hints.insert("urgency", Value::U8(urgency));
    let actions: Vec<&str> = vec![];
    let reply = conn
        .call_method(
            Some("org.freedesktop.Notifications"),
            "/org/freedesktop/Notifications",
            Some("org.freedesktop.Notifications"),
            "Notify",
            &(
                args.app_name.as_str(),
                args.replaces,
                args.icon.as_str(),
                args.summary.as_str(),
                args.body.as_str(),
                actions,
                hints,
                args.expire_ms,
            ),
        )
        .await
        .context("the notification server refused the notification (is one running?)")?;
    let id: u32 = reply
        .body()
        .deserialize()
        .context("the notification server answered with something other than an id")?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn addresses_are_unescaped() {
        for (raw, want) in [
            ("/run/user/1000/bus", Some("/run/user/1000/bus")),
            ("/tmp/a%20b/bus", Some("/tmp/a b/bus")),
            ("/tmp/%2", None),
            ("/tmp/%zz", None),
        ] {
            assert_eq!(unescape(raw).as_deref(), want, "{raw}");
        }
    }
}
