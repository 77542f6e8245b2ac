//! Section 5, copy-data: refreshd's copy of a data directory (`refreshd-copydata`, called as the
//! setup-data and precopy-data tasks call it) against `cp -a` and `rsync -a` of the same tree on
//! an ext4 loop filesystem, caches dropped before every run; against `cp -a --reflink=always` on
//! XFS and btrfs loop filesystems; and the critical-section part of a copy with a pre-copy
//! (`finish`) when 1% and 10% of the files changed, against a full copy of the same tree.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use refreshd_copydata::{Options, Reflink};

use crate::report::{num, Figure, Section, Stats};
use crate::util::{self, Ctx};

/// The size of a test tree.
#[derive(Clone, Copy)]
struct Scale {
    files: usize,
    bytes: u64,
}

impl Scale {
    fn describe(&self) -> String {
        format!(
            "{} MiB in {} files",
            num(self.bytes as f64 / 1048576.0),
            num(self.files as f64)
        )
    }
}

const MIB: u64 = 1 << 20;

pub fn run(ctx: &Ctx, s: &mut Section) -> anyhow::Result<()> {
    let pool = pool(16 * MIB as usize);
    let ext4 = if ctx.quick {
        Scale {
            files: 600,
            bytes: 12 * MIB,
        }
    } else {
        Scale {
            files: 20_000,
            bytes: 1024 * MIB,
        }
    };
    let reflink = if ctx.quick {
        Scale {
            files: 300,
            bytes: 8 * MIB,
        }
    } else {
        Scale {
            files: 5_000,
            bytes: 128 * MIB,
        }
    };
    let runs = ctx.n(3, 1);
    on_ext4(ctx, s, ext4, runs, &pool)?;
    for fstype in ["xfs", "btrfs"] {
        if !util::have(&format!("mkfs.{fstype}")) {
            s.note(format!(
                "{fstype}: not measured, `mkfs.{fstype}` is not installed."
            ));
            continue;
        }
        with_reflinks(ctx, s, fstype, reflink, runs, &pool)?;
    }
    s.note(format!(
        "**How.** Each filesystem is made fresh in a loop device (`losetup --direct-io=on` on an \
         image under the run's scratch directory on the machine's ext4, so the loop's data is \
         not cached twice; mkfs without discard; mounted `noatime`, so no tool pays source atime \
         updates — refreshd reads with `O_NOATIME` anyway). A tree of mixed sizes is generated \
         once per filesystem: ~90% small files (0.25–16 KiB), ~9.5% medium, ~0.5% large (a few \
         MiB), in two levels of directories of ~100 files each; content is deterministic \
         pseudo-random bytes, no holes. Before every timed run the destination is removed and \
         caches are dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`). Runs alternate between \
         the tools ({runs} of each). refreshd's copy is `refreshd_copydata::finish` with no \
         staging directory (what the setup-data task runs when there was no pre-copy: a whole \
         `copy_tree`), with the options setup-data uses for a system data directory \
         (`Options::default()`: reflinks where the filesystem can, no user-tree rules). It ends \
         with `syncfs` and a rename, so the copy is on disk when it returns. The baselines are \
         therefore timed to the same point: `cp -a SRC DST` (or `rsync -a SRC/ DST/`) and then \
         `sync -f DST` (a `syncfs`); the tool alone, without the flush, is given in each \
         figure's note. `rsync -a` keeps less than refreshd or `cp -a` (no hard links, ACLs or \
         xattrs without `-HAX`)."
    ));
    Ok(())
}

