//! The install step (docs/install.md): `make assets` and `make install DESTDIR=...` of the debug
//! build put every file where it belongs with its mode — confine-hook setuid root — and nothing
//! else; `man` finds and prints the pages from there (without a `mandb` run); bash completes
//! `refreshctl ref<TAB>`; `make uninstall` removes every file again. Without a build, install
//! fails with one line naming `make` and installs nothing; as a user it installs confine-hook
//! setuid to that user, saying so, instead of failing on the chown.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use refreshd_tests::installed;
use refreshd_tests::*;

/// What the install step needs besides the build; `None` (and a skip) when one is missing.
fn tools_present() -> bool {
    for tool in ["make", "man", "gzip", "install"] {
        if find_program(tool).is_none() {
            skip(&format!(
                "`{tool}` is missing (Debian packages make, man-db, gzip, coreutils)"
            ));
            return false;
        }
    }
    true
}

fn show(out: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Every file and symlink under `dir` (relative path → mode, uid), directories left out.
fn files_under(dir: &Path) -> BTreeMap<String, (u32, u32)> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, u32)>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.insert(rel, (md.permissions().mode() & 0o7777, md.uid()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// refreshctl's subcommands, as its own `--help` lists them.
/// Every page's name after `refreshctl-`: each subcommand, and each of its own (`store-init`).
fn subcommands() -> Vec<String> {
    let listed = |args: &[&str]| -> Vec<String> {
        let out = Command::new(bin("refreshctl")).args(args).output().unwrap();
        text(&out.stdout)
            .lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|s| *s != "help")
            .map(str::to_owned)
            .collect()
    };
    let top = listed(&["--help"]);
    assert!(
        top.len() > 5,
        "cannot read the subcommands from refreshctl --help"
    );
    let mut subs = Vec::new();
    for sub in top {
        let nested = listed(&[&sub, "--help"]);
        subs.push(sub.clone());
        subs.extend(nested.into_iter().map(|n| format!("{sub}-{n}")));
    }
    subs
}

/// `man` with the page path given, printing plain text, wide enough that nothing is wrapped.
fn man(args: &[&str], manpath: &Path) -> Output {
    Command::new("man")
        .arg(format!("--manpath={}", manpath.display()))
        .args(["-P", "cat"])
        .args(args)
        .env("MANWIDTH", "200")
        .env_remove("MANPATH")
        .env_remove("MANPAGER")
        .env_remove("PAGER")
        .output()
        .expect("run man")
}

fn assert_contains(haystack: &str, needles: &[&str], what: &str) {
    for n in needles {
        assert!(haystack.contains(n), "{what} lacks {n:?}:\n{haystack}");
    }
}

#[test]
fn install_puts_everything_in_place_man_and_completion_work_uninstall_removes_it() {
    if !tools_present() {
        return;
    }
    let scratch = scratch(&format!("install-{}", std::process::id()));
    let assets = scratch.path().join("assets");
    let dest = scratch.path().join("dest");
    let out = installed::assets_and_install(&assets, &dest, None);
    assert!(out.status.success(), "make install: {}", show(&out));

    // Exactly these files, with these modes; confine-hook setuid, and root's when we are root.
    let uid = nix::unistd::geteuid().as_raw();
    let mut want: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut put = |path: String, mode: u32| {
        want.insert(path, (mode, uid));
    };
    put("usr/bin/refreshctl".into(), 0o755);
    put("usr/lib/refreshd/refreshd".into(), 0o755);
    put("usr/lib/refreshd/refresh-release-agent".into(), 0o755);
    put("usr/lib/refreshd/confine-hook".into(), 0o4755);
    let built = bin("refreshd").parent().unwrap().to_path_buf();
    if built.join("refreshd-notify").exists() {
        put("usr/lib/refreshd/refreshd-notify".into(), 0o755);
    }
    let mut units = Vec::new();
    for e in fs::read_dir(installed::repo_root().join("systemd"))
        .into_iter()
        .flatten()
    {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".service") || name.ends_with(".socket") {
            units.push((p.clone(), format!("usr/lib/systemd/system/{name}")));
        } else if name == "refreshd.tmpfiles" {
            units.push((p.clone(), "usr/lib/tmpfiles.d/refreshd.conf".to_owned()));
        }
    }
    for (_, at) in &units {
        put(at.clone(), 0o644);
    }
    let subs = subcommands();
    put("usr/share/man/man1/refreshctl.1.gz".into(), 0o644);
    for sub in &subs {
        put(format!("usr/share/man/man1/refreshctl-{sub}.1.gz"), 0o644);
    }
    put("usr/share/man/man8/refreshd.8.gz".into(), 0o644);
    put(
        "usr/share/bash-completion/completions/refreshctl".into(),
        0o644,
    );
    put("usr/share/zsh/vendor-completions/_refreshctl".into(), 0o644);
    put(
        "usr/share/fish/vendor_completions.d/refreshctl.fish".into(),
        0o644,
    );
    let got = files_under(&dest);
    let fmt = |m: &BTreeMap<String, (u32, u32)>| {
        m.iter()
            .map(|(p, (mode, uid))| format!("  {mode:05o} uid {uid} {p}\n"))
            .collect::<String>()
    };
    assert_eq!(
        got,
        want,
        "installed:\n{}expected:\n{}",
        fmt(&got),
        fmt(&want)
    );
    let hook = fs::metadata(dest.join("usr/lib/refreshd/confine-hook")).unwrap();
    assert_eq!(hook.uid(), uid);
    if is_root() {
        assert_eq!(
            (hook.uid(), hook.gid()),
            (0, 0),
            "confine-hook not root:root"
        );
    }

    // What was installed is what was built, and the units are the repository's.
    for (built_name, at) in [
        ("refreshctl", "usr/bin/refreshctl"),
        ("refreshd", "usr/lib/refreshd/refreshd"),
        ("confine-hook", "usr/lib/refreshd/confine-hook"),
        (
            "refresh-release-agent",
            "usr/lib/refreshd/refresh-release-agent",
        ),
    ] {
        assert!(
            fs::read(built.join(built_name)).unwrap() == fs::read(dest.join(at)).unwrap(),
            "{at} is not {}",
            built.join(built_name).display()
        );
    }
    for (src, at) in &units {
        assert_eq!(
            fs::read_to_string(src).unwrap(),
            fs::read_to_string(dest.join(at)).unwrap(),
            "{at} differs from {}",
            src.display()
        );
    }
    let out = Command::new(dest.join("usr/bin/refreshctl"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out.stdout).starts_with("refreshctl "),
        "the installed refreshctl does not run: {}",
        show(&out)
    );

    // man finds the pages in the tree and prints them; no mandb run is needed.
    let manpath = dest.join("usr/share/man");
    let out = man(&["refreshctl"], &manpath);
    assert!(out.status.success(), "man refreshctl: {}", show(&out));
    let page = text(&out.stdout);
    assert_contains(
        &page,
        &[
            "REFRESHCTL(1)",
            "NAME",
            "refreshctl - Installs, removes and follows snaps through refreshd",
            "SYNOPSIS",
            "refreshctl-refresh(1)",
            "refreshctl-watch(1)",
            "EXIT STATUS",
            "conflict with a change in progress",
            "ENVIRONMENT",
            "REFRESHD_SOCKET",
            "FILES",
            "/run/refreshd.socket",
            "SEE ALSO",
            "refreshd(8)",
        ],
        "man refreshctl",
    );
    let out = man(&["refreshctl-refresh"], &manpath);
    assert!(
        out.status.success(),
        "man refreshctl-refresh: {}",
        show(&out)
    );
    assert_contains(
        &text(&out.stdout),
        &[
            "REFRESHCTL-REFRESH(1)",
            "refreshctl-refresh - Refresh snaps",
            "refreshctl refresh",
            "--hold",
            "--root",
            "EXIT STATUS",
            "refreshctl(1)",
        ],
        "man refreshctl-refresh",
    );
    let out = man(&["8", "refreshd"], &manpath);
    assert!(out.status.success(), "man 8 refreshd: {}", show(&out));
    assert_contains(
        &text(&out.stdout),
        &[
            "REFRESHD(8)",
            "refreshd - Refreshes snap-style applications",
            "--root",
            "--release-agent",
            "EXIT STATUS",
            "LISTEN_FDS",
            "/var/lib/refreshd/state.db",
            "/usr/lib/refreshd/confine-hook",
            "refreshctl(1)",
        ],
        "man 8 refreshd",
    );
    for page in ["refreshctl", "refreshctl-watch", "refreshd"] {
        let out = Command::new("man")
            .args(["-w", page])
            .env("MANPATH", &manpath)
            .output()
            .unwrap();
        let at = text(&out.stdout);
        assert!(
            out.status.success() && Path::new(at.trim()).starts_with(&manpath),
            "MANPATH={} man -w {page}: {}",
            manpath.display(),
            show(&out)
        );
    }
    // On a real install (DESTDIR empty) the pages are in /usr/share/man, which man searches
    // by default.
    let out = Command::new("man")
        .arg("--path")
        .env_remove("MANPATH")
        .output()
        .unwrap();
    assert!(
        text(&out.stdout)
            .trim()
            .split(':')
            .any(|d| d == "/usr/share/man"),
        "man's default path lacks /usr/share/man: {}",
        show(&out)
    );

    // bash: the completion registers itself and completes a subcommand and its options.
    let bash_completion = dest.join("usr/share/bash-completion/completions/refreshctl");
    let script = r#"
        source "$1" || exit 1
        complete -p refreshctl
        COMP_WORDS=(refreshctl ref); COMP_CWORD=1
        _refreshctl refreshctl ref refreshctl
        echo "words: ${COMPREPLY[*]}"
        COMP_WORDS=(refreshctl refresh --ho); COMP_CWORD=2
        _refreshctl refreshctl --ho refresh
        echo "options: ${COMPREPLY[*]}"
    "#;
    let out = Command::new("bash")
        .args(["--noprofile", "--norc", "-c", script, "bash"])
        .arg(&bash_completion)
        .output()
        .unwrap();
    assert!(out.status.success(), "bash completion: {}", show(&out));
    let said = text(&out.stdout);
    assert!(
        said.lines().any(|l| l.starts_with("complete ")
            && l.contains("-F _refreshctl")
            && l.ends_with(" refreshctl")),
        "the completion is not registered for refreshctl:\n{said}"
    );
    assert!(
        said.lines().any(|l| l == "words: refresh"),
        "`refreshctl ref<TAB>` does not complete to refresh:\n{said}"
    );
    assert!(
        said.lines().any(|l| l == "options: --hold"),
        "`refreshctl refresh --ho<TAB>` does not complete to --hold:\n{said}"
    );
    // zsh and fish: the scripts are for refreshctl (the shells need not be installed).
    let zsh =
        fs::read_to_string(dest.join("usr/share/zsh/vendor-completions/_refreshctl")).unwrap();
    assert!(zsh.starts_with("#compdef refreshctl"), "zsh: {zsh:.200}");
    let fish = fs::read_to_string(dest.join("usr/share/fish/vendor_completions.d/refreshctl.fish"))
        .unwrap();
    assert!(
        fish.contains("complete -c refreshctl") && fish.contains("refresh"),
        "fish: {fish:.200}"
    );

    // uninstall removes every file install put there (directories may stay).
    let out = installed::make("uninstall", &[("DESTDIR", &dest)], None);
    assert!(out.status.success(), "make uninstall: {}", show(&out));
    let left = files_under(&dest);
    assert!(
        left.is_empty(),
        "make uninstall left files behind:\n{}",
        fmt(&left)
    );
    assert!(
        !dest.join("usr/lib/refreshd").exists(),
        "make uninstall left usr/lib/refreshd"
    );
}

