//! [`ForkLocal<T>`]: a lazily built value per process, rebuilt after fork.

use std::fmt;
use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

use crate::guard;
use crate::process::Process;

/// A value owned by one process: built on first use in each process, rebuilt in a child, and
/// never dropped in a process that did not build it.
///
/// Use it for any per-process resource a child must not share with its parent. The classic
/// case is an HTTP client's keep-alive pool: after fork the parent and the child would write
/// requests into the same sockets and read each other's responses, and dropping the inherited
/// pool in the child could send a TLS `close_notify` on the parent's live connection. With
/// `ForkLocal`, the child builds its own pool and forgets the inherited one.
///
/// ```
/// use forksafe::ForkLocal;
/// use std::sync::atomic::{AtomicU32, Ordering};
///
/// struct Client {
///     built_by: u32,
/// }
///
/// static BUILT: AtomicU32 = AtomicU32::new(0);
/// static CLIENT: ForkLocal<Client> = ForkLocal::new(|| {
///     BUILT.fetch_add(1, Ordering::Relaxed);
///     Client { built_by: std::process::id() }
/// });
///
/// assert_eq!(CLIENT.get().built_by, std::process::id());
/// assert_eq!(CLIENT.get().built_by, std::process::id());
/// assert_eq!(BUILT.load(Ordering::Relaxed), 1); // once per process
/// ```
///
/// A `ForkLocal` can also live in a struct field and be built from that instance's
/// configuration, with [`ForkLocal::with_init`]: see there.
pub struct ForkLocal<T> {
    init: Init<T>,
    slot: AtomicPtr<Slot<T>>,
    _owns: PhantomData<Box<Slot<T>>>,
}

/// How a process builds its value: a plain function (`const`, for statics) or a closure that
/// captured an instance's configuration. The closure itself is plain data (copied into a child
/// by fork like any other memory), so calling it in a child is as safe as calling the function.
enum Init<T> {
    Fn(fn() -> T),
    Closure(Box<dyn Fn() -> T + Send + Sync>),
}

impl<T> Init<T> {
    #[inline]
    fn call(&self) -> T {
        match self {
            Init::Fn(f) => f(),
            Init::Closure(f) => f(),
        }
    }
}

/// One process's value. `value` is a `OnceLock` created by the owning process, so only that
/// process's threads ever wait on it.
struct Slot<T> {
    owner: *const Process,
    value: OnceLock<T>,
}

// SAFETY: a ForkLocal hands out `&T` to any thread of the owning process (needs `T: Sync`) and
// builds `T` on whichever thread asks first (needs `T: Send`); `owner` is only compared, never
// dereferenced; the init closure is `Send + Sync` by its bound.
unsafe impl<T: Send + Sync> Sync for ForkLocal<T> {}
// SAFETY: moving the ForkLocal moves ownership of the owned slot and its `T`.
unsafe impl<T: Send> Send for ForkLocal<T> {}

impl<T> ForkLocal<T> {
    /// A value built by `init` on first use in each process. `const`, for statics.
    ///
    /// ```
    /// static ID: forksafe::ForkLocal<u32> = forksafe::ForkLocal::new(std::process::id);
    /// assert_eq!(*ID.get(), std::process::id());
    /// ```
    pub const fn new(init: fn() -> T) -> Self {
        ForkLocal {
            init: Init::Fn(init),
            slot: AtomicPtr::new(ptr::null_mut()),
            _owns: PhantomData,
        }
    }

