//! refreshctl: everything lives in refreshd_client::cli.

#![deny(unsafe_code)]

fn main() {
    std::process::exit(refreshd_client::cli::main())
}
