//! `forksafe_objstore._native`: an S3 reader on [object_store] that survives `fork()`.
//!
//! The reference integration of forksafe (walked through in `docs/extension-authors.md`):
//!
//! - each [`Store`] is built once, where Python builds it, by object_store's plain
//!   `AmazonS3Builder` plus one line, `.with_http_connector(ForkLocalConnector::default())`
//!   ([`forksafe::object_store`]): a child that inherits the `Store` gets its own HTTP client
//!   (connection pool, TLS state, credential fetches) on first use and never uses (or drops) the
//!   parent's;
//! - the async methods go through [`forksafe::python::future_into_py`], the sync ones through
//!   [`forksafe::python::block_on`] (GIL released); both run on this process's runtime.
//!
//! `Store.s3(..., object_store="0.13" | "0.14")` picks the object_store minor (both are linked,
//! one macro body per minor) and `connector=` the connector: `"fork-local"` (the default),
//! `"spawned"` (forksafe's `SpawnedConnector`), `"reqwest"` (object_store's plain connector: the
//! negative control) or `"fork-local-store"` (the recipe for clients with no connector hook: the
//! whole store in a per-instance [`forksafe::ForkLocal`]).
//!
//! With the cargo feature `control` the same module is built the naive way: the plain connector
//! by default, on `pyo3_async_runtimes::tokio`'s process-global runtime. It exists only so the
//! fork tests can show what they guard against; it is never shipped.

use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

create_exception!(
    forksafe_objstore,
    ObjectStoreError,
    PyException,
    "Any error of the object store; the subclasses name the common ones."
);
create_exception!(
    forksafe_objstore,
    KeyNotFoundError,
    ObjectStoreError,
    "The key does not exist in the bucket (HTTP 404)."
);
create_exception!(
    forksafe_objstore,
    CredentialsError,
    ObjectStoreError,
    "The endpoint refused the credentials (HTTP 401 or 403)."
);
create_exception!(
    forksafe_objstore,
    EndpointUnreachableError,
    ObjectStoreError,
    "No connection to the endpoint (refused, unreachable or timed out), after the retries."
);

/// Everything a process needs to build its own client: plain data, safe to copy into a child.
#[derive(Clone, Debug)]
struct S3Config {
    bucket: String,
    endpoint: String,
    access_key_id: String,
    secret_access_key: String,
    region: String,
    allow_http: bool,
    connector: Connector,
    version: Version,
    /// Where the instance-metadata credential provider asks (used when no key is given).
    metadata_endpoint: Option<String>,
    /// The system's root certificates (DER), read once by the process that built the `Store`
    /// and inherited as plain data: with object_store 0.14 each process's client build takes
    /// them from memory instead of reading and decoding the system bundle again. Empty: the
    /// client reads the system's roots itself (`roots="per-process"`, and always with 0.13,
    /// whose `ClientOptions` cannot turn that off).
    roots: Arc<Vec<Vec<u8>>>,
}

/// The system's root certificates as DER, read now (empty if none could be read: the client
/// then reads them itself).
fn system_roots() -> Vec<Vec<u8>> {
    let found = rustls_native_certs::load_native_certs();
    found
        .certs
        .into_iter()
        .map(|c| c.as_ref().to_vec())
        .collect()
}

/// Which object_store minor the store is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V0_13,
    V0_14,
}

impl Version {
    fn parse(text: &str) -> PyResult<Self> {
        match text {
            "0.13" => Ok(Version::V0_13),
            "0.14" => Ok(Version::V0_14),
            _ => Err(PyValueError::new_err(format!(
                "object_store={text:?}: expected \"0.13\" or \"0.14\""
            ))),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Version::V0_13 => "0.13",
            Version::V0_14 => "0.14",
        }
    }
}

/// How the store's HTTP client is made per process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Connector {
    /// The main path, one line: `.with_http_connector(ForkLocalConnector::default())`.
    ForkLocal,
    /// `.with_http_connector(SpawnedConnector::default())`: requests on forksafe's runtime.
    Spawned,
    /// object_store's plain `ReqwestConnector`: the client built in the parent is shared with
    /// every child. The negative control; never a choice for real code.
    Reqwest,
    /// The recipe for clients with no connector hook: the whole store in a per-instance
    /// `ForkLocal`, rebuilt from its configuration in each process.
    ForkLocalStore,
}

