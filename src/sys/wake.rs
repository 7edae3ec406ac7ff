//! A wake-up a tokio thread can send to an asyncio loop through a file descriptor the loop
//! watches with `add_reader`.
//!
//! On Unix it is a non-blocking, close-on-exec pipe. On Windows there is none: a selector loop's
//! `add_reader` accepts sockets only and the default `ProactorEventLoop` has no `add_reader`, so
//! [`Pipe::new`] returns `None` and the bridge completes through `call_soon_threadsafe` instead.

pub(crate) use imp::Pipe;

#[cfg(unix)]
mod imp {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    /// The loop watches `read`; a finishing task writes one byte to `write`.
    pub(crate) struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
    }

    impl Pipe {
        /// A fresh pipe, both ends non-blocking and close-on-exec.
        pub(crate) fn new() -> io::Result<Option<Pipe>> {
            let (read, write) = open()?;
            Ok(Some(Pipe { read, write }))
        }

        /// What `add_reader` watches.
        pub(crate) fn reader(&self) -> i64 {
            i64::from(self.read.as_raw_fd())
        }

        /// Wakes the loop. A full pipe (EAGAIN) already holds a pending wake-up.
        pub(crate) fn wake(&self) {
            // SAFETY: writes one byte from a live buffer to a pipe we own.
            unsafe { libc::write(self.write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
        }

        /// Empties the pipe (the loop's reader callback, before it drains the queue).
        pub(crate) fn drain(&self) {
            let mut buf = [0u8; 256];
            // SAFETY: reads into a live buffer of its stated length from a pipe we own.
            while unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }
                > 0
            {}
        }
    }

    /// Both ends from one pipe, owned at once (an error below closes them).
    fn owned(fds: [libc::c_int; 2]) -> (OwnedFd, OwnedFd) {
        // SAFETY: the pipe was just created, so both fds are open and owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    fn open() -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid two-element array for pipe2 to fill. The flags are set
        // atomically, so no fork or exec in another thread ever sees a blocking or inheritable end.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(owned(fds))
    }

    /// Where `pipe2` is missing (macOS): `pipe`, then the flags, every `fcntl` checked. A
    /// fork+exec in between can inherit the fds; nothing better exists there.
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    fn open() -> io::Result<(OwnedFd, OwnedFd)> {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a valid two-element array for pipe to fill.
        if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let pair = owned(fds);
        for fd in [pair.0.as_raw_fd(), pair.1.as_raw_fd()] {
            // SAFETY: plain fcntl calls on fds we own; each result is checked.
            let ok = unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFL);
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) != -1
                    && flags != -1
                    && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) != -1
            };
            if !ok {
                return Err(io::Error::last_os_error()); // `pair` closes both ends
            }
        }
        Ok(pair)
    }
}

#[cfg(not(unix))]
mod imp {
    use std::io;

    /// No fd wake-up on this platform: never constructed.
    pub(crate) enum Pipe {}

    impl Pipe {
        pub(crate) fn new() -> io::Result<Option<Pipe>> {
            Ok(None)
        }

        pub(crate) fn reader(&self) -> i64 {
            match *self {}
        }

        pub(crate) fn wake(&self) {
            match *self {}
        }

        pub(crate) fn drain(&self) {
            match *self {}
        }
    }
}
