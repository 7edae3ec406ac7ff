//! The hang detector: the parent waits for a child with a deadline (`poll` on the pipe and on
//! a pidfd). On expiry it kills the child and everything below it, reaps it, and fails the test
//! with the child's last words and what every thread of the hung tree was blocked in (and,
//! where gdb exists, their backtraces). A hung child fails the test; it never hangs CI.

use std::time::{Duration, Instant};

use libc::{c_int, pid_t};

use super::sys::errno;
use super::wire::ChildReport;

pub fn wait_child(pid: pid_t, read_fd: c_int, deadline: Duration, group: bool) -> ChildReport {
    let start = Instant::now();
    // SAFETY: fcntl on our own descriptor.
    unsafe {
        let flags = libc::fcntl(read_fd, libc::F_GETFL);
        libc::fcntl(read_fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    // A pidfd turns "the child exited" into a poll event (Linux >= 5.3); without one, poll in
    // short slices and ask waitpid.
    // SAFETY: pidfd_open takes a PID and flags; a failure returns -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as c_int;
    let mut output = Vec::new();
    let mut eof = false;
    let status = loop {
        if let Some(status) = try_wait(pid) {
            drain(read_fd, &mut output);
            break status;
        }
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            drain(read_fd, &mut output);
            // gdb takes a second or two: not for the harness's own sub-second self-test.
            let diagnosis = describe_hung_tree(pid, deadline >= Duration::from_secs(1));
            kill_tree(pid, group);
            let _ = wait_blocking(pid);
            drain(read_fd, &mut output);
            close_fds(read_fd, pidfd);
            panic!(
                "child {pid} hung after {deadline:?}; last words: {}\n{diagnosis}",
                String::from_utf8_lossy(&output)
            );
        }
        let remaining = (deadline - elapsed).as_millis().min(1_000) as c_int + 1;
        let mut polled = Vec::with_capacity(2);
        if !eof {
            polled.push(libc::pollfd {
                fd: read_fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if pidfd >= 0 {
            polled.push(libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let timeout = if pidfd >= 0 {
            remaining
        } else {
            remaining.min(5)
        };
        // SAFETY: `polled` is a live array of `polled.len()` pollfds.
        unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, timeout) };
        if !eof && polled[0].revents != 0 {
            eof = read_some(read_fd, &mut output);
        }
    };
    close_fds(read_fd, pidfd);
    ChildReport {
        pid,
        status: Some(status),
        output: String::from_utf8_lossy(&output).into_owned(),
    }
}

fn close_fds(read_fd: c_int, pidfd: c_int) {
    // SAFETY: our own descriptors, closed once.
    unsafe {
        libc::close(read_fd);
        if pidfd >= 0 {
            libc::close(pidfd);
        }
    }
}

/// Reads what is there; true at end of file.
fn read_some(fd: c_int, out: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: `buf` is a live buffer of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            out.extend_from_slice(&buf[..n as usize]);
            continue;
        }
        if n == 0 {
            return true;
        }
        return match errno().kind() {
            std::io::ErrorKind::Interrupted => continue,
            _ => false, // EAGAIN: nothing more for now
        };
    }
}

/// After the child exited: take whatever it left in the pipe. Another process may still hold a
/// copy of the write end (a sibling test forked while our pipe was open), so never wait for EOF.
fn drain(fd: c_int, out: &mut Vec<u8>) {
    read_some(fd, out);
}

fn try_wait(pid: pid_t) -> Option<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live int.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(status);
        }
        if r == 0 {
            return None;
        }
        let err = errno();
        if err.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        panic!("waitpid({pid}) failed: {err}");
    }
}

/// Waits for `pid` without a deadline; only used right after SIGKILL.
pub fn wait_blocking(pid: pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live int.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return status;
        }
        if r < 0 && errno().kind() != std::io::ErrorKind::Interrupted {
            return -1;
        }
    }
}

/// Waits for `pid` at most `deadline`; on expiry kills it (and its descendants) and returns
/// `None`. For hand-made forks (the PID-namespace chain) that do not use [`fork_child`].
#[allow(
    dead_code,
    reason = "part of the harness; not every test binary that includes this module calls it"
)]
pub fn wait_with_deadline(pid: pid_t, deadline: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = try_wait(pid) {
            return Some(status);
        }
        if start.elapsed() >= deadline {
            kill_tree(pid, false);
            wait_blocking(pid);
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What the threads of a hung process and of its descendants are doing: name, scheduler state,
/// the system call each is blocked in, and its kernel wait channel; then, if `gdb` and gdb is
/// installed (and `FORKSAFE_TEST_NO_GDB` is unset), every thread's user-space backtrace.
#[allow(
    clippy::disallowed_methods,
    reason = "the parent reads its switch after the child hung, never in a forked child"
)]
pub fn describe_hung_tree(pid: pid_t, gdb: bool) -> String {
    let mut text = String::from("--- threads of the hung process and its descendants ---\n");
    let mut pending = vec![pid];
    let mut all = Vec::new();
    while let Some(p) = pending.pop() {
        all.push(p);
        pending.extend(children_of(p));
    }
    for &p in &all {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let read = |file: &str| {
                std::fs::read_to_string(task.path().join(file))
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            };
            let stat = read("stat");
            let state = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest.trim_start());
            text.push_str(&format!(
                "pid {p} tid {}: {:?} state {:.1} wchan {} syscall {}\n",
                task.file_name().to_string_lossy(),
                read("comm"),
                state,
                read("wchan"),
                read("syscall"),
            ));
        }
    }
    if gdb && std::env::var_os("FORKSAFE_TEST_NO_GDB").is_none() {
        for &p in &all {
            let pid_text = p.to_string();
            let args = [
                "30",
                "gdb",
                "-p",
                pid_text.as_str(),
                "-batch",
                "-nx",
                "-ex",
                "thread apply all bt",
            ];
            if let Ok(out) = std::process::Command::new("timeout").args(args).output() {
                let bt = String::from_utf8_lossy(&out.stdout);
                let bt: String = bt
                    .lines()
                    .filter(|l| l.starts_with('#') || l.starts_with("Thread"))
                    .collect::<Vec<_>>()
                    .join("\n");
                text.push_str(&format!("--- gdb backtraces of {p} ---\n{bt:.20000}\n"));
            }
        }
    }
    text
}

/// SIGKILLs `pid` and every descendant (found through /proc/<pid>/task/*/children after
/// stopping each process, so none can fork behind our back), and the whole process group when
/// `pid` leads one.
pub fn kill_tree(pid: pid_t, group: bool) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    for child in children_of(pid) {
        kill_tree(child, false);
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        if group {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

fn children_of(pid: pid_t) -> Vec<pid_t> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<pid_t>>()
        })
        .collect()
}
