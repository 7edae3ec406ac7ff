//! The PID guard: "which process am I, and is the cached state mine?"
//!
//! Every access to process-owned state (the runtime, a [`ForkLocal`](crate::ForkLocal)) starts
//! here. [`current`] returns this process's [`Process`] record, building one the first time the
//! calling process asks. A record is never shared across processes: a child always builds its own.
//!
//! There are two ways to tell that a fork happened, chosen once per lineage (and a third mode
//! where nothing can fork):
//!
//! * [`GuardMode::WipeOnFork`] (Linux >= 4.14): one anonymous page marked `MADV_WIPEONFORK` holds a
//!   pointer to the record built by this process. The kernel zeroes that page in every child,
//!   whatever the fork path (`fork()`, a raw `clone`, a C-level fork that skips every hook). The
//!   guard is a plain memory read until the kernel says a fork happened. A zeroed page also means
//!   "nothing here was built by this process", so PID reuse (invariant 5) cannot fool it.
//! * [`GuardMode::Syscall`]: compare `getpid()` with the PID stored in the newest record. It costs
//!   a system call per access (glibc >= 2.25 has no PID cache) and it cannot see PID reuse: a
//!   descendant that is handed the PID of an exited ancestor would trust that ancestor's record.
//!   Used where the page is unavailable or cannot be trusted (an emulator such as qemu-user
//!   accepts `MADV_WIPEONFORK` and never wipes: see `sys::fork` for the probes), or when
//!   `FORKSAFE_PID_CHECK=syscall` forces it.
//! * [`GuardMode::NoFork`] (Windows): there is no fork, so every access is the same process;
//!   the guard is a plain read of the one record, with no page and no system call.
//!
//! The slow path never waits on anything: it builds a new record in memory that only this
//! process has seen and publishes it with a compare-and-swap (invariant 3).

use std::ffi::CStr;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::process::Process;
use crate::publish::Published;
pub(crate) use crate::sys::fork::getpid;
use crate::sys::fork::{self as sys, CAN_FORK};

/// How the guard tells that the calling process is not the one that built the cached state.
///
/// Chosen once, on the first access in a lineage, and inherited by every child.
///
/// ```
/// let info = forksafe::process_info();
/// println!("guard: {}", info.guard);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuardMode {
    /// A `MADV_WIPEONFORK` page caches this process's record; about a nanosecond per access.
    WipeOnFork,
    /// `getpid()` on every access; cannot detect PID reuse.
    Syscall,
    /// The platform has no `fork()` (Windows): every access is the same process, with no page
    /// and no system call.
    NoFork,
}

impl GuardMode {
    /// The name used by `FORKSAFE_PID_CHECK` and by `process_info()`.
    ///
    /// ```
    /// assert_eq!(forksafe::GuardMode::Syscall.as_str(), "syscall");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            GuardMode::WipeOnFork => "wipeonfork",
            GuardMode::Syscall => "syscall",
            GuardMode::NoFork => "nofork",
        }
    }
}

impl std::fmt::Display for GuardMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The mode in force and why, published together: a reader never sees one without the other.
///
/// ```
/// let choice = forksafe::process_info().guard;
/// println!("guard: {} ({})", choice.mode, choice.reason);
/// assert!(!choice.reason.is_empty());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GuardChoice {
    /// How forks are detected in this lineage.
    pub mode: GuardMode,
    /// Why: `FORKSAFE_PID_CHECK`, why the wipe-on-fork page is unavailable or untrusted, or
    /// that the platform has no fork.
    pub reason: &'static str,
}

impl std::fmt::Display for GuardChoice {
    /// `mode (reason)`, e.g. `wipeonfork (MADV_WIPEONFORK page)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.mode, self.reason)
    }
}

/// What `choose` decided, published once per lineage and inherited by children (it is
/// immutable).
struct Choice {
    /// The wipe-on-fork page, or null in syscall mode.
    page: *const Published<Process>,
    public: GuardChoice,
}

// SAFETY: `page` is null or a mapping that is never unmapped once its choice is published, and
// is only ever accessed through the atomic cell it holds.
unsafe impl Send for Choice {}
// SAFETY: as above; every other field is plain data.
unsafe impl Sync for Choice {}

