//! From config text to a [`Config`], with every problem found in one pass and reported at its
//! line.
//!
//! serde stops at the first error, so the file is first parsed into a TOML document that keeps
//! the position of every key (a syntax error ends it there). Each table's keys are then checked
//! one at a time against the raw type of that table ([`super::raw`]): an unknown key, a key of the
//! other gateway kind or a value of the wrong type is a problem at that key, and the table is
//! read from its remaining keys, so that the rules across keys (required keys, ranges) and the
//! files the config names are still checked.

mod gateway;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml_edit::{ImDocument, InlineTable, Item, TableLike, Value};

use super::raw::{Count, RawAdmin, RawProxy, RawShared, RawState};
use super::source::{closest, keys_of, Position, Source};
use super::{AdminConfig, Config, ConfigErrors, Problem, ProxyConfig, SharedConfig, TlsFiles};

/// How far validation goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Checks {
    /// The text alone.
    Text,
    /// The text, and everything `run` needs from the file system: secret and certificate files
    /// readable, the state dir writable, its lockout records readable.
    Files,
}

const SECTIONS: [&str; 5] = ["admin", "state", "proxy", "shared", "gateway"];

pub(super) fn validate(text: &str, checks: Checks) -> Result<Config, ConfigErrors> {
    let source = Source::new(text);
    let doc = ImDocument::parse(text).map_err(|e| {
        ConfigErrors(vec![Problem {
            at: source.position(e.span()),
            message: format!(
                "invalid TOML: {}",
                e.message().trim_end().replace('\n', ": ")
            ),
        }])
    })?;
    let mut v = Validator {
        source,
        checks,
        problems: Vec::new(),
    };
    let config = v.config(doc.as_table());
    let mut problems = v.problems;
    if problems.is_empty() {
        if let Some(config) = config {
            return Ok(config);
        }
        problems.push(Problem {
            at: None,
            message: "the config is incomplete".into(),
        });
    }
    // Problems without a line (about the whole file) first, then in the file's order.
    problems.sort_by_key(|p| p.at);
    Err(ConfigErrors(problems))
}

struct Validator<'a> {
    source: Source<'a>,
    checks: Checks,
    problems: Vec<Problem>,
}

/// One table being checked: where it and its keys are, and which keys already had a problem.
struct Table<'t> {
    /// How messages name the table: `[admin]`, `gateway "number"`.
    label: String,
    /// How messages name a key of it: `admin.` + key, `gateway "number": ` + key.
    key_prefix: String,
    header: Option<Position>,
    /// Every key of the table, and where it is.
    keys: HashMap<&'t str, Option<Position>>,
    bad: HashSet<&'t str>,
}

impl Table<'_> {
    /// The position of `key`, or of the table when the key is not there.
    fn at(&self, key: &str) -> Option<Position> {
        self.keys.get(key).copied().flatten().or(self.header)
    }

    /// Whether `key` is absent (not merely wrong, which was reported already).
    fn missing(&self, key: &str) -> bool {
        !self.keys.contains_key(key)
    }

    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }
}

/// What the cross-gateway rules need from a gateway, even an invalid one.
struct Identity {
    key_prefix: String,
    name: Option<(String, Option<Position>)>,
    listen: Option<(SocketAddr, Option<Position>)>,
}

impl<'a> Validator<'a> {
    fn problem(&mut self, at: Option<Position>, message: String) {
        self.problems.push(Problem { at, message });
    }

    fn position(&self, span: Option<std::ops::Range<usize>>) -> Option<Position> {
        self.source.position(span)
    }

