//! Fork detection primitives: [`CAN_FORK`], [`getpid`] and the wipe-on-fork page.
//!
//! Linux (and Android) can map the page; other Unixes fork but have no `MADV_WIPEONFORK`, so the
//! guard uses `getpid()` there; Windows has no fork at all, so a process is always "the same
//! process" and the guard needs neither page nor system call.

/// Whether this platform has `fork()` (a child that inherits memory but not threads).
pub(crate) const CAN_FORK: bool = cfg!(unix);

/// Whether this platform's kernel offers `MADV_WIPEONFORK` (Linux >= 4.14); the tests ask.
#[cfg(test)]
pub(crate) const HAS_WIPE_ON_FORK: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// This process's ID, straight from the kernel (glibc caches nothing since 2.25).
#[inline]
pub(crate) fn getpid() -> u32 {
    imp::getpid()
}

/// Maps one zero-filled page that the kernel wipes in every child, after checking that the
/// kernel (not an emulator that ignores `madvise`) will really do so. `Err` says why not.
pub(crate) fn map_wipe_on_fork_page() -> Result<*mut u8, &'static str> {
    imp::map_wipe_on_fork_page()
}

/// Unmaps a page from [`map_wipe_on_fork_page`] that was never published.
pub(crate) fn unmap_page(page: *mut u8) {
    imp::unmap_page(page)
}

#[cfg(unix)]
mod imp {

    #[inline]
    pub(super) fn getpid() -> u32 {
        // SAFETY: getpid has no preconditions and cannot fail.
        let pid = unsafe { libc::getpid() };
        pid as u32
    }

    fn page_size() -> usize {
        // SAFETY: sysconf is a plain query without preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size).unwrap_or(4096).max(4096)
    }

    /// An anonymous mapping of one page (`MAP_PRIVATE` or `MAP_SHARED`), or null.
    fn map(flags: libc::c_int) -> *mut u8 {
        // SAFETY: an anonymous mapping at an address of the kernel's choosing touches no
        // existing memory; the result is checked against MAP_FAILED.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size(),
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            page.cast()
        }
    }

    fn madvise(page: *mut u8, advice: libc::c_int) -> bool {
        // SAFETY: `page` is a live one-page mapping of ours; madvise only changes its flags.
        unsafe { libc::madvise(page.cast(), page_size(), advice) == 0 }
    }

    pub(super) fn unmap_page(page: *mut u8) {
        // SAFETY: only called on a one-page mapping made here and never published.
        unsafe { libc::munmap(page.cast(), page_size()) };
    }

    /// Not an advice value of any kernel: Linux answers `EINVAL`.
    const INVALID_ADVICE: libc::c_int = -1;

    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(super) fn map_wipe_on_fork_page() -> Result<*mut u8, &'static str> {
        let page = map(libc::MAP_PRIVATE);
        if page.is_null() {
            return Err("mmap of the wipe-on-fork page failed; using the getpid() fallback");
        }
        // Probe 1 (as AWS-LC and s2n-tls do): a kernel that accepts an invalid advice value
        // is not checking madvise at all. Debian's qemu-user answers 0 to every madvise and
        // never wipes a page in a child.
        if madvise(page, INVALID_ADVICE) {
            unmap_page(page);
            return Err("madvise accepted an invalid advice value (an emulator such as qemu-user?), so a MADV_WIPEONFORK page would not be trusted; using the getpid() fallback");
        }
        // Probe 2: Linux refuses MADV_WIPEONFORK on a shared mapping (only private anonymous
        // memory can be wiped). Accepting it means the advice is not implemented as Linux does.
        let shared = map(libc::MAP_SHARED);
        if !shared.is_null() {
            let accepted = madvise(shared, libc::MADV_WIPEONFORK);
            unmap_page(shared);
            if accepted {
                unmap_page(page);
                return Err("madvise accepted MADV_WIPEONFORK on a shared mapping, which Linux refuses, so a wipe-on-fork page would not be trusted; using the getpid() fallback");
            }
        }
        if !madvise(page, libc::MADV_WIPEONFORK) {
            unmap_page(page);
            return Err("MADV_WIPEONFORK unavailable (Linux < 4.14?); using the getpid() fallback");
        }
        // A fresh anonymous page is zero-filled: the AtomicPtr at its start reads as null.
        Ok(page)
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(super) fn map_wipe_on_fork_page() -> Result<*mut u8, &'static str> {
        let _ = (map, madvise, INVALID_ADVICE); // used on Linux only
        Err("MADV_WIPEONFORK exists only on Linux; using the getpid() fallback")
    }
}

#[cfg(not(unix))]
mod imp {

    #[inline]
    pub(super) fn getpid() -> u32 {
        std::process::id()
    }

    pub(super) fn map_wipe_on_fork_page() -> Result<*mut u8, &'static str> {
        Err("this platform has no fork(): every access is the same process")
    }

    pub(super) fn unmap_page(_page: *mut u8) {}
}
