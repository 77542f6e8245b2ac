//! Users' trees are touched in one place only (docs/architecture.md, "Users' trees").
//!
//! In the daemon, `src/usertree.rs` is the only module that may build a path below a home
//! directory, and what it does there is fd-relative and never follows a symlink; root never
//! copies users' data (that is done as the user). In confine-hook, only `src/userdata.rs` works
//! in the caller's tree, after the privilege drop its functions demand. This test reads the
//! sources and fails, naming file and line, when code elsewhere reaches into users' trees.

use std::fs;
use std::path::Path;

mod lint;
use lint::sources;

/// Lines of `file` before its unit tests (which build scratch trees of their own).
fn code_lines(file: &Path) -> Vec<(usize, String)> {
    let text = fs::read_to_string(file).unwrap();
    text.lines()
        .enumerate()
        .take_while(|(_, l)| !l.starts_with("#[cfg(test)]"))
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l.to_owned()))
        .collect()
}

/// Every `(file:line, token)` of `crate_dir/src` outside `allowed` where a token appears.
fn offences(crate_dir: &Path, allowed: &str, tokens: &[&str]) -> Vec<String> {
    let mut bad = vec![];
    for f in sources(&crate_dir.join("src")) {
        if f.ends_with(allowed) {
            continue;
        }
        for (n, line) in code_lines(&f) {
            for t in tokens {
                if line.contains(t) {
                    bad.push(format!(
                        "{}:{n}: {t:?} in {:?}",
                        f.strip_prefix(crate_dir).unwrap().display(),
                        line.trim()
                    ));
                }
            }
        }
    }
    bad
}

#[test]
fn only_usertree_reaches_into_users_trees() {
    let daemon = Path::new(env!("CARGO_MANIFEST_DIR"));
    // What it takes to name a place below a home: the homes themselves, root's home, and the
    // copy options that treat a tree as a user's (root never copies users' data any more).
    let bad = offences(
        daemon,
        "usertree.rs",
        &[
            "(\"home\")",
            "\"home/",
            "/home/",
            "(\"root\")",
            "\"root/",
            "UserTree",
            "user_data_dirs",
            "USER_STATE_DIR",
            "USER_CURRENT",
        ],
    );
    assert!(
        bad.is_empty(),
        "only refreshd/src/usertree.rs may reach into users' trees (fd-relative, never \
         following a symlink); move this there:\n{}",
        bad.join("\n")
    );
}

#[test]
fn only_userdata_writes_in_the_callers_tree() {
    let hook = Path::new(env!("CARGO_MANIFEST_DIR")).join("../confine-hook");
    // confine-hook makes markers, locks and cgroups through its checked `Dir` and `sys`
    // helpers; plain std file-system writes are for the caller's tree, as the caller.
    let bad = offences(
        &hook,
        "userdata.rs",
        &[
            "fs::create_dir",
            "DirBuilder",
            "fs::rename",
            "fs::remove",
            "remove_tree_at",
            "copy_tree",
            "os::unix::fs::symlink",
            "USER_STATE_DIR",
            "USER_CURRENT",
        ],
    );
    assert!(
        bad.is_empty(),
        "only confine-hook/src/userdata.rs may write in the caller's tree (after the privilege \
         drop it demands):\n{}",
        bad.join("\n")
    );
}
