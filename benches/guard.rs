//! Cost of one guarded access, against the guards it replaces. Run by `scripts/bench` once per
//! guard mode (`FORKSAFE_PID_CHECK` unset, then `=syscall`); the group name carries the mode.

use std::hint::black_box;
use std::sync::atomic::{AtomicPtr, Ordering};

use criterion::{criterion_group, criterion_main, Criterion};

/// What a hook-based design checks on every access: one atomic pointer, reset by an at-fork hook.
static HOOK_BASED: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());

static CLIENT: forksafe::ForkLocal<u64> = forksafe::ForkLocal::new(|| 7);

fn guard(c: &mut Criterion) {
    let mode = forksafe::process_info().guard.mode;
    HOOK_BASED.store(Box::into_raw(Box::new(0u8)), Ordering::Release);
    forksafe::runtime().expect("runtime");

    let mut group = c.benchmark_group(format!("guard_{mode}"));
    group.bench_function("atomic_load", |b| {
        b.iter(|| black_box(HOOK_BASED.load(Ordering::Acquire)))
    });
    group.bench_function("getpid", |b| {
        // SAFETY: getpid has no preconditions.
        b.iter(|| black_box(unsafe { libc::getpid() }))
    });
    group.bench_function("guard", |b| b.iter(|| black_box(forksafe::process_token())));
    group.bench_function("runtime", |b| {
        b.iter(|| black_box(forksafe::runtime().map(|r| r as *const _)))
    });
    group.bench_function("fork_local", |b| b.iter(|| black_box(*CLIENT.get())));
    group.finish();
}

criterion_group!(benches, guard);
criterion_main!(benches);
