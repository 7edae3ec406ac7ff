//! Platform code, one module per concern. Everything outside `sys` is platform-free: it asks
//! these modules, never `cfg(unix)` / `cfg(windows)` itself.
//!
//! * [`fork`]: whether the platform can fork, the process ID, and the wipe-on-fork page with the
//!   probes that decide whether the kernel can be trusted to wipe it.
//! * `wake` (feature `python`): how a tokio thread wakes an asyncio loop (a pipe on Unix).

pub(crate) mod fork;
#[cfg(feature = "python")]
pub(crate) mod wake;
