//! `forksafe::object_store::{v0_13, v0_14}`: the connectors' contract, against a counting inner
//! connector (no network): one client build per process, on first use; a child builds its own
//! and never drops the parent's; a failed build is an `HttpError` of kind `Connect` with its
//! cause; `SpawnedConnector` runs the request on forksafe's runtime whatever the caller's
//! runtime, streams the body frame by frame, and aborts the task when the response is dropped.
//! The S3 side (moto, every fork path, credentials) is tests/objstore.

mod support {
    pub mod fork;
    pub mod hang;
    pub mod host;
    pub mod sys;
    pub mod wire;
}

use std::time::Duration;

use support::{fork::*, sys::*};

/// Names forksafe's runtime threads `fs-io`. Every test calls it first, so whichever test builds
/// the runtime, it is built with this name (tests run in parallel threads of one process).
fn name_the_runtime() {
    // An error only means another test configured it first, with the same value.
    let _ = forksafe::configure(forksafe::RuntimeConfig::new().thread_name("fs-io"));
}

macro_rules! connector_tests {
    ($version:ident, $os:ident) => {
        mod $version {
            use std::future::poll_fn;
            use std::pin::Pin;
            use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
            use std::sync::Arc;
            use std::task::{Context, Poll};

            use bytes::Bytes;
            use forksafe::object_store::$version::{ForkLocalConnector, SpawnedConnector};
            use http_body::{Body, Frame};
            use $os::client::{
                HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody,
                HttpResponse, HttpResponseBody, HttpService,
            };
            use $os::ClientOptions;

            use super::*;

            /// Counts the clients it builds and the ones dropped, per process that built them.
            #[derive(Debug)]
            struct Counting {
                builds: &'static AtomicU32,
                drops: &'static AtomicU32,
                drops_elsewhere: &'static AtomicU32,
                fail: bool,
            }

            impl HttpConnector for Counting {
                fn connect(&self, _: &ClientOptions) -> $os::Result<HttpClient> {
                    self.builds.fetch_add(1, Ordering::SeqCst);
                    if self.fail {
                        return Err($os::Error::Generic {
                            store: "test",
                            source: "no client for you".into(),
                        });
                    }
                    Ok(HttpClient::new(Canned {
                        built_by: getpid(),
                        drops: self.drops,
                        drops_elsewhere: self.drops_elsewhere,
                    }))
                }
            }

            /// Answers every request with its builder's PID.
            #[derive(Debug)]
            struct Canned {
                built_by: u32,
                drops: &'static AtomicU32,
                drops_elsewhere: &'static AtomicU32,
            }

            impl Drop for Canned {
                fn drop(&mut self) {
                    self.drops.fetch_add(1, Ordering::SeqCst);
                    if self.built_by != getpid() {
                        self.drops_elsewhere.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }

            #[async_trait::async_trait]
            impl HttpService for Canned {
                async fn call(&self, _: HttpRequest) -> Result<HttpResponse, HttpError> {
                    let body = format!("{} {:?}", self.built_by, std::thread::current().name());
                    Ok(HttpResponse::new(HttpResponseBody::from(body)))
                }
            }

            fn request() -> HttpRequest {
                let mut req = HttpRequest::new(HttpRequestBody::empty());
                *req.uri_mut() = "http://127.0.0.1:1/key".parse().unwrap();
                req
            }

            async fn text(client: &HttpClient) -> Result<String, HttpError> {
                let response = client.execute(request()).await?;
                let bytes = response.into_body().bytes().await?;
                Ok(String::from_utf8(bytes.to_vec()).unwrap())
            }

            /// A runtime of the caller's own, apart from forksafe's.
            fn callers_runtime() -> tokio::runtime::Runtime {
                tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .enable_time()
                    .thread_name("caller")
                    .build()
                    .unwrap()
            }

            static BUILDS: AtomicU32 = AtomicU32::new(0);
            static DROPS: AtomicU32 = AtomicU32::new(0);
            static DROPS_ELSEWHERE: AtomicU32 = AtomicU32::new(0);

            /// One build per process, on first use; the child builds its own, never uses nor
            /// drops the parent's (dropping the client in the child drops only its own); the
            /// parent's client is untouched afterwards.
            #[test]
            fn fork_local_connector_builds_once_per_process() {
                crate::name_the_runtime();
                let connector = ForkLocalConnector::new(Counting {
                    builds: &BUILDS,
                    drops: &DROPS,
                    drops_elsewhere: &DROPS_ELSEWHERE,
                    fail: false,
                });
                let client = connector.connect(&ClientOptions::new()).unwrap();
                assert_eq!(BUILDS.load(Ordering::SeqCst), 0, "connect() built a client");
                let rt = callers_runtime();
                let parent = getpid();
                for _ in 0..3 {
                    let answer = rt.block_on(text(&client)).unwrap();
                    assert!(answer.starts_with(&format!("{parent} ")), "{answer}");
                }
                assert_eq!(BUILDS.load(Ordering::SeqCst), 1);

                // The child takes the one reference out, so dropping it drops the service.
                let mut slot = Some(client);
                let report = fork_child(ForkMethod::Libc, Duration::from_secs(30), |rep| {
                    let client = slot.take().unwrap();
                    let rt = callers_runtime();
                    rep.kv("me", getpid());
                    let answer = rt.block_on(text(&client)).unwrap();
                    rep.kv("answer", answer.split(' ').next().unwrap());
                    rt.block_on(text(&client)).unwrap();
                    rep.kv("builds", BUILDS.load(Ordering::SeqCst));
                    drop(client);
                    rep.kv("drops", DROPS.load(Ordering::SeqCst));
                    rep.kv("drops_elsewhere", DROPS_ELSEWHERE.load(Ordering::SeqCst));
                });
                report.assert_ok();
                let child: u32 = report.parse("me");
                assert_eq!(
                    report.parse::<u32>("answer"),
                    child,
                    "the child used the parent's client"
                );
                assert_eq!(
                    report.parse::<u32>("builds"),
                    2,
                    "one build in the child, not more"
                );
                assert_eq!(
                    report.parse::<u32>("drops"),
                    1,
                    "the child dropped only its own client"
                );
                assert_eq!(
                    report.parse::<u32>("drops_elsewhere"),
                    0,
                    "the child dropped the parent's client"
                );

                let client = slot.expect("the parent's reference is the parent's");
                let answer = rt.block_on(text(&client)).unwrap();
                assert!(answer.starts_with(&format!("{parent} ")), "{answer}");
                assert_eq!(BUILDS.load(Ordering::SeqCst), 1);
                assert_eq!(DROPS.load(Ordering::SeqCst), 0);
            }

            static SHARED_BUILDS: AtomicU32 = AtomicU32::new(0);
            static SHARED_DROPS: AtomicU32 = AtomicU32::new(0);
            static SHARED_DROPS_ELSEWHERE: AtomicU32 = AtomicU32::new(0);

            /// The clones of one connected client (a store's clones hold clones of it) share
            /// one build per process, with either connector: in the parent, and in a child,
            /// where the first request through any clone builds the child's one client.
            #[test]
            fn clones_of_a_client_share_one_build_per_process() {
                crate::name_the_runtime();
                for spawned in [false, true] {
                    SHARED_BUILDS.store(0, Ordering::SeqCst);
                    let counting = Counting {
                        builds: &SHARED_BUILDS,
                        drops: &SHARED_DROPS,
                        drops_elsewhere: &SHARED_DROPS_ELSEWHERE,
                        fail: false,
                    };
                    let client = if spawned {
                        SpawnedConnector::new(counting).connect(&ClientOptions::new())
                    } else {
                        ForkLocalConnector::new(counting).connect(&ClientOptions::new())
                    }
                    .unwrap();
                    let clones: Vec<HttpClient> = (0..3).map(|_| client.clone()).collect();
                    let rt = callers_runtime();
                    let parent = getpid();
                    for c in &clones {
                        let answer = rt.block_on(text(c)).unwrap();
                        assert!(answer.starts_with(&format!("{parent} ")), "{answer}");
                    }
                    assert_eq!(SHARED_BUILDS.load(Ordering::SeqCst), 1, "spawned={spawned}");
                    let report = fork_child(ForkMethod::Libc, Duration::from_secs(30), |rep| {
                        let rt = callers_runtime();
                        for (i, c) in clones.iter().enumerate() {
                            let answer = rt.block_on(text(c)).unwrap();
                            rep.kv(&format!("answer{i}"), answer.split(' ').next().unwrap());
                        }
                        rep.kv("builds", SHARED_BUILDS.load(Ordering::SeqCst));
                    });
                    report.assert_ok();
                    let ctx = format!("spawned={spawned}; output:\n{}", report.output);
                    for i in 0..3 {
                        assert_eq!(
                            report.parse::<u32>(&format!("answer{i}")),
                            report.pid as u32,
                            "{ctx}"
                        );
                    }
                    assert_eq!(
                        report.parse::<u32>("builds"),
                        2,
                        "one build in the child; {ctx}"
                    );
                    assert_eq!(SHARED_BUILDS.load(Ordering::SeqCst), 1, "{ctx}");
                    drop((clones, client));
                }
                assert_eq!(SHARED_DROPS_ELSEWHERE.load(Ordering::SeqCst), 0);
            }

            static FAILED_BUILDS: AtomicU32 = AtomicU32::new(0);
            static UNUSED: AtomicU32 = AtomicU32::new(0);

            /// A failed per-process build is each request's `HttpError` of kind `Connect`, with
            /// the connector's error in its source chain.
            #[test]
            fn a_failed_build_is_a_connect_error_with_its_cause() {
                crate::name_the_runtime();
                for connect in [
                    Box::new(|c: Counting| {
                        ForkLocalConnector::new(c).connect(&ClientOptions::new())
                    }) as Box<dyn Fn(Counting) -> $os::Result<HttpClient>>,
                    Box::new(|c: Counting| SpawnedConnector::new(c).connect(&ClientOptions::new())),
                ] {
                    let client = connect(Counting {
                        builds: &FAILED_BUILDS,
                        drops: &UNUSED,
                        drops_elsewhere: &UNUSED,
                        fail: true,
                    })
                    .unwrap();
                    let error = callers_runtime().block_on(text(&client)).unwrap_err();
                    assert_eq!(error.kind(), HttpErrorKind::Connect, "{error}");
                    let mut chain = Vec::new();
                    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&error);
                    while let Some(e) = next {
                        chain.push(e.to_string());
                        next = e.source();
                    }
                    assert!(
                        chain.iter().any(|m| m.contains("no client for you")),
                        "the cause is not in the chain: {chain:?}"
                    );
                }
            }

            static SPAWNED_BUILDS: AtomicU32 = AtomicU32::new(0);
            static SPAWNED_DROPS: AtomicU32 = AtomicU32::new(0);

            /// The request runs on forksafe's runtime although the caller is on its own.
            #[test]
            fn spawned_connector_runs_on_forksafe_runtime() {
                crate::name_the_runtime();
                let client = SpawnedConnector::new(Counting {
                    builds: &SPAWNED_BUILDS,
                    drops: &SPAWNED_DROPS,
                    drops_elsewhere: &SPAWNED_DROPS,
                    fail: false,
                })
                .connect(&ClientOptions::new())
                .unwrap();
                let answer = callers_runtime().block_on(text(&client)).unwrap();
                // Every test of this binary names the runtime before it can build one.
                assert!(
                    answer.contains("fs-io"),
                    "the request did not run on forksafe's runtime: {answer}"
                );
            }

            /// A body the test feeds frame by frame, which tells when it is dropped.
            struct Fed {
                frames: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
                dropped: Arc<AtomicBool>,
            }

            impl Drop for Fed {
                fn drop(&mut self) {
                    self.dropped.store(true, Ordering::SeqCst);
                }
            }

            impl Body for Fed {
                type Data = Bytes;
                type Error = HttpError;

                fn poll_frame(
                    mut self: Pin<&mut Self>,
                    cx: &mut Context<'_>,
                ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
                    self.frames
                        .poll_recv(cx)
                        .map(|f| f.map(|b| Ok(Frame::data(b))))
                }
            }

            /// Serves one request whose body the test feeds.
            #[derive(Debug)]
            struct Feeder {
                body: std::sync::Mutex<
                    Option<(tokio::sync::mpsc::UnboundedReceiver<Bytes>, Arc<AtomicBool>)>,
                >,
            }

            impl HttpConnector for Feeder {
                fn connect(&self, _: &ClientOptions) -> $os::Result<HttpClient> {
                    let body = self.body.lock().unwrap().take();
                    Ok(HttpClient::new(FeederService(std::sync::Mutex::new(body))))
                }
            }

            #[derive(Debug)]
            struct FeederService(
                std::sync::Mutex<
                    Option<(tokio::sync::mpsc::UnboundedReceiver<Bytes>, Arc<AtomicBool>)>,
                >,
            );

            #[async_trait::async_trait]
            impl HttpService for FeederService {
                async fn call(&self, _: HttpRequest) -> Result<HttpResponse, HttpError> {
                    let (frames, dropped) = self.0.lock().unwrap().take().expect("one request");
                    Ok(HttpResponse::new(HttpResponseBody::new(Fed {
                        frames,
                        dropped,
                    })))
                }
            }

            /// Each frame reaches the caller while the next is not yet sent; dropping the
            /// response drops the body in the task (the task is aborted).
            #[test]
            fn spawned_connector_streams_frames_and_aborts_on_drop() {
                crate::name_the_runtime();
                let (feed, frames) = tokio::sync::mpsc::unbounded_channel();
                let dropped = Arc::new(AtomicBool::new(false));
                let client = SpawnedConnector::new(Feeder {
                    body: std::sync::Mutex::new(Some((frames, dropped.clone()))),
                })
                .connect(&ClientOptions::new())
                .unwrap();
                let rt = callers_runtime();
                rt.block_on(async {
                    let response = client.execute(request()).await.unwrap();
                    let mut body = response.into_body();
                    for i in 0..3 {
                        let chunk = Bytes::from(format!("frame {i}"));
                        feed.send(chunk.clone()).unwrap();
                        let frame = tokio::time::timeout(
                            Duration::from_secs(10),
                            poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)),
                        )
                        .await
                        .expect("a frame did not arrive before the next was sent")
                        .expect("the body ended early")
                        .unwrap();
                        assert_eq!(frame.into_data().unwrap(), chunk);
                    }
                    assert!(!dropped.load(Ordering::SeqCst));
                    drop(body);
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                    while !dropped.load(Ordering::SeqCst) {
                        assert!(
                            tokio::time::Instant::now() < deadline,
                            "the task still holds the body 10 s after the response was dropped"
                        );
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    assert!(feed.is_closed(), "the body's receiver is still alive");
                });
            }
        }
    };
}

#[cfg(feature = "object-store-0-13")]
connector_tests!(v0_13, object_store_0_13);
#[cfg(feature = "object-store-0-14")]
connector_tests!(v0_14, object_store_0_14);
