//! [`ForkLocal<T>`]: a lazily built value per process, rebuilt after fork.

use std::convert::Infallible;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::guard;
use crate::process::Process;
use crate::publish::{Published, Refused};

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
/// configuration, with [`ForkLocal::with_init`]: see there. An initialiser that can fail
/// ([`ForkLocal::try_with_init`], [`ForkLocal::try_new`]) makes a `ForkLocal<T, E>` read with
/// [`try_get`](ForkLocal::try_get); an error is returned, not cached, and the next call retries.
/// To fail at construction and never at access, see [`Prebuilt`].
///
/// # Clones share the value
///
/// A clone is cheap (it copies a pointer) and, in every process, yields **the same value** as
/// the original: one value per process for the original and all its clones, as a
/// `reqwest::Client`'s clones share one pool. In a child, the first access through any of them
/// builds the child's one value, once, for all of them (concurrent first accesses from several
/// clones and threads build it once); the parent's clones keep the parent's. So a
/// `ForkLocal<reqwest::Client>` field in a `#[derive(Clone)]` struct behaves like the client it
/// replaces, with no `Arc` around it. For one value per instance (the behaviour before 0.2),
/// take [`ForkLocal::detached`]: the same initialiser, a value of its own.
///
/// ```
/// use forksafe::ForkLocal;
///
/// let pool = ForkLocal::with_init(|| Box::new(std::process::id()));
/// let clone = pool.clone();
/// assert!(std::ptr::eq(pool.get(), clone.get())); // one value, shared
/// let own = pool.detached();
/// assert!(!std::ptr::eq(pool.get(), own.get())); // a value of its own
/// ```
///
/// # Objects built in the parent
///
/// Anything an extension built before a fork and uses after it (an HTTP client and its
/// keep-alive pool, a task or handle on the parent's runtime) belongs in a `ForkLocal`. A
/// client built once in the parent and merely *used* in a child hangs the child, or corrupts the
/// parent's connections, although the runtime itself is per-process.
pub struct ForkLocal<T, E = Infallible> {
    init: Init<T, E>,
    /// The cell shared by this instance and its clones, allocated on first use or first clone
    /// (a `const fn` cannot allocate). It holds this process's slot; a child replaces an
    /// inherited slot (and leaks it), once, for every clone.
    shared: Published<Shared<T>>,
}

/// The slot cell every clone points at.
type Shared<T> = Arc<Published<Slot<T>>>;

/// How a process builds its value: a plain function (`const`, for statics) or a closure that
/// captured an instance's configuration. The closure itself is plain data (copied into a child
/// by fork like any other memory), so calling it in a child is as safe as calling the function.
/// It sits in an `Arc` so that a clone shares it.
enum Init<T, E> {
    Fn(fn() -> T),
    TryFn(fn() -> Result<T, E>),
    Closure(Arc<dyn Fn() -> Result<T, E> + Send + Sync>),
}

impl<T, E> Init<T, E> {
    #[inline]
    fn call(&self) -> Result<T, E> {
        match self {
            Init::Fn(f) => Ok(f()),
            Init::TryFn(f) => f(),
            Init::Closure(f) => f(),
        }
    }
}

impl<T, E> Clone for Init<T, E> {
    fn clone(&self) -> Self {
        match self {
            Init::Fn(f) => Init::Fn(*f),
            Init::TryFn(f) => Init::TryFn(*f),
            Init::Closure(f) => Init::Closure(f.clone()),
        }
    }
}

/// One process's value. `value` and `building` are created by the owning process, so only that
/// process's threads ever wait on them (invariant 3).
struct Slot<T> {
    owner: *const Process,
    value: OnceLock<T>,
    /// Serialises building, so concurrent first calls build once; not held once built.
    building: Mutex<()>,
}

