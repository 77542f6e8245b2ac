//! The daemon reads /proc in one place only (docs/architecture.md): `src/procfs.rs`, so that
//! what is trusted of /proc, and how its formats are parsed, is written once. This test reads
//! the sources and fails, naming file and line, when code elsewhere names a path in /proc.

use std::fs;
use std::path::Path;

mod lint;
use lint::sources;

/// What names a path in /proc: `/proc/...` anywhere, or `"/proc"` itself.
const TOKENS: &[&str] = &["/proc/", "\"/proc\""];

/// Every `file:line` of `src` outside `procfs.rs` whose code (comments left out) names /proc.
fn offences(src: &Path) -> Vec<String> {
    let mut bad = vec![];
    for f in sources(src) {
        if f == src.join("procfs.rs") {
            continue;
        }
        let text = fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if TOKENS.iter().any(|t| code.contains(t)) {
                bad.push(format!(
                    "{}:{}: {code}",
                    f.strip_prefix(src.parent().unwrap()).unwrap().display(),
                    n + 1
                ));
            }
        }
    }
    bad
}

#[test]
fn only_procfs_reads_proc() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = offences(&src);
    assert!(
        bad.is_empty(),
        "only refreshd/src/procfs.rs may read /proc; add a function there and call it:\n{}",
        bad.join("\n")
    );
}

/// The check itself: a read of /proc is found, one named in a comment is not.
#[test]
fn the_check_finds_a_read_of_proc() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("api")).unwrap();
    fs::write(
        src.join("procfs.rs"),
        "fn f() { std::fs::read(\"/proc/self/stat\"); }\n",
    )
    .unwrap();
    fs::write(
        src.join("api/status.rs"),
        "//! reads /proc/PID/stat through procfs\n    // and /proc/self too\n",
    )
    .unwrap();
    assert!(offences(&src).is_empty(), "{:?}", offences(&src));
    for read in [
        "let s = fs::read_to_string(format!(\"/proc/{pid}/stat\"));\n",
        "for e in fs::read_dir(\"/proc\")? {}\n",
    ] {
        fs::write(src.join("api/status.rs"), read).unwrap();
        let found = offences(&src);
        assert!(
            found.len() == 1 && found[0].starts_with("src/api/status.rs:1: "),
            "{read:?}: {found:?}"
        );
    }
}
