//! `payauth run` as a process, as a pod's runtime runs it: one Number gateway, 2 workers, the
//! default log (text at info), its stderr read line by line as it comes, stopped with SIGTERM.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{eventually, TOKEN};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running `payauth run`.
pub struct Running {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    lines: std::sync::mpsc::Receiver<String>,
    dir: tempfile::TempDir,
}

impl Running {
    /// payauth in front of the Number gateway at `upstream`.
    pub async fn start(upstream: &str) -> Self {
        Self::start_with(upstream, "").await
    }

    /// [`Running::start`], with `proxy` (TOML lines) added to the `[proxy]` section.
    pub async fn start_with(upstream: &str, proxy: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::write(root.join("token"), TOKEN).expect("token");
        let (port, admin) = (free_port(), free_port());
        let config = root.join("payauth.toml");
        std::fs::write(
            &config,
            format!(
                "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[state]\ndir = \"{state}\"\n[proxy]\nworkers = 2\n{proxy}\n\
                 [[gateway]]\nname = \"number\"\nkind = \"number\"\nlisten = \"127.0.0.1:{port}\"\n\
                 upstream = \"{upstream}\"\nprotocol = \"rest\"\naccount_code = \"EP9116875\"\n\
                 token_file = \"{token}\"\n",
                state = root.join("state").display(),
                token = root.join("token").display(),
            ),
        )
        .expect("config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_payauth"))
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .env_remove("PAYAUTH_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("payauth runs");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).split(b'\n') {
                let Ok(line) = line else { break };
                if tx
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    break;
                }
            }
        });
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut running = Self {
            child,
            addr,
            lines,
            dir,
        };
        let up = eventually(Duration::from_secs(20), || {
            std::net::TcpStream::connect(addr).is_ok()
        })
        .await;
        if !up {
            let _ = running.child.kill();
            let said = running.stop_and_read().join("\n");
            panic!("payauth did not listen; it said:\n{said}");
        }
        running
    }

    /// Its state dir.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Its config's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The lines written so far.
    pub fn read(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Sends SIGTERM, as a pod's runtime does to stop it.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits for it to exit; returns how, and the lines it wrote that were not read yet.
    pub fn wait(&mut self) -> (ExitStatus, Vec<String>) {
        let exited = self.child.wait().expect("payauth's exit");
        // The reader thread ends with the pipe.
        (exited, self.lines.iter().collect())
    }

    /// Stops payauth with SIGTERM, waits for it, and returns the lines it wrote that were not
    /// read yet.
    pub fn stop_and_read(&mut self) -> Vec<String> {
        self.terminate();
        let (exited, lines) = self.wait();
        assert!(
            exited.success(),
            "payauth stopped with {exited}:\n{}",
            lines.join("\n")
        );
        lines
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