    fn table(
        &self,
        label: String,
        key_prefix: String,
        header: Option<Position>,
        body: Option<&'a dyn TableLike>,
    ) -> Table<'a> {
        let keys = body
            .into_iter()
            .flat_map(|body| body.iter().map(move |(k, _)| (k, body.key(k))))
            .map(|(k, key)| (k, self.position(key.and_then(|key| key.span()))))
            .collect();
        Table {
            label,
            key_prefix,
            header,
            keys,
            bad: HashSet::new(),
        }
    }

    fn config(&mut self, root: &'a toml_edit::Table) -> Option<Config> {
        for (key, _) in root.iter() {
            if !SECTIONS.contains(&key) {
                let at = self.position(root.key(key).and_then(|k| k.span()));
                let message = unknown_key("", key, SECTIONS);
                self.problem(at, message);
            }
        }
        let (admin, admin_table) = self.section::<RawAdmin>(root, "admin");
        let (state, state_table) = self.section::<RawState>(root, "state");
        let (proxy, proxy_table) = self.section::<RawProxy>(root, "proxy");
        let admin_listen = admin
            .listen
            .map_or(SocketAddr::from(([127, 0, 0, 1], 9901)), |a| a.0);
        let state_dir = state
            .dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/payauth"));
        if self.checks == Checks::Files {
            if let Some(path) = &admin.token_file {
                self.secret_file(&admin_table, "token_file", path);
            }
            if let Err(e) = check_state_dir(&state_dir) {
                let at = state_table.at("dir");
                self.problem(at, format!("state.dir {}: {e}", state_dir.display()));
            }
        }
        let workers = proxy.workers.map_or_else(super::default_workers, |c| c.0);
        if !(1..=super::MAX_WORKERS).contains(&workers) {
            let message = format!("proxy.workers must be 1 to {}", super::MAX_WORKERS);
            self.problem(proxy_table.at("workers"), message);
        }
        let proxy = ProxyConfig {
            workers,
            shutdown_grace: proxy
                .shutdown_grace_secs
                .map_or(Duration::from_secs(25), |s| s.0),
            secret_poll_interval: proxy
                .secret_poll_secs
                .map_or(Duration::from_secs(2), |s| s.0),
        };
        // `shared` is `None` with the section present only once its problems are reported.
        let shared = root
            .contains_key("shared")
            .then(|| self.shared(root))
            .flatten();
        let gateways = self.gateways(root, admin_listen, &state_dir);
        Some(Config {
            admin: AdminConfig {
                listen: admin_listen,
                token_file: admin.token_file,
                ready_requires_unlocked: admin.ready_requires_unlocked.unwrap_or(false),
            },
            state_dir,
            proxy,
            gateways: gateways?,
            shared,
        })
    }

    /// `[shared]`, when present: `redis_url` and `egress_id` are required.
    fn shared(&mut self, root: &'a toml_edit::Table) -> Option<SharedConfig> {
        let before = self.problems.len();
        let (raw, table) = self.section::<RawShared>(root, "shared");
        if raw.redis_url.is_none() {
            self.required(&table, "redis_url");
        }
        let egress_id = self.non_empty(&table, "egress_id", raw.egress_id);
        if let Some(id) = &egress_id {
            let plain = id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            if !plain {
                let message = "shared.egress_id must be 1 to 64 letters, digits, '.', '-' or '_'";
                self.problem(table.at("egress_id"), message.to_owned());
            }
        }
        if raw.username.is_some() && raw.password_file.is_none() {
            let message = "shared.username needs shared.password_file".to_owned();
            self.problem(table.at("username"), message);
        }
        if let (Some(_), Some(url)) = (&raw.ca_file, &raw.redis_url) {
            if !url.0.starts_with("rediss://") {
                let message = "shared.ca_file is for rediss:// (TLS) only".to_owned();
                self.problem(table.at("ca_file"), message);
            }
        }
        if self.checks == Checks::Files {
            if let Some(path) = &raw.password_file {
                self.secret_file(&table, "password_file", path);
            }
            if let Some(path) = &raw.ca_file {
                let files = TlsFiles {
                    ca_file: Some(path.clone()),
                    ..TlsFiles::default()
                };
                if let Err(problems) = crate::proxy::tls::check_files(&files) {
                    for problem in problems {
                        self.problem(table.at("ca_file"), format!("shared.{problem}"));
                    }
                }
            }
        }
        let millis = |value: Option<Count<u64>>, default: u64| {
            Duration::from_millis(value.map_or(default, |c| c.0))
        };
        let (connect_timeout, op_timeout, key_poll) = (
            millis(raw.connect_timeout_ms, 500),
            millis(raw.op_timeout_ms, 250),
            millis(raw.key_poll_ms, 1000),
        );
        for (key, value) in [
            ("connect_timeout_ms", connect_timeout),
            ("op_timeout_ms", op_timeout),
            ("key_poll_ms", key_poll),
        ] {
            if value.is_zero() {
                self.problem(table.at(key), format!("shared.{key} must be at least 1"));
            }
        }
        let config = SharedConfig {
            redis_url: raw.redis_url?.0,
            username: raw.username,
            password_file: raw.password_file,
            ca_file: raw.ca_file,
            egress_id: egress_id?,
            connect_timeout,
            op_timeout,
            key_poll,
        };
        (self.problems.len() == before).then_some(config)
    }

    /// `[admin]`, `[state]` or `[proxy]`: absent is all defaults.
    fn section<T: DeserializeOwned + Default>(
        &mut self,
        root: &'a toml_edit::Table,
        name: &str,
    ) -> (T, Table<'a>) {
        let (label, key_prefix) = (format!("[{name}]"), format!("{name}."));
        let Some((key, item)) = root.get_key_value(name) else {
            return (T::default(), self.table(label, key_prefix, None, None));
        };
        let header = self.position(item.span().or_else(|| key.span()));
        let Some(body) = item.as_table_like() else {
            self.problem(header, format!("{name} must be a table: [{name}]"));
            return (T::default(), self.table(label, key_prefix, header, None));
        };
        let mut table = self.table(label, key_prefix, header, Some(body));
        let known = keys_of::<T>();
        let mut entries = Vec::new();
        for (k, value) in body.iter() {
            if known.contains(&k) {
                entries.push((k, value));
            } else {
                let message = unknown_key(&table.label, k, known.iter().copied());
                self.problem(table.at(k), message);
                table.bad.insert(k);
            }
        }
        let good = self.check_values::<T>(&mut table, entries);
        let value = self.build::<T>(&table, good).unwrap_or_default();
        (value, table)
    }

    /// Checks each value against `T` on its own (every field of a raw type is optional, so a
    /// table of one key deserializes unless its value is wrong) and returns the good ones.
    fn check_values<T: DeserializeOwned>(
        &mut self,
        table: &mut Table<'a>,
        entries: Vec<(&'a str, &Item)>,
    ) -> InlineTable {
        let mut good = InlineTable::new();
        for (key, item) in entries {
            let Ok(value) = item.clone().into_value() else {
                continue;
            };
            let mut alone = InlineTable::new();
            alone.insert(key, value.clone());
            match T::deserialize(Value::InlineTable(alone).into_deserializer()) {
                Ok(_) => {
                    good.insert(key, value);
                }
                Err(e) => {
                    let message = format!("{}: {}", table.name(key), e.message());
                    self.problem(table.at(key), message);
                    table.bad.insert(key);
                }
            }
        }
        good
    }

    /// Reports a required key that is absent (a key present with a wrong value was reported).
    fn required(&mut self, table: &Table<'_>, key: &str) {
        if table.missing(key) {
            let message = format!("{} is missing", table.name(key));
            self.problem(table.header, message);
        }
    }

    /// A required string that may not be empty.
    fn non_empty(&mut self, table: &Table<'_>, key: &str, value: Option<String>) -> Option<String> {
        match value {
            Some(v) if !v.is_empty() => return Some(v),
            Some(_) => {
                let message = format!("{} is empty", table.name(key));
                self.problem(table.at(key), message);
            }
            None => self.required(table, key),
        }
        None
    }

    /// Reads `T` from keys that were each found good.
    fn build<T: DeserializeOwned>(&mut self, table: &Table<'_>, good: InlineTable) -> Option<T> {
        T::deserialize(Value::InlineTable(good).into_deserializer())
            .map_err(|e| {
                let message = format!("{}: {}", table.label, e.message());
                self.problem(table.header, message);
            })
            .ok()
    }
}

/// `unknown key `pool_mni` (did you mean `pool_min`?)`.
fn unknown_key<'k>(label: &str, key: &str, known: impl IntoIterator<Item = &'k str>) -> String {
    let within = if label.is_empty() {
        String::new()
    } else {
        format!("{label}: ")
    };
    match closest(key, known) {
        Some(guess) => format!("{within}unknown key `{key}`; did you mean `{guess}`?"),
        None => format!("{within}unknown key `{key}`"),
    }
}

/// Whether `run` could keep its state in `dir`: it is created if missing, as `run` would, and a
/// file is created in it; then what was created is removed again.
fn check_state_dir(dir: &Path) -> Result<(), String> {
    let created: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot be created: {e}"))?;
    let probe = dir.join(format!(".payauth-check-{}", std::process::id()));
    let writable = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map(drop)
        .map_err(|e| format!("is not writable: {e}"));
    if writable.is_ok() {
        let _ = std::fs::remove_file(&probe);
    }
    // Deepest first; a directory someone else filled meanwhile stays.
    for d in created {
        let _ = std::fs::remove_dir(d);
    }
    writable
}
