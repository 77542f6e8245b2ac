//! Section 6, Download: refreshd's store client (`refreshd-store`, `Store::fetch`, what the
//! download task calls) fetching a large blob from a real nginx on 127.0.0.1, against curl from
//! the same server; and the bytes fetched again when the connection is reset mid-transfer.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use refreshd_tests::{find_program, scratch};

use crate::report::{num, Figure, Section, Stats};
use crate::util::{self, Ctx};

// The store crate's nginx and cutting-proxy harness (as tests/tests/http_refresh.rs uses it),
// shared rather than copied. It needs `find_program` and `scratch` from here (the harness's).
#[path = "../../store/tests/common/nginx.rs"]
pub(crate) mod nginx;

const MIB: u64 = 1 << 20;
const NAME: &str = "benchblob";

pub fn run(ctx: &Ctx, s: &mut Section) -> anyhow::Result<()> {
    if find_program("nginx").is_none() {
        bail!("nginx is not installed (Debian package nginx)");
    }
    let payload = if ctx.quick { 16 * MIB } else { 128 * MIB };
    let runs = ctx.n(5, 2);
    let dir = tempfile::Builder::new()
        .prefix("download-")
        .tempdir_in(&ctx.work)?;
    let store_dir = dir.path().join("store");
    fs::create_dir(&store_dir)?;
    println!("    publishing a {} MiB snap", payload / MIB);
    let t = Instant::now();
    let entry = publish_big(dir.path(), &store_dir, payload)?;
    println!("    published in {:.1} s", t.elapsed().as_secs_f64());
    let size = entry.size;
    let mb = size as f64 / 1e6;

    // sendfile as any production nginx has it: the server side is as cheap as it gets, so the
    // clients' differences show.
    let server = nginx::Nginx::start(&store_dir, "sendfile on;").context("nginx did not start")?;
    let store = refreshd_store::Store::open(&server.url())?;
    let entry = store
        .snap(NAME)?
        .and_then(|i| i.channel("stable").cloned())
        .context("the published snap is not in the served index")?;
    anyhow::ensure!(entry.size == size, "the index says {} bytes", entry.size);
    let url = format!("{}/{}", server.url(), entry.path);

    let dl = dir.path().join("dl");
    fs::create_dir(&dl)?;
    let dest = dl.join(format!("{NAME}_1.snap"));
    let partial = refreshd_store::partial_path(&dest)?;
    let clean = || -> anyhow::Result<()> {
        for p in [&dest, &partial] {
            if p.exists() {
                fs::remove_file(p)?;
            }
        }
        Ok(())
    };
    let curl = |extra: &str| -> anyhow::Result<Duration> {
        let script = format!(
            "curl -sS --fail --noproxy '*' -o '{d}' '{url}'{extra}",
            d = dest.display()
        );
        let t = Instant::now();
        util::run(Command::new("sh").arg("-c").arg(&script))?;
        Ok(t.elapsed())
    };
    let verify = format!(
        " && sync '{d}' && openssl dgst -sha3-384 '{d}' >/dev/null",
        d = dest.display()
    );

    let (mut ours, mut plain, mut equal) = (vec![], vec![], vec![]);
    for i in 0..runs {
        println!(
            "    round {}/{runs}: refreshd-store, curl, curl + fsync + sha3",
            i + 1
        );
        clean()?;
        let t = Instant::now();
        let st = store.fetch(&entry, &dest, &mut |_, _| {}, &|| false)?;
        ours.push(t.elapsed());
        anyhow::ensure!(
            st.bytes_fetched == size && st.attempts == 1,
            "unexpected fetch: {st:?}"
        );
        clean()?;
        plain.push(curl("")?);
        anyhow::ensure!(
            fs::metadata(&dest)?.len() == size,
            "curl fetched a short file"
        );
        clean()?;
        equal.push(curl(&verify)?);
    }

    // Verification alone: a complete partial is only checked (fsync of a clean file, sha3-384
    // of the whole blob read back from the page cache, rename, fsync of the directory).
    let (mut check, mut openssl) = (vec![], vec![]);
    for _ in 0..ctx.n(3, 1) {
        clean()?;
        fs::copy(store_dir.join(&entry.path), &partial)?;
        util::run(Command::new("sync").arg(&partial))?;
        let t = Instant::now();
        let st = store.fetch(&entry, &dest, &mut |_, _| {}, &|| false)?;
        check.push(t.elapsed());
        anyhow::ensure!(
            st.attempts == 0,
            "the complete partial was fetched again: {st:?}"
        );
        let t = Instant::now();
        util::run(
            Command::new("openssl")
                .args(["dgst", "-sha3-384"])
                .arg(&dest),
        )?;
        openssl.push(t.elapsed());
    }
    clean()?;

    let rate =
        |v: &[Duration]| Stats::of(&v.iter().map(|d| mb / d.as_secs_f64()).collect::<Vec<_>>());
    let what = format!("{} MiB blob", size / MIB);
    s.push(
        Figure::new(
            format!("download of a {what}, refreshd-store"),
            "MB/s",
            rate(&ours),
        )
        .against("curl -o FILE", rate(&plain))
        .note(format!(
            "`Store::fetch` including fsync of the file and sha3-384 verification of the \
                 whole blob; median {} ms against curl's {} ms (a ratio below 1 is slower than \
                 curl)",
            num(Stats::ms(&ours).median),
            num(Stats::ms(&plain).median)
        )),
    );
    s.push(
        Figure::new(
            format!("download of a {what}, refreshd-store (same work as the baseline)"),
            "MB/s",
            rate(&ours),
        )
        .against(
            "curl -o FILE; sync FILE; openssl dgst -sha3-384 FILE",
            rate(&equal),
        )
        .note(format!(
            "the baseline does what fetch does besides the transfer: fsync and a sha3-384 of \
             the file; median {} ms",
            num(Stats::ms(&equal).median)
        )),
    );
    s.push(
        Figure::new(
            format!("sha3-384 verification of the {what} alone, refreshd-store"),
            "ms",
            Stats::ms(&check),
        )
        .against(
            "openssl dgst -sha3-384 (whole process)",
            Stats::ms(&openssl),
        )
        .note(format!(
            "`Store::fetch` of a complete `.partial`: no request, only the check; {} MB/s",
            num(mb / (Stats::ms(&check).median / 1e3))
        )),
    );

    let (fetch_ms, check_ms) = (Stats::ms(&ours).median, Stats::ms(&check).median);
    s.note(format!(
        "**Where the time goes.** Against plain curl refreshd's client is slower because it \
         verifies: the check alone (fsync of a clean file, sha3-384 of the whole blob read back \
         from the page cache, rename, directory fsync), timed separately, takes {} ms against \
         the {} ms of the whole download ({}%; the rest — transfer, write and fsync — against \
         curl's {} ms for its transfer and write), i.e. sha3-384 runs at ~{} MB/s on this CPU, \
         about openssl's speed. Profiled while writing this benchmark (`perf record` of the \
         section, 16 MiB blob): `keccak::keccak_p` (the RustCrypto `sha3` crate) is by far the \
         hottest symbol of the process. Against the baseline that does the same work (curl, \
         fsync, openssl's sha3-384) the ratio is about 1. The hash is computed after the \
         transfer, over the file as written (by design: what is verified is what is on disk), \
         so the two do not overlap; hashing the bytes as they arrive (and an existing partial \
         before resuming) on the second core would hide most of it.",
        num(check_ms),
        num(fetch_ms),
        num(100.0 * check_ms / fetch_ms),
        num(Stats::ms(&plain).median),
        num(mb / (check_ms / 1e3))
    ));

    reset(s, &server, &entry, &dl)?;
    s.note(format!(
        "**How.** A snap of {} MiB of pseudo-random (incompressible) bytes, built with \
         `mksquashfs -noI -noD -noF -noX` and published with `refreshd_store::publish` into a \
         directory store under the run's scratch directory (ext4), served by a real nginx \
         (Debian's, `sendfile on`, one response per connection) on 127.0.0.1 with its own \
         configuration and port, started and killed by pid — the harness of the store's and \
         the integration tests' HTTP tests. The blob is in the page cache throughout (no cache \
         dropping here: the clients are measured, not the disk). {runs} rounds alternate \
         refreshd's client — `Store::open(URL)` and `Store::fetch` exactly as the download task \
         calls them, which ends with an fsync, a **sha3-384 of the whole file read back** \
         (verification included), the rename and an fsync of the directory — with `curl -o` \
         and with `curl -o` followed by `sync FILE` and `openssl dgst -sha3-384 FILE` (the same \
         work). Each download goes to a fresh file on the scratch ext4. Throughput is the \
         blob's size over the wall time of the whole call or process.",
        size / MIB
    ));
    Ok(())
}