impl Connector {
    fn parse(text: &str) -> PyResult<Self> {
        match text {
            "fork-local" => Ok(Connector::ForkLocal),
            "spawned" => Ok(Connector::Spawned),
            "reqwest" => Ok(Connector::Reqwest),
            "fork-local-store" => Ok(Connector::ForkLocalStore),
            _ => Err(PyValueError::new_err(format!(
                "connector={text:?}: expected \"fork-local\", \"spawned\", \"reqwest\" or \
                 \"fork-local-store\""
            ))),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Connector::ForkLocal => "fork-local",
            Connector::Spawned => "spawned",
            Connector::Reqwest => "reqwest",
            Connector::ForkLocalStore => "fork-local-store",
        }
    }
}

/// The store for one object_store minor: the same source expanded per version (`os` and
/// `connectors` name the minor's crates in the expanding module).
macro_rules! s3_for_version {
    () => {
        use std::time::Duration;

        use bytes::Bytes;
        use futures::TryStreamExt;
        use os::aws::{AmazonS3, AmazonS3Builder};
        use os::path::Path;
        use os::{
            BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
        };
        use pyo3::exceptions::PyValueError;
        use pyo3::PyErr;

        use super::{
            is_unreachable, Connector, CredentialsError, EndpointUnreachableError,
            KeyNotFoundError, ObjectStoreError, S3Config,
        };

        /// The store's HTTP client options (each process's client is built from them).
        pub fn options(config: &S3Config) -> ClientOptions {
            with_roots(ClientOptions::new(), config)
                .with_allow_http(config.allow_http)
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(60))
        }

        /// Benchmark probe: one client built as a process's first request builds it.
        pub fn build_client(config: &S3Config) -> Result<(), String> {
            use os::client::HttpConnector;
            os::client::ReqwestConnector::default()
                .connect(&options(config))
                .map(drop)
                .map_err(|e| e.to_string())
        }

        /// Builds the store (no connection yet). Every connector but `Reqwest` makes it work
        /// in any child of the process that built it.
        pub fn build(config: &S3Config) -> os::Result<AmazonS3> {
            let mut builder = AmazonS3Builder::new()
                .with_bucket_name(&config.bucket)
                .with_endpoint(&config.endpoint)
                .with_region(&config.region)
                .with_allow_http(config.allow_http)
                .with_client_options(options(config))
                // Fail an unreachable endpoint in about a second, not object_store's minutes.
                .with_retry(RetryConfig {
                    backoff: BackoffConfig {
                        init_backoff: Duration::from_millis(50),
                        max_backoff: Duration::from_millis(500),
                        base: 2.0,
                    },
                    max_retries: 3,
                    retry_timeout: Duration::from_secs(30),
                });
            if !config.access_key_id.is_empty() {
                builder = builder
                    .with_access_key_id(&config.access_key_id)
                    .with_secret_access_key(&config.secret_access_key);
            }
            if let Some(endpoint) = &config.metadata_endpoint {
                builder = builder.with_metadata_endpoint(endpoint);
            }
            builder = match config.connector {
                // The one line.
                Connector::ForkLocal | Connector::ForkLocalStore => {
                    builder.with_http_connector(connectors::ForkLocalConnector::default())
                }
                Connector::Spawned => {
                    builder.with_http_connector(connectors::SpawnedConnector::default())
                }
                Connector::Reqwest => {
                    builder.with_http_connector(os::client::ReqwestConnector::default())
                }
            };
            builder.build()
        }

        /// Is `e` this minor's `HttpError` of a kind that means "no connection"?
        fn is_http_unreachable(e: &(dyn std::error::Error + 'static)) -> bool {
            use os::client::{HttpError, HttpErrorKind};
            e.downcast_ref::<HttpError>().is_some_and(|h| {
                matches!(h.kind(), HttpErrorKind::Connect | HttpErrorKind::Timeout)
            })
        }

        /// The typed Python exception for an object-store error on `key`.
        fn store_error(key: &str, error: os::Error) -> PyErr {
            use os::Error as E;
            match &error {
                E::NotFound { .. } => {
                    KeyNotFoundError::new_err(format!("{key:?}: no such key ({error})"))
                }
                E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                    CredentialsError::new_err(format!("{key:?}: credentials refused ({error})"))
                }
                E::InvalidPath { .. } => {
                    PyValueError::new_err(format!("{key:?}: invalid key ({error})"))
                }
                _ if is_unreachable(&error, is_http_unreachable) => {
                    EndpointUnreachableError::new_err(format!(
                        "{key:?}: endpoint unreachable ({error})"
                    ))
                }
                // Listing maps every HTTP status onto `Generic`; only the message still has it.
                _ if {
                    let text = error.to_string();
                    text.contains("status code: 403") || text.contains("status code: 401")
                } =>
                {
                    CredentialsError::new_err(format!("{key:?}: credentials refused ({error})"))
                }
                _ => ObjectStoreError::new_err(format!("{key:?}: {error}")),
            }
        }

        fn parse_key(key: &str) -> Result<Path, PyErr> {
            Path::parse(key)
                .map_err(|e| PyValueError::new_err(format!("{key:?}: invalid key ({e})")))
        }

        pub async fn get(store: &AmazonS3, key: &str) -> Result<Bytes, PyErr> {
            let path = parse_key(key)?;
            let result = store.get(&path).await.map_err(|e| store_error(key, e))?;
            result.bytes().await.map_err(|e| store_error(key, e))
        }

        pub async fn put(store: &AmazonS3, key: &str, data: Bytes) -> Result<(), PyErr> {
            let path = parse_key(key)?;
            store
                .put(&path, PutPayload::from_bytes(data))
                .await
                .map_err(|e| store_error(key, e))?;
            Ok(())
        }

        pub async fn list(store: &AmazonS3, prefix: &str) -> Result<Vec<String>, PyErr> {
            let path = if prefix.is_empty() {
                None
            } else {
                Some(parse_key(prefix)?)
            };
            let metas: Vec<_> = store
                .list(path.as_ref())
                .try_collect()
                .await
                .map_err(|e| store_error(prefix, e))?;
            Ok(metas.into_iter().map(|m| m.location.to_string()).collect())
        }
    };
}

