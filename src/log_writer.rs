//! Where log lines go: stderr, each line whole in one `write(2)`, and on the sidecar's worker
//! threads several lines in one.
//!
//! A worker thread gathers its lines in a buffer of its own and writes them when it goes idle
//! (it has no task left to run: [`worker_idle`], called from the workers' idle hook), when
//! [`FLUSH_AT`] bytes have gathered, and when the thread ends. Under load that is one write per
//! batch of calls instead of one per call, and the workers no longer queue for stderr's lock
//! for every access line. What it costs:
//!
//! - A line reaches stderr when its worker next goes idle, which a worker does as soon as the
//!   calls it holds are all waiting: microseconds when it is quiet, and within [`FLUSH_AT`]
//!   bytes of lines when it is busy.
//! - Lines of different threads may reach stderr out of time order by as much; each line's own
//!   timestamp is when it was logged.
//! - A process killed with SIGKILL loses the lines its workers had gathered (at most
//!   [`FLUSH_AT`] bytes each). A normal stop (SIGTERM, SIGINT) writes them all: the workers'
//!   threads end before the process does, and a thread's buffer is written when it ends.
//!
//! Other threads (the main runtime's: admin, pollers, CreditGuard's filler) write each line at
//! once, as before. A flush writes whole lines under stderr's lock, so lines of different
//! threads never interleave within the process.

use std::cell::RefCell;
use std::io::Write;

/// A worker's buffer is written once it holds this many bytes (20 to 40 access lines).
const FLUSH_AT: usize = 8 * 1024;

thread_local! {
    static GATHERED: RefCell<GatheredLine> = const {
        RefCell::new(GatheredLine { on: false, bytes: Vec::new(), out: to_stderr })
    };
}

/// A thread's gathered lines. Gathering is on from the thread's first [`worker_idle`]: only a
/// thread that is told when it goes idle may hold lines back.
struct GatheredLine {
    on: bool,
    bytes: Vec<u8>,
    /// Where they go (stderr; a test's buffer in the tests).
    out: fn(&[u8]),
}

fn to_stderr(bytes: &[u8]) {
    // A failed write (stderr closed) loses these lines, as it would have lost each.
    let _ = std::io::stderr().lock().write_all(bytes);
}

impl GatheredLine {
    /// Adds a line; true when [`FLUSH_AT`] bytes have gathered and they should be written.
    fn push(&mut self, line: &[u8]) -> bool {
        self.bytes.extend_from_slice(line);
        self.bytes.len() >= FLUSH_AT
    }

    /// Writes what has gathered in one write, and forgets it.
    fn flush(&mut self) {
        if !self.bytes.is_empty() {
            (self.out)(&self.bytes);
            self.bytes.clear();
        }
    }
}

impl Drop for GatheredLine {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Writes what this thread has gathered, and gathers its lines from now on. The sidecar's
/// worker threads call it when they go idle.
pub(crate) fn worker_idle() {
    let _ = GATHERED.try_with(|gathered| {
        if let Ok(mut gathered) = gathered.try_borrow_mut() {
            gathered.on = true;
            gathered.flush();
        }
    });
}

/// The log's writer (a `MakeWriter` for tracing-subscriber): stderr, as described above.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Stderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line
    }
}

/// One line being written (tracing-subscriber writes each formatted line with one `write_all`).
#[derive(Debug)]
pub(crate) struct Line;

impl Line {
    /// Gathers `bytes` if this thread gathers its lines; false if it does not.
    fn gather(bytes: &[u8]) -> bool {
        GATHERED
            .try_with(|gathered| match gathered.try_borrow_mut() {
                Ok(mut gathered) if gathered.on => {
                    if gathered.push(bytes) {
                        gathered.flush();
                    }
                    true
                }
                _ => false,
            })
            .unwrap_or(false)
    }
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.write_all(bytes)?;
        Ok(bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if Self::gather(bytes) {
            Ok(())
        } else {
            std::io::stderr().lock().write_all(bytes)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
// A test's buffer: a poisoned lock is a failed test anyway.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// What the threads of one test wrote (each test has its own).
    static FIRST: Mutex<Vec<u8>> = Mutex::new(Vec::new());
    static SECOND: Mutex<Vec<u8>> = Mutex::new(Vec::new());

    fn into_first(bytes: &[u8]) {
        FIRST.lock().expect("buffer").extend_from_slice(bytes);
    }

    fn into_second(bytes: &[u8]) {
        SECOND.lock().expect("buffer").extend_from_slice(bytes);
    }

    #[test]
    fn lines_are_written_whole_and_in_order_once_enough_have_gathered() {
        let mut gathered = GatheredLine {
            on: true,
            bytes: Vec::new(),
            out: into_first,
        };
        let mut written = Vec::new();
        for n in 0..1000 {
            let line = format!("line {n} {}\n", "x".repeat(n % 97));
            written.extend_from_slice(line.as_bytes());
            if gathered.push(line.as_bytes()) {
                let before = FIRST.lock().expect("buffer").len();
                gathered.flush();
                let out = FIRST.lock().expect("buffer");
                assert!(
                    out.len() - before >= FLUSH_AT,
                    "written only when enough gathered"
                );
                assert!(out.ends_with(b"\n"), "only whole lines are written");
            }
            assert!(
                gathered.bytes.len() < FLUSH_AT,
                "never more than the bound held"
            );
        }
        gathered.flush();
        assert_eq!(
            *FIRST.lock().expect("buffer"),
            written,
            "every line, once, in order"
        );
        assert!(gathered.bytes.is_empty());
    }

    #[test]
    fn a_thread_gathers_after_its_first_idle_moment_and_writes_when_idle_or_ending() {
        let written = || SECOND.lock().expect("buffer").clone();
        std::thread::spawn(move || {
            GATHERED.with(|g| g.borrow_mut().out = into_second);
            assert!(!Line::gather(b"first\n"), "not gathered: written at once");
            worker_idle();
            assert!(
                Line::gather(b"second\n"),
                "gathered after the first idle moment"
            );
            assert!(written().is_empty(), "held back");
            worker_idle();
            assert_eq!(written(), b"second\n", "written when idle");
            assert!(Line::gather(b"third\n"));
        })
        .join()
        .expect("the thread's checks");
        assert_eq!(
            written(),
            b"second\nthird\n",
            "written when the thread ended"
        );
    }
}