// SAFETY: a ForkLocal hands out `&T` to any thread of the owning process (needs `T: Sync`) and
// builds `T` on whichever thread asks first (needs `T: Send`); `owner` is only compared, never
// dereferenced; the init closure is `Send + Sync` by its bound; `E` is created and returned on
// the calling thread only, never stored.
unsafe impl<T: Send + Sync, E> Sync for ForkLocal<T, E> {}
// SAFETY: moving the ForkLocal moves ownership of the owned slot and its `T`; the closure is
// `Send + Sync`.
unsafe impl<T: Send, E> Send for ForkLocal<T, E> {}

impl<T> ForkLocal<T> {
    /// A value built by `init` on first use in each process. `const`, for statics.
    ///
    /// `init` is a function pointer, so that a `static` can hold it. A closure that captures
    /// anything does not coerce to one, and the compiler says only "expected fn pointer, found
    /// closure" (E0308): for a value built from captured configuration (a struct field), use
    /// [`ForkLocal::with_init`]; for an initialiser that can fail, [`ForkLocal::try_new`] or
    /// [`ForkLocal::try_with_init`].
    ///
    /// ```
    /// static ID: forksafe::ForkLocal<u32> = forksafe::ForkLocal::new(std::process::id);
    /// assert_eq!(*ID.get(), std::process::id());
    /// ```
    ///
    /// What does not compile, and its fix:
    ///
    /// ```compile_fail,E0308
    /// let endpoint = String::from("http://127.0.0.1:9000");
    /// // error[E0308]: expected fn pointer, found closure (it captures `endpoint`)
    /// let client = forksafe::ForkLocal::new(move || endpoint.clone());
    /// ```
    ///
    /// ```
    /// let endpoint = String::from("http://127.0.0.1:9000");
    /// let client = forksafe::ForkLocal::with_init(move || endpoint.clone());
    /// assert_eq!(client.get(), "http://127.0.0.1:9000");
    /// ```
    pub const fn new(init: fn() -> T) -> Self {
        ForkLocal {
            init: Init::Fn(init),
            shared: Published::new(),
        }
    }

    /// A value built by the closure `init` on first use in each process: the form for a struct
    /// field, built from that instance's configuration.
    ///
    /// `init` runs once in every process that uses the value, the parent and each child, with
    /// the configuration it captured (a child runs the copy fork gave it). The value an instance
    /// built in its parent is never used nor dropped in a child. `init` itself is dropped with
    /// the `ForkLocal` (and its clones), in whichever process drops the last of them: keep what
    /// it captures plain data (strings, numbers, `Arc`s of plain data), never a handle to a live
    /// resource.
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
            init: Init::Closure(Arc::new(move || Ok(init()))),
            shared: Published::new(),
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
        match self.try_get() {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }
}

impl<T, E> ForkLocal<T, E> {
    /// A value built by `init` on first use in each process, where building can fail. `const`,
    /// for statics; read it with [`try_get`](ForkLocal::try_get).
    ///
    /// ```
    /// use forksafe::ForkLocal;
    ///
    /// static PORT: ForkLocal<u16, std::num::ParseIntError> = ForkLocal::try_new(|| "8080".parse());
    /// assert_eq!(PORT.try_get().copied(), Ok(8080));
    /// ```
    pub const fn try_new(init: fn() -> Result<T, E>) -> Self {
        ForkLocal {
            init: Init::TryFn(init),
            shared: Published::new(),
        }
    }

