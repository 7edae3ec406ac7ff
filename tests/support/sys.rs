//! The calling process, straight from the kernel.

/// The calling process's PID, straight from the kernel.
pub fn getpid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::getpid() as u32 }
}

/// The last OS error (`errno`).
pub fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}
