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

/// What `choose` decided, leaked once per lineage and inherited by children (it is immutable).
struct Choice {
    /// The wipe-on-fork page, or null in syscall mode.
    page: *mut AtomicPtr<Process>,
    public: GuardChoice,
}

/// The lineage's [`Choice`]; null until the first access. Only ever moves from null to a leaked
/// `Choice`, once, by compare-and-swap.
///
/// Orderings: the winning CAS is `AcqRel` and every load `Acquire`, so a thread that sees the
/// pointer also sees the `Choice` fields written before it was published (Release half), and
/// the losing thread sees the winner's fields (Acquire half of the failed CAS).
static CHOICE: AtomicPtr<Choice> = AtomicPtr::new(ptr::null_mut());

/// The fast path's copy of `Choice::page`: null until chosen, `syscall_mode_marker()` without a page,
/// else the page, whose first word is an `AtomicPtr<Process>` valid forever (the page is never
/// unmapped once published, and the mapping survives fork). Written only after `CHOICE`, with
/// the same value every time; `Acquire` loads pair with the `Release` store.
static PAGE: AtomicPtr<AtomicPtr<Process>> = AtomicPtr::new(ptr::null_mut());

/// The newest record of this lineage, in ordinary (inherited) memory. In syscall mode it is the
/// cache the guard checks; in both modes a child reads it once to learn what it inherited.
/// Records are published with `Release` (CAS `AcqRel`) and read with `Acquire`, so a reader sees
/// a fully built record.
static HEAD: AtomicPtr<Process> = AtomicPtr::new(ptr::null_mut());

/// `PAGE` in syscall mode: a non-null, never dereferenced address that no mmap can return
/// (page-aligned results only).
fn syscall_mode_marker() -> *mut AtomicPtr<Process> {
    ptr::dangling_mut::<AtomicPtr<Process>>()
}

/// This process's record, built on first use in each process.
#[inline]
pub(crate) fn current() -> &'static Process {
    if !CAN_FORK {
        // A constant: on Unix the compiler removes this branch. Without fork there is only
        // ever one record, published in HEAD by the slow path.
        // SAFETY: published records are never freed.
        if let Some(record) = unsafe { HEAD.load(Ordering::Acquire).as_ref() } {
            return record;
        }
        return slow_path();
    }
    // Acquire: pairs with the Release store in `choose`; what the page holds is then readable.
    let page = PAGE.load(Ordering::Acquire);
    if !page.is_null() && page != syscall_mode_marker() {
        // SAFETY: a non-null, non-marker PAGE points at a live page-aligned AtomicPtr in a
        // mapping that is never unmapped (see `choose`).
        // Acquire: pairs with the publishing CAS in `slow_path`, so the record is fully built.
        let mine = unsafe { &*page }.load(Ordering::Acquire);
        // SAFETY: records are leaked on publication and never freed, so any pointer published
        // in the page or in HEAD stays valid for the life of the process (and of its children).
        if let Some(record) = unsafe { mine.as_ref() } {
            return record;
        }
    } else if page == syscall_mode_marker() {
        // SAFETY: as above, published records are never freed.
        if let Some(record) = unsafe { HEAD.load(Ordering::Acquire).as_ref() } {
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
            let head = HEAD.load(Ordering::Acquire);
            // SAFETY: published records are never freed.
            if let Some(record) = unsafe { head.as_ref() } {
                if record.pid() == pid {
                    return record;
                }
            }
            let fresh = Box::into_raw(Box::new(Process::new(pid, head)));
            // AcqRel: Release publishes the record's fields; Acquire on failure sees the winner's.
            match HEAD.compare_exchange(head, fresh, Ordering::AcqRel, Ordering::Acquire) {
                // SAFETY: just published; from here on it is never freed.
                Ok(_) => return unsafe { &*fresh },
                // SAFETY: never published, still exclusively ours.
                Err(_) => drop(unsafe { Box::from_raw(fresh) }),
            }
        }
    }
    // SAFETY: `choose` returns only the live, never-unmapped page (or null, handled above).
    let slot = unsafe { &*page };
    loop {
        let mine = slot.load(Ordering::Acquire);
        // SAFETY: published records are never freed.
        if let Some(record) = unsafe { mine.as_ref() } {
            return record;
        }
        // Whatever HEAD holds was built before the fork that zeroed our page, or by a thread of
        // ours that lost the race below; either way it only serves as the lineage link.
        let inherited = HEAD.load(Ordering::Acquire);
        let fresh = Box::into_raw(Box::new(Process::new(pid, inherited)));
        // AcqRel: Release publishes the record's fields; Acquire on failure sees the winner's.
        match slot.compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                // Release: a child that reads HEAD sees this record whole.
                HEAD.store(fresh, Ordering::Release);
                // SAFETY: just published; from here on it is never freed.
                return unsafe { &*fresh };
            }
            Err(_) => {
                // SAFETY: `fresh` lost the race and was never published, so this thread still
                // owns it exclusively.
                drop(unsafe { Box::from_raw(fresh) });
            }
        }
    }
}

/// Picks the mode once per lineage (a child inherits its parent's choice).
fn choose() -> &'static Choice {
    // SAFETY: CHOICE holds null or a leaked, never-freed Choice.
    if let Some(choice) = unsafe { CHOICE.load(Ordering::Acquire).as_ref() } {
        return choice;
    }
    let requested = if CAN_FORK {
        requested_mode()
    } else {
        Requested::NoFork
    };
    let (mode, page, reason): (GuardMode, *mut AtomicPtr<Process>, &'static str) = match requested {
        // No page: the slow path's HEAD loop builds the one record.
        Requested::NoFork => (
            GuardMode::NoFork,
            ptr::null_mut(),
            "this platform has no fork(): every access is the same process (no page, no \
                 system call)",
        ),
        Requested::Syscall => (
            GuardMode::Syscall,
            ptr::null_mut(),
            "FORKSAFE_PID_CHECK=syscall",
        ),
        Requested::Unknown => (
            GuardMode::Syscall,
            ptr::null_mut(),
            "FORKSAFE_PID_CHECK has an unknown value (expected 'auto', 'wipeonfork' or \
                 'syscall'); using the getpid() fallback",
        ),
        Requested::Auto => match sys::map_wipe_on_fork_page() {
            Ok(page) => (GuardMode::WipeOnFork, page.cast(), "MADV_WIPEONFORK page"),
            Err(why) => (GuardMode::Syscall, ptr::null_mut(), why),
        },
    };
    let fresh = Box::into_raw(Box::new(Choice {
        page,
        public: GuardChoice { mode, reason },
    }));
    // AcqRel: Release publishes the fields; Acquire on failure makes the winner's readable.
    let choice = match CHOICE.compare_exchange(
        ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: just published; from here on it is never freed.
        Ok(_) => unsafe { &*fresh },
        Err(winner) => {
            // SAFETY: `fresh` was never published, so it is still exclusively ours.
            let lost = unsafe { Box::from_raw(fresh) };
            if !lost.page.is_null() {
                sys::unmap_page(lost.page.cast());
            }
            // SAFETY: the winner is a leaked, never-freed Choice.
            unsafe { &*winner }
        }
    };
    let fast = if choice.page.is_null() {
        syscall_mode_marker()
    } else {
        choice.page
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
/// lock that a parent thread inside `set_var` would hold forever in a child.
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