impl Drop for Choice {
    /// Only a choice that lost the race to be published is ever dropped (the winner is never
    /// taken from `CHOICE`): its page was never seen by another thread.
    fn drop(&mut self) {
        if !self.page.is_null() {
            sys::unmap_page(self.page.cast_mut().cast());
        }
    }
}

/// The lineage's [`Choice`]; empty until the first access, then published once.
static CHOICE: Published<Choice> = Published::new();

/// The fast path's copy of `Choice::page`: null until chosen, `syscall_mode_marker()` without a
/// page, else the page, whose first word is this process's record cell (valid forever: the page
/// is never unmapped once published, and the mapping survives fork). Written only after
/// `CHOICE`, with the same value every time; `Acquire` loads pair with the `Release` store.
static PAGE: AtomicPtr<Published<Process>> = AtomicPtr::new(ptr::null_mut());

/// The newest record of this lineage, in ordinary (inherited) memory. In syscall mode it is the
/// cache the guard checks; in both modes a child reads it once to learn what it inherited. In
/// page mode it holds a record that the page published (see `slow_path`), so nothing ever
/// takes from it.
static HEAD: Published<Process> = Published::new();

/// `PAGE` in syscall mode: a non-null, never dereferenced address that no mmap can return
/// (page-aligned results only).
fn syscall_mode_marker() -> *mut Published<Process> {
    ptr::dangling_mut::<Published<Process>>()
}

/// This process's record, built on first use in each process.
#[inline]
pub(crate) fn current() -> &'static Process {
    if !CAN_FORK {
        // A constant: on Unix the compiler removes this branch. Without fork there is only
        // ever one record, published in HEAD by the slow path.
        if let Some(record) = HEAD.get() {
            return record;
        }
        return slow_path();
    }
    // Acquire: pairs with the Release store in `choose`; what the page holds is then readable.
    let page = PAGE.load(Ordering::Acquire);
    if !page.is_null() && page != syscall_mode_marker() {
        // SAFETY: a non-null, non-marker PAGE points at the page-aligned record cell of a
        // mapping that is never unmapped (see `choose`). Records are never taken from a cell,
        // so what it publishes stays valid for the life of the process (and of its children).
        if let Some(record) = unsafe { &*page }.get() {
            return record;
        }
    } else if page == syscall_mode_marker() {
        if let Some(record) = HEAD.get() {
            if record.pid() == getpid() {
                return record;
            }
        }
    }
    slow_path()
}

/// The mode in force and why, choosing them if nothing has asked yet.
pub(crate) fn choice() -> GuardChoice {
    choose().public
}

/// An identifier of the calling process that no descendant shares.
///
/// It is the address of this process's record, which is leaked and so never reused along a
/// lineage. In wipe-on-fork mode it tells a descendant from an exited ancestor even when the
/// two share a PID; in syscall mode it is only as good as the PID check. The Python package
/// uses it as the owner of its loops and fork-local values.
///
/// ```
/// let token = forksafe::process_token();
/// assert_eq!(token, forksafe::process_token());
/// ```
#[inline]
pub fn process_token() -> u64 {
    current() as *const Process as usize as u64
}

#[cold]
#[inline(never)]
fn slow_path() -> &'static Process {
    let pid = getpid();
    let page = choose().page;
    if page.is_null() {
        loop {
            let head = HEAD.get();
            if let Some(record) = head.filter(|record| record.pid() == pid) {
                return record;
            }
            // Refused: another thread of ours published first; ours is dropped, and the loop
            // finds the winner by its PID.
            if let Ok(record) = HEAD.publish(head, Box::new(Process::new(pid, head))) {
                return record;
            }
        }
    }
    // SAFETY: `choose` returns only the live, never-unmapped page (or null, handled above).
    let slot: &'static Published<Process> = unsafe { &*page };
    loop {
        if let Some(record) = slot.get() {
            return record;
        }
        // Whatever HEAD holds was built before the fork that zeroed our page, or by a thread of
        // ours that lost the race below; either way it only serves as the lineage link.
        let fresh = Box::new(Process::new(pid, HEAD.get()));
        if let Ok(record) = slot.publish(None, fresh) {
            // SAFETY: HEAD is never taken from; the record stays published in the page.
            unsafe { HEAD.share(record) };
            return record;
        }
    }
}

