//! refreshctl: everything lives in refreshd_client::cli.

fn main() {
    std::process::exit(refreshd_client::cli::main())
}
