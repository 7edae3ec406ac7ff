//! The per-process registry: one [`Process`] record per process that touched forksafe.
//!
//! A record holds the process's tokio runtime (built on first use) and a [`DashMap`] keyed by
//! PID of the runtimes it inherited along its lineage. Inherited runtimes are never dropped:
//! dropping one joins worker threads that do not exist in the child and hangs (invariant 2). They
//! are leaked on purpose, counted, and never touched again (invariant 1).
//!
//! Locks here are safe because a record is only ever locked by the process that built it: a
//! child builds a fresh record (in [`guard`](crate::guard)) instead of locking its parent's.
//! The lineage map is filled before the record is published and only read afterwards, so it is
//! never contended: a contended dashmap shard parks in `parking_lot_core`'s global table, which
//! a fork can leave holding nodes on dead threads' stacks.

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, PoisonError};

use dashmap::DashMap;
use tokio::runtime::Runtime;

use crate::{config, guard, Error, GuardMode, Result, RuntimeConfig};

/// Power of two; fixed, because dashmap's default asks a process-wide `OnceCell` that a parent
/// thread may have been initialising at the instant of fork.
const LINEAGE_SHARDS: usize = 4;

/// An ancestor's runtime, inherited by this process and leaked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InheritedRuntime {
    /// The PID of the ancestor that built it.
    pub pid: u32,
    /// How many generations back that ancestor is (1 = the parent that used forksafe).
    pub generations_back: u32,
}

/// What forksafe knows about the calling process. See [`process_info`].
///
/// ```
/// let info = forksafe::process_info();
/// assert_eq!(info.pid, std::process::id());
/// assert!(info.runtimes_built <= 1);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// This process's ID.
    pub pid: u32,
    /// How many forksafe-using ancestors this process has (0 for the first).
    pub depth: u32,
    /// Runtimes built by this process: 0 before first use, then 1, never more.
    pub runtimes_built: usize,
    /// Runtimes inherited from ancestors, leaked on purpose and never used.
    pub inherited_runtimes: Vec<InheritedRuntime>,
    /// How the guard detects forks in this lineage.
    pub guard: GuardMode,
    /// Why the guard runs in that mode.
    pub guard_reason: &'static str,
}

/// One process's state. Leaked on publication; never freed, never shared with a child.
pub(crate) struct Process {
    pid: u32,
    depth: u32,
    /// The newest record inherited at fork (leaked, never used, only walked when a child
    /// builds its own lineage map).
    parent: Option<&'static Process>,
    runtime: AtomicPtr<Runtime>,
    /// Serialises building the runtime and `configure` within this process only.
    build: Mutex<()>,
    /// Runtimes inherited along the lineage, keyed by the PID that built them. A `Vec` per key
    /// because PIDs recycle: two ancestors may share one.
    lineage: DashMap<u32, Vec<InheritedRuntime>>,
}

