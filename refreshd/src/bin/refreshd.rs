fn main() -> std::process::ExitCode {
    refreshd::daemon::main()
}
