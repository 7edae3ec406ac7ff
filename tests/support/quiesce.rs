//! Quiescing before a raw fork: wait until no other thread of this process can hold a libc lock.

use std::time::{Duration, Instant};

/// The calling thread's kernel thread ID.
pub fn gettid() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Waits until every other thread of this process is blocked in the kernel in a system call
/// that is not memory management, on two samples in a row, and panics after `timeout`.
///
/// Why: a raw `clone` skips glibc's fork handlers, so a malloc arena lock (or glibc's stack-cache
/// or TLS lock) held by another thread at that instant stays held forever in the child. A
/// thread blocked in `futex`/`epoll_wait`/`poll`/`nanosleep`… holds none of them: glibc takes
/// those locks only around short stretches of user-space code or around `mmap`/`munmap`/`brk`/
/// `mprotect`/`madvise`/`mremap`, which this check treats as busy. Idle tokio workers (parked in
/// `epoll_wait` or on a futex), the harness's main thread (waiting on a channel) and a thread
/// parked on a lock all pass. The window between the last sample and the clone is only a real
/// risk for a thread with a pending wake-up, which the callers make sure none has (no timers
/// in flight, no blocking-pool thread about to time out).
pub fn wait_until_quiescent(timeout: Duration) {
    let me = gettid();
    let start = Instant::now();
    let mut calm = 0;
    loop {
        let busy = busy_threads(me);
        if busy.is_empty() {
            calm += 1;
            if calm >= 2 {
                return;
            }
        } else {
            calm = 0;
            if start.elapsed() > timeout {
                panic!("threads still busy after {timeout:?}, refusing to raw-fork: {busy:?}");
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn busy_threads(me: i32) -> Vec<String> {
    let have_syscall_file = std::path::Path::new("/proc/self/syscall").exists();
    let memory_syscalls = [
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_brk,
        libc::SYS_mprotect,
        libc::SYS_madvise,
    ];
    let mut busy = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return vec!["/proc/self/task unreadable".to_owned()];
    };
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        if tid == me {
            continue;
        }
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let name = name.trim();
        if have_syscall_file {
            let Ok(state) = std::fs::read_to_string(task.path().join("syscall")) else {
                continue; // exited meanwhile
            };
            let first = state.split_whitespace().next().unwrap_or("");
            match first.parse::<libc::c_long>() {
                Ok(nr) if nr >= 0 && !memory_syscalls.contains(&nr) => {}
                _ => busy.push(format!("{tid} ({name}): {}", state.trim())),
            }
        } else {
            // No /proc/<tid>/syscall (kernel without CONFIG_HAVE_ARCH_TRACEHOOK): fall back to
            // the scheduler state, which at least excludes running threads.
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let state = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest.trim_start());
            if !state.starts_with('S') {
                busy.push(format!("{tid} ({name}): state {state:.1}"));
            }
        }
    }
    busy
}

/// Waits until thread `tid` of this process is blocked in `futex` (for a thread about to park on
/// a lock), panicking after `timeout`. Falls back to a fixed 5 ms wait where
/// /proc/<tid>/syscall does not exist.
#[allow(
    dead_code,
    reason = "part of the harness; not every test binary that includes this module calls it"
)]
pub fn wait_until_blocked_in_futex(tid: i32, timeout: Duration) {
    let path = format!("/proc/self/task/{tid}/syscall");
    if !std::path::Path::new("/proc/self/syscall").exists() {
        std::thread::sleep(Duration::from_millis(5));
        return;
    }
    let start = Instant::now();
    loop {
        let state = std::fs::read_to_string(&path).unwrap_or_default();
        let first = state.split_whitespace().next().unwrap_or("");
        if first.parse::<libc::c_long>().ok() == Some(libc::SYS_futex) {
            return;
        }
        if start.elapsed() > timeout {
            panic!("thread {tid} never blocked in futex within {timeout:?}: {state:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
