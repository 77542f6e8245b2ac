#![deny(unsafe_code)]

fn main() -> std::process::ExitCode {
    refreshd::daemon::main()
}
