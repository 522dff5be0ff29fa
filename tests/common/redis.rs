//! A real `redis-server` for the shared-mode tests: 127.0.0.1, an ephemeral port, no
//! persistence, its own temporary directory. Never a mock.
//!
//! When `redis-server` is not installed, [`RedisServer::start`] returns `None` and the test
//! skips with a message, unless `PAYAUTH_REQUIRE_REDIS` or `CI` is set (as `scripts/test` and
//! `.ci/run` do): then it fails, so that CI cannot pass with the shared mode untested.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`, killed on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one, or says why the test is skipped (`None`).
    pub fn start() -> Option<Self> {
        let required = std::env::var_os("PAYAUTH_REQUIRE_REDIS").is_some()
            || std::env::var("CI").is_ok_and(|v| v == "true");
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            assert!(
                !required,
                "redis-server is not installed, and the shared-mode tests are required here \
                 (run scripts/test, which installs it)"
            );
            eprintln!("SKIPPED: redis-server is not installed (scripts/test installs it)");
            return None;
        }
        // A free port, then a server on it; another process may take the port in between, so
        // try a few.
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::tempdir().expect("temp dir");
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts");
            let mut server = Self {
                child,
                port,
                _dir: dir,
            };
            if server.wait_ready(Duration::from_secs(10)) {
                return Some(server);
            }
            let _ = server.child.kill();
        }
        panic!("redis-server did not start on any port tried");
    }

    /// Starts one that speaks only TLS, with `cert_pem`/`key_pem` (for `localhost` and
    /// 127.0.0.1) issued by the CA in `ca_pem`; clients need no certificate.
    pub fn start_tls(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Option<Self> {
        Self::start()?; // only to learn that redis-server is there (it is stopped again)
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key, ca) = (
            dir.path().join("redis.pem"),
            dir.path().join("redis-key.pem"),
            dir.path().join("ca.pem"),
        );
        std::fs::write(&cert, cert_pem).expect("cert");
        std::fs::write(&key, key_pem).expect("key");
        std::fs::write(&ca, ca_pem).expect("ca");
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
            ])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "TLS redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self {
            child,
            port,
            _dir: dir,
        })
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sends one command in RESP and returns the raw reply (for tests that look inside).
    pub fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).expect("write");
        let mut reply = vec![0u8; 64 * 1024];
        let n = stream.read(&mut reply).expect("read");
        String::from_utf8_lossy(&reply[..n]).into_owned()
    }

    fn wait_ready(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut reply = [0u8; 7];
                if stream.write_all(b"PING\r\n").is_ok()
                    && stream.read_exact(&mut reply).is_ok()
                    && &reply == b"+PONG\r\n"
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Kills the server and starts a new one on the same port: with no persistence, it comes
    /// back empty (as a Redis without persistence does after a restart).
    pub fn restart_empty(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().expect("temp dir");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts");
            if self.wait_ready(Duration::from_secs(2)) {
                break;
            }
            let _ = self.child.kill();
            assert!(Instant::now() < deadline, "redis-server did not restart");
        }
        self._dir = dir;
    }

    /// Freezes the server (`kill -STOP`): connections hang, as with a network partition.
    pub fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    /// Thaws it (`kill -CONT`).
    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, which: &str) {
    let _ = Command::new("kill")
        .args([which, &pid.to_string()])
        .status();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
