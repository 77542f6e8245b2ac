//! `confine-hook`: see the library for what a launch does.

#![deny(unsafe_code)]

fn main() {
    std::process::exit(confine_hook::hook_main());
}