/// Full copies against `cp -a` and `rsync -a`; then the pre-copy's critical section.
fn on_ext4(
    ctx: &Ctx,
    s: &mut Section,
    scale: Scale,
    runs: usize,
    pool: &[u8],
) -> anyhow::Result<()> {
    let fs = LoopFs::make(ctx, "ext4", image_mib(scale))?;
    let data = fs.mnt.join("data");
    fs::create_dir(&data)?;
    let (src, dst) = (data.join("x1"), data.join("x2"));
    let staging = data.join(".x2.refreshd-staging");
    println!("    ext4: generating {}", scale.describe());
    let t = Instant::now();
    let mut tree = Tree::generate(&src, scale, pool)?;
    util::sh(&format!("sync -f '{}'", src.display()))?;
    let gen = t.elapsed();
    println!("    ext4: generated in {:.1} s", gen.as_secs_f64());

    let (mut ours, mut cp, mut cp_only, mut rsync, mut rsync_only) =
        (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        println!("    ext4: full copies, round {}/{runs}", i + 1);
        ours.push(cold(&dst, || refreshd_copy(&src, &staging, &dst, Reflink::Auto))?.0);
        let (a, b) = cold(&dst, || {
            tool_copy(Command::new("cp").arg("-a").arg(&src).arg(&dst), &dst)
        })?;
        cp.push(a);
        cp_only.push(b);
        let (a, b) = cold(&dst, || {
            tool_copy(
                Command::new("rsync")
                    .arg("-a")
                    .arg(format!("{}/", src.display()))
                    .arg(format!("{}/", dst.display())),
                &dst,
            )
        })?;
        rsync.push(a);
        rsync_only.push(b);
    }
    remove(&dst)?;
    println!(
        "    ext4: full copies done ({:.0} s)",
        t.elapsed().as_secs_f64()
    );
    let what = scale.describe();
    let mbs = |v: &[Duration]| {
        let m = Stats::ms(v).median / 1e3;
        format!("{} MB/s", num(tree.bytes as f64 / 1e6 / m))
    };
    s.push(
        Figure::new(format!("full copy, ext4, {what}"), "s", secs(&ours))
            .against("cp -a, then syncfs", secs(&cp))
            .note(format!(
                "refreshd {}; `cp -a` alone (before the flush) median {} s",
                mbs(&ours),
                num(secs(&cp_only).median)
            )),
    );
    s.push(
        Figure::new(
            format!("full copy, ext4, {what} (vs rsync)"),
            "s",
            secs(&ours),
        )
        .against("rsync -a, then syncfs", secs(&rsync))
        .note(format!(
            "`rsync -a` alone (before the flush) median {} s",
            num(secs(&rsync_only).median)
        )),
    );

    for pct in [1.0, 10.0] {
        precopy_round(s, &mut tree, pct, &src, &staging, &dst, pool)?;
        println!(
            "    ext4: pre-copy round done ({:.0} s)",
            t.elapsed().as_secs_f64()
        );
    }
    s.note(
        "**Pre-copy.** `refreshd_copydata::precopy` (as the precopy-data task calls it) into \
         `.x2.refreshd-staging` beside the destination, from a cold cache; then 1% (later 10%) \
         of the files change, spread over the tree — of every ten, seven rewritten with new \
         content of the same size, one appended to (4 KiB), one deleted, one new file added \
         beside; caches dropped; then `finish` is timed: the copy setup-data makes inside the \
         critical section, which keeps what is provably unchanged and copies the rest. The \
         baseline is a full copy of the very same changed tree, cold, right after. This is the \
         data part of the critical section only (a whole refresh is section 4). The data is \
         at least 2 s old at the pre-copy (copydata does not trust a ctime within 2 s of the \
         copy; real data is older): only a quick run has to wait for that.",
    );
    s.note(
        "On ext4 refreshd and `cp -a` do the same work per file (`copy_file_range` of the \
         data, which is nearly all of the time from a cold cache, then owner, mode, times, \
         xattrs); refreshd adds two `lseek`s (`SEEK_DATA`/`SEEK_HOLE`, to keep holes) and an \
         `ftruncate` per file, which cost microseconds on ext4 (`strace -c -w` of both, while \
         writing this benchmark). Differences of some 10–20% between them moved from run to \
         run with the machine's other disk traffic.",
    );
    s.note(format!(
        "**ext4:** {what} ({} MB; generated in {:.1} s), image {} MiB.",
        num(tree_bytes(&tree) as f64 / 1e6),
        gen.as_secs_f64(),
        image_mib(scale)
    ));
    Ok(())
}

