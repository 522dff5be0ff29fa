//! The command line: `run`, `check`, `simulate`, `demo`, `completions`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use payauth::config::{Config, CONFIG_ENV};

/// Exit code for configuration problems (EX_USAGE).
pub(crate) const EXIT_CONFIG: u8 = 64;

/// payauth keeps payment-gateway credentials out of applications.
#[derive(Debug, Parser)]
#[command(name = "payauth", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PAYAUTH_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub(crate) enum Command {
    /// Run the sidecar.
    Run {
        /// The TOML config file.
        #[arg(long, env = CONFIG_ENV)]
        config: PathBuf,
    },
    /// Validate a config and the secret files it names; exit 64 on problems.
    Check {
        /// The TOML config file.
        #[arg(long, env = CONFIG_ENV)]
        config: PathBuf,
        /// The `terminationGracePeriodSeconds` of the pod that runs this config (Kubernetes'
        /// default 30): a warning unless `shutdown_grace_secs` is more than 3 s below it.
        #[arg(
            long,
            value_name = "SECS",
            env = "PAYAUTH_TERMINATION_GRACE_PERIOD",
            default_value_t = 30
        )]
        termination_grace_period: u64,
    },
    /// Run local gateway simulators (for development, demos and tests).
    #[cfg(feature = "sim")]
    Simulate(crate::simulate::SimulateArgs),
    /// Start simulators and the sidecar on loopback and run a short scenario.
    #[cfg(feature = "sim")]
    Demo,
    /// Print a shell completion script, for example
    /// `payauth completions bash > /etc/bash_completion.d/payauth`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Parses the command line and runs it.
pub(crate) fn main() -> ExitCode {
    // `--version` names the commit too: `payauth 0.1.0 (commit 0123456789ab)`.
    let version: &'static str =
        Box::leak(format!("{} (commit {})", payauth::VERSION, payauth::COMMIT).into_boxed_str());
    let matches = Cli::command().version(version).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Command::Completions { shell } = cli.command {
        let mut command = Cli::command();
        clap_complete::generate(shell, &mut command, "payauth", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    // The demo prints its own story; its logs stay at warnings unless RUST_LOG says otherwise.
    #[cfg(feature = "sim")]
    let quiet = matches!(cli.command, Command::Demo);
    #[cfg(not(feature = "sim"))]
    let quiet = false;
    let default_level = if quiet { "warn" } else { "info" };
    crate::telemetry::init(cli.log_format, default_level);
    // `run` serves its gateways on worker threads of their own ([proxy] workers); what is left
    // for this runtime (admin, file polling, session filling) needs no more than one thread.
    let mut builder = match cli.command {
        Command::Run { .. } => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("payauth: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(dispatch(cli.command));
    // What the runtime still runs is dropped; a blocking task (a file write) gets a moment, and
    // never holds the exit past the stop's bound.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

async fn dispatch(command: Command) -> ExitCode {
    match command {
        Command::Check {
            config,
            termination_grace_period,
        } => check(&config, Duration::from_secs(termination_grace_period)),
        Command::Run { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            // The workers' log lines are written when a worker goes idle (see log_writer).
            let hooks = payauth::sidecar::WorkerHooks {
                on_idle: Some(std::sync::Arc::new(crate::log_writer::worker_idle)),
            };
            match payauth::sidecar::run_with(config, &hooks).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("payauth: {e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            }
        }
        #[cfg(feature = "sim")]
        Command::Simulate(args) => crate::simulate::run(args).await,
        #[cfg(feature = "sim")]
        Command::Demo => crate::demo::run().await,
        // Handled before the runtime starts.
        Command::Completions { .. } => ExitCode::SUCCESS,
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprintln!("payauth: {} has problems:\n{errors}", path.display());
        ExitCode::from(EXIT_CONFIG)
    })
}

fn check(path: &std::path::Path, termination_grace_period: Duration) -> ExitCode {
    match Config::check(path) {
        Ok(config) => {
            println!("{} is valid.\n{}", path.display(), config.summary());
            // A warning, not a problem: the config is usable, the pod around it may not be.
            if let Some(warning) = config.shutdown_warning(termination_grace_period) {
                eprintln!("warning: {warning}");
            }
            ExitCode::SUCCESS
        }
        Err(problems) => {
            eprintln!("{} has problems:\n{problems}", path.display());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
