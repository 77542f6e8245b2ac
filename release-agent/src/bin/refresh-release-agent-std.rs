//! The release agent behind an ordinary std `fn main`: the same logic as
//! `refresh-release-agent`, kept only to measure what std costs in size and start-up time
//! (`measure.sh`). Install `refresh-release-agent`, not this.

use std::os::unix::ffi::OsStrExt;

use refresh_release_agent::{run, Paths};

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let outcome = run(&Paths::HOST, args.iter().map(|a| a.as_bytes()));
    std::process::exit(outcome.exit_code());
}
