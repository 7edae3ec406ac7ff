//! The wire between a forked child and the test process: the child writes `key=value` lines
//! to a pipe ([`Reporter`]); the parent reads them back as a [`ChildReport`].
//!
//! The child never prints: the harness captures `println!` behind a `Mutex` a parent thread
//! may hold at the instant of fork. Each line is one raw `write(2)`, shorter than `PIPE_BUF`,
//! so lines from several threads or processes sharing the pipe never interleave.

use std::fmt::Display;
use std::str::FromStr;

use libc::c_int;

use super::sys::errno;

pub fn sanitize(text: &str) -> String {
    text.replace('\n', " | ")
}

/// Writes all of `bytes` with raw `write(2)` calls (no std lock, no stdout).
pub fn write_all_fd(fd: c_int, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a live slice; a bad fd only makes write fail.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if errno().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return; // nobody left to tell
        }
        bytes = &bytes[n as usize..];
    }
}

/// Writes `key=value` lines to the parent. Cheap to clone; usable from any thread of the child
/// and from the child's own descendants (they inherit the descriptor).
#[derive(Clone, Debug)]
pub struct Reporter {
    pub(super) fd: c_int,
    prefix: String,
}

impl Reporter {
    /// A reporter on `fd` (the child's pipe, or any descriptor for checks that run in the test
    /// process itself).
    pub fn new(fd: c_int) -> Self {
        Reporter {
            fd,
            prefix: String::new(),
        }
    }

    /// The same pipe, with `prefix` prepended to every key.
    #[allow(
        dead_code,
        reason = "part of the harness; not every test binary that includes this module calls it"
    )]
    pub fn with_prefix(&self, prefix: &str) -> Reporter {
        Reporter {
            fd: self.fd,
            prefix: format!("{}{prefix}", self.prefix),
        }
    }

    /// Reports `key=value` (newlines in the value are flattened).
    pub fn kv(&self, key: &str, value: impl Display) {
        let line = format!("{}{key}={}\n", self.prefix, sanitize(&value.to_string()));
        write_all_fd(self.fd, line.as_bytes());
    }

    /// Passes a grandchild's report up: its PID, its wait status, and every line, each under
    /// `prefix`. The test process reads it back with [`ChildReport::sub`].
    #[allow(
        dead_code,
        reason = "part of the harness; not every test binary that includes this module calls it"
    )]
    pub fn forward(&self, prefix: &str, report: &ChildReport) {
        let sub = self.with_prefix(prefix);
        sub.kv("@pid", report.pid);
        if let Some(status) = report.status {
            sub.kv("@status", status);
        }
        for line in report.output.lines() {
            write_all_fd(
                self.fd,
                format!("{}{prefix}{line}\n", self.prefix).as_bytes(),
            );
        }
    }
}

/// What a child reported, and how it ended.
#[derive(Clone, Debug)]
pub struct ChildReport {
    /// The child's PID as the parent sees it (`fork`'s return value).
    pub pid: i32,
    /// The raw `waitpid` status; `None` for a sub-report that carries none.
    pub status: Option<i32>,
    /// Everything the child wrote, one `key=value` per line.
    pub output: String,
}

/// A human description of a raw wait status.
pub fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!(
            "killed by signal {}{}",
            libc::WTERMSIG(status),
            if libc::WCOREDUMP(status) {
                " (core dumped)"
            } else {
                ""
            }
        )
    } else {
        format!("raw wait status {status:#x}")
    }
}

impl ChildReport {
    /// The last value reported under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.all(key).pop()
    }

    /// Every value reported under `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.output
            .lines()
            .filter_map(|line| line.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .collect()
    }

    /// The value under `key`; fails the test, showing everything the child said, if missing.
    #[track_caller]
    #[allow(
        dead_code,
        reason = "part of the harness; not every test binary that includes this module calls it"
    )]
    pub fn value(&self, key: &str) -> &str {
        match self.get(key) {
            Some(v) => v,
            None => panic!(
                "child {} did not report `{key}` ({}); it said:\n{}",
                self.pid,
                self.status_text(),
                self.output
            ),
        }
    }

    /// The value under `key`, parsed.
    #[track_caller]
    #[allow(
        dead_code,
        reason = "part of the harness; not every test binary that includes this module calls it"
    )]
    pub fn parse<T: FromStr>(&self, key: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        let raw = self.value(key);
        match raw.parse() {
            Ok(v) => v,
            Err(e) => panic!(
                "child {}: `{key}={raw}` does not parse: {e:?}; it said:\n{}",
                self.pid, self.output
            ),
        }
    }

    /// The exit code, if the child exited normally.
    pub fn exit_code(&self) -> Option<i32> {
        let status = self.status?;
        libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
    }

    fn status_text(&self) -> String {
        self.status
            .map_or_else(|| "status unknown".to_owned(), describe_status)
    }

    /// Fails the test unless the child exited with status 0, said `@done`, and reported no
    /// panic (from any of its threads).
    #[track_caller]
    pub fn assert_ok(&self) {
        let panicked = self.get("@panic").is_some() || self.get("@panic_at").is_some();
        if self.exit_code() != Some(0) || self.get("@done").is_none() || panicked {
            panic!(
                "child {} failed ({}); it said:\n{}",
                self.pid,
                self.status_text(),
                self.output
            );
        }
    }

    /// The lines reported under `prefix` (for example by [`Reporter::forward`]), prefix removed.
    #[allow(
        dead_code,
        reason = "part of the harness; not every test binary that includes this module calls it"
    )]
    pub fn sub(&self, prefix: &str) -> ChildReport {
        let output: String = self
            .output
            .lines()
            .filter_map(|line| line.strip_prefix(prefix))
            .fold(String::new(), |mut acc, line| {
                acc.push_str(line);
                acc.push('\n');
                acc
            });
        let mut sub = ChildReport {
            pid: -1,
            status: None,
            output,
        };
        sub.pid = sub.get("@pid").and_then(|p| p.parse().ok()).unwrap_or(-1);
        sub.status = sub.get("@status").and_then(|s| s.parse().ok());
        sub
    }
}
