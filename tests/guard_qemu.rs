//! The guard never trusts a page the kernel may not wipe.
//!
//! Debian's qemu-user (`qemu-x86_64`) answers 0 to every `madvise`, `MADV_WIPEONFORK` and an
//! invalid advice value alike, and never wipes anything in a child. This test runs one small
//! single-threaded program (this binary, re-executed with `FORKSAFE_GUEST=1`) twice:
//!
//! * natively: the guard chooses the wipe-on-fork page (or the syscall mode when the suite runs
//!   with `FORKSAFE_PID_CHECK=syscall`), and the forked child rebuilds its `ForkLocal`;
//! * under `qemu-x86_64`: the guard's probe sees the invalid advice accepted, falls back to
//!   `getpid()` and says why, and the forked child still rebuilds its `ForkLocal`.
//!
//! qemu-user itself misbehaves when a multi-threaded guest forks, so the guest is
//! single-threaded (no runtime, no harness: `harness = false`). Each run is under a deadline:
//! on expiry its whole process group is killed and the test fails with the output so far.
//!
//! Without `qemu-x86_64` on PATH the qemu half is skipped with a printed reason, unless
//! `FORKSAFE_REQUIRE_QEMU=1` (scripts/test sets it, after installing Debian's qemu-user), which
//! turns the absence into a failure.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use forksafe::ForkLocal;

mod support {
    pub mod skip;
}
use support::skip::require_or_skip;

static BUILDS: AtomicU32 = AtomicU32::new(0);

/// Each process's value: the PID that built it.
static LOCAL: ForkLocal<u32> = ForkLocal::new(|| {
    BUILDS.fetch_add(1, Ordering::SeqCst);
    std::process::id()
});

#[allow(
    clippy::disallowed_methods,
    reason = "the test harness reads its switches before it forks anything"
)]
fn main() {
    if std::env::var_os("FORKSAFE_GUEST").is_some() {
        guest();
        return;
    }
    let expected_native = match std::env::var("FORKSAFE_PID_CHECK").as_deref() {
        Ok("syscall") => "syscall",
        _ => "wipeonfork",
    };
    let native = run_guest(None);
    check(&native, "native", expected_native);
    assert!(
        native
            .get("reason")
            .is_some_and(|r| !r.contains("invalid advice")),
        "native: the probe rejected a real kernel: {native:?}"
    );
    println!("native: guard {expected_native}, the child rebuilt its ForkLocal: ok");

    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        println!(
            "skipped (qemu-x86_64 half): this test runs the x86_64 guest on x86_64 Linux only"
        );
        return;
    }
    let Some(qemu) = find_on_path("qemu-x86_64") else {
        let reason = "qemu-x86_64 is not on PATH (Debian: apt-get install qemu-user)";
        require_or_skip(
            "FORKSAFE_REQUIRE_QEMU",
            "guard_qemu (its qemu-x86_64 half)",
            reason,
        );
        return;
    };
    let emulated = run_guest(Some(&qemu));
    check(&emulated, "qemu-x86_64", "syscall");
    let reason = emulated.get("reason").unwrap_or_default();
    assert!(
        reason.contains("invalid advice"),
        "qemu-x86_64: the guard's reason does not name the probe: {reason:?}"
    );
    println!("qemu-x86_64: guard syscall ({reason}), the child rebuilt its ForkLocal: ok");
}

/// The program under test: one thread, one `ForkLocal`, one fork.
fn guest() {
    let parent_value = *LOCAL.get();
    let info = forksafe::process_info();
    let mut out = std::io::stdout().lock();
    writeln!(out, "guard={}", info.guard.mode).unwrap();
    writeln!(out, "reason={}", info.guard.reason).unwrap();
    writeln!(out, "parent_pid={}", std::process::id()).unwrap();
    writeln!(out, "parent_value={parent_value}").unwrap();
    out.flush().unwrap();
    drop(out);
    // SAFETY: this process has one thread, so the child may run any code.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let value = *LOCAL.get();
        let line = format!(
            "child_pid={}\nchild_value={value}\nchild_builds={}\nchild_guard={}\n",
            std::process::id(),
            BUILDS.load(Ordering::SeqCst),
            forksafe::process_info().guard.mode,
        );
        // SAFETY: writes a buffer we own to stdout, then leaves without running any teardown.
        unsafe {
            libc::write(1, line.as_ptr().cast(), line.len());
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above; `status` is a valid out-pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid: {}", std::io::Error::last_os_error());
    println!("child_status={status}");
    println!("parent_value_after={}", *LOCAL.get());
    println!("parent_builds={}", BUILDS.load(Ordering::SeqCst));
}

#[derive(Debug)]
struct Report(Vec<(String, String)>);

impl Report {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn value(&self, key: &str, what: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("{what}: the guest did not report {key}: {self:?}"))
    }
}

fn check(report: &Report, what: &str, guard: &str) {
    assert_eq!(report.value("guard", what), guard, "{what}: {report:?}");
    assert_eq!(
        report.value("child_guard", what),
        guard,
        "{what}: {report:?}"
    );
    assert_eq!(
        report.value("child_status", what),
        "0",
        "{what}: {report:?}"
    );
    // The child built its own value: its own PID, one more build than the parent made.
    assert_eq!(
        report.value("child_value", what),
        report.value("child_pid", what),
        "{what}: the child used the parent's ForkLocal: {report:?}"
    );
    assert_ne!(
        report.value("child_pid", what),
        report.value("parent_pid", what)
    );
    assert_eq!(
        report.value("child_builds", what),
        "2",
        "{what}: {report:?}"
    );
    // The parent's value is untouched.
    assert_eq!(
        report.value("parent_value", what),
        report.value("parent_pid", what)
    );
    assert_eq!(
        report.value("parent_value_after", what),
        report.value("parent_pid", what)
    );
    assert_eq!(
        report.value("parent_builds", what),
        "1",
        "{what}: {report:?}"
    );
}

/// Runs this binary as the guest (under `emulator` if given) with a deadline; its report.
fn run_guest(emulator: Option<&std::path::Path>) -> Report {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().expect("current_exe");
    let mut command = match emulator {
        Some(emulator) => {
            let mut c = Command::new(emulator);
            c.arg(&exe);
            // The probe, not an override, must choose the mode under the emulator.
            c.env_remove("FORKSAFE_PID_CHECK");
            c
        }
        None => Command::new(&exe),
    };
    command
        .env("FORKSAFE_GUEST", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let what = emulator.map_or("native".to_owned(), |e| e.display().to_string());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: spawn: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            // SAFETY: kills the process group this test created for the guest (and its child).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!(
                "{what}: the guest hung for 60 s; its last words:\n{}\n{}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The forked child may outlive its parent only on a bug; never leave it behind.
    // SAFETY: as above; the group is ours, and ESRCH (already gone) is fine.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.success(),
        "{what}: the guest failed ({status}):\n{out}\n{err}"
    );
    Report(
        out.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

#[allow(
    clippy::disallowed_methods,
    reason = "the test harness reads PATH before it forks anything"
)]
fn find_on_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