    /// [`with_init`](ForkLocal::with_init) for an initialiser that can fail: read the value with
    /// [`try_get`](ForkLocal::try_get).
    ///
    /// An error is **not cached**: `try_get` returns it, keeps nothing, and the next call in the
    /// same process runs `init` again (as Python's `forksafe.fork_local` does). A value, once
    /// built, is kept for the process. What `init` captures is dropped as for `with_init`.
    ///
    /// ```
    /// use forksafe::ForkLocal;
    ///
    /// struct Client {
    ///     endpoint: String,
    /// }
    ///
    /// fn connect(endpoint: &str) -> Result<Client, String> {
    ///     if endpoint.starts_with("http://") {
    ///         Ok(Client { endpoint: endpoint.to_owned() })
    ///     } else {
    ///         Err(format!("not an http endpoint: {endpoint}"))
    ///     }
    /// }
    ///
    /// let endpoint = String::from("http://127.0.0.1:9000");
    /// let client = ForkLocal::try_with_init(move || connect(&endpoint));
    /// assert_eq!(client.try_get().unwrap().endpoint, "http://127.0.0.1:9000");
    ///
    /// let bad = ForkLocal::try_with_init(|| connect("ftp://example"));
    /// assert!(bad.try_get().is_err());
    /// assert!(bad.get_if_built().is_none()); // nothing cached: the next call retries
    /// ```
    pub fn try_with_init(init: impl Fn() -> Result<T, E> + Send + Sync + 'static) -> Self {
        ForkLocal {
            init: Init::Closure(Arc::new(init)),
            shared: Published::new(),
        }
    }

    /// This process's value, built on first use in this process; or the error building it
    /// returned.
    ///
    /// Concurrent first calls in one process build the value once; the others wait for it (and
    /// build again, in turn, if it failed).
    ///
    /// # Errors
    ///
    /// What the initialiser returned. It is not cached: the next call runs the initialiser
    /// again, until it succeeds.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use forksafe::ForkLocal;
    ///
    /// static ATTEMPTS: AtomicU32 = AtomicU32::new(0);
    /// static FLAKY: ForkLocal<u32, &str> = ForkLocal::try_new(|| {
    ///     match ATTEMPTS.fetch_add(1, Ordering::SeqCst) {
    ///         0 => Err("first attempt refused"),
    ///         n => Ok(n),
    ///     }
    /// });
    ///
    /// assert_eq!(FLAKY.try_get(), Err("first attempt refused"));
    /// assert_eq!(FLAKY.try_get(), Ok(&1)); // retried, then kept
    /// assert_eq!(FLAKY.try_get(), Ok(&1));
    /// ```
    #[inline]
    pub fn try_get(&self) -> Result<&T, E> {
        let me: *const Process = guard::current();
        let cell = self.cell();
        let slot = match cell.get() {
            Some(slot) if slot.owner == me => slot,
            _ => install(cell, me),
        };
        match slot.value.get() {
            Some(value) => Ok(value),
            None => self.build(slot),
        }
    }

    /// Builds this process's value under the slot's own lock (created by this process).
    #[cold]
    fn build<'a>(&self, slot: &'a Slot<T>) -> Result<&'a T, E> {
        let _building = slot.building.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(value) = slot.value.get() {
            return Ok(value); // built while we waited
        }
        let value = self.init.call()?;
        Ok(slot.value.get_or_init(|| value))
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
        let slot = self.shared.get()?.get()?;
        (slot.owner == me).then(|| slot.value.get()).flatten()
    }

    /// The slot cell shared with the clones, allocated on the first call.
    #[inline]
    fn cell(&self) -> &Shared<T> {
        match self.shared.get() {
            Some(cell) => cell,
            None => self.allocate(),
        }
    }

    /// Racers may each allocate; one cell is published and the losers drop theirs (empty).
    #[cold]
    fn allocate(&self) -> &Shared<T> {
        self.shared.get_or_publish(|| Arc::new(Published::new()))
    }

    /// A new `ForkLocal` with the same initialiser and **a value of its own**: it builds its
    /// own value once per process, shared with its own clones but not with `self`'s. This is
    /// what `clone` did before 0.2; use it when each owner needs a separate resource (a
    /// connection per worker object, say).
    ///
    /// ```
    /// use forksafe::ForkLocal;
    ///
    /// let endpoint = String::from("http://127.0.0.1:9000");
    /// let a = ForkLocal::with_init(move || (endpoint.clone(), Box::new(0u8)));
    /// let b = a.detached();
    /// assert_eq!(a.get().0, b.get().0); // the same configuration
    /// assert!(!std::ptr::eq(a.get(), b.get())); // two values
    /// ```
    pub fn detached(&self) -> Self {
        ForkLocal {
            init: self.init.clone(),
            shared: Published::new(),
        }
    }
}

