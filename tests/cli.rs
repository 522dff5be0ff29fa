//! The binary's command line: `check` reports every problem with exit 64, redacts secrets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn payauth() -> Command {
    Command::new(env!("CARGO_BIN_EXE_payauth"))
}

#[test]
fn check_accepts_a_valid_config_and_redacts_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "2148B239CF6846BDA5D141BF4A4CFBE8\n").expect("token");
    let config = dir.path().join("payauth.toml");
    std::fs::write(
        &config,
        format!(
            "[state]\ndir = \"{}\"\n[[gateway]]\nname = \"number\"\nkind = \"number\"\nlisten = \"127.0.0.1:8081\"\n\
             upstream = \"https://easypay5.com\"\naccount_code = \"EP9116875\"\ntoken_file = \"{}\"\n",
            dir.path().join("state").display(),
            token.display()
        ),
    )
    .expect("config");
    let out = payauth()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("gateway number"), "{stdout}");
    assert!(!stdout.contains("2148B239"), "the token is redacted");
    // The environment variable works too.
    let out = payauth()
        .arg("check")
        .env("PAYAUTH_CONFIG", &config)
        .output()
        .expect("run");
    assert!(out.status.success());
}

/// A valid config with `[proxy] shutdown_grace_secs = grace` (None: the default, 25 s).
fn config_with_grace(dir: &std::path::Path, grace: Option<u32>) -> std::path::PathBuf {
    let token = dir.join("token");
    std::fs::write(&token, "2148B239CF6846BDA5D141BF4A4CFBE8\n").expect("token");
    let config = dir.join("payauth.toml");
    let proxy = grace.map_or(String::new(), |g| {
        format!("[proxy]\nshutdown_grace_secs = {g}\n")
    });
    std::fs::write(
        &config,
        format!(
            "{proxy}[state]\ndir = \"{}\"\n[[gateway]]\nname = \"number\"\nkind = \"number\"\n\
             listen = \"127.0.0.1:8081\"\nupstream = \"https://easypay5.com\"\n\
             account_code = \"EP9116875\"\ntoken_file = \"{}\"\n",
            dir.join("state").display(),
            token.display()
        ),
    )
    .expect("config");
    config
}

#[test]
fn check_warns_when_the_stop_could_outlast_the_pods_termination_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warned = |grace: Option<u32>, pod: Option<&str>, env: Option<&str>| {
        let config = config_with_grace(dir.path(), grace);
        let mut command = payauth();
        command.args(["check", "--config"]).arg(&config);
        command.env_remove("PAYAUTH_TERMINATION_GRACE_PERIOD");
        if let Some(pod) = pod {
            command.args(["--termination-grace-period", pod]);
        }
        if let Some(env) = env {
            command.env("PAYAUTH_TERMINATION_GRACE_PERIOD", env);
        }
        let out = command.output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "a warning is no problem: {stderr}");
        stderr.contains("warning: [proxy] shutdown_grace_secs")
    };
    // The default grace (25 s) fits Kubernetes' default 30 s; 27 s does not (30 - 3).
    assert!(!warned(None, None, None));
    assert!(!warned(Some(26), None, None));
    assert!(warned(Some(27), None, None));
    assert!(warned(Some(25), Some("28"), None));
    assert!(!warned(Some(25), Some("29"), None));
    assert!(warned(Some(40), Some("35"), None));
    assert!(
        warned(Some(25), None, Some("20")),
        "the environment names the pod's too"
    );
}

#[test]
fn check_reports_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("payauth.toml");
    std::fs::write(
        &config,
        "[[gateway]]\nname = \"number\"\nkind = \"number\"\nlisten = \"127.0.0.1:8081\"\n\
         upstream = \"https://easypay5.com\"\naccount_code = \"EP9116875\"\ntoken_file = \"/nonexistent/token\"\n\
         [[gateway]]\nname = \"cg\"\nkind = \"creditguard\"\nlisten = \"127.0.0.1:8082\"\nupstream = \"https://cg\"\n\
         user = \"u\"\npassword_file = \"/nonexistent/password\"\nterminals = [\"0882819014\"]\n",
    )
    .expect("config");
    let out = payauth()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("token_file"), "{stderr}");
    assert!(stderr.contains("password_file"), "{stderr}");

    std::fs::write(
        &config,
        "[[gateway]]\nname = \"x\"\nkind = \"nope\"\nauth_failure_budget = 9\n",
    )
    .expect("config");
    let out = payauth()
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "kind \"nope\"",
        "listen is missing",
        "upstream is missing",
        "auth_failure_budget 9",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in {stderr}"
        );
    }
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let out = payauth()
        .args(["check", "--config", "/nonexistent/payauth.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config"));
}

#[test]
fn version_names_the_commit() {
    let output = payauth().arg("--version").output().expect("runs");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let expected = format!("payauth {} (commit {})", payauth::VERSION, payauth::COMMIT);
    assert_eq!(text.trim(), expected);
    assert!(
        payauth::COMMIT == "unknown"
            || (payauth::COMMIT.len() == 12
                && payauth::COMMIT.bytes().all(|b| b.is_ascii_hexdigit())),
        "{}",
        payauth::COMMIT
    );
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let output = payauth()
            .args(["completions", shell])
            .output()
            .expect("runs");
        assert!(output.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&output.stdout);
        for word in ["payauth", "simulate", "check", "config", "log-format"] {
            assert!(text.contains(word), "{shell}: no {word:?} in\n{text}");
        }
    }
    let output = payauth()
        .args(["completions", "tcsh"])
        .output()
        .expect("runs");
    assert_eq!(
        output.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn the_demo_passes_every_step_and_its_summary_agrees_with_the_metrics() {
    let output = payauth().arg("demo").output().expect("runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "All steps behaved as expected.",
        "all 5 failed fast with auth_locked",
        "the new token file unlocked the gateway",
        "/metrics agrees:",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    assert!(!text.contains("FAIL"), "{text}");
}