/// Pre-copies the tree into staging, changes `pct`% of its files, and times `finish` (the
/// critical section's copy) against a full copy of the changed tree.
#[allow(clippy::too_many_arguments)]
fn precopy_round(
    s: &mut Section,
    tree: &mut Tree,
    pct: f64,
    src: &Path,
    staging: &Path,
    dst: &Path,
    pool: &[u8],
) -> anyhow::Result<()> {
    println!("    ext4: pre-copy, then {pct}% changed");
    remove(dst)?;
    // The pre-copy does not trust files whose ctime is within two seconds of their copy (coarse
    // kernel timestamps; see refreshd-copydata): real data is older than that. Only a quick run,
    // whose copies take milliseconds, can get here that soon after the last write.
    let age = tree.last_write.elapsed();
    if age < Duration::from_millis(2100) {
        std::thread::sleep(Duration::from_millis(2100) - age);
    }
    util::drop_caches()?;
    let opts = Options::default();
    let t = Instant::now();
    let pre = refreshd_copydata::precopy(src, staging, &opts, &mut |_| {})
        .with_context(|| format!("pre-copy of {}", src.display()))?;
    let pre_t = t.elapsed();
    let changed = tree.change(src, pct, pool)?;
    util::drop_caches()?;
    let t = Instant::now();
    let fin = refreshd_copydata::finish(src, staging, dst, &opts, &mut |_| {})
        .with_context(|| format!("finish of {}", src.display()))?;
    let crit = t.elapsed();
    // Baseline: a full copy of the very same (changed) tree, cold.
    let (full, _) = cold(dst, || refreshd_copy(src, staging, dst, Reflink::Auto))?;
    remove(dst)?;
    s.push(
        Figure::new(
            format!("critical-section copy with pre-copy, {pct}% of files changed"),
            "ms",
            Stats::ms(&[crit]),
        )
        .against("full copy of the same tree (refreshd)", Stats::ms(&[full]))
        .note(format!(
            "{} files changed ({} rewritten, {} appended to, {} deleted, {} added; {} MB to copy \
             again); `finish` copied {} files / {} MB and kept {} entries from the pre-copy",
            changed.files(),
            changed.rewritten,
            changed.appended,
            changed.deleted,
            changed.added,
            num(changed.bytes as f64 / 1e6),
            fin.files,
            num(fin.copied_bytes as f64 / 1e6),
            fin.unchanged
        )),
    );
    s.push(
        Figure::new(
            format!("pre-copy pass before it (outside the critical section), {pct}%"),
            "ms",
            Stats::ms(&[pre_t]),
        )
        .note(format!(
            "{} files, {} MB, from a cold cache",
            pre.files,
            num(pre.bytes as f64 / 1e6)
        )),
    );
    Ok(())
}