mod v0_13 {
    use forksafe::object_store::v0_13 as connectors;
    use object_store_0_13 as os;

    s3_for_version!();

    /// 0.13's client always reads the system's roots itself (reqwest 0.12's built-in roots
    /// cannot be turned off through `ClientOptions`): nothing to pass in.
    fn with_roots(options: os::ClientOptions, _: &S3Config) -> os::ClientOptions {
        options
    }
}

mod v0_14 {
    use forksafe::object_store::v0_14 as connectors;
    use object_store_0_14 as os;

    s3_for_version!();

    /// The roots the `Store` carries, instead of the system's read again by each client build.
    fn with_roots(mut options: os::ClientOptions, config: &S3Config) -> os::ClientOptions {
        let roots: Vec<_> = config
            .roots
            .iter()
            .filter_map(|der| os::Certificate::from_der(der).ok())
            .collect();
        if roots.is_empty() {
            return options;
        }
        options = options.with_no_system_certificates(true);
        for root in roots {
            options = options.with_root_certificate(root);
        }
        options
    }
}

/// A built store of either minor.
#[derive(Clone)]
enum S3 {
    V0_13(object_store_0_13::aws::AmazonS3),
    V0_14(object_store_0_14::aws::AmazonS3),
}

impl S3 {
    fn build(config: &S3Config) -> Result<S3, String> {
        match config.version {
            Version::V0_13 => v0_13::build(config)
                .map(S3::V0_13)
                .map_err(|e| e.to_string()),
            Version::V0_14 => v0_14::build(config)
                .map(S3::V0_14)
                .map_err(|e| e.to_string()),
        }
    }

    async fn get(&self, key: &str) -> PyResult<Bytes> {
        match self {
            S3::V0_13(s) => v0_13::get(s, key).await,
            S3::V0_14(s) => v0_14::get(s, key).await,
        }
    }

    async fn put(&self, key: &str, data: Bytes) -> PyResult<()> {
        match self {
            S3::V0_13(s) => v0_13::put(s, key, data).await,
            S3::V0_14(s) => v0_14::put(s, key, data).await,
        }
    }

    async fn list(&self, prefix: &str) -> PyResult<Vec<String>> {
        match self {
            S3::V0_13(s) => v0_13::list(s, prefix).await,
            S3::V0_14(s) => v0_14::list(s, prefix).await,
        }
    }
}