    /// A value built by the closure `init` on first use in each process: the form for a struct
    /// field, built from that instance's configuration.
    ///
    /// `init` runs once in every process that uses the value, the parent and each child, with
    /// the configuration it captured (a child runs the copy fork gave it). The value an instance
    /// built in its parent is never used nor dropped in a child. `init` itself is dropped with
    /// the `ForkLocal`, in whichever process drops it: keep what it captures plain data
    /// (strings, numbers, `Arc`s of plain data), never a handle to a live resource.
    ///
    /// ```
    /// use forksafe::ForkLocal;
    ///
    /// struct Client {
    ///     endpoint: String,
    ///     built_by: u32,
    /// }
    ///
    /// struct Store {
    ///     client: ForkLocal<Client>,
    /// }
    ///
    /// impl Store {
    ///     fn new(endpoint: &str) -> Self {
    ///         let endpoint = endpoint.to_owned();
    ///         Store {
    ///             client: ForkLocal::with_init(move || Client {
    ///                 endpoint: endpoint.clone(),
    ///                 built_by: std::process::id(),
    ///             }),
    ///         }
    ///     }
    /// }
    ///
    /// let a = Store::new("http://127.0.0.1:9000");
    /// let b = Store::new("http://127.0.0.1:9001");
    /// assert_eq!(a.client.get().endpoint, "http://127.0.0.1:9000");
    /// assert_eq!(b.client.get().endpoint, "http://127.0.0.1:9001");
    /// assert_eq!(a.client.get().built_by, std::process::id());
    /// ```
    pub fn with_init(init: impl Fn() -> T + Send + Sync + 'static) -> Self {
        ForkLocal {
            init: Init::Closure(Box::new(init)),
            slot: AtomicPtr::new(ptr::null_mut()),
            _owns: PhantomData,
        }
    }

    /// This process's value, built by `init` on first use in this process.
    ///
    /// Concurrent first calls in one process build the value once; the others wait for it.
    ///
    /// ```
    /// static N: forksafe::ForkLocal<Vec<u8>> = forksafe::ForkLocal::new(|| vec![1, 2, 3]);
    /// assert_eq!(N.get().len(), 3);
    /// ```
    #[inline]
    pub fn get(&self) -> &T {
        let me: *const Process = guard::current();
        let slot = self.slot.load(Ordering::Acquire);
        // SAFETY: slots are freed only by `Drop`, which has `&mut self`; any other slot
        // pointer stays valid while `self` is borrowed.
        if let Some(slot) = unsafe { slot.as_ref() } {
            if slot.owner == me {
                return slot.value.get_or_init(|| self.init.call());
            }
        }
        self.install(me).value.get_or_init(|| self.init.call())
    }

    /// The value, if this process already built it.
    ///
    /// ```
    /// static V: forksafe::ForkLocal<u8> = forksafe::ForkLocal::new(|| 7);
    /// assert!(V.get_if_built().is_none());
    /// V.get();
    /// assert_eq!(V.get_if_built(), Some(&7));
    /// ```
    pub fn get_if_built(&self) -> Option<&T> {
        let me: *const Process = guard::current();
        // SAFETY: as in `get`.
        let slot = unsafe { self.slot.load(Ordering::Acquire).as_ref() }?;
        (slot.owner == me).then(|| slot.value.get()).flatten()
    }

    /// Installs an empty slot owned by `me`, forgetting (leaking) an inherited one.
    #[cold]
    fn install(&self, me: *const Process) -> &Slot<T> {
        let fresh = Box::into_raw(Box::new(Slot {
            owner: me,
            value: OnceLock::new(),
        }));
        let mut seen = self.slot.load(Ordering::Acquire);
        loop {
            // SAFETY: as in `get`.
            if let Some(slot) = unsafe { seen.as_ref() } {
                if slot.owner == me {
                    // Another thread of this process installed first.
                    // SAFETY: `fresh` was never published.
                    drop(unsafe { Box::from_raw(fresh) });
                    return slot;
                }
            }
            // `seen` is null or inherited: replace it and never free it (invariant 2).
            match self
                .slot
                .compare_exchange_weak(seen, fresh, Ordering::AcqRel, Ordering::Acquire)
            {
                // SAFETY: published; lives until `Drop`.
                Ok(_) => return unsafe { &*fresh },
                Err(now) => seen = now,
            }
        }
    }
}

impl<T> Drop for ForkLocal<T> {
    fn drop(&mut self) {
        let slot = *self.slot.get_mut();
        // SAFETY: `&mut self` means no borrow of the slot is alive.
        let Some(owner) = (unsafe { slot.as_ref() }).map(|s| s.owner) else {
            return;
        };
        if std::ptr::eq(owner, guard::current()) {
            // SAFETY: built by this process and no longer reachable.
            drop(unsafe { Box::from_raw(slot) });
        }
        // Otherwise inherited: leaked, as everything inherited is.
    }
}

impl<T: fmt::Debug> fmt::Debug for ForkLocal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForkLocal")
            .field("value", &self.get_if_built())
            .finish()
    }
}
