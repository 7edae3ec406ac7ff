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
use std::sync::{Arc, Mutex, PoisonError};

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

create_exception!(
    forksafe_objstore,
    InheritedWriterError,
    ObjectStoreError,
    "A writer used by a process other than the one that started it (a forked child): the upload \
     is the parent's, and a child must not write, complete or abort it."
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
            BackoffConfig, ClientOptions, MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload,
            RetryConfig,
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

        /// A writer of this minor: one multipart upload, or object_store's `BufWriter`.
        pub enum Writer {
            Multipart(Box<dyn os::MultipartUpload>),
            Buffered(Box<os::buffered::BufWriter>),
        }

        /// Starts a writer for `key`: a multipart upload (created now, each `write` one part),
        /// or a `BufWriter` of `capacity` bytes (a single PUT, or parts of `capacity` bytes
        /// uploaded in the background once more than that is written).
        pub async fn writer(
            store: &AmazonS3,
            key: &str,
            buffered: Option<usize>,
        ) -> Result<Writer, PyErr> {
            let path = parse_key(key)?;
            match buffered {
                Some(capacity) => {
                    let store: std::sync::Arc<dyn ObjectStore> = std::sync::Arc::new(store.clone());
                    Ok(Writer::Buffered(Box::new(
                        os::buffered::BufWriter::with_capacity(store, path, capacity),
                    )))
                }
                None => Ok(Writer::Multipart(
                    store
                        .put_multipart(&path)
                        .await
                        .map_err(|e| store_error(key, e))?,
                )),
            }
        }

        impl Writer {
            pub async fn write(&mut self, key: &str, data: Bytes) -> Result<(), PyErr> {
                match self {
                    Writer::Multipart(upload) => upload
                        .put_part(PutPayload::from_bytes(data))
                        .await
                        .map_err(|e| store_error(key, e)),
                    Writer::Buffered(writer) => {
                        writer.put(data).await.map_err(|e| store_error(key, e))
                    }
                }
            }

            /// Completes the object; the ETag the endpoint returned for it (a `BufWriter`
            /// reports none).
            pub async fn complete(&mut self, key: &str) -> Result<Option<String>, PyErr> {
                match self {
                    Writer::Multipart(upload) => upload
                        .complete()
                        .await
                        .map(|done| done.e_tag)
                        .map_err(|e| store_error(key, e)),
                    Writer::Buffered(writer) => {
                        let mut writer = std::pin::Pin::new(writer);
                        std::future::poll_fn(|cx| {
                            tokio::io::AsyncWrite::poll_shutdown(writer.as_mut(), cx)
                        })
                        .await
                        .map_err(|e| ObjectStoreError::new_err(format!("{key:?}: {e}")))?;
                        Ok(None)
                    }
                }
            }

            pub async fn abort(&mut self, key: &str) -> Result<(), PyErr> {
                match self {
                    Writer::Multipart(upload) => {
                        upload.abort().await.map_err(|e| store_error(key, e))
                    }
                    Writer::Buffered(writer) => {
                        writer.abort().await.map_err(|e| store_error(key, e))
                    }
                }
            }
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

    async fn writer(&self, key: &str, buffered: Option<usize>) -> PyResult<Inner> {
        match self {
            S3::V0_13(s) => v0_13::writer(s, key, buffered).await.map(Inner::V0_13),
            S3::V0_14(s) => v0_14::writer(s, key, buffered).await.map(Inner::V0_14),
        }
    }
}

/// A writer of either minor.
enum Inner {
    V0_13(v0_13::Writer),
    V0_14(v0_14::Writer),
}

impl Inner {
    async fn write(&mut self, key: &str, data: Bytes) -> PyResult<()> {
        match self {
            Inner::V0_13(w) => w.write(key, data).await,
            Inner::V0_14(w) => w.write(key, data).await,
        }
    }

    async fn complete(&mut self, key: &str) -> PyResult<Option<String>> {
        match self {
            Inner::V0_13(w) => w.complete(key).await,
            Inner::V0_14(w) => w.complete(key).await,
        }
    }

    async fn abort(&mut self, key: &str) -> PyResult<()> {
        match self {
            Inner::V0_13(w) => w.abort(key).await,
            Inner::V0_14(w) => w.abort(key).await,
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

    /// Starts writing `key`: a multipart upload (created now; each `write` uploads one part),
    /// or with `buffer=N` object_store's `BufWriter` of `N` bytes (one PUT, or parts of `N`
    /// bytes uploaded in the background once more than that is written). Only this process may
    /// act on the writer: in a forked child it is inert (`Writer`).
    #[pyo3(signature = (key, *, buffer = None))]
    fn writer(&self, py: Python<'_>, key: String, buffer: Option<usize>) -> PyResult<Writer> {
        let client = self.client.clone();
        let k = key.clone();
        let inner = rt::block_on(py, async move {
            let store = client.get().map_err(|e| client_error(&k, e))?;
            store.writer(&k, buffer).await
        })?;
        Ok(Writer {
            key,
            kind: if buffer.is_some() {
                "buffered"
            } else {
                "multipart"
            },
            owner: forksafe::process_token(),
            owner_pid: std::process::id(),
            state: Mutex::new(Some(inner)),
        })
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
        let options = PyDict::new(py);
        options.set_item("endpoint", &c.endpoint)?;
        options.set_item("access_key_id", &c.access_key_id)?;
        options.set_item("secret_access_key", &c.secret_access_key)?;
        options.set_item("region", &c.region)?;
        options.set_item("allow_http", c.allow_http)?;
        options.set_item("connector", c.connector.as_str())?;
        options.set_item("object_store", c.version.as_str())?;
        options.set_item("metadata_endpoint", &c.metadata_endpoint)?;
        (rebuild, (c.bucket.clone(), options)).into_pyobject(py)
    }

    /// Unpickling: `Store.s3(bucket, **options)`, through Python, so the two cannot drift.
    #[staticmethod]
    fn _rebuild<'py>(
        py: Python<'py>,
        bucket: String,
        options: Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyAny>> {
        py.get_type::<Store>()
            .getattr("s3")?
            .call((bucket,), Some(&options))
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

/// An object being written: a multipart upload or a buffered writer, started by `Store.writer`.
///
/// Only the process that started it may act on it. In any other process (a forked child that
/// inherited it) it is inert: `write`, `complete` and `abort` raise `InheritedWriterError` without
/// a request, `__exit__` does nothing, and dropping it leaks the inherited state instead of
/// dropping it (object_store's `LocalFileSystem` upload deletes its staging file on drop, and a
/// `BufWriter` aborts its in-flight part uploads, which are tasks of the parent's runtime). The
/// rule for extension authors: an inherited object must not act on the outside world from the
/// child (docs/extension-authors.md).
#[pyclass(frozen, module = "forksafe_objstore._native")]
struct Writer {
    key: String,
    kind: &'static str,
    /// The process that started it (`forksafe::process_token`), and its PID for messages.
    owner: u64,
    owner_pid: u32,
    /// `None` once completed or aborted, or while a call has it out.
    state: Mutex<Option<Inner>>,
}

impl Writer {
    /// The writer's state, taken out for one call; never touched outside the owner process
    /// (its lock may have been held by a parent thread at the instant of fork).
    fn take(&self) -> PyResult<Inner> {
        if forksafe::process_token() != self.owner {
            return Err(InheritedWriterError::new_err(format!(
                "{:?}: this writer was started by process {}; a forked child must not write, \
                 complete or abort it (the upload is the parent's)",
                self.key, self.owner_pid
            )));
        }
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| {
                ObjectStoreError::new_err(format!(
                    "{:?}: the writer is finished (or in use by another thread)",
                    self.key
                ))
            })
    }

    fn put_back(&self, inner: Inner) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = Some(inner);
    }

    fn is_owner(&self) -> bool {
        forksafe::process_token() == self.owner
    }
}

#[pymethods]
impl Writer {
    /// Writes `data`: one part of a multipart upload, or into the buffered writer's buffer.
    fn write(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        let mut inner = self.take()?;
        let (key, data) = (self.key.clone(), Bytes::copy_from_slice(data));
        let (inner, written) = rt::block_on(py, async move {
            let written = inner.write(&key, data).await;
            Ok((inner, written))
        })?;
        self.put_back(inner);
        written
    }

    /// Completes the object; returns its ETag (a multipart upload's, as the endpoint reported
    /// it), or `None` for a buffered writer. On an error the writer stays open (to abort).
    fn complete(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let mut inner = self.take()?;
        let key = self.key.clone();
        let (inner, completed) = rt::block_on(py, async move {
            let completed = inner.complete(&key).await;
            Ok((inner, completed))
        })?;
        if completed.is_err() {
            self.put_back(inner);
        }
        completed
    }

    /// Aborts the upload: nothing is stored (the parts uploaded so far are deleted).
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        let mut inner = self.take()?;
        let key = self.key.clone();
        rt::block_on(py, async move { inner.abort(&key).await })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Completes on a normal exit, aborts on an exception. Inert in a process that did not
    /// start it: a child that unwinds through its parent's `with` block (a `SystemExit` after
    /// `os.fork()`) must not complete or abort the parent's upload.
    #[pyo3(signature = (exc_type, _exc = None, _tb = None))]
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<Bound<'_, PyAny>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        // The owner first: the lock is never touched in another process (a parent thread may
        // have held it at the instant of fork).
        if !self.is_owner() {
            return Ok(false);
        }
        let finished = self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none();
        if finished {
            return Ok(false);
        }
        match exc_type {
            Some(t) if !t.is_none() => self.abort(py)?,
            _ => drop(self.complete(py)?),
        }
        Ok(false)
    }

    #[getter]
    fn key(&self) -> &str {
        &self.key
    }

    /// `"multipart"` or `"buffered"`.
    #[getter]
    fn kind(&self) -> &'static str {
        self.kind
    }

    /// The PID of the process that started it (the only one that may act on it).
    #[getter]
    fn owner_pid(&self) -> u32 {
        self.owner_pid
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // `get_mut`: no lock taken (a parent thread may have held it at the instant of fork).
        let inner = self
            .state
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if forksafe::process_token() != self.owner {
            // Inherited: leaked, never dropped (forksafe's invariant 2 for what the example owns).
            std::mem::forget(inner);
        }
    }
}

/// A multipart upload to `key` under the directory `root` on object_store 0.14's
/// `LocalFileSystem`: the parts go to a staging file next to the object (`<key>#<n>`), renamed
/// onto it by `complete`. object_store deletes that staging file when an unfinished upload is
/// dropped, so a child that dropped the inherited upload would delete the parent's: the
/// `Writer` leaks what it inherited instead (its `Drop`).
#[pyfunction]
fn local_writer(py: Python<'_>, root: String, key: String) -> PyResult<Writer> {
    use object_store_0_14::{local::LocalFileSystem, path::Path, ObjectStoreExt};
    let k = key.clone();
    let inner = rt::block_on(py, async move {
        let fs = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| ObjectStoreError::new_err(format!("{root:?}: {e}")))?;
        let path = Path::parse(&k).map_err(|e| PyValueError::new_err(format!("{k:?}: {e}")))?;
        let upload = fs
            .put_multipart(&path)
            .await
            .map_err(|e| ObjectStoreError::new_err(format!("{k:?}: {e}")))?;
        Ok(Inner::V0_14(v0_14::Writer::Multipart(upload)))
    })?;
    Ok(Writer {
        key,
        kind: "multipart",
        owner: forksafe::process_token(),
        owner_pid: std::process::id(),
        state: Mutex::new(Some(inner)),
    })
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
    m.add_class::<Writer>()?;
    m.add(
        "InheritedWriterError",
        py.get_type::<InheritedWriterError>(),
    )?;
    m.add("ObjectStoreError", py.get_type::<ObjectStoreError>())?;
    m.add("KeyNotFoundError", py.get_type::<KeyNotFoundError>())?;
    m.add("CredentialsError", py.get_type::<CredentialsError>())?;
    m.add(
        "EndpointUnreachableError",
        py.get_type::<EndpointUnreachableError>(),
    )?;
    m.add_function(wrap_pyfunction!(local_writer, m)?)?;
    m.add_function(wrap_pyfunction!(_process_info, m)?)?;
    m.add_function(wrap_pyfunction!(_build_runtime, m)?)?;
    m.add_function(wrap_pyfunction!(_build_client, m)?)?;
    m.add("CONTROL", cfg!(feature = "control"))?;
    Ok(())
}
