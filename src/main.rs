//! The `payauth` command: the sidecar (`run`), `check`, the gateway simulators (`simulate`) and
//! the `demo`. The work itself lives in the `payauth` library and the `payauth-sim` crate;
//! `simulate` and `demo` need the `sim` feature (default), which links the simulators.

mod cli;
#[cfg(feature = "sim")]
mod demo;
mod log_fields;
mod log_writer;
#[cfg(feature = "sim")]
mod simulate;
mod telemetry;

fn main() -> std::process::ExitCode {
    cli::main()
}