/// Picks the mode once per lineage (a child inherits its parent's choice).
fn choose() -> &'static Choice {
    let choice = CHOICE.get_or_publish(|| {
        let requested = if CAN_FORK {
            requested_mode()
        } else {
            Requested::NoFork
        };
        let (mode, page, reason): (GuardMode, *const Published<Process>, &'static str) =
            match requested {
                // No page: the slow path's HEAD loop builds the one record.
                Requested::NoFork => (
                    GuardMode::NoFork,
                    ptr::null(),
                    "this platform has no fork(): every access is the same process (no page, \
                     no system call)",
                ),
                Requested::Syscall => (
                    GuardMode::Syscall,
                    ptr::null(),
                    "FORKSAFE_PID_CHECK=syscall",
                ),
                Requested::Unknown => (
                    GuardMode::Syscall,
                    ptr::null(),
                    "FORKSAFE_PID_CHECK has an unknown value (expected 'auto', 'wipeonfork' or \
                     'syscall'); using the getpid() fallback",
                ),
                // The page is zeroed memory: an empty cell (see `publish`).
                Requested::Auto => match sys::map_wipe_on_fork_page() {
                    Ok(page) => (GuardMode::WipeOnFork, page.cast(), "MADV_WIPEONFORK page"),
                    Err(why) => (GuardMode::Syscall, ptr::null(), why),
                },
            };
        Choice {
            page,
            public: GuardChoice { mode, reason },
        }
    });
    let fast = if choice.page.is_null() {
        syscall_mode_marker()
    } else {
        choice.page.cast_mut()
    };
    // Release: pairs with the Acquire load in `current`. Every thread stores the same value.
    PAGE.store(fast, Ordering::Release);
    choice
}

enum Requested {
    Auto,
    Syscall,
    Unknown,
    NoFork,
}

/// Reads `FORKSAFE_PID_CHECK` with libc's `getenv`, not `std::env`: std takes a process-wide
/// lock that a parent thread inside `set_var` would hold forever in a child. The crate's one
/// reader of the environment (`clippy.toml` disallows the others).
#[allow(
    clippy::disallowed_methods,
    reason = "the one configuration reader: libc's getenv takes no lock"
)]
fn requested_mode() -> Requested {
    // SAFETY: the name is a NUL-terminated literal; getenv returns null or a pointer into the
    // environment, which we copy from at once.
    let value = unsafe { libc::getenv(c"FORKSAFE_PID_CHECK".as_ptr()) };
    if value.is_null() {
        return Requested::Auto;
    }
    // SAFETY: a non-null getenv result is a NUL-terminated string.
    match unsafe { CStr::from_ptr(value) }.to_bytes() {
        b"" | b"auto" | b"wipeonfork" => Requested::Auto,
        b"syscall" => Requested::Syscall,
        _ => Requested::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_record_within_one_process() {
        let a = current() as *const Process;
        let b = std::thread::spawn(|| current() as *const Process as usize)
            .join()
            .unwrap();
        assert_eq!(a as usize, b);
        assert_eq!(current().pid(), std::process::id());
    }

    #[test]
    fn natively_the_guard_trusts_the_wipe_on_fork_page() {
        // On Linux the probes pass on a real kernel: only an override or an emulator that
        // ignores madvise (see tests/guard_qemu.rs) may choose the fallback.
        if sys::HAS_WIPE_ON_FORK && matches!(requested_mode(), Requested::Auto) {
            let choice = choice();
            assert_eq!(choice.mode, GuardMode::WipeOnFork, "{}", choice.reason);
        }
    }

    #[test]
    fn reports_a_mode_and_why() {
        let choice = choice();
        assert!(
            !choice.reason.is_empty(),
            "no reason recorded for {}",
            choice.mode
        );
    }
}