/// Where a `Store`'s client lives. Cloning it is cheap and shares the client: a store's clones
/// share one connection pool, and so do a `ForkLocal`'s (or `Prebuilt`'s) clones, per process.
#[derive(Clone)]
enum Client {
    /// The main path: the store built once, where the `Store` was built, with a connector
    /// (`ForkLocalConnector`, `SpawnedConnector`, or the control's plain `ReqwestConnector`).
    /// A child uses the same store object; the connector decides whose HTTP client it gets.
    Built(S3),
    /// The recipe for clients with no connector hook: one store per process, built from the
    /// captured configuration. `Prebuilt` builds this process's store at construction (a bad
    /// configuration fails there); a child builds its own on first use and never touches the
    /// inherited one. A child's failed build is returned by `try_get` (never a panic across
    /// FFI) and tried again on the next call, never cached.
    PerProcess(forksafe::Prebuilt<S3, String>),
}

impl Client {
    fn new(config: S3Config) -> Result<Self, String> {
        if config.connector == Connector::ForkLocalStore {
            forksafe::Prebuilt::try_new(move || S3::build(&config)).map(Client::PerProcess)
        } else {
            S3::build(&config).map(Client::Built)
        }
    }

    fn get(&self) -> Result<&S3, String> {
        match self {
            Client::Built(s3) => Ok(s3),
            Client::PerProcess(local) => local.try_get(),
        }
    }
}

/// The two ways into the runtime: forksafe's, or (control) pyo3-async-runtimes' global one.
#[cfg(not(feature = "control"))]
mod rt {
    pub use forksafe::python::{block_on, future_into_py};
}

#[cfg(feature = "control")]
mod rt {
    use std::future::Future;

    use pyo3::prelude::*;

    pub fn future_into_py<F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
    where
        F: Future<Output = PyResult<T>> + Send + 'static,
        T: for<'py> IntoPyObject<'py> + Send + 'static,
    {
        pyo3_async_runtimes::tokio::future_into_py(py, fut)
    }

    pub fn block_on<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
    where
        F: Future<Output = PyResult<T>> + Send,
        T: Send,
    {
        py.detach(|| pyo3_async_runtimes::tokio::get_runtime().block_on(fut))
    }
}

/// An object's contents, converted to Python `bytes` once the GIL is held.
struct Object(Bytes);

impl<'py> IntoPyObject<'py> for Object {
    type Target = PyBytes;
    type Output = Bound<'py, PyBytes>;
    type Error = std::convert::Infallible;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        Ok(PyBytes::new(py, &self.0))
    }
}

/// Is there an error in `error`'s chain that means "no connection to the endpoint"? `http`
/// recognises the object_store minor's own `HttpError` of kind connect or timeout.
fn is_unreachable(
    error: &(dyn StdError + 'static),
    http: impl Fn(&(dyn StdError + 'static)) -> bool,
) -> bool {
    use std::io::ErrorKind as K;
    let mut next: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                K::ConnectionRefused
                    | K::TimedOut
                    | K::HostUnreachable
                    | K::NetworkUnreachable
                    | K::AddrNotAvailable
            ) {
                return true;
            }
        }
        if http(e) {
            return true;
        }
        next = e.source();
    }
    false
}

fn client_error(key: &str, error: String) -> PyErr {
    ObjectStoreError::new_err(format!("{key:?}: cannot build the S3 client: {error}"))
}

/// A bucket on an S3-compatible endpoint. Safe to build before fork and use in any child.
#[pyclass(frozen, module = "forksafe_objstore._native")]
struct Store {
    config: S3Config,
    client: Client,
}

impl Store {
    fn from_config(config: S3Config) -> PyResult<Self> {
        // Builds this process's store now, so a bad configuration fails here, not at first
        // use (with a connector this builds no HTTP client yet: that is per process).
        let client = Client::new(config.clone()).map_err(|e| client_error("", e))?;
        Ok(Store { config, client })
    }

    /// The future of one `get`: it resolves the client in the process that runs it.
    fn get_future(&self, key: String) -> impl Future<Output = PyResult<Object>> + Send + 'static {
        let client = self.client.clone();
        async move {
            let store = client.get().map_err(|e| client_error(&key, e))?;
            Ok(Object(store.get(&key).await?))
        }
    }

    fn put_future(
        &self,
        key: String,
        data: Bytes,
    ) -> impl Future<Output = PyResult<()>> + Send + 'static {
        let client = self.client.clone();
        async move {
            let store = client.get().map_err(|e| client_error(&key, e))?;
            store.put(&key, data).await
        }
    }

    fn list_future(
        &self,
        prefix: String,
    ) -> impl Future<Output = PyResult<Vec<String>>> + Send + 'static {
        let client = self.client.clone();
        async move {
            let store = client.get().map_err(|e| client_error(&prefix, e))?;
            store.list(&prefix).await
        }
    }
}

