//! `payauth check` as an operator meets it: every problem of a file in one run, each at its line,
//! keys of the other gateway kind refused, and whatever `run` would refuse refused here too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use payauth::config::Config;

fn check(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_payauth"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run payauth")
}

/// Writes `lines` (joined by newlines) as the config, runs `check`, and returns its stderr
/// after asserting exit 64.
fn refused(dir: &Path, lines: &[&str]) -> String {
    let config = dir.join("payauth.toml");
    std::fs::write(&config, lines.join("\n")).expect("config");
    let out = check(&config);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    stderr
}

/// The 1-based line of `needle` in `lines`.
fn line_of(lines: &[&str], needle: &str) -> usize {
    lines.iter().position(|l| l.contains(needle)).expect(needle) + 1
}

/// The problem line of `stderr` that mentions `what`, asserting it is reported at `line`.
fn assert_reported(stderr: &str, line: usize, what: &str) {
    let problem = stderr
        .lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no problem mentions {what:?} in\n{stderr}"));
    assert!(
        problem.starts_with(&format!("- line {line}:"))
            || problem.starts_with(&format!("- line {line}, column")),
        "{what:?} not reported at line {line}: {problem:?}\n{stderr}"
    );
}

fn secret(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, "s3cret\n").expect("secret");
    path.display().to_string()
}

#[test]
fn a_creditguard_key_on_a_number_gateway_is_refused_at_its_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = format!("dir = {:?}", dir.path().join("state").display().to_string());
    let token = format!("token_file = {:?}", secret(dir.path(), "token"));
    let lines = [
        "[state]",
        &state,
        "[[gateway]]",
        "name = \"number\"",
        "kind = \"number\"",
        "listen = \"127.0.0.1:8081\"",
        "upstream = \"https://easypay5.com\"",
        "account_code = \"EP9116875\"",
        &token,
        "pool_min = 3",
        "scope = \"full\"",
    ];
    let stderr = refused(dir.path(), &lines);
    assert_reported(&stderr, line_of(&lines, "pool_min"), "`pool_min`");
    assert_reported(&stderr, line_of(&lines, "scope"), "`scope`");
    assert!(
        stderr.contains("`pool_min` is a creditguard key; a number gateway does not take it"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("\n- ").count(), 2, "{stderr}");
}

#[test]
fn number_keys_on_a_creditguard_gateway_are_refused_at_their_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = format!("dir = {:?}", dir.path().join("state").display().to_string());
    let password = format!("password_file = {:?}", secret(dir.path(), "password"));
    let lines = [
        "[state]",
        &state,
        "[[gateway]]",
        "name = \"cg\"",
        "kind = \"creditguard\"",
        "listen = \"127.0.0.1:8082\"",
        "upstream = \"https://cg.example\"",
        "user = \"merchant-user\"",
        &password,
        "terminals = [\"0882819014\"]",
        "user_id = 2547",
        "soap_namespace = \"http://tempuri.org/\"",
        "auth_path = \"/x\"",
        "token_expires_at = 2027-05-01T00:00:00Z",
        "renewal_min_key_age_secs = 0",
    ];
    let stderr = refused(dir.path(), &lines);
    for key in [
        "user_id",
        "soap_namespace",
        "auth_path",
        "token_expires_at",
        "renewal_min_key_age_secs",
    ] {
        assert_reported(&stderr, line_of(&lines, key), &format!("`{key}`"));
        assert!(
            stderr.contains(&format!(
                "`{key}` is a number key; a creditguard gateway does not take it"
            )),
            "{stderr}"
        );
    }
}

#[test]
fn five_different_problems_are_reported_in_one_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = format!("dir = {:?}", dir.path().join("state").display().to_string());
    let password = format!("password_file = {:?}", secret(dir.path(), "password"));
    let missing = dir.path().join("no-such-token");
    let token = format!("token_file = {:?}", missing.display().to_string());
    let lines = [
        "[state]",
        &state,
        "",
        "[[gateway]]",
        "name = \"number\"",
        "kind = \"number\"",
        "listen = \"127.0.0.1:8081\"",
        "upstream = \"ftp//x\"",
        "account_code = \"EP9116875\"",
        &token,
        "max_concurrency = \"many\"",
        "",
        "[[gateway]]",
        "name = \"cg\"",
        "kind = \"creditguard\"",
        "listen = \"127.0.0.1:8082\"",
        "upstream = \"https://cg.example\"",
        "user = \"merchant-user\"",
        &password,
        "terminals = [\"0882819014\"]",
        "pool_mni = 3",
        "auth_failure_budget = 9",
    ];
    let stderr = refused(dir.path(), &lines);
    // A TOML type error, a bad URL, a missing secret file, a misspelt key, a budget over 5.
    assert_reported(
        &stderr,
        line_of(&lines, "max_concurrency"),
        "max_concurrency",
    );
    assert_reported(&stderr, line_of(&lines, "ftp//x"), "upstream");
    assert_reported(&stderr, line_of(&lines, "no-such-token"), "no-such-token");
    assert_reported(
        &stderr,
        line_of(&lines, "pool_mni"),
        "unknown key `pool_mni`; did you mean `pool_min`?",
    );
    assert_reported(&stderr, line_of(&lines, "auth_failure_budget"), "budget 9");
    assert!(stderr.contains("\"many\""), "{stderr}");
    assert!(stderr.contains("\"ftp//x\""), "{stderr}");
    assert_eq!(stderr.matches("\n- ").count(), 5, "{stderr}");
}