#[test]
fn install_without_a_build_fails_in_one_line_and_installs_nothing() {
    if !tools_present() {
        return;
    }
    let build = installed::build();
    let scratch = scratch(&format!("install-unbuilt-{}", std::process::id()));
    let dest = scratch.path().join("dest");
    let assets = scratch.path().join("assets");
    let profile = format!("unbuilt{}", std::process::id());
    let vars = [
        ("PROFILE", Path::new(&profile)),
        ("TARGET_DIR", &build.target),
        ("ASSETS", &assets),
        ("DESTDIR", &dest),
    ];
    for goal in ["install", "assets"] {
        let out = installed::make(goal, &vars, None);
        assert!(
            !out.status.success(),
            "make {goal} succeeded: {}",
            show(&out)
        );
        let err = text(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "make {goal}: not one line: {}", show(&out));
        assert_contains(
            lines[0],
            &[
                &format!("{}/{profile}/", build.target.display()),
                &format!("run `make PROFILE={profile}` first"),
            ],
            &format!("make {goal}'s error"),
        );
        if goal == "install" {
            assert_contains(
                lines[0],
                &["not built:", "refreshctl", "confine-hook", "refreshd.8"],
                "make install's error",
            );
        }
        assert!(
            !dest.exists() && !assets.exists(),
            "make {goal} created files: {:?}",
            files_under(scratch.path())
        );
    }
}

