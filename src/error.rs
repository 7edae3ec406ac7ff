//! The crate's error type.

/// Everything that can go wrong in forksafe's public API.
///
/// ```
/// use forksafe::{configure, Error, RuntimeConfig};
///
/// let err = configure(RuntimeConfig::new().worker_threads(0)).unwrap_err();
/// assert!(matches!(err, Error::InvalidConfig { field: "worker_threads", .. }));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A [`RuntimeConfig`](crate::RuntimeConfig) value is out of range.
    #[error("invalid runtime configuration: `{field}` {problem}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// [`configure`](crate::configure) was called after this process built its runtime.
    #[error(
        "configure() was called after process {pid} built its runtime; call it before the \
         first use (children rebuild with the configuration in force then)"
    )]
    AlreadyStarted {
        /// The process whose runtime already exists.
        pid: u32,
    },
    /// tokio could not build the runtime (out of threads, file descriptors or memory).
    #[error("could not build the tokio runtime in process {pid}: {source}")]
    Build {
        /// The process that tried.
        pid: u32,
        /// tokio's error.
        #[source]
        source: std::io::Error,
    },
    /// [`block_on`](crate::block_on) was called where blocking would panic or deadlock.
    #[error(
        "block_on() cannot run here: {why}; `.await` the future instead, or call from a thread \
         outside the runtime"
    )]
    InsideRuntime {
        /// Which case was detected.
        why: &'static str,
    },
}

/// `Result<T, forksafe::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
