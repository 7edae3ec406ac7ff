//! Whether tokio's `parking_lot` feature is on in this binary, told by tokio's behaviour.
//!
//! `cfg!` cannot see a dependency's features, and no size of a public tokio type changes with
//! it (tokio's locks wrap 8-aligned data either way). What does change is how a thread blocked
//! in tokio waits: with `parking_lot`, tokio's `Condvar` is parking_lot's, whose Linux parker
//! sleeps in `futex(FUTEX_WAIT)`; without it, std's, which sleeps in `futex(FUTEX_WAIT_BITSET)`.
//! The probe blocks one short-lived thread in tokio's `block_on` and reads the futex operation it
//! sleeps in from `/proc/self/task/<tid>/syscall`. It runs once per lineage, when the first
//! process builds its runtime (children inherit the answer: same binary); where `/proc` cannot
//! tell (not Linux, no `syscall` file, or the thread never slept in a futex within
//! five seconds) the answer is "unknown", never a guess. The wait ends at the first futex seen
//! (microseconds on an idle machine); the bound is for a loaded one, where a new thread can wait
//! for a core longer than a second (seen: a busy parent's threads beside two CI lanes).

use std::sync::atomic::{AtomicU8, Ordering};

use tokio::runtime::Runtime;

const UNPROBED: u8 = 0;
const OFF: u8 = 1;
const ON: u8 = 2;
const UNKNOWN: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNPROBED);

/// How long the probe waits for its thread to start, and then for it to sleep in a futex.
#[cfg(target_os = "linux")]
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// `Some(true)` when tokio's `parking_lot` feature is on in this binary, `Some(false)` when it
/// is off, `None` before the first runtime is built or when the probe cannot tell.
pub(crate) fn parking_lot() -> Option<bool> {
    match STATE.load(Ordering::Acquire) {
        ON => Some(true),
        OFF => Some(false),
        _ => None,
    }
}

/// Probes once per lineage, with `runtime` (just built by this process).
pub(crate) fn probe_once(runtime: &Runtime) {
    if STATE.load(Ordering::Acquire) == UNPROBED {
        STATE.store(probe(runtime), Ordering::Release);
    }
}

#[cfg(target_os = "linux")]
fn probe(runtime: &Runtime) -> u8 {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};
    use std::time::{Duration, Instant};

    /// Pending until released: its `block_on` parks the probe thread in tokio's parker.
    struct Gate {
        released: AtomicBool,
        waker: Mutex<Option<Waker>>,
    }
    struct Wait(Arc<Gate>);
    impl Future for Wait {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let mut slot = self.0.waker.lock().unwrap_or_else(|e| e.into_inner());
            if self.0.released.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            *slot = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    if !std::path::Path::new("/proc/thread-self/syscall").exists() {
        return UNKNOWN;
    }
    let gate = Arc::new(Gate {
        released: AtomicBool::new(false),
        waker: Mutex::new(None),
    });
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let handle = runtime.handle().clone();
    let waiter = Wait(gate.clone());
    let Ok(thread) = std::thread::Builder::new()
        .name("forksafe-probe".to_owned())
        .stack_size(256 * 1024)
        .spawn(move || {
            // SAFETY: gettid has no preconditions.
            let _ = tid_tx.send(unsafe { libc::gettid() });
            handle.block_on(waiter);
        })
    else {
        return UNKNOWN;
    };
    let mut verdict = UNKNOWN;
    if let Ok(tid) = tid_rx.recv_timeout(PATIENCE) {
        let path = format!("/proc/self/task/{tid}/syscall");
        let start = Instant::now();
        while start.elapsed() < PATIENCE {
            if let Some(answer) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| futex_verdict(&text))
            {
                verdict = answer;
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    gate.released.store(true, Ordering::Release);
    let waker = gate.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(waker) = waker {
        waker.wake();
    }
    let _ = thread.join();
    verdict
}

/// What a `/proc/<tid>/syscall` line says: the thread sleeps in parking_lot's `FUTEX_WAIT` or in
/// std's `FUTEX_WAIT_BITSET`; `None` while it is elsewhere.
#[cfg(target_os = "linux")]
fn futex_verdict(line: &str) -> Option<u8> {
    let mut fields = line.split_whitespace();
    let nr: libc::c_long = fields.next()?.parse().ok()?;
    if nr != libc::SYS_futex {
        return None;
    }
    let op = fields.nth(1)?;
    let op = i64::from_str_radix(op.trim_start_matches("0x"), 16).ok()?;
    let cmd = op & !i64::from(libc::FUTEX_PRIVATE_FLAG | libc::FUTEX_CLOCK_REALTIME);
    match cmd {
        c if c == i64::from(libc::FUTEX_WAIT) => Some(ON),
        c if c == i64::from(libc::FUTEX_WAIT_BITSET) => Some(OFF),
        _ => None,
    }
}

#[cfg(not(target_os = "linux"))]
fn probe(_runtime: &Runtime) -> u8 {
    UNKNOWN
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::{futex_verdict, OFF, ON};

    #[test]
    fn reads_the_futex_operation() {
        let nr = libc::SYS_futex;
        let wait = format!("{nr} 0x7f00 0x80 0x1 0x0 0x0 0x0 0x7ff 0x7fe");
        assert_eq!(futex_verdict(&wait), Some(ON));
        let bitset = format!("{nr} 0x7f00 0x89 0x0 0x0 0x0 0xffffffff 0x7ff 0x7fe");
        assert_eq!(futex_verdict(&bitset), Some(OFF));
        assert_eq!(
            futex_verdict("-1 0x3 0x7f00 0x400 0xffffffff 0x0 0x8 0x1 0x2"),
            None
        );
        assert_eq!(futex_verdict("running"), None);
    }
}
