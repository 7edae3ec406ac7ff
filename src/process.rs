//! The per-process record: what one process built, and what it inherited.
//!
//! This is the registry keyed by process that docs/design.md describes. Every process that touches forksafe gets exactly one
//! [`Process`], built by the [guard](crate::guard) on its first access and leaked: never freed,
//! never shared with a child. A record holds:
//!
//! * the process's tokio runtime, built on first use under a `Mutex` that belongs to the record;
//! * a [`DashMap`] keyed by PID of the runtimes inherited along the lineage (a `Vec` per key,
//!   because PIDs recycle), leaked on purpose and never touched again (invariants 1 and 2).
//!
//! Locks here are safe because a record is only ever locked by the process that built it: a
//! child builds a fresh record instead of locking its parent's. The lineage map is filled before
//! the record is published and only read afterwards, so it is never contended: a contended
//! dashmap shard parks in `parking_lot_core`'s global table, which a fork can leave holding nodes
//! on dead threads' stacks.
//!
//! This module depends on no other module of the crate: how the runtime is built is the
//! caller's business ([`runtime`](crate::runtime)), how the record is found is the guard's.

use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, PoisonError};

use dashmap::DashMap;
use tokio::runtime::Runtime;

/// Power of two; fixed, because dashmap's default asks a process-wide `OnceCell` that a parent
/// thread may have been initialising at the instant of fork.
const LINEAGE_SHARDS: usize = 4;

/// An ancestor's runtime, inherited by this process and leaked.
///
/// ```
/// let info = forksafe::process_info();
/// for inherited in &info.inherited_runtimes {
///     println!("pid {} built a runtime {} generation(s) back", inherited.pid, inherited.generations_back);
/// }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InheritedRuntime {
    /// The PID of the ancestor that built it.
    pub pid: u32,
    /// How many generations back that ancestor is (1 = the parent that used forksafe).
    pub generations_back: u32,
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
    /// Runtimes inherited along the lineage, keyed by the PID that built them.
    lineage: DashMap<u32, Vec<InheritedRuntime>>,
}

impl Process {
    /// A record for process `pid`, whose newest inherited record is `parent` (if any).
    ///
    /// Reads the ancestors' records without locks: only their immutable fields and the
    /// atomic runtime pointer.
    pub(crate) fn new(pid: u32, parent: Option<&'static Process>) -> Self {
        let lineage = DashMap::with_shard_amount(LINEAGE_SHARDS);
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

    /// The PID this record was built for.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// How many forksafe-using ancestors this process has.
    pub(crate) fn depth(&self) -> u32 {
        self.depth
    }

    /// This process's runtime, if it built one.
    #[inline]
    pub(crate) fn runtime(&self) -> Option<&'static Runtime> {
        // SAFETY: the pointer is null or a leaked runtime built by this very process (stored by
        // `runtime_or_build`, never freed). Acquire pairs with the Release store there, so the
        // runtime's fields are visible before its address is.
        unsafe { self.runtime.load(Ordering::Acquire).as_ref() }
    }

    /// This process's runtime, built by `build` on first use. Exactly one per process
    /// (invariant 4): concurrent first calls serialise on this record's own lock.
    pub(crate) fn runtime_or_build<E>(
        &self,
        build: impl FnOnce() -> Result<Runtime, E>,
    ) -> Result<&'static Runtime, E> {
        if let Some(runtime) = self.runtime() {
            return Ok(runtime);
        }
        // This mutex was created by this process and is never locked by another one.
        let _building = self.build.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(runtime) = self.runtime() {
            return Ok(runtime);
        }
        // Leaked: a process-global runtime lives as long as the process, and a child must
        // never run its destructor.
        let runtime: &'static Runtime = Box::leak(Box::new(build()?));
        self.runtime
            .store(runtime as *const Runtime as *mut Runtime, Ordering::Release);
        Ok(runtime)
    }

    /// Runs `f` only if this process has not built its runtime yet; `false` if it has.
    pub(crate) fn while_not_started(&self, f: impl FnOnce()) -> bool {
        let _building = self.build.lock().unwrap_or_else(PoisonError::into_inner);
        if self.runtime().is_some() {
            return false;
        }
        f();
        true
    }

    /// The runtimes this process inherited, nearest ancestor first.
    pub(crate) fn inherited(&self) -> Vec<InheritedRuntime> {
        let mut inherited: Vec<InheritedRuntime> = self
            .lineage
            .iter()
            .flat_map(|entry| entry.value().clone())
            .collect();
        inherited.sort_by_key(|r| r.generations_back);
        inherited
    }

    #[cfg(forksafe_fault_injection)]
    pub(crate) fn lineage(&self) -> &DashMap<u32, Vec<InheritedRuntime>> {
        &self.lineage
    }
}
