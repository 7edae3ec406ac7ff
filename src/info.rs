//! [`process_info`]: what forksafe knows about the calling process.

use crate::config;
use crate::guard::{self, GuardChoice};
use crate::process::InheritedRuntime;

/// What forksafe knows about the calling process. See [`process_info`].
///
/// ```
/// let info = forksafe::process_info();
/// assert_eq!(info.pid, std::process::id());
/// assert!(info.runtimes_built <= 1);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessInfo {
    /// This process's ID.
    pub pid: u32,
    /// How many forksafe-using ancestors this process has (0 for the first).
    pub depth: u32,
    /// Runtimes built by this process: 0 before first use, then 1, never more.
    pub runtimes_built: usize,
    /// Runtimes inherited from ancestors, leaked on purpose and never used.
    pub inherited_runtimes: Vec<InheritedRuntime>,
    /// How the guard detects forks in this lineage, and why.
    pub guard: GuardChoice,
    /// Worker threads of this process's runtime: the configured count (the one it was built
    /// with, or will be on first use). See [`RuntimeConfig`](crate::RuntimeConfig).
    pub worker_threads: usize,
    /// The blocking-pool limit of this process's runtime, as for `worker_threads`.
    pub max_blocking_threads: usize,
    /// Whether tokio's `parking_lot` feature is on in this binary (a dependency's feature
    /// request turns it on for every tokio user; see docs/extension-authors.md, "When a
    /// dependency turns on tokio's parking_lot"). Told by a probe when the lineage's first
    /// runtime is built; `None` before that, or where the probe cannot tell (not Linux).
    pub tokio_parking_lot: Option<bool>,
}

/// What forksafe knows about the calling process: PID, runtimes built here (0 or 1), the
/// inherited runtimes it leaked, the guard's mode with its reason, and the runtime's size
/// (worker threads, blocking-pool limit).
///
/// ```
/// forksafe::block_on(async {}).unwrap();
/// let info = forksafe::process_info();
/// assert_eq!(info.runtimes_built, 1);
/// assert!(info.inherited_runtimes.is_empty());
/// assert!(info.worker_threads >= 1 && info.max_blocking_threads >= 1);
/// ```
pub fn process_info() -> ProcessInfo {
    let process = guard::current();
    let in_force = config::in_force();
    ProcessInfo {
        pid: process.pid(),
        depth: process.depth(),
        runtimes_built: usize::from(process.runtime().is_some()),
        inherited_runtimes: process.inherited(),
        guard: guard::choice(),
        worker_threads: in_force.get_worker_threads(),
        max_blocking_threads: in_force.get_max_blocking_threads(),
        tokio_parking_lot: crate::tokio_probe::parking_lot(),
    }
}
