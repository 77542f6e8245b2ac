//! Kinds of changes and tasks are types (`src/kinds.rs`): no other module spells a task's kind
//! as a string. This test reads the task kinds' spellings from `src/kinds.rs` and fails, naming
//! file and line, where code elsewhere writes one as a string literal. (Change kinds are plain
//! words — "install", "remove" — that requests and messages use too: they are not linted.
//! Progress labels may share a word with a task kind: a `.progress(` line is not a kind.)

use std::fs;
use std::path::Path;

mod lint;
use lint::sources;

/// The spellings `kinds!` gives the variants of `TaskKind`: `Name = "spelling",`.
fn spellings(kinds: &str) -> Vec<String> {
    kinds
        .lines()
        .skip_while(|l| l.trim() != "TaskKind {")
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .filter_map(|l| {
            let (_, right) = l.trim().split_once(" = \"")?;
            Some(right.strip_suffix("\",")?.to_owned())
        })
        .collect()
}

#[test]
fn no_module_spells_a_task_kind_as_a_string() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let kinds = fs::read_to_string(dir.join("src/kinds.rs")).unwrap();
    let words = spellings(&kinds);
    assert!(
        words.contains(&"wait-for-apps".to_owned()) && words.contains(&"restore-data".to_owned()),
        "kinds.rs lists its spellings as `Name = \"spelling\",`: {words:?}"
    );
    let mut bad = vec![];
    for f in sources(&dir.join("src")) {
        if f.ends_with("src/kinds.rs") {
            continue;
        }
        let text = fs::read_to_string(&f).unwrap();
        let code = text
            .lines()
            .enumerate()
            .take_while(|(_, l)| !l.starts_with("#[cfg(test)]"))
            .filter(|(_, l)| !l.trim_start().starts_with("//") && !l.contains(".progress("));
        for (n, line) in code {
            for w in &words {
                if line.contains(&format!("\"{w}\"")) {
                    bad.push(format!(
                        "{}:{}: {w:?} in {:?}",
                        f.strip_prefix(dir).unwrap().display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "a kind spelled as a string outside src/kinds.rs (use ChangeKind / TaskKind):\n{}",
        bad.join("\n")
    );
}