impl Process {
    /// A record for process `pid`, whose newest inherited record is `inherited` (or null).
    ///
    /// Reads the ancestors' records without locks: only their immutable fields and the
    /// atomic runtime pointer.
    pub(crate) fn new(pid: u32, inherited: *const Process) -> Self {
        let lineage = DashMap::with_shard_amount(LINEAGE_SHARDS);
        // SAFETY: published records are never freed; `inherited` is null or one of them.
        let parent = unsafe { inherited.as_ref() };
        let mut ancestor = parent;
        let mut generations_back = 1;
        while let Some(record) = ancestor {
            if !record.runtime.load(Ordering::Acquire).is_null() {
                lineage
                    .entry(record.pid)
                    .or_insert_with(Vec::new)
                    .push(InheritedRuntime {
                        pid: record.pid,
                        generations_back,
                    });
            }
            generations_back += 1;
            ancestor = record.parent;
        }
        Process {
            pid,
            depth: parent.map_or(0, |p| p.depth + 1),
            parent,
            runtime: AtomicPtr::new(std::ptr::null_mut()),
            build: Mutex::new(()),
            lineage,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// This process's runtime, built on first use. Exactly one per process (invariant 4).
    #[inline]
    pub(crate) fn runtime(&'static self) -> Result<&'static Runtime> {
        let runtime = self.runtime.load(Ordering::Acquire);
        // SAFETY: the pointer is null or a leaked runtime built by this very process.
        match unsafe { runtime.as_ref() } {
            Some(runtime) => Ok(runtime),
            None => self.build_runtime(),
        }
    }

    #[cold]
    fn build_runtime(&'static self) -> Result<&'static Runtime> {
        // This mutex was created by this process and is never locked by another one.
        let _building = self.build.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: as in `runtime`.
        if let Some(runtime) = unsafe { self.runtime.load(Ordering::Acquire).as_ref() } {
            return Ok(runtime);
        }
        #[cfg(feature = "test-hooks")]
        crate::test_hooks::while_building_runtime();
        let runtime = build(config::current()).map_err(|source| Error::Build {
            pid: self.pid,
            source,
        })?;
        // Leaked: a process-global runtime lives as long as the process, and a child must
        // never run its destructor.
        let runtime: &'static Runtime = Box::leak(Box::new(runtime));
        self.runtime
            .store(runtime as *const Runtime as *mut Runtime, Ordering::Release);
        Ok(runtime)
    }

    /// Runs `f` only if this process has not built its runtime yet.
    pub(crate) fn while_not_started(&self, f: impl FnOnce()) -> Result<()> {
        let _building = self.build.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.runtime.load(Ordering::Acquire).is_null() {
            return Err(Error::AlreadyStarted { pid: self.pid });
        }
        f();
        Ok(())
    }

    fn info(&self) -> ProcessInfo {
        let mut inherited: Vec<InheritedRuntime> = self
            .lineage
            .iter()
            .flat_map(|entry| entry.value().clone())
            .collect();
        inherited.sort_by_key(|r| r.generations_back);
        ProcessInfo {
            pid: self.pid,
            depth: self.depth,
            runtimes_built: usize::from(!self.runtime.load(Ordering::Acquire).is_null()),
            inherited_runtimes: inherited,
            guard: guard::mode(),
            guard_reason: guard::mode_reason(),
        }
    }

    #[cfg(feature = "test-hooks")]
    pub(crate) fn lineage(&self) -> &DashMap<u32, Vec<InheritedRuntime>> {
        &self.lineage
    }
}

thread_local! {
    /// Set on every thread a forksafe runtime starts: `block_on` there would panic or deadlock.
    static RUNTIME_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread was started by a forksafe runtime (this process's or, when a
/// runtime thread forked, an ancestor's).
pub(crate) fn on_runtime_thread() -> bool {
    RUNTIME_THREAD.with(|flag| flag.get())
}

fn build(config: &RuntimeConfig) -> std::io::Result<Runtime> {
    let prefix = config.get_thread_name().to_owned();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.get_worker_threads())
        .max_blocking_threads(config.get_max_blocking_threads())
        // Always explicit: without it std reads RUST_MIN_STACK under its environment lock.
        .thread_stack_size(config.get_thread_stack_size())
        .thread_name_fn(move || {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            format!("{prefix}-{n}")
        })
        .on_thread_start(|| RUNTIME_THREAD.with(|flag| flag.set(true)))
        .enable_io()
        .enable_time()
        .build()
}

/// What forksafe knows about the calling process: PID, runtimes built here (0 or 1), the
/// inherited runtimes it leaked, and the guard mode.
///
/// ```
/// forksafe::block_on(async {}).unwrap();
/// let info = forksafe::process_info();
/// assert_eq!(info.runtimes_built, 1);
/// assert!(info.inherited_runtimes.is_empty());
/// ```
pub fn process_info() -> ProcessInfo {
    guard::current().info()
}
