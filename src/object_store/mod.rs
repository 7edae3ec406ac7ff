//! Fork-local HTTP connectors for [object_store](https://docs.rs/object_store): a store built
//! in the parent works in every child, with one line in the library that builds it.
//!
//! A store built before `fork()` keeps its HTTP client, and with it a keep-alive connection
//! pool whose idle connections are tasks on the parent's runtime. The child inherits the pool,
//! hyper still reports those connections as ready, and the child's first request waits forever
//! (or writes on the parent's socket). object_store's builders (`AmazonS3Builder`,
//! `GoogleCloudStorageBuilder`, `MicrosoftAzureBuilder`, `HttpBuilder`) take an
//! `HttpConnector` through `with_http_connector`, and use it for the store's requests and its
//! credential providers (instance metadata, web identity / STS, container credentials). The
//! connectors here make the client that connector returns a per-process one:
//!
//! - [`v0_14::ForkLocalConnector`] (or [`v0_13::ForkLocalConnector`]): each process builds its
//!   own client from the wrapped connector on first use; a child never uses nor drops the
//!   parent's. Requests run on the caller's runtime, as with object_store's default.
//! - [`v0_14::SpawnedConnector`]: the same, and each request runs on the calling process's
//!   forksafe runtime ([`crate::spawn`]) whatever runtime the caller is on: object_store's
//!   `SpawnedReqwestConnector` without a handle captured at build time.
//!
//! One module per object_store minor, each behind its own cargo feature (off by default):
//! `object-store-0-13` and `object-store-0-14`. object_store 0.13.2 and 0.14.2 declare Rust 1.85,
//! forksafe's own minimum, but the newest releases of their dependencies need Rust 1.88 (the
//! `icu_*` 2.4 crates, through `url`): with an older compiler, pin those in your lock file. 0.14's
//! reqwest needs a TLS backend to compile: the feature asks for rustls without a crypto provider
//! (`rustls-no-provider`); object_store's own `aws`/`gcp`/`azure`/`http` features bring
//! aws-lc-rs, or install a provider (`rustls::crypto::ring::default_provider().install_default()`)
//! before a store sends its first request.
//!
//! ```
//! # #[cfg(feature = "object-store-0-14")] {
//! # use object_store_0_14 as object_store;
//! use forksafe::object_store::v0_14::ForkLocalConnector;
//! use object_store::http::HttpBuilder;
//!
//! let store = HttpBuilder::new()
//!     .with_url("http://127.0.0.1:9000")
//!     .with_http_connector(ForkLocalConnector::default()) // the one line
//!     .build()?;
//! # drop(store);
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