/// The connector a `Store` gets when none is named: the one line, or (control) the plain one.
const DEFAULT_CONNECTOR: &str = if cfg!(feature = "control") {
    "reqwest"
} else {
    "fork-local"
};

#[pymethods]
impl Store {
    /// A store for `bucket` on an S3-compatible endpoint. Static credentials, or (with empty
    /// keys) object_store's credential chain, asking `metadata_endpoint` for instance
    /// credentials. `connector` picks how each process gets its HTTP client, `object_store`
    /// the object_store minor (`"0.13"` or `"0.14"`).
    #[staticmethod]
    #[pyo3(signature = (bucket, *, endpoint, access_key_id, secret_access_key, region = "us-east-1".to_owned(), allow_http = true, connector = DEFAULT_CONNECTOR.to_owned(), object_store = "0.14".to_owned(), metadata_endpoint = None, roots = "inherited".to_owned()))]
    #[allow(clippy::too_many_arguments)]
    fn s3(
        py: Python<'_>,
        bucket: String,
        endpoint: String,
        access_key_id: String,
        secret_access_key: String,
        region: String,
        allow_http: bool,
        connector: String,
        object_store: String,
        metadata_endpoint: Option<String>,
        roots: String,
    ) -> PyResult<Self> {
        let version = Version::parse(&object_store)?;
        let roots = match (roots.as_str(), version) {
            ("inherited", Version::V0_14) => py.detach(system_roots),
            ("inherited" | "per-process", _) => Vec::new(),
            _ => {
                return Err(PyValueError::new_err(format!(
                    "roots={roots:?}: expected \"inherited\" or \"per-process\""
                )))
            }
        };
        Store::from_config(S3Config {
            bucket,
            endpoint,
            access_key_id,
            secret_access_key,
            region,
            allow_http,
            connector: Connector::parse(&connector)?,
            version,
            metadata_endpoint,
            roots: Arc::new(roots),
        })
    }

    /// `await store.get(key)`: the object's bytes.
    fn get<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        rt::future_into_py(py, self.get_future(key))
    }

    /// `await store.put(key, data)`.
    fn put<'py>(&self, py: Python<'py>, key: String, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        let data = Bytes::copy_from_slice(data);
        rt::future_into_py(py, self.put_future(key, data))
    }

    /// `await store.list(prefix)`: the keys under `prefix` (all keys by default).
    #[pyo3(signature = (prefix = String::new()))]
    fn list<'py>(&self, py: Python<'py>, prefix: String) -> PyResult<Bound<'py, PyAny>> {
        rt::future_into_py(py, self.list_future(prefix))
    }

    /// The object's bytes, on the calling thread with the GIL released.
    fn get_sync<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyBytes>> {
        let Object(bytes) = rt::block_on(py, self.get_future(key))?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Stores `data` under `key`, on the calling thread with the GIL released.
    fn put_sync(&self, py: Python<'_>, key: String, data: &[u8]) -> PyResult<()> {
        let data = Bytes::copy_from_slice(data);
        rt::block_on(py, self.put_future(key, data))
    }

    /// The keys under `prefix`, on the calling thread with the GIL released.
    #[pyo3(signature = (prefix = String::new()))]
    fn list_sync(&self, py: Python<'_>, prefix: String) -> PyResult<Vec<String>> {
        rt::block_on(py, self.list_future(prefix))
    }

    #[getter]
    fn connector(&self) -> &'static str {
        self.config.connector.as_str()
    }

    #[getter]
    fn object_store(&self) -> &'static str {
        self.config.version.as_str()
    }

    #[getter]
    fn bucket(&self) -> &str {
        &self.config.bucket
    }

    #[getter]
    fn endpoint(&self) -> &str {
        &self.config.endpoint
    }

    /// Pickling (for `spawn`/`forkserver` workers) carries the configuration, credentials
    /// included; the receiving process builds its own client.
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let c = &self.config;
        let rebuild = py.get_type::<Store>().getattr("_rebuild")?;
        let args = (
            c.bucket.clone(),
            c.endpoint.clone(),
            c.access_key_id.clone(),
            c.secret_access_key.clone(),
            c.region.clone(),
            c.allow_http,
            c.connector.as_str(),
            c.version.as_str(),
            c.metadata_endpoint.clone(),
        );
        (rebuild, args).into_pyobject(py)
    }

    #[staticmethod]
    #[pyo3(signature = (bucket, endpoint, access_key_id, secret_access_key, region, allow_http, connector = DEFAULT_CONNECTOR.to_owned(), object_store = "0.14".to_owned(), metadata_endpoint = None))]
    #[allow(clippy::too_many_arguments)]
    fn _rebuild(
        py: Python<'_>,
        bucket: String,
        endpoint: String,
        access_key_id: String,
        secret_access_key: String,
        region: String,
        allow_http: bool,
        connector: String,
        object_store: String,
        metadata_endpoint: Option<String>,
    ) -> PyResult<Self> {
        Store::s3(
            py,
            bucket,
            endpoint,
            access_key_id,
            secret_access_key,
            region,
            allow_http,
            connector,
            object_store,
            metadata_endpoint,
            "inherited".to_owned(),
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "Store.s3({:?}, endpoint={:?}, connector={:?}, object_store={:?})",
            self.config.bucket,
            self.config.endpoint,
            self.config.connector.as_str(),
            self.config.version.as_str()
        )
    }
}

