//! `exec-bench N ARG PROGRAM...`: runs each PROGRAM N times as `PROGRAM ARG` (fork + exec +
//! wait, with the kernel's environment for a release agent), round-robin so that drift hits all
//! of them alike, and prints the median, 10th and 90th percentile wall time of each, and the
//! median's ratio to the first PROGRAM's, and the mean CPU time (user + system) the children
//! were charged. A measurement, not a test (used by `measure.sh`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: exec-bench N ARG PROGRAM...";
    let n: usize = args.next().and_then(|n| n.parse().ok()).expect(usage);
    let arg = args.next().expect(usage);
    let programs: Vec<String> = args.collect();
    assert!(!programs.is_empty(), "{usage}");

    let spawn = |program: &str| {
        let cpu_before = children_cpu();
        let start = Instant::now();
        let status = Command::new(program)
            .arg(&arg)
            .env_clear()
            .env("HOME", "/")
            .env("PATH", "/sbin:/bin:/usr/sbin:/usr/bin")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let took = start.elapsed();
        assert!(status.success(), "{program} {arg}: {status}");
        (took, children_cpu() - cpu_before)
    };
    // Warm the page cache and the dynamic loader's caches.
    for p in &programs {
        for _ in 0..20 {
            spawn(p);
        }
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(n); programs.len()];
    let mut cpu = vec![Duration::ZERO; programs.len()];
    for _ in 0..n {
        for ((p, t), c) in programs.iter().zip(&mut times).zip(&mut cpu) {
            let (took, charged) = spawn(p);
            t.push(took);
            *c += charged;
        }
    }
    let mut base = None;
    println!("{n} runs each of `PROGRAM {arg}` (fork+exec+wait), round-robin:");
    for ((p, t), c) in programs.iter().zip(&mut times).zip(&cpu) {
        t.sort();
        let pct = |q: usize| t[(t.len() - 1) * q / 100];
        let median = pct(50);
        let base = *base.get_or_insert(median);
        println!(
            "  {:>7.1} µs median  (p10 {:>7.1}, p90 {:>7.1})  {:>4.2}× the first  cpu {:>6.1} µs  {p}",
            micros(median),
            micros(pct(10)),
            micros(pct(90)),
            micros(median) / micros(base),
            micros(*c) / n as f64,
        );
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// User + system time of all reaped children so far (the tick-sampled share of each child
/// averages out over many runs).
fn children_cpu() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: `ru` is writable memory the size of a `struct rusage`, filled on success.
    let ru = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_CHILDREN, ru.as_mut_ptr()), 0);
        ru.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
