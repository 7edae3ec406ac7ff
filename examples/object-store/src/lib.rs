//! `forksafe_objstore._native`: an S3 reader on [`object_store`] that survives `fork()`.
//!
//! The reference integration of forksafe (walked through in `docs/extension-authors.md`):
//!
//! - each [`Store`] keeps its client (reqwest's connection pool, its TLS state) in a
//!   [`forksafe::ForkLocal`] built by [`forksafe::ForkLocal::with_init`] from that store's own
//!   configuration, so a child that inherits a `Store` builds its own client on first use and
//!   never uses (or drops) the parent's pool;
//! - the async methods go through [`forksafe::python::future_into_py`], the sync ones through
//!   [`forksafe::python::block_on`] (GIL released); both run on this process's runtime.
//!
//! With the cargo feature `control` the same module is built the naive way: one client per
//! `Store`, built where the `Store` was built and shared with every child, on
//! `pyo3_async_runtimes::tokio`'s process-global runtime. It exists only so the fork tests can
//! show what they guard against; it is never shipped.

use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, PutPayload, RetryConfig};
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
}

impl S3Config {
    /// A new client (and connection pool) for this configuration. Builds no connection yet.
    fn build(&self) -> object_store::Result<AmazonS3> {
        AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_endpoint(&self.endpoint)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .with_region(&self.region)
            .with_allow_http(self.allow_http)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(self.allow_http)
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(60)),
            )
            // Fail an unreachable endpoint in about a second, not object_store's three minutes.
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_millis(500),
                    base: 2.0,
                },
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
            })
            .build()
    }
}

/// Where a `Store`'s client lives.
///
/// The fork-safe build: one client per process, built from the captured configuration by the
/// process that first uses it; a child never touches the inherited one.
#[cfg(not(feature = "control"))]
struct Client(forksafe::ForkLocal<Result<AmazonS3, String>>);

#[cfg(not(feature = "control"))]
impl Client {
    fn new(config: S3Config) -> Self {
        Client(forksafe::ForkLocal::with_init(move || {
            config.build().map_err(|e| e.to_string())
        }))
    }

    fn get(&self) -> Result<&AmazonS3, String> {
        self.0.get().as_ref().map_err(Clone::clone)
    }
}

/// The negative control: the client built once, wherever the `Store` was built, and shared with
/// every child that inherits the `Store` (its pooled sockets and the runtime its pool lives on).
#[cfg(feature = "control")]
struct Client(Result<AmazonS3, String>);

#[cfg(feature = "control")]
impl Client {
    fn new(config: S3Config) -> Self {
        Client(config.build().map_err(|e| e.to_string()))
    }

    fn get(&self) -> Result<&AmazonS3, String> {
        self.0.as_ref().map_err(Clone::clone)
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

/// Is there an I/O error in `error`'s chain that means "no connection to the endpoint"?
fn is_unreachable(error: &(dyn StdError + 'static)) -> bool {
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
        if let Some(http) = e.downcast_ref::<object_store::client::HttpError>() {
            if matches!(
                http.kind(),
                object_store::client::HttpErrorKind::Connect
                    | object_store::client::HttpErrorKind::Timeout
            ) {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// The typed Python exception for an object-store error on `key`, with the key in the message.
fn store_error(key: &str, error: object_store::Error) -> PyErr {
    use object_store::Error as E;
    match &error {
        E::NotFound { .. } => KeyNotFoundError::new_err(format!("{key:?}: no such key ({error})")),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            CredentialsError::new_err(format!("{key:?}: credentials refused ({error})"))
        }
        E::InvalidPath { .. } => PyValueError::new_err(format!("{key:?}: invalid key ({error})")),
        _ if is_unreachable(&error) => {
            EndpointUnreachableError::new_err(format!("{key:?}: endpoint unreachable ({error})"))
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

fn client_error(key: &str, error: String) -> PyErr {
    ObjectStoreError::new_err(format!("{key:?}: cannot build the S3 client: {error}"))
}

fn parse_key(key: &str) -> PyResult<Path> {
    Path::parse(key).map_err(|e| PyValueError::new_err(format!("{key:?}: invalid key ({e})")))
}

/// A bucket on an S3-compatible endpoint. Safe to build before fork and use in any child.
#[pyclass(frozen, module = "forksafe_objstore._native")]
struct Store {
    config: S3Config,
    client: Arc<Client>,
}

impl Store {
    fn from_config(config: S3Config) -> PyResult<Self> {
        let client = Client::new(config.clone());
        // Build this process's client now, so a bad configuration fails here, not at first use.
        client.get().map_err(|e| client_error("", e))?;
        Ok(Store {
            config,
            client: Arc::new(client),
        })
    }

    /// The future of one `get`: it resolves the client in the process that runs it.
    fn get_future(&self, key: String) -> impl Future<Output = PyResult<Object>> + Send + 'static {
        let client = self.client.clone();
        async move {
            let path = parse_key(&key)?;
            let store = client.get().map_err(|e| client_error(&key, e))?;
            let result = store.get(&path).await.map_err(|e| store_error(&key, e))?;
            let bytes = result.bytes().await.map_err(|e| store_error(&key, e))?;
            Ok(Object(bytes))
        }
    }

    fn put_future(
        &self,
        key: String,
        data: Bytes,
    ) -> impl Future<Output = PyResult<()>> + Send + 'static {
        let client = self.client.clone();
        async move {
            let path = parse_key(&key)?;
            let store = client.get().map_err(|e| client_error(&key, e))?;
            store
                .put(&path, PutPayload::from_bytes(data))
                .await
                .map_err(|e| store_error(&key, e))?;
            Ok(())
        }
    }

    fn list_future(
        &self,
        prefix: String,
    ) -> impl Future<Output = PyResult<Vec<String>>> + Send + 'static {
        let client = self.client.clone();
        async move {
            let path = if prefix.is_empty() {
                None
            } else {
                Some(parse_key(&prefix)?)
            };
            let store = client.get().map_err(|e| client_error(&prefix, e))?;
            let metas: Vec<_> = store
                .list(path.as_ref())
                .try_collect()
                .await
                .map_err(|e| store_error(&prefix, e))?;
            Ok(metas.into_iter().map(|m| m.location.to_string()).collect())
        }
    }
}

#[pymethods]
impl Store {
    /// A store for `bucket` on an S3-compatible endpoint, with static credentials.
    #[staticmethod]
    #[pyo3(signature = (bucket, *, endpoint, access_key_id, secret_access_key, region = "us-east-1".to_owned(), allow_http = true))]
    fn s3(
        bucket: String,
        endpoint: String,
        access_key_id: String,
        secret_access_key: String,
        region: String,
        allow_http: bool,
    ) -> PyResult<Self> {
        Store::from_config(S3Config {
            bucket,
            endpoint,
            access_key_id,
            secret_access_key,
            region,
            allow_http,
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
        );
        (rebuild, args).into_pyobject(py)
    }

    #[staticmethod]
    fn _rebuild(
        bucket: String,
        endpoint: String,
        access_key_id: String,
        secret_access_key: String,
        region: String,
        allow_http: bool,
    ) -> PyResult<Self> {
        Store::s3(
            bucket,
            endpoint,
            access_key_id,
            secret_access_key,
            region,
            allow_http,
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "Store.s3({:?}, endpoint={:?})",
            self.config.bucket, self.config.endpoint
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

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
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
    m.add("CONTROL", cfg!(feature = "control"))?;
    Ok(())
}