/// This extension's own forksafe state in this process (its copy of forksafe is separate from
/// `forksafe._native`'s): PID, depth, runtimes built and inherited, guard mode. The control
/// build reports `None`.
#[pyfunction]
fn _process_info(py: Python<'_>) -> PyResult<Option<Bound<'_, PyDict>>> {
    if cfg!(feature = "control") {
        return Ok(None);
    }
    let info = forksafe::process_info();
    let dict = PyDict::new(py);
    dict.set_item("pid", info.pid)?;
    dict.set_item("depth", info.depth)?;
    dict.set_item("runtimes_built", info.runtimes_built)?;
    let inherited: Vec<(u32, u32)> = info
        .inherited_runtimes
        .iter()
        .map(|r| (r.pid, r.generations_back))
        .collect();
    dict.set_item("inherited_runtimes", inherited)?;
    dict.set_item("guard", info.guard.mode.as_str())?;
    Ok(Some(dict))
}

/// Benchmark probe (benches/objstore.py): builds this process's forksafe runtime if it is not
/// built yet, so the first request's time can be split into its parts.
#[pyfunction]
fn _build_runtime(py: Python<'_>) -> PyResult<()> {
    if cfg!(feature = "control") {
        return Ok(());
    }
    py.detach(forksafe::runtime)
        .map(|_| ())
        .map_err(forksafe::python::to_py_err)
}

/// Benchmark probe: builds and drops one HTTP client the way the connector builds a process's
/// client for `store` (object_store's `ReqwestConnector` with the store's client options).
#[pyfunction]
fn _build_client(py: Python<'_>, store: &Store) -> PyResult<()> {
    let config = store.config.clone();
    py.detach(move || match config.version {
        Version::V0_13 => v0_13::build_client(&config),
        Version::V0_14 => v0_14::build_client(&config),
    })
    .map_err(|e| client_error("", e))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // object_store 0.14's rustls provider: once per lineage, plain data (a child inherits it).
    // Err means one is installed already (another extension in this process): keep that one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    #[cfg(not(feature = "control"))]
    forksafe::configure(
        forksafe::RuntimeConfig::new()
            .worker_threads(2)
            .thread_name("objstore"),
    )
    .map_err(forksafe::python::to_py_err)?;
    let py = m.py();
    m.add_class::<Store>()?;
    m.add("ObjectStoreError", py.get_type::<ObjectStoreError>())?;
    m.add("KeyNotFoundError", py.get_type::<KeyNotFoundError>())?;
    m.add("CredentialsError", py.get_type::<CredentialsError>())?;
    m.add(
        "EndpointUnreachableError",
        py.get_type::<EndpointUnreachableError>(),
    )?;
    m.add_function(wrap_pyfunction!(_process_info, m)?)?;
    m.add_function(wrap_pyfunction!(_build_runtime, m)?)?;
    m.add_function(wrap_pyfunction!(_build_client, m)?)?;
    m.add("CONTROL", cfg!(feature = "control"))?;
    Ok(())
}
