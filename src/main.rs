//! The `payauth` binary: parse the command line and hand over.

fn main() -> std::process::ExitCode {
    payauth::cli::main()
}