/// Reflinked copies on XFS or btrfs against `cp -a --reflink=always`, and a copy without
/// reflinks for scale.
fn with_reflinks(
    ctx: &Ctx,
    s: &mut Section,
    fstype: &str,
    scale: Scale,
    runs: usize,
    pool: &[u8],
) -> anyhow::Result<()> {
    let fs = LoopFs::make(ctx, fstype, image_mib(scale))?;
    let data = fs.mnt.join("data");
    fs::create_dir(&data)?;
    let (src, dst) = (data.join("x1"), data.join("x2"));
    let staging = data.join(".x2.refreshd-staging");
    println!("    {fstype}: generating {}", scale.describe());
    let t = Instant::now();
    let tree = Tree::generate(&src, scale, pool)?;
    util::sh(&format!("sync -f '{}'", src.display()))?;
    let gen = t.elapsed();
    let (mut ours, mut cp, mut cp_only) = (vec![], vec![], vec![]);
    let (mut ours_space, mut cp_space) = (vec![], vec![]);
    let mut reflinked = 0;
    for i in 0..runs {
        println!("    {fstype}: reflinked copies, round {}/{runs}", i + 1);
        let (d, st, grew) = cold(&dst, || {
            let before = used_mib(&data)?;
            let t = Instant::now();
            let st =
                refreshd_copydata::finish(&src, &staging, &dst, &Options::default(), &mut |_| {})?;
            let d = t.elapsed();
            Ok((d, st, used_mib(&data)? - before))
        })?;
        ours.push(d);
        ours_space.push(grew);
        reflinked = st.reflinked_files;
        let (a, b, grew) = cold(&dst, || {
            let before = used_mib(&data)?;
            let (a, b) = tool_copy(
                Command::new("cp")
                    .arg("-a")
                    .arg("--reflink=always")
                    .arg(&src)
                    .arg(&dst),
                &dst,
            )?;
            Ok((a, b, used_mib(&data)? - before))
        })?;
        cp.push(a);
        cp_only.push(b);
        cp_space.push(grew);
    }
    println!("    {fstype}: a copy without reflinks, for scale");
    let (never, _) = cold(&dst, || refreshd_copy(&src, &staging, &dst, Reflink::Never))?;
    remove(&dst)?;
    println!("    {fstype}: done ({:.0} s)", t.elapsed().as_secs_f64());
    let what = scale.describe();
    s.push(
        Figure::new(
            format!("reflinked copy, {fstype}, {what}"),
            "s",
            secs(&ours),
        )
        .against("cp -a --reflink=always, then syncfs", secs(&cp))
        .note(format!(
            "{reflinked} of {} files reflinked by refreshd; `cp` alone median {} s",
            tree.files.len(),
            num(secs(&cp_only).median)
        )),
    );
    s.push(
        Figure::new(
            format!("copy without reflinks, {fstype}, {what} (for scale)"),
            "s",
            secs(&[never]),
        )
        .against("refreshd's reflinked copy", secs(&ours))
        .note("`Reflink::Never`: every byte read and written"),
    );
    s.push(
        Figure::new(
            format!("space taken by a reflinked copy, {fstype}, {what}"),
            "MiB",
            Stats::of(&ours_space),
        )
        .against("cp -a --reflink=always", Stats::of(&cp_space))
        .note("growth of the filesystem's used space (statvfs) over the copy, both flushed"),
    );
    s.note(format!(
        "**{fstype}:** {what} (generated in {:.1} s), image {} MiB: a smaller tree than \
         ext4's to keep within the time budget (a reflinked copy costs per file, not per \
         byte; the copy without reflinks is there for scale).",
        gen.as_secs_f64(),
        image_mib(scale)
    ));
    if fstype == "xfs" {
        s.note(
            "**Found by this benchmark, and fixed:** refreshd's reflinked copy on XFS used to \
             take about 3× `cp --reflink=always` and to leave every file's last block unshared \
             (profiled on a 10,000-file tree with `strace -c -w` and `perf record -g`: 10,000 \
             `ftruncate` calls at ~220 µs each, 2.2 s of 2.9 s). After each `FICLONE` \
             refreshd-copydata truncated the clone to the size it had stat'ed, even when it \
             already was that size, and on XFS a same-size truncate zeroes the tail of the last \
             partial block (`iomap_truncate_page`): a synchronous read, a dirtied and so \
             unshared block, and writeback on close. It now truncates only a file whose size \
             differs; `copydata/tests/reflink.rs` checks that 2,000 reflinked files with a \
             partial last block cost no blocks of their own. btrfs treats a same-size truncate \
             as a no-op.",
        );
    }
    Ok(())
}

/// Used space of the filesystem `path` is on, in MiB.
fn used_mib(path: &Path) -> anyhow::Result<f64> {
    let v = nix::sys::statvfs::statvfs(path)?;
    Ok((v.blocks() - v.blocks_free()) as f64 * v.fragment_size() as f64 / MIB as f64)
}

fn secs(v: &[Duration]) -> Stats {
    let v: Vec<f64> = v.iter().map(|d| d.as_secs_f64()).collect();
    Stats::of(&v)
}

/// Room for the source, one copy (or the pre-copy's staging tree) and metadata.
fn image_mib(scale: Scale) -> u64 {
    (scale.bytes * 5 / 2 / MIB + scale.files as u64 * 12 / 1024 + 384).max(512)
}

/// Removes `dst` if it is there, drops caches, and runs `f` (which makes `dst`).
fn cold<T>(dst: &Path, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    remove(dst)?;
    util::drop_caches()?;
    f()
}

fn remove(p: &Path) -> anyhow::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(_) => fs::remove_dir_all(p).with_context(|| format!("cannot remove {}", p.display())),
        Err(_) => Ok(()),
    }
}

/// refreshd's copy, as setup-data makes it (no staging directory there: a whole copy).
fn refreshd_copy(
    src: &Path,
    staging: &Path,
    dst: &Path,
    reflink: Reflink,
) -> anyhow::Result<(Duration, ())> {
    let opts = Options {
        reflink,
        ..Default::default()
    };
    let t = Instant::now();
    refreshd_copydata::finish(src, staging, dst, &opts, &mut |_| {})
        .with_context(|| format!("refreshd's copy of {}", src.display()))?;
    Ok((t.elapsed(), ()))
}