#[test]
fn a_syntax_error_is_reported_with_its_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines = ["[admin]", "listen = \"127.0.0.1:9901", "[[gateway]]"];
    let stderr = refused(dir.path(), &lines);
    assert!(stderr.contains("- line 2, column "), "{stderr}");
    assert!(stderr.contains("invalid TOML"), "{stderr}");
}

#[test]
fn a_state_dir_that_cannot_be_created_fails_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("file");
    std::fs::write(&file, "not a directory").expect("file");
    let state = format!("dir = {:?}", file.join("state").display().to_string());
    let token = format!("token_file = {:?}", secret(dir.path(), "token"));
    let lines = [
        "[state]",
        &state,
        "[[gateway]]",
        "name = \"number\"",
        "kind = \"number\"",
        "listen = \"127.0.0.1:8081\"",
        "upstream = \"https://easypay5.com\"",
        "account_code = \"EP9116875\"",
        &token,
    ];
    let stderr = refused(dir.path(), &lines);
    assert_reported(&stderr, 2, "state.dir");
    assert!(stderr.contains("cannot be created"), "{stderr}");
}

#[test]
fn a_valid_file_passes_and_leaves_nothing_in_the_state_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let config = dir.path().join("payauth.toml");
    std::fs::write(
        &config,
        format!(
            "[state]\ndir = {:?}\n[[gateway]]\nname = \"cg\"\nkind = \"creditguard\"\n\
             listen = \"127.0.0.1:8082\"\nupstream = \"https://cg.example\"\nuser = \"u\"\n\
             password_file = {:?}\nterminals = [\"0882819014\"]\nscope = \"none\"\n",
            state.display().to_string(),
            secret(dir.path(), "password"),
        ),
    )
    .expect("config");
    let out = check(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("scope none"), "{stdout}");
    assert!(!state.exists(), "check removes the state dir it created");
    // An existing state dir is left as it was.
    std::fs::create_dir(&state).expect("state dir");
    assert!(check(&config).status.success());
    assert_eq!(std::fs::read_dir(&state).expect("state dir").count(), 0);
}

/// Every config this repository shows (the README, the deploy manifests) stays valid.
#[test]
fn the_documented_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let section = &readme[readme.find("## Configuration reference").expect("section")..];
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("toml block");
    let mut configs = vec![("README.md".to_owned(), block.to_owned())];
    for file in [
        "deploy/kubernetes/base/payauth.toml",
        "deploy/kubernetes/overlays/egress/payauth.toml",
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect(file);
        // The commented-out expiry is part of what the file offers: check it too.
        let uncommented = text.replace("# token_expires_at", "token_expires_at");
        configs.push((file.to_owned(), text));
        configs.push((format!("{file}, token_expires_at set"), uncommented));
    }
    for (name, text) in configs {
        if let Err(e) = Config::parse(&text) {
            panic!("{name} is no longer valid:\n{e}");
        }
    }
}

#[test]
fn a_lockout_record_run_would_refuse_fails_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    std::fs::write(state.join("guard-number.json"), "{ not json").expect("record");
    let state = format!("dir = {:?}", state.display().to_string());
    let token = format!("token_file = {:?}", secret(dir.path(), "token"));
    let lines = [
        "[state]",
        &state,
        "[[gateway]]",
        "name = \"number\"",
        "kind = \"number\"",
        "listen = \"127.0.0.1:8081\"",
        "upstream = \"https://easypay5.com\"",
        "account_code = \"EP9116875\"",
        &token,
    ];
    let stderr = refused(dir.path(), &lines);
    assert_reported(&stderr, 3, "lockout record");
    assert!(stderr.contains("corrupt"), "{stderr}");
}

#[test]
fn a_shared_section_is_checked_with_its_password_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = format!("dir = {:?}", dir.path().join("state").display().to_string());
    let token = format!("token_file = {:?}", secret(dir.path(), "token"));
    let missing = format!(
        "password_file = {:?}",
        dir.path().join("no-such-file").display().to_string()
    );
    let lines = [
        "[state]",
        &state,
        "[shared]",
        "redis_url = \"redis://127.0.0.1:6379/0\"",
        "egress_id = \"nat-eu-1a\"",
        "username = \"payauth\"",
        &missing,
        "[[gateway]]",
        "name = \"number\"",
        "kind = \"number\"",
        "listen = \"127.0.0.1:8081\"",
        "upstream = \"https://easypay5.com\"",
        "account_code = \"EP9116875\"",
        &token,
    ];
    let stderr = refused(dir.path(), &lines);
    assert_reported(&stderr, line_of(&lines, "no-such-file"), "password_file");
    assert_eq!(stderr.matches("\n- ").count(), 1, "{stderr}");

    // With the file there, the section is valid (check does not connect to Redis).
    let password = format!("password_file = {:?}", secret(dir.path(), "redis-password"));
    let lines: Vec<&str> = lines
        .iter()
        .map(|l| {
            if l.contains("no-such-file") {
                password.as_str()
            } else {
                l
            }
        })
        .collect();
    let config = dir.path().join("payauth.toml");
    std::fs::write(&config, lines.join("\n")).expect("config");
    let out = check(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("egress nat-eu-1a"), "{stdout}");
    assert!(!stdout.contains("s3cret"), "{stdout}");
}