/// Cuts the connection once in the middle of the blob (the cutting proxy of the store's HTTP
/// tests, between the client and nginx) and counts what crossed the wire.
fn reset(
    s: &mut Section,
    server: &nginx::Nginx,
    entry: &refreshd_store::Entry,
    dl: &Path,
) -> anyhow::Result<()> {
    let size = entry.size;
    let cut = size / 2;
    println!("    reset: the connection cut at byte {cut}");
    let logged_before = blob_lines(&server.access_log(), &entry.path).len();
    let proxy = nginx::Proxy::start(
        server.port(),
        nginx::ProxyPlan {
            cut_after: Some(cut),
            ..Default::default()
        },
    );
    let store = refreshd_store::Store::open(&proxy.url())?;
    let dest = dl.join(format!("{NAME}_reset.snap"));
    let t = Instant::now();
    let st = store.fetch(entry, &dest, &mut |_, _| {}, &|| false)?;
    let took = t.elapsed();
    let seen = proxy.log();
    drop(proxy);
    fs::remove_file(&dest)?;
    if seen.cuts != 1 {
        bail!("the proxy cut {} times, not once: {seen:?}", seen.cuts);
    }
    let ranges: Vec<String> = (0..seen.requests.len())
        .filter_map(|i| seen.range(i))
        .collect();
    // nginx logs a request when it is finished with it; wait (bounded) for both lines.
    let deadline = Instant::now() + Duration::from_secs(5);
    let server_lines = loop {
        let lines = blob_lines(&server.access_log(), &entry.path);
        if lines.len() >= logged_before + seen.requests.len() || Instant::now() > deadline {
            break lines[logged_before.min(lines.len())..].to_vec();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let server_sent: u64 = server_lines.iter().map(|(_, b)| b).sum();
    let again = seen.body_bytes as i64 - size as i64;
    s.push(
        Figure::new(
            "bytes fetched again after a reset mid-transfer",
            "bytes",
            Stats::one(again as f64),
        )
        .target("0: nothing received twice", again == 0)
        .note(format!(
            "the client received {} body bytes for a {size}-byte blob in {} requests (cut after \
             {cut}; the retry asked `Range: {}`, the fetch reported resumed_from {} and {} bytes \
             fetched); {} ms in all, the store's first retry backoff (250 ms) included",
            seen.body_bytes,
            seen.requests.len(),
            ranges.join(", "),
            st.resumed_from,
            st.bytes_fetched,
            num(took.as_secs_f64() * 1e3)
        )),
    );
    s.push(
        Figure::new(
            "bytes nginx sent beyond the blob in that download",
            "bytes",
            Stats::one(server_sent as f64 - size as f64),
        )
        .note(format!(
            "nginx's `$body_bytes_sent` summed over the blob's requests ({}): bytes nginx \
             handed to its socket in the cut connection that the client never received (they \
             were in the socket buffers when the connection closed), not fetched again",
            server_lines
                .iter()
                .map(|(st, b)| format!("{st} {b}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    );
    s.note(
        "**Reset.** The cut is made by the store tests' TCP proxy between the client and nginx: \
         it forwards the first response's body up to the middle of the blob, then closes both \
         connections. refreshd's client keeps what it wrote, retries after its backoff with \
         `Range: bytes=N-` from what is on disk, and verifies the whole blob at the end. \
         \"Bytes fetched again\" is the body bytes the proxy delivered to the client over all \
         requests minus the blob's size (response heads not counted).",
    );
    Ok(())
}

/// (status, body bytes) of the access log lines (nginx's `combined` format) for `path`.
fn blob_lines(log: &str, path: &str) -> Vec<(u16, u64)> {
    log.lines()
        .filter_map(|l| {
            let parts: Vec<&str> = l.split('"').collect();
            let req = parts.get(1)?;
            if !req.contains(path) {
                return None;
            }
            let mut f = parts.get(2)?.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect()
}

/// A snap carrying `payload` bytes of incompressible data, published to `store` as revision 1
/// on stable. The snap file and its source are removed after (the store has its copy).
fn publish_big(work: &Path, store: &Path, payload: u64) -> anyhow::Result<refreshd_store::Entry> {
    let src = work.join("snap-src");
    fs::create_dir_all(src.join("meta"))?;
    fs::write(
        src.join("meta/snap.yaml"),
        format!("name: {NAME}\nversion: '1.0'\napps:\n  {NAME}:\n    command: bin/true\n"),
    )?;
    {
        let mut f =
            std::io::BufWriter::with_capacity(1 << 20, fs::File::create(src.join("payload"))?);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..payload / MIB {
            for c in buf.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf)?;
        }
        f.flush()?;
    }
    let snap = work.join("big.snap");
    util::run(Command::new("mksquashfs").arg(&src).arg(&snap).args([
        "-noappend",
        "-noI",
        "-noD",
        "-noF",
        "-noX",
        "-no-progress",
        "-all-root",
        "-quiet",
    ]))?;
    fs::remove_dir_all(&src)?;
    let entry = refreshd_store::publish(store, &snap, "stable")?;
    fs::remove_file(&snap)?;
    Ok(entry)
}