/// Installs an empty slot owned by `me` in `cell`, forgetting (leaking) an inherited one.
#[cold]
fn install<T>(cell: &Published<Slot<T>>, me: *const Process) -> &Slot<T> {
    let mut fresh = Box::new(Slot {
        owner: me,
        value: OnceLock::new(),
        building: Mutex::new(()),
    });
    let mut seen = cell.get();
    loop {
        if let Some(slot) = seen.filter(|slot| slot.owner == me) {
            // Another thread (or clone) of this process installed first; `fresh` is dropped
            // unseen.
            return slot;
        }
        // `seen` is empty or inherited: replace it; the cell leaks it (invariant 2).
        match cell.publish(seen, fresh) {
            Ok(slot) => return slot,
            Err(Refused { value, current }) => (fresh, seen) = (value, current),
        }
    }
}

/// A clone shares the initialiser **and the value**: in every process, the original and all its
/// clones see one value, built once in that process by whichever of them is used first (in a
/// child, the child's own value; the parent's clones keep the parent's). For a value of its
/// own, see [`ForkLocal::detached`].
///
/// ```
/// use forksafe::ForkLocal;
///
/// let endpoint = String::from("http://127.0.0.1:9000");
/// let a = ForkLocal::with_init(move || (endpoint.clone(), Box::new(0u8)));
/// let b = a.clone();
/// assert!(std::ptr::eq(a.get(), b.get())); // one value
/// ```
impl<T, E> Clone for ForkLocal<T, E> {
    fn clone(&self) -> Self {
        let clone = ForkLocal {
            init: self.init.clone(),
            shared: Published::new(),
        };
        clone.shared.replace(Box::new(Arc::clone(self.cell())));
        clone
    }
}

impl<T, E> Drop for ForkLocal<T, E> {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        // The last clone (in this process's memory) decides what becomes of the slot.
        let Some(mut cell) = Arc::into_inner(*shared) else {
            return;
        };
        let Some(slot) = cell.take() else {
            return;
        };
        if !std::ptr::eq(slot.owner, guard::current()) {
            // Inherited: leaked, as everything inherited is (invariant 2).
            Box::leak(slot);
        }
        // Otherwise built by this process: dropped here.
    }
}