/// A copy tool, then `sync -f DST`: (total, tool alone).
fn tool_copy(cmd: &mut Command, dst: &Path) -> anyhow::Result<(Duration, Duration)> {
    let t = Instant::now();
    util::run(cmd)?;
    let tool = t.elapsed();
    util::run(Command::new("sync").arg("-f").arg(dst))?;
    Ok((t.elapsed(), tool))
}

/// Deterministic pseudo-random bytes, from which file contents are cut.
fn pool(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

/// A generated tree: its files (relative path, size) and when it was last written.
struct Tree {
    files: Vec<(PathBuf, u64)>,
    bytes: u64,
    rng: Rng,
    last_write: Instant,
}

fn tree_bytes(t: &Tree) -> u64 {
    t.files.iter().map(|(_, n)| n).sum()
}

/// What one change of a tree did.
#[derive(Default)]
struct Changed {
    rewritten: usize,
    appended: usize,
    deleted: usize,
    added: usize,
    /// Bytes of the files that must be copied again (whole files: rewritten, appended, added).
    bytes: u64,
}

impl Changed {
    fn files(&self) -> usize {
        self.rewritten + self.appended + self.deleted + self.added
    }
}

impl Tree {
    /// `scale.files` files over directories of ~100 files (two levels): ~90% small (0.25–16
    /// KiB), ~9.5% medium and ~0.5% large sharing the rest of `scale.bytes` 55:45.
    fn generate(root: &Path, scale: Scale, pool: &[u8]) -> anyhow::Result<Tree> {
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        // Class of each file: 0 small, 1 medium, 2 large.
        let class: Vec<u8> = (0..scale.files)
            .map(|_| match rng.next() % 1000 {
                0..=4 => 2,
                5..=99 => 1,
                _ => 0,
            })
            .collect();
        let mut sizes: Vec<u64> = class
            .iter()
            .map(|c| if *c == 0 { rng.range(256, 16 << 10) } else { 0 })
            .collect();
        let small: u64 = sizes.iter().sum();
        let rest = scale.bytes.saturating_sub(small);
        let count = |k: u8| class.iter().filter(|c| **c == k).count().max(1) as u64;
        let mean = [0, rest * 55 / 100 / count(1), rest * 45 / 100 / count(2)];
        let max = pool.len() as u64 - 1;
        for (size, c) in sizes.iter_mut().zip(&class) {
            if *c > 0 {
                let m = mean[*c as usize].max(4096);
                *size = rng.range(m / 2, m + m / 2).min(max);
            }
        }
        let dirs = scale.files.div_ceil(100).max(1);
        let mut files = Vec::with_capacity(scale.files);
        fs::create_dir(root)?;
        for (i, size) in sizes.into_iter().enumerate() {
            let d = i % dirs;
            let rel = PathBuf::from(format!("a{:03}/b{:02}/f{i:05}", d / 10, d % 10));
            if i < dirs {
                fs::create_dir_all(root.join(&rel).parent().unwrap())?;
            }
            write_from_pool(&root.join(&rel), size, &mut rng, pool)?;
            files.push((rel, size));
        }
        let bytes = files.iter().map(|(_, n)| n).sum();
        Ok(Tree {
            files,
            bytes,
            rng,
            last_write: Instant::now(),
        })
    }

    /// Changes `pct`% of the files, spread over the tree: of every ten, seven rewritten (same
    /// size, new content), one appended to (4 KiB), one deleted, and one new file added beside.
    fn change(&mut self, root: &Path, pct: f64, pool: &[u8]) -> anyhow::Result<Changed> {
        let n = ((self.files.len() as f64 * pct / 100.0).ceil() as usize).max(1);
        let stride = (self.files.len() / n).max(1);
        let offset = self.rng.range(0, stride as u64) as usize;
        let mut c = Changed::default();
        let mut gone = vec![];
        let mut new = vec![];
        for k in 0..n {
            let i = (offset + k * stride) % self.files.len();
            let (rel, size) = self.files[i].clone();
            let path = root.join(&rel);
            match k % 10 {
                0..=6 => {
                    write_from_pool(&path, size, &mut self.rng, pool)?;
                    c.rewritten += 1;
                    c.bytes += size;
                }
                7 => {
                    use std::io::Write as _;
                    let off = self.rng.range(0, pool.len() as u64 - 4096) as usize;
                    fs::OpenOptions::new()
                        .append(true)
                        .open(&path)?
                        .write_all(&pool[off..off + 4096])?;
                    self.files[i].1 += 4096;
                    c.appended += 1;
                    c.bytes += size + 4096;
                }
                8 => {
                    fs::remove_file(&path)?;
                    gone.push(i);
                    c.deleted += 1;
                }
                _ => {
                    let rel =
                        rel.with_file_name(format!("new{}-{}", self.files.len() + new.len(), k));
                    let size = self.rng.range(256, 64 << 10);
                    write_from_pool(&root.join(&rel), size, &mut self.rng, pool)?;
                    new.push((rel, size));
                    c.added += 1;
                    c.bytes += size;
                }
            }
        }
        gone.sort_unstable();
        for i in gone.into_iter().rev() {
            self.files.swap_remove(i);
        }
        self.files.extend(new);
        self.bytes = tree_bytes(self);
        self.last_write = Instant::now();
        Ok(c)
    }
}

fn write_from_pool(path: &Path, size: u64, rng: &mut Rng, pool: &[u8]) -> anyhow::Result<()> {
    let size = size as usize;
    let off = rng.range(0, (pool.len() - size) as u64) as usize;
    fs::write(path, &pool[off..off + size])
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A filesystem made in a loop device over an image file in the scratch directory, mounted;
/// unmounted, detached and removed on drop (also when a step of making it failed, or on panic).
struct LoopFs {
    img: PathBuf,
    mnt: PathBuf,
    dev: Option<String>,
    mounted: bool,
}

impl LoopFs {
    fn make(ctx: &Ctx, fstype: &str, mib: u64) -> anyhow::Result<LoopFs> {
        let tag = format!("copy-{fstype}-{}", std::process::id());
        let mut l = LoopFs {
            img: ctx.work.join(format!("{tag}.img")),
            mnt: ctx.work.join(&tag),
            dev: None,
            mounted: false,
        };
        // Allocated up front, so the backing file does not grow during the runs.
        let f = fs::File::create(&l.img)?;
        drop(f);
        if util::run(
            Command::new("fallocate")
                .arg("-l")
                .arg(format!("{mib}MiB"))
                .arg(&l.img),
        )
        .is_err()
        {
            fs::File::options()
                .write(true)
                .open(&l.img)?
                .set_len(mib * MIB)?;
        }
        let attach = |direct: bool| {
            let mut c = Command::new("losetup");
            c.args(["--find", "--show"]);
            if direct {
                c.arg("--direct-io=on");
            }
            util::run(c.arg(&l.img))
        };
        let out = attach(true).or_else(|_| attach(false))?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        anyhow::ensure!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        l.dev = Some(dev.clone());
        let mut mkfs = Command::new(format!("mkfs.{fstype}"));
        match fstype {
            "ext4" => mkfs.args([
                "-q",
                "-F",
                "-E",
                "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
            ]),
            "xfs" => mkfs.args(["-q", "-f", "-K", "-m", "reflink=1"]),
            "btrfs" => mkfs.args(["-q", "-f", "-K"]),
            _ => anyhow::bail!("no mkfs options for {fstype}"),
        };
        util::run(mkfs.arg(&dev))?;
        fs::create_dir(&l.mnt)?;
        util::run(
            Command::new("mount")
                .args(["-t", fstype, "-o", "noatime"])
                .arg(&dev)
                .arg(&l.mnt),
        )?;
        l.mounted = true;
        Ok(l)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            let mut done = false;
            for _ in 0..20 {
                if util::run(Command::new("umount").arg(&self.mnt)).is_ok() {
                    done = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if !done {
                let _ = util::run(Command::new("umount").arg("-l").arg(&self.mnt));
            }
        }
        if let Some(dev) = &self.dev {
            let _ = util::run(Command::new("losetup").arg("-d").arg(dev));
        }
        let _ = fs::remove_dir(&self.mnt);
        let _ = fs::remove_file(&self.img);
    }
}
