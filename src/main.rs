//! The `payauth` command: the sidecar (`run`), `check`, the gateway simulators (`simulate`) and
//! the `demo`. The work itself lives in the `payauth` library and the `payauth-sim` crate.

mod cli;
mod demo;
mod log_fields;
mod log_writer;
mod telemetry;

fn main() -> std::process::ExitCode {
    cli::main()
}