/// A [`ForkLocal`] that **fails at construction, never at access**: [`Prebuilt::try_new`] builds
/// this process's value at once and returns the error if it fails, and [`get`](Prebuilt::get)
/// then hands out `&T` without a `Result`.
///
/// The shape of a client whose construction can fail but whose accessors cannot: build it in
/// `try_new` (an invalid certificate or URL is the caller's error, now), then use it
/// everywhere without an `expect`. Clones share the value, as [`ForkLocal`]'s do.
///
/// **In a child** the value is rebuilt on first access, by the same initialiser. The
/// configuration already built once, so this fails only if the child lacks what the parent had
/// (file descriptors, memory, a certificate file deleted since). Then:
///
/// - [`try_get`](Prebuilt::try_get) returns the error, and caches nothing: the next call
///   tries again;
/// - [`get`](Prebuilt::get) **panics** with that error (nothing cached either; a later call
///   tries again). Code that must never panic (a `#[pyfunction]`, anything behind an FFI
///   boundary) calls `try_get` and returns the error: PyO3 turns a panic into a
///   `PanicException`, but a panic is still the wrong way to report "out of file
///   descriptors".
///
/// ```
/// use forksafe::Prebuilt;
///
/// struct Client {
///     endpoint: String,
/// }
///
/// fn connect(endpoint: &str) -> Result<Client, String> {
///     match endpoint.strip_prefix("http://") {
///         Some(_) => Ok(Client { endpoint: endpoint.to_owned() }),
///         None => Err(format!("not an http endpoint: {endpoint}")),
///     }
/// }
///
/// #[derive(Clone)]
/// struct Store {
///     client: Prebuilt<Client, String>,
/// }
///
/// impl Store {
///     fn try_new(endpoint: &str) -> Result<Self, String> {
///         let endpoint = endpoint.to_owned();
///         Ok(Store { client: Prebuilt::try_new(move || connect(&endpoint))? })
///     }
///
///     fn endpoint(&self) -> &str {
///         &self.client.get().endpoint // no Result here: it was checked in try_new
///     }
/// }
///
/// assert!(Store::try_new("ftp://example").is_err()); // fails at construction
/// let store = Store::try_new("http://127.0.0.1:9000").unwrap();
/// assert_eq!(store.endpoint(), "http://127.0.0.1:9000");
/// assert!(std::ptr::eq(store.client.get(), store.clone().client.get())); // clones share it
/// ```
///
/// **A client from a builder that is not `Clone`** (`reqwest::ClientBuilder`): keep the plain
/// configuration (a `Clone` struct: certificates as bytes, timeouts, names), never the builder,
/// and move the builder code into the initialiser, which runs once per process. This one is
/// compiled (not run: forksafe's reqwest has no TLS crypto provider installed) with the
/// feature `object-store-0-14`:
///
/// ```no_run
/// # #[cfg(feature = "object-store-0-14")] {
/// # use reqwest_0_13 as reqwest;
/// use std::time::Duration;
///
/// use forksafe::Prebuilt;
///
/// /// Everything that builds the client: plain data, copied into a child by fork.
/// #[derive(Clone, Debug)]
/// struct HttpConfig {
///     /// A private CA's root certificates (PEM), read once by the process that built this.
///     root_pems: Vec<Vec<u8>>,
///     timeout: Duration,
///     connect_timeout: Duration,
///     user_agent: String,
/// }
///
/// impl HttpConfig {
///     /// The `ClientBuilder` code that used to run once, now run once per process.
///     fn build(&self) -> reqwest::Result<reqwest::Client> {
///         let mut builder = reqwest::Client::builder()
///             .timeout(self.timeout)
///             .connect_timeout(self.connect_timeout)
///             .user_agent(&self.user_agent);
///         for pem in &self.root_pems {
///             builder = builder.add_root_certificate(reqwest::Certificate::from_pem(pem)?);
///         }
///         builder.build()
///     }
/// }
///
/// /// Cloned per table, as LanceDB clones its client: the clones share one pool per process.
/// #[derive(Clone)]
/// struct RestClient {
///     base: String,
///     http: Prebuilt<reqwest::Client, reqwest::Error>,
/// }
///
/// impl RestClient {
///     /// A bad certificate fails here, in the constructor.
///     fn try_new(base: &str, config: HttpConfig) -> reqwest::Result<Self> {
///         let http = Prebuilt::try_new(move || config.build())?;
///         Ok(RestClient { base: base.to_owned(), http })
///     }
///
///     async fn get(&self, path: &str) -> reqwest::Result<String> {
///         // `try_get`, not `get`: in a child this builds the child's own client, and its
///         // error (out of file descriptors) is returned, not panicked across FFI.
///         let http = self.http.try_get()?;
///         http.get(format!("{}{path}", self.base)).send().await?.text().await
///     }
/// }
///
/// let pem = std::fs::read("/etc/my-ca.pem").unwrap();
/// let config = HttpConfig {
///     root_pems: vec![pem],
///     timeout: Duration::from_secs(30),
///     connect_timeout: Duration::from_secs(5),
///     user_agent: "my-ext/1.0".to_owned(),
/// };
/// let client = RestClient::try_new("https://db.internal", config).unwrap();
/// let table = client.clone(); // the same pool
/// let body = forksafe::block_on(table.get("/v1/tables")).unwrap();
/// # drop((client, body));
/// # }
/// ```
pub struct Prebuilt<T, E> {
    local: ForkLocal<T, E>,
}