#[test]
fn install_as_a_user_into_destdir_keeps_the_setuid_bit_and_says_it_is_not_root() {
    if !tools_present() {
        return;
    }
    if !is_root() || find_program("setpriv").is_none() {
        skip("needs root and setpriv to run make install as a real user");
        return;
    }
    let Some(user) = TestUser::create("inst") else {
        skip("cannot create a user (useradd)");
        return;
    };
    let scratch = scratch(&format!("install-user-{}", std::process::id()));
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let assets = scratch.path().join("assets");
    let dest = scratch.path().join("dest");
    fs::create_dir(&dest).unwrap();
    std::os::unix::fs::chown(&dest, Some(user.uid), Some(user.gid)).unwrap();
    let out = installed::assets_and_install(&assets, &dest, Some(&user));
    if !out.status.success() && text(&out.stderr).contains("Permission denied") {
        skip("the repository or its build is not readable by other users");
        return;
    }
    assert!(
        out.status.success(),
        "make install as {}: {}",
        user.name,
        show(&out)
    );
    let hook = dest.join("usr/lib/refreshd/confine-hook");
    let md = fs::metadata(&hook).unwrap();
    assert_eq!(
        (md.permissions().mode() & 0o7777, md.uid()),
        (0o4755, user.uid),
        "confine-hook as installed by {}",
        user.name
    );
    assert_contains(
        &text(&out.stdout),
        &[
            &format!("not root, so {}", hook.display()),
            "chown it to root:root",
        ],
        "make install's notice",
    );
    let files = files_under(&dest);
    assert!(
        files.values().all(|&(_, uid)| uid == user.uid),
        "files not owned by {}: {files:?}",
        user.name
    );
    let out = installed::make("uninstall", &[("DESTDIR", &dest)], Some(&user));
    assert!(out.status.success(), "make uninstall: {}", show(&out));
    assert!(files_under(&dest).is_empty(), "make uninstall left files");
}