/// The connectors' body, written once and expanded per object_store minor: `os` names that
/// minor's crate in the module that expands it; `$module` and `$krate` are the names the
/// examples import.
macro_rules! connectors {
    ($module:literal, $krate:literal, $feature:literal) => {
        use std::error::Error as StdError;
        use std::fmt;
        use std::future::poll_fn;
        use std::pin::Pin;
        use std::sync::Arc;
        use std::task::{Context, Poll};

        use async_trait::async_trait;
        use bytes::Bytes;
        use http_body::{Body, Frame};
        use os::client::{
            HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
            HttpResponseBody, HttpService, ReqwestConnector,
        };
        use os::ClientOptions;

        use crate::ForkLocal;

        /// One process's client, or why this process could not build it (shared by every
        /// request that finds it).
        type PerProcess = ForkLocal<Result<HttpClient, Arc<os::Error>>>;

        /// A per-process client, built on first use in each process by `inner.connect(&options)`.
        fn per_process<C: HttpConnector>(inner: &Arc<C>, options: &ClientOptions) -> PerProcess {
            let (inner, options) = (Arc::clone(inner), options.clone());
            ForkLocal::with_init(move || inner.connect(&options).map_err(Arc::new))
        }

        /// This process's client, or the failure of its build as an `HttpError` (`Connect`).
        fn client_of(client: &PerProcess) -> Result<&HttpClient, HttpError> {
            client
                .get()
                .as_ref()
                .map_err(|e| HttpError::new(HttpErrorKind::Connect, ClientBuildFailed(e.clone())))
        }

        /// This process could not build its HTTP client; the source is the wrapped connector's
        /// error. A build that failed is not retried in the same process: the connector and its
        /// options are the ones that failed.
        #[derive(Debug)]
        struct ClientBuildFailed(Arc<os::Error>);

        impl fmt::Display for ClientBuildFailed {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "cannot build this process's HTTP client: {}", self.0)
            }
        }

        impl StdError for ClientBuildFailed {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&*self.0)
            }
        }

        #[doc = concat!(
            "An [`HttpConnector`] whose client is built once per process, on first use: a store \
             built with it in the parent works in every child.\n\n",
            "`connect(&options)` (called by the store's builder) builds nothing yet: it returns \
             an [`HttpClient`] holding a [`ForkLocal`] that calls `inner.connect(&options)` the \
             first time a process sends a request through it. A child therefore builds its own \
             client (and connection pool) and never uses nor drops the one its parent built. \
             Requests run on the caller's runtime, as with object_store's own connector.\n\n",
            "Each `connect` makes one per-process client, and every clone of the [`HttpClient`] \
             it returns (a store's clones hold clones of it) shares it: one client per process \
             for all of them, built once in a child by whichever clone sends the first request \
             there, as [`ForkLocal`]'s clones share their value.\n\n",
            "`C` is any [`HttpConnector`]: the default [`ReqwestConnector`], or a library's own \
             wrapper (metering, throttling). `inner` is shared by every process's build, so it \
             must hold configuration, not live connections.\n\n",
            "If a process's build fails, each request of that process fails with an \
             [`HttpError`] of kind [`HttpErrorKind::Connect`] whose source carries the \
             connector's error.\n\n",
            "```\n",
            "# use ", $krate, " as object_store;\n",
            "use forksafe::object_store::", $module, "::ForkLocalConnector;\n",
            "use object_store::http::HttpBuilder;\n",
            "\n",
            "// The same line goes on AmazonS3Builder, GoogleCloudStorageBuilder and\n",
            "// MicrosoftAzureBuilder: their credential providers use the connector too.\n",
            "let store = HttpBuilder::new()\n",
            "    .with_url(\"http://127.0.0.1:9000\")\n",
            "    .with_http_connector(ForkLocalConnector::default())\n",
            "    .build()?;\n",
            "# drop(store);\n",
            "# Ok::<(), object_store::Error>(())\n",
            "```",
        )]
        #[cfg_attr(docsrs, doc(cfg(feature = $feature)))]
        pub struct ForkLocalConnector<C = ReqwestConnector> {
            inner: Arc<C>,
        }

        impl<C: HttpConnector> ForkLocalConnector<C> {
            #[doc = concat!(
                "Wraps `inner`: each process that sends a request builds its own client with \
                 `inner.connect(&options)`.\n\n",
                "```\n",
                "# use ", $krate, " as object_store;\n",
                "use forksafe::object_store::", $module, "::ForkLocalConnector;\n",
                "use object_store::client::ReqwestConnector;\n",
                "\n",
                "let connector = ForkLocalConnector::new(ReqwestConnector::default());\n",
                "# drop(connector);\n",
                "```",
            )]
            pub fn new(inner: C) -> Self {
                ForkLocalConnector { inner: Arc::new(inner) }
            }
        }

        impl Default for ForkLocalConnector {
            #[doc = concat!(
                "Wraps object_store's [`ReqwestConnector`].\n\n",
                "```\n",
                "use forksafe::object_store::", $module, "::ForkLocalConnector;\n",
                "\n",
                "let connector = ForkLocalConnector::default();\n",
                "# drop(connector);\n",
                "```",
            )]
            fn default() -> Self {
                ForkLocalConnector::new(ReqwestConnector::default())
            }
        }

        impl<C: fmt::Debug> fmt::Debug for ForkLocalConnector<C> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("ForkLocalConnector").field("inner", &self.inner).finish()
            }
        }

        impl<C: HttpConnector> HttpConnector for ForkLocalConnector<C> {
            #[doc = concat!(
                "An [`HttpClient`] that builds this process's client on its first request.\n\n",
                "# Errors\n\n",
                "None here: the build happens at first use, and its failure is that request's \
                 [`HttpError`] (kind [`HttpErrorKind::Connect`]).\n\n",
                "```\n",
                "# use ", $krate, " as object_store;\n",
                "use forksafe::object_store::", $module, "::ForkLocalConnector;\n",
                "use object_store::client::HttpConnector;\n",
                "use object_store::ClientOptions;\n",
                "\n",
                "let client = ForkLocalConnector::default().connect(&ClientOptions::new())?;\n",
                "# drop(client);\n",
                "# Ok::<(), object_store::Error>(())\n",
                "```",
            )]
            fn connect(&self, options: &ClientOptions) -> os::Result<HttpClient> {
                Ok(HttpClient::new(ForkLocalService {
                    client: per_process(&self.inner, options),
                }))
            }
        }

        /// The service behind [`ForkLocalConnector`]'s client.
        struct ForkLocalService {
            client: PerProcess,
        }

        impl fmt::Debug for ForkLocalService {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("ForkLocalService")
                    .field("built_here", &self.client.get_if_built().is_some())
                    .finish()
            }
        }

        #[async_trait]
        impl HttpService for ForkLocalService {
            async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
                client_of(&self.client)?.execute(req).await
            }
        }

        #[doc = concat!(
            "A [`ForkLocalConnector`] whose requests run on the calling process's forksafe \
             runtime ([`crate::spawn`]), whatever runtime the caller is on.\n\n",
            "It does what object_store's `SpawnedReqwestConnector::new(handle)` does, without a \
             handle captured when the store was built (in a child that handle names the \
             parent's runtime, whose threads are gone). The caller may run on a runtime of its \
             own (delta-rs's pattern, where query execution and I/O are apart) or on none. \
             The response's head comes back once the server sent it, the body frame by frame \
             as it arrives (a few frames of buffer, never the whole body), and dropping the \
             response (or the request's future) aborts the task.\n\n",
            "As with [`ForkLocalConnector`], each process builds its own client on first use \
             and a failed build is a request's [`HttpError`] of kind \
             [`HttpErrorKind::Connect`]; so is a runtime this process cannot build.\n\n",
            "```\n",
            "# use ", $krate, " as object_store;\n",
            "use forksafe::object_store::", $module, "::SpawnedConnector;\n",
            "use object_store::http::HttpBuilder;\n",
            "\n",
            "let store = HttpBuilder::new()\n",
            "    .with_url(\"http://127.0.0.1:9000\")\n",
            "    .with_http_connector(SpawnedConnector::default())\n",
            "    .build()?;\n",
            "# drop(store);\n",
            "# Ok::<(), object_store::Error>(())\n",
            "```",
        )]
        #[cfg_attr(docsrs, doc(cfg(feature = $feature)))]
        pub struct SpawnedConnector<C = ReqwestConnector> {
            inner: Arc<C>,
        }

        impl<C: HttpConnector> SpawnedConnector<C> {
            #[doc = concat!(
                "Wraps `inner`: each process builds its own client with \
                 `inner.connect(&options)` and runs every request on its forksafe runtime.\n\n",
                "```\n",
                "# use ", $krate, " as object_store;\n",
                "use forksafe::object_store::", $module, "::SpawnedConnector;\n",
                "use object_store::client::ReqwestConnector;\n",
                "\n",
                "let connector = SpawnedConnector::new(ReqwestConnector::default());\n",
                "# drop(connector);\n",
                "```",
            )]
            pub fn new(inner: C) -> Self {
                SpawnedConnector { inner: Arc::new(inner) }
            }
        }

        impl Default for SpawnedConnector {
            #[doc = concat!(
                "Wraps object_store's [`ReqwestConnector`].\n\n",
                "```\n",
                "use forksafe::object_store::", $module, "::SpawnedConnector;\n",
                "\n",
                "let connector = SpawnedConnector::default();\n",
                "# drop(connector);\n",
                "```",
            )]
            fn default() -> Self {
                SpawnedConnector::new(ReqwestConnector::default())
            }
        }

        impl<C: fmt::Debug> fmt::Debug for SpawnedConnector<C> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("SpawnedConnector").field("inner", &self.inner).finish()
            }
        }

        impl<C: HttpConnector> HttpConnector for SpawnedConnector<C> {
            #[doc = concat!(
                "An [`HttpClient`] that runs each request on this process's forksafe runtime, \
                 through this process's own client.\n\n",
                "# Errors\n\n",
                "None here: the client and the runtime are built at first use, and their \
                 failure is that request's [`HttpError`] (kind [`HttpErrorKind::Connect`]).\n\n",
                "```\n",
                "# use ", $krate, " as object_store;\n",
                "use forksafe::object_store::", $module, "::SpawnedConnector;\n",
                "use object_store::client::HttpConnector;\n",
                "use object_store::ClientOptions;\n",
                "\n",
                "let client = SpawnedConnector::default().connect(&ClientOptions::new())?;\n",
                "# drop(client);\n",
                "# Ok::<(), object_store::Error>(())\n",
                "```",
            )]
            fn connect(&self, options: &ClientOptions) -> os::Result<HttpClient> {
                Ok(HttpClient::new(SpawnedService {
                    client: per_process(&self.inner, options),
                }))
            }
        }

        /// The service behind [`SpawnedConnector`]'s client.
        struct SpawnedService {
            client: PerProcess,
        }

        impl fmt::Debug for SpawnedService {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct("SpawnedService")
                    .field("built_here", &self.client.get_if_built().is_some())
                    .finish()
            }
        }

        /// Frames in flight between the runtime's task and the caller: enough to keep the
        /// connection busy, small enough that a slow reader holds the server back, not memory.
        const FRAMES_IN_FLIGHT: usize = 8;

        #[async_trait]
        impl HttpService for SpawnedService {
            async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
                let client = client_of(&self.client)?.clone();
                let (head_tx, head_rx) = tokio::sync::oneshot::channel();
                let (frames_tx, frames_rx) = tokio::sync::mpsc::channel(FRAMES_IN_FLIGHT);
                let task = crate::spawn(async move {
                    let (parts, mut body) = match client.execute(req).await {
                        Ok(response) => response.into_parts(),
                        Err(e) => {
                            let _ = head_tx.send(Err(e));
                            return;
                        }
                    };
                    if head_tx.send(Ok(parts)).is_err() {
                        return; // the caller is gone
                    }
                    while let Some(frame) =
                        poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                    {
                        if frames_tx.send(frame).await.is_err() {
                            return; // the response was dropped
                        }
                    }
                })
                .map_err(|e| HttpError::new(HttpErrorKind::Connect, e))?;
                // Aborts the task if this future is dropped before the head arrives.
                let task = AbortOnDrop::new(task);
                let parts = head_rx
                    .await
                    .map_err(|_| HttpError::new(HttpErrorKind::Interrupted, TaskEnded))??;
                let body = SpawnedBody { frames: frames_rx, _task: task };
                Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
            }
        }

        /// The request's task ended without a response (aborted, or its runtime shut down).
        #[derive(Debug)]
        struct TaskEnded;

        impl fmt::Display for TaskEnded {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the request's task on the forksafe runtime ended without a response")
            }
        }

        impl StdError for TaskEnded {}

        /// The request's task, aborted when the response (or the request's future) is dropped,
        /// by the process that spawned it only.
        struct AbortOnDrop {
            task: std::mem::ManuallyDrop<tokio::task::JoinHandle<()>>,
            process: u64,
        }

        impl AbortOnDrop {
            fn new(task: tokio::task::JoinHandle<()>) -> Self {
                AbortOnDrop {
                    task: std::mem::ManuallyDrop::new(task),
                    process: crate::process_token(),
                }
            }
        }

        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                // An inherited handle is the parent's task: aborting it (or dropping the handle)
                // from a child would schedule onto the parent's runtime (its queue lock, held
                // forever if a parent thread had it at fork; its wake-up fd, shared with the
                // parent). An inherited object must not act from the child: leak it there.
                if self.process != crate::process_token() {
                    return;
                }
                self.task.abort();
                // SAFETY: taken once, here, in the owning process; never used after.
                drop(unsafe { std::mem::ManuallyDrop::take(&mut self.task) });
            }
        }

        /// The response body, as the task forwards it frame by frame.
        struct SpawnedBody {
            frames: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, HttpError>>,
            _task: AbortOnDrop,
        }

        impl Body for SpawnedBody {
            type Data = Bytes;
            type Error = HttpError;

            fn poll_frame(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
                self.frames.poll_recv(cx)
            }
        }
    };
}

/// Connectors for object_store 0.13 (cargo feature `object-store-0-13`).
///
/// ```
/// use forksafe::object_store::v0_13::{ForkLocalConnector, SpawnedConnector};
///
/// let (a, b) = (ForkLocalConnector::default(), SpawnedConnector::default());
/// # drop((a, b));
/// ```
#[cfg(feature = "object-store-0-13")]
#[cfg_attr(docsrs, doc(cfg(feature = "object-store-0-13")))]
pub mod v0_13 {
    use object_store_0_13 as os;

    connectors!("v0_13", "object_store_0_13", "object-store-0-13");
}

/// Connectors for object_store 0.14 (cargo feature `object-store-0-14`).
///
/// ```
/// use forksafe::object_store::v0_14::{ForkLocalConnector, SpawnedConnector};
///
/// let (a, b) = (ForkLocalConnector::default(), SpawnedConnector::default());
/// # drop((a, b));
/// ```
#[cfg(feature = "object-store-0-14")]
#[cfg_attr(docsrs, doc(cfg(feature = "object-store-0-14")))]
pub mod v0_14 {
    use object_store_0_14 as os;

    connectors!("v0_14", "object_store_0_14", "object-store-0-14");
}