impl<T, E> Prebuilt<T, E> {
    /// Builds this process's value now with `init`; `init` rebuilds it in each child, on first
    /// access there.
    ///
    /// # Errors
    ///
    /// What `init` returned: nothing is kept, the caller holds no `Prebuilt`.
    ///
    /// ```
    /// let port = forksafe::Prebuilt::try_new(|| "8080".parse::<u16>()).unwrap();
    /// assert_eq!(*port.get(), 8080);
    /// assert!(forksafe::Prebuilt::try_new(|| "http".parse::<u16>()).is_err());
    /// ```
    pub fn try_new(init: impl Fn() -> Result<T, E> + Send + Sync + 'static) -> Result<Self, E> {
        let local = ForkLocal::try_with_init(init);
        local.try_get()?;
        Ok(Prebuilt { local })
    }

    /// This process's value: the one built by `try_new`, or in a child, its own, built on first
    /// access.
    ///
    /// # Panics
    ///
    /// Only in a process other than the one that called `try_new` (a forked child), and only
    /// if the initialiser fails there; the message carries its error. Nothing is cached: the
    /// next call tries again. Use [`try_get`](Prebuilt::try_get) where a panic must not
    /// happen.
    ///
    /// ```
    /// let name = forksafe::Prebuilt::try_new(|| Ok::<_, String>(String::from("lance"))).unwrap();
    /// assert_eq!(name.get(), "lance");
    /// ```
    #[inline]
    pub fn get(&self) -> &T
    where
        E: fmt::Display,
    {
        match self.local.try_get() {
            Ok(value) => value,
            Err(e) => rebuild_failed(&e),
        }
    }

    /// This process's value, or the error of this process's rebuild (in a child).
    ///
    /// # Errors
    ///
    /// What the initialiser returned in this process; never in the process that called
    /// `try_new`. Not cached: the next call tries again.
    ///
    /// ```
    /// let n = forksafe::Prebuilt::try_new(|| Ok::<u8, String>(7)).unwrap();
    /// assert_eq!(n.try_get(), Ok(&7));
    /// ```
    #[inline]
    pub fn try_get(&self) -> Result<&T, E> {
        self.local.try_get()
    }

    /// The value, if this process already built it (the constructing process always has).
    ///
    /// ```
    /// let n = forksafe::Prebuilt::try_new(|| Ok::<u8, String>(7)).unwrap();
    /// assert_eq!(n.get_if_built(), Some(&7));
    /// ```
    pub fn get_if_built(&self) -> Option<&T> {
        self.local.get_if_built()
    }
}

#[cold]
#[inline(never)]
fn rebuild_failed(error: &dyn fmt::Display) -> ! {
    panic!(
        "forksafe::Prebuilt: process {} could not rebuild its value (built and checked in an \
         ancestor): {error}; call try_get() to get this error instead of a panic",
        guard::current().pid()
    )
}

/// A clone shares the value, as [`ForkLocal`]'s clone does.
///
/// ```
/// let a = forksafe::Prebuilt::try_new(|| Ok::<_, String>(Box::new(1))).unwrap();
/// assert!(std::ptr::eq(a.get(), a.clone().get()));
/// ```
impl<T, E> Clone for Prebuilt<T, E> {
    fn clone(&self) -> Self {
        Prebuilt {
            local: self.local.clone(),
        }
    }
}

impl<T: fmt::Debug, E> fmt::Debug for Prebuilt<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prebuilt")
            .field("value", &self.get_if_built())
            .finish()
    }
}

impl<T: fmt::Debug, E> fmt::Debug for ForkLocal<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForkLocal")
            .field("value", &self.get_if_built())
            .finish()
    }
}
