//! `payauth simulate`: the gateway simulators of `payauth-sim` on local addresses, for
//! development and demos. Built with the `sim` feature (on by default); the deploy image builds
//! without it, so the production binary carries no simulator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// `payauth simulate` options.
#[derive(Debug, clap::Args)]
pub(crate) struct SimulateArgs {
    /// Address of the Number simulator (REST + SOAP).
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub number: SocketAddr,
    /// Address of the CreditGuard relay simulator (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:9002")]
    pub creditguard: SocketAddr,
    /// CreditGuard API user the simulator accepts.
    #[arg(long, default_value = "merchant-user")]
    pub cg_user: String,
    /// CreditGuard password the simulator accepts (a test value, not a real credential).
    #[arg(long, default_value = "s3cret-Passw0rd")]
    pub cg_password: String,
    /// Terminals the CreditGuard simulator knows (comma-separated).
    #[arg(long, default_value = "0882819014", value_delimiter = ',')]
    pub cg_terminals: Vec<String>,
    /// CreditGuard sessions may be reused (`sessionReUse` 1) instead of single-use.
    #[arg(long)]
    pub cg_session_reuse: bool,
    /// CreditGuard session lifetime in seconds.
    #[arg(long, default_value_t = 600)]
    pub cg_session_lifetime_secs: u64,
    /// Number account code.
    #[arg(long, default_value = "EP9116875")]
    pub account_code: String,
    /// Number token the simulator accepts (a test value, not a real credential).
    #[arg(long, default_value = "2148B239CF6846BDA5D141BF4A4CFBE8")]
    pub token: String,
    /// Require signed SessKey headers with this HMAC secret.
    #[arg(long)]
    pub hmac_secret: Option<String>,
    /// User id of the signature.
    #[arg(long, default_value_t = 2547)]
    pub user_id: u64,
    /// Session key lifetime in seconds (Number's is 25 h).
    #[arg(long, default_value_t = 90_000)]
    pub key_lifetime_secs: u64,
    /// Latency added to every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// The Number simulator's clock, as its answers' `Date` shows it, runs this many seconds
    /// ahead of the host's (negative: behind); payauth reports it as
    /// `payauth_clock_skew_seconds`.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub clock_offset_secs: i64,
    /// Serve HTTPS. A throwaway CA and a server certificate for localhost, 127.0.0.1, ::1 and
    /// the listen address are made at startup; the CA certificate is written to
    /// `<tls-dir>/ca.pem` (printed): point the gateway's `ca_file` at it.
    #[arg(long)]
    pub tls: bool,
    /// Serve HTTPS and require a client certificate (mTLS; implies --tls). A client certificate
    /// and key from the same CA are written to `<tls-dir>/client.pem` and
    /// `<tls-dir>/client-key.pem`, for `client_cert_file` and `client_key_file`.
    #[arg(long)]
    pub mtls: bool,
    /// Where --tls/--mtls write their files (default: a new `payauth-simulate-<pid>` directory in
    /// the system's temp dir).
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
}

/// Runs the simulators until Ctrl-C.
pub(crate) async fn run(args: SimulateArgs) -> ExitCode {
    use payauth_sim::creditguard::{CreditGuardSim, CreditGuardSimConfig};
    use payauth_sim::number::{NumberSim, NumberSimConfig};
    let pki = match simulate_tls(&args) {
        Ok(pki) => pki,
        Err(code) => return code,
    };
    let config = NumberSimConfig {
        tls: pki.as_ref().map(|p| p.tls.clone()),
        account_code: args.account_code,
        token: args.token,
        hmac_secret: args.hmac_secret,
        user_id: args.user_id,
        key_lifetime: Duration::from_secs(args.key_lifetime_secs),
        latency: Duration::from_millis(args.latency_ms),
        clock_offset_secs: args.clock_offset_secs,
        ..NumberSimConfig::default()
    };
    let number = match NumberSim::start(args.number, config).await {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("payauth simulate: Number simulator on {}: {e}", args.number);
            return ExitCode::FAILURE;
        }
    };
    if let Some(pki) = &pki {
        println!("TLS: ca_file = {:?}", pki.ca_file.display().to_string());
        if let Some((cert, key)) = &pki.client_files {
            println!(
                "mTLS required: client_cert_file = {:?}, client_key_file = {:?}",
                cert.display().to_string(),
                key.display().to_string()
            );
        }
    }
    println!(
        "Number simulator on {} (REST {}/APIcardProcREST/v1.0.0, SOAP {}/APIcardProcR119/CardProcAPI.svc)\n\
         control: POST /_sim/expire, /_sim/change-ip, /_sim/unlock-ip, /_sim/latency?ms=N, /_sim/drop?n=N, /_sim/token; GET /_sim/stats\n\
         Ctrl-C to stop.",
        number.url(),
        number.url(),
        number.url()
    );
    let creditguard = match CreditGuardSim::start(
        args.creditguard,
        CreditGuardSimConfig {
            user: args.cg_user,
            password: args.cg_password,
            terminals: args.cg_terminals,
            session_reuse: args.cg_session_reuse,
            session_lifetime: Duration::from_secs(args.cg_session_lifetime_secs),
            get_session_latency: Duration::from_millis(args.latency_ms),
            deal_latency: Duration::from_millis(args.latency_ms),
            tls: pki.as_ref().map(|p| p.tls.clone()),
            ..CreditGuardSimConfig::default()
        },
    )
    .await
    {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!(
                "payauth simulate: CreditGuard simulator on {}: {e}",
                args.creditguard
            );
            number.shutdown().await;
            return ExitCode::FAILURE;
        }
    };
    println!(
        "CreditGuard relay simulator on {}/xpo/Relay\n\
         control: POST /_sim/expire, /_sim/fail-next?code=CODE&n=N, /_sim/latency?get_session_ms=N&deal_ms=N, /_sim/password, /_sim/unlock; GET /_sim/stats",
        creditguard.url()
    );
    let _ = tokio::signal::ctrl_c().await;
    number.shutdown().await;
    creditguard.shutdown().await;
    ExitCode::SUCCESS
}

/// `--tls`/`--mtls`: makes the simulator's certificates and writes what a config points at.
fn simulate_tls(args: &SimulateArgs) -> Result<Option<payauth_sim::tls::DevPki>, ExitCode> {
    if !(args.tls || args.mtls) {
        return Ok(None);
    }
    let dir = args.tls_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("payauth-simulate-{}", std::process::id()))
    });
    payauth_sim::tls::dev_pki(&dir, args.number.ip(), args.mtls)
        .map(Some)
        .map_err(|e| {
            eprintln!("payauth simulate: {e}");
            ExitCode::FAILURE
        })
}
