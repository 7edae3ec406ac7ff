//! Scenario 9: `ForkLocal<T>` is rebuilt in a child, untouched in the parent, and the inherited
//! value is never dropped in the child (invariant 2).
//!
//! Each test has its own statics, so the tests of this binary may run in parallel.

mod support {
    pub mod fork;
    pub mod hang;
    pub mod host;
    pub mod sys;
    pub mod threads;
    pub mod wire;
}

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use forksafe::ForkLocal;

use support::{fork::*, sys::*, threads::*, wire::*};

/// A per-process resource that remembers who built it and logs its own drop.
struct Resource {
    built_by: u32,
    serial: u32,
    log: &'static DropLog,
}

/// Counts builds and drops, and remembers who built the dropped values, without locks (a lock
/// could be held by a parent thread at fork).
struct DropLog {
    inits: AtomicU32,
    drops: AtomicU32,
    drops_built_elsewhere: AtomicU32,
    last_dropped_built_by: AtomicU32,
}

impl DropLog {
    const fn new() -> Self {
        DropLog {
            inits: AtomicU32::new(0),
            drops: AtomicU32::new(0),
            drops_built_elsewhere: AtomicU32::new(0),
            last_dropped_built_by: AtomicU32::new(0),
        }
    }

    fn build(&'static self) -> Resource {
        let serial = self.inits.fetch_add(1, Ordering::SeqCst) + 1;
        Resource {
            built_by: getpid(),
            serial,
            log: self,
        }
    }

    fn report(&self, rep: &Reporter, prefix: &str) {
        let rep = rep.with_prefix(prefix);
        rep.kv("inits", self.inits.load(Ordering::SeqCst));
        rep.kv("drops", self.drops.load(Ordering::SeqCst));
        rep.kv(
            "drops_built_elsewhere",
            self.drops_built_elsewhere.load(Ordering::SeqCst),
        );
        rep.kv(
            "last_dropped_built_by",
            self.last_dropped_built_by.load(Ordering::SeqCst),
        );
    }
}

impl Drop for Resource {
    fn drop(&mut self) {
        self.log.drops.fetch_add(1, Ordering::SeqCst);
        self.log
            .last_dropped_built_by
            .store(self.built_by, Ordering::SeqCst);
        if self.built_by != getpid() {
            // An inherited value dropped: exactly what must never happen.
            self.log
                .drops_built_elsewhere
                .fetch_add(1, Ordering::SeqCst);
        }
    }
}

static STATIC_LOG: DropLog = DropLog::new();
static STATIC_LOCAL: ForkLocal<Resource> = ForkLocal::new(|| STATIC_LOG.build());

/// A static `ForkLocal`: built once in the parent; the child sees nothing built (by it), builds
/// its own value once even with 16 threads racing, and drops nothing; the parent's value, its
/// address and its build counter are unchanged after the child.
#[test]
fn fork_local_is_rebuilt_in_the_child_and_untouched_in_the_parent() {
    let parent = getpid();
    let value = STATIC_LOCAL.get();
    assert_eq!(value.built_by, parent);
    assert_eq!(value.serial, 1);
    let parent_addr = value as *const Resource as usize;
    assert_eq!(STATIC_LOG.inits.load(Ordering::SeqCst), 1);

    let report = fork_child(ForkMethod::Libc, Duration::from_secs(30), |rep| {
        rep.kv(
            "built_before_get",
            STATIC_LOCAL.get_if_built().map_or(0, |r| r.built_by),
        );
        const THREADS: usize = 16;
        let barrier = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|i| {
                let barrier = barrier.clone();
                spawn_thread(&format!("getter-{i}"), move || {
                    barrier.wait();
                    let v = STATIC_LOCAL.get();
                    (v as *const Resource as usize, v.built_by, v.serial)
                })
            })
            .collect();
        for (i, t) in threads.into_iter().enumerate() {
            let (addr, built_by, serial) = t.join().expect("getter panicked");
            rep.kv(&format!("t{i}"), format!("{addr}/{built_by}/{serial}"));
        }
        let mine = STATIC_LOCAL.get();
        rep.kv("addr", mine as *const Resource as usize);
        rep.kv("built_by", mine.built_by);
        rep.kv("serial", mine.serial);
        rep.kv(
            "get_if_built",
            STATIC_LOCAL.get_if_built().map_or(0, |r| r.built_by),
        );
        // The value is usable from the runtime too: a task sees the child's value.
        let seen_by_task = forksafe::block_on(async {
            forksafe::spawn(async { STATIC_LOCAL.get().built_by })
                .unwrap()
                .await
                .unwrap()
        })
        .unwrap();
        rep.kv("built_by_seen_in_task", seen_by_task);
        STATIC_LOG.report(rep, "log.");
    });
    report.assert_ok();
    let child = report.pid as u32;
    let ctx = format!("output:\n{}", report.output);
    assert_eq!(report.value("built_before_get"), "0", "{ctx}");
    assert_eq!(report.parse::<u32>("built_by"), child, "{ctx}");
    assert_eq!(
        report.parse::<u32>("serial"),
        2,
        "one build in the child; {ctx}"
    );
    assert_eq!(report.parse::<u32>("get_if_built"), child, "{ctx}");
    assert_eq!(report.parse::<u32>("built_by_seen_in_task"), child, "{ctx}");
    let child_addr = report.value("addr");
    assert_ne!(child_addr, parent_addr.to_string(), "{ctx}");
    for i in 0..16 {
        assert_eq!(
            report.value(&format!("t{i}")),
            format!("{child_addr}/{child}/2"),
            "thread {i}; {ctx}"
        );
    }
    assert_eq!(report.parse::<u32>("log.inits"), 2, "{ctx}");
    assert_eq!(
        report.parse::<u32>("log.drops"),
        0,
        "the child dropped a value; {ctx}"
    );

    // The parent: same value, same address, no rebuild, nothing dropped.
    let again = STATIC_LOCAL.get();
    assert_eq!(again as *const Resource as usize, parent_addr);
    assert_eq!(again.built_by, parent);
    assert_eq!(again.serial, 1);
    assert_eq!(STATIC_LOG.inits.load(Ordering::SeqCst), 1);
    assert_eq!(STATIC_LOG.drops.load(Ordering::SeqCst), 0);
}

static OWNED_LOG: DropLog = DropLog::new();

fn build_owned() -> Resource {
    OWNED_LOG.build()
}

/// A `ForkLocal` that is itself dropped. In a child, dropping it leaks the inherited value
/// (never runs its destructor), whether or not the child built its own; the child's own value is
/// dropped normally. In the parent, dropping it drops the parent's value (so the counters can
/// see a drop at all).
#[test]
fn dropping_a_fork_local_in_a_child_never_drops_the_inherited_value() {
    let parent = getpid();
    // In an Option so that a child can take and drop it (the closures borrow it mutably, one
    // after the other); the parent's copy stays in place.
    let mut local = Some(ForkLocal::new(build_owned));
    assert_eq!(local.as_ref().unwrap().get().built_by, parent);

    // Child 1 drops it without using it.
    let untouched = fork_child(ForkMethod::Libc, Duration::from_secs(30), |rep| {
        drop(local.take());
        OWNED_LOG.report(rep, "log.");
    });
    // Child 2 builds its own value, then drops the ForkLocal.
    let rebuilt = fork_child(ForkMethod::Libc, Duration::from_secs(30), |rep| {
        let built_by = local.as_ref().unwrap().get().built_by;
        rep.kv("built_by", built_by);
        drop(local.take());
        OWNED_LOG.report(rep, "log.");
    });
    let local = local.expect("the parent's ForkLocal is still there");

    untouched.assert_ok();
    let ctx = format!("output:\n{}", untouched.output);
    assert_eq!(untouched.parse::<u32>("log.inits"), 1, "{ctx}");
    assert_eq!(
        untouched.parse::<u32>("log.drops"),
        0,
        "the inherited value was dropped; {ctx}"
    );

    rebuilt.assert_ok();
    let child = rebuilt.pid as u32;
    let ctx = format!("output:\n{}", rebuilt.output);
    assert_eq!(rebuilt.parse::<u32>("built_by"), child, "{ctx}");
    assert_eq!(rebuilt.parse::<u32>("log.inits"), 2, "{ctx}");
    assert_eq!(
        rebuilt.parse::<u32>("log.drops"),
        1,
        "exactly the child's own value is dropped; {ctx}"
    );
    assert_eq!(
        rebuilt.parse::<u32>("log.last_dropped_built_by"),
        child,
        "{ctx}"
    );
    assert_eq!(
        rebuilt.parse::<u32>("log.drops_built_elsewhere"),
        0,
        "{ctx}"
    );

    // The parent: untouched by both children, and its own drop works.
    assert_eq!(local.get().built_by, parent);
    assert_eq!(OWNED_LOG.inits.load(Ordering::SeqCst), 1);
    assert_eq!(OWNED_LOG.drops.load(Ordering::SeqCst), 0);
    drop(local);
    assert_eq!(OWNED_LOG.drops.load(Ordering::SeqCst), 1);
    assert_eq!(
        OWNED_LOG.last_dropped_built_by.load(Ordering::SeqCst),
        parent
    );
}

static NESTED_LOG: DropLog = DropLog::new();
static NESTED_LOCAL: ForkLocal<Resource> = ForkLocal::new(|| NESTED_LOG.build());

/// Three generations: each builds its own value once; none drops an ancestor's.
#[test]
fn fork_local_in_a_grandchild() {
    let parent = getpid();
    assert_eq!(NESTED_LOCAL.get().built_by, parent);
    let report = fork_child(ForkMethod::Libc, Duration::from_secs(30), |rep| {
        rep.kv("built_by", NESTED_LOCAL.get().built_by);
        let grandchild = fork_child(ForkMethod::Libc, Duration::from_secs(20), |rep| {
            rep.kv("built_by", NESTED_LOCAL.get().built_by);
            rep.kv("serial", NESTED_LOCAL.get().serial);
            NESTED_LOG.report(rep, "log.");
        });
        rep.forward("gc.", &grandchild);
        rep.kv("built_by_after", NESTED_LOCAL.get().built_by);
        NESTED_LOG.report(rep, "log.");
    });
    report.assert_ok();
    let child = report.pid as u32;
    assert_eq!(report.parse::<u32>("built_by"), child);
    assert_eq!(report.parse::<u32>("built_by_after"), child);
    assert_eq!(report.parse::<u32>("log.inits"), 2);
    assert_eq!(report.parse::<u32>("log.drops"), 0);
    let gc = report.sub("gc.");
    gc.assert_ok();
    assert_eq!(gc.parse::<u32>("built_by"), gc.pid as u32);
    assert_eq!(gc.parse::<u32>("serial"), 3);
    assert_eq!(gc.parse::<u32>("log.inits"), 3);
    assert_eq!(gc.parse::<u32>("log.drops"), 0);
    assert_eq!(NESTED_LOCAL.get().built_by, parent);
    assert_eq!(NESTED_LOG.inits.load(Ordering::SeqCst), 1);
}

static CONFIGURED_LOG: DropLog = DropLog::new();

/// A per-instance resource: what `ForkLocal::with_init` builds from its instance's configuration.
struct Configured {
    endpoint: String,
    resource: Resource,
}

/// An instance with its own configuration, as a struct field (an object-store client's shape).
struct Store {
    client: ForkLocal<Configured>,
}

impl Store {
    fn new(endpoint: &str) -> Self {
        let endpoint = endpoint.to_owned();
        Store {
            client: ForkLocal::with_init(move || Configured {
                endpoint: endpoint.clone(),
                resource: CONFIGURED_LOG.build(),
            }),
        }
    }
}

/// `ForkLocal::with_init`: two instances with different configurations, built in the parent and
/// inherited. The child rebuilds each instance's value from the
/// configuration that instance captured, never drops an inherited value (not even when it drops
/// the instances), and the parent's values are untouched.
#[test]
fn per_instance_fork_local_is_rebuilt_from_its_configuration() {
    let parent = getpid();
    let mut stores = Some((Store::new("http://a:1"), Store::new("http://b:2")));
    let (a, b) = stores.as_ref().unwrap();
    assert_eq!(a.client.get().endpoint, "http://a:1");
    assert_eq!(b.client.get().endpoint, "http://b:2");
    let parent_addrs = (
        a.client.get() as *const Configured as usize,
        b.client.get() as *const Configured as usize,
    );
    assert_eq!(CONFIGURED_LOG.inits.load(Ordering::SeqCst), 2);

    {
        let method = ForkMethod::Libc;
        let report = fork_child(method, Duration::from_secs(30), |rep| {
            let (a, b) = stores.as_ref().unwrap();
            rep.kv("a.built_before_get", a.client.get_if_built().is_some());
            for (name, store) in [("a", a), ("b", b)] {
                // Used from a runtime task too, as an extension would.
                let (endpoint, built_by) = forksafe::block_on(async {
                    let c = store.client.get();
                    (c.endpoint.clone(), c.resource.built_by)
                })
                .unwrap();
                rep.kv(&format!("{name}.endpoint"), endpoint);
                rep.kv(&format!("{name}.built_by"), built_by);
                rep.kv(
                    &format!("{name}.addr"),
                    store.client.get() as *const Configured as usize,
                );
            }
            // Dropping the instances frees the children's own values and the closures, and
            // leaks the inherited values.
            drop(stores.take());
            CONFIGURED_LOG.report(rep, "log.");
        });
        report.assert_ok();
        let child = report.pid as u32;
        let ctx = format!("{method:?} output:\n{}", report.output);
        assert_eq!(report.value("a.built_before_get"), "false", "{ctx}");
        assert_eq!(report.value("a.endpoint"), "http://a:1", "{ctx}");
        assert_eq!(report.value("b.endpoint"), "http://b:2", "{ctx}");
        assert_eq!(report.parse::<u32>("a.built_by"), child, "{ctx}");
        assert_eq!(report.parse::<u32>("b.built_by"), child, "{ctx}");
        assert_ne!(report.parse::<usize>("a.addr"), parent_addrs.0, "{ctx}");
        assert_ne!(report.parse::<usize>("b.addr"), parent_addrs.1, "{ctx}");
        assert_eq!(report.parse::<u32>("log.inits"), 4, "{ctx}");
        assert_eq!(
            report.parse::<u32>("log.drops"),
            2,
            "only its own two; {ctx}"
        );
        assert_eq!(
            report.parse::<u32>("log.drops_built_elsewhere"),
            0,
            "an inherited value was dropped; {ctx}"
        );
    }

    let (a, b) = stores.as_ref().unwrap();
    assert_eq!(a.client.get() as *const Configured as usize, parent_addrs.0);
    assert_eq!(b.client.get() as *const Configured as usize, parent_addrs.1);
    assert_eq!(a.client.get().resource.built_by, parent);
    assert_eq!(CONFIGURED_LOG.inits.load(Ordering::SeqCst), 2);
    assert_eq!(CONFIGURED_LOG.drops.load(Ordering::SeqCst), 0);
    drop(stores);
    assert_eq!(CONFIGURED_LOG.drops.load(Ordering::SeqCst), 2);
}

static FALLIBLE_FAIL: AtomicBool = AtomicBool::new(true);
static FALLIBLE_ATTEMPTS: AtomicU32 = AtomicU32::new(0);

/// `ForkLocal::try_with_init`: an error is returned and not cached, in the parent and in a
/// forked child (the next call runs the initialiser again); a value, once built, is kept for
/// its process; the child never gets the parent's value, and the parent's is untouched.
#[test]
fn a_fallible_init_is_retried_not_cached_in_the_parent_and_in_a_child() {
    let parent = getpid();
    let endpoint = String::from("http://127.0.0.1:9000");
    let client: ForkLocal<(String, u32), String> = ForkLocal::try_with_init(move || {
        let attempt = FALLIBLE_ATTEMPTS.fetch_add(1, Ordering::SeqCst) + 1;
        if FALLIBLE_FAIL.load(Ordering::SeqCst) {
            Err(format!("refused (attempt {attempt})"))
        } else {
            Ok((endpoint.clone(), getpid()))
        }
    });
    assert_eq!(client.try_get(), Err("refused (attempt 1)".to_owned()));
    assert!(
        client.get_if_built().is_none(),
        "an error must not be cached"
    );
    assert_eq!(client.try_get(), Err("refused (attempt 2)".to_owned()));
    FALLIBLE_FAIL.store(false, Ordering::SeqCst);
    let built = client.try_get().expect("the third attempt succeeds");
    assert_eq!(built, &("http://127.0.0.1:9000".to_owned(), parent));
    let parent_addr = built as *const (String, u32) as usize;
    FALLIBLE_FAIL.store(true, Ordering::SeqCst);
    assert_eq!(client.try_get().map(|v| v.1), Ok(parent), "a value is kept");
    assert_eq!(FALLIBLE_ATTEMPTS.load(Ordering::SeqCst), 3);

    let report = fork_child(ForkMethod::Libc, Duration::from_secs(30), |rep| {
        // FALLIBLE_FAIL is inherited as true: the child must try, fail, and retry.
        rep.kv(
            "first",
            client.try_get().map_or_else(|e| e, |v| v.0.clone()),
        );
        rep.kv("built_after_error", client.get_if_built().is_some());
        rep.kv(
            "second",
            client.try_get().map_or_else(|e| e, |v| v.0.clone()),
        );
        FALLIBLE_FAIL.store(false, Ordering::SeqCst);
        let value = client
            .try_get()
            .expect("the child's third attempt succeeds");
        rep.kv("built_by", value.1);
        rep.kv("addr", value as *const (String, u32) as usize);
        FALLIBLE_FAIL.store(true, Ordering::SeqCst);
        rep.kv("kept", client.try_get().is_ok());
        rep.kv("attempts", FALLIBLE_ATTEMPTS.load(Ordering::SeqCst));
    });
    report.assert_ok();
    let ctx = format!("output:\n{}", report.output);
    assert_eq!(report.value("first"), "refused (attempt 4)", "{ctx}");
    assert_eq!(report.value("built_after_error"), "false", "{ctx}");
    assert_eq!(report.value("second"), "refused (attempt 5)", "{ctx}");
    assert_eq!(report.parse::<u32>("built_by"), report.pid as u32, "{ctx}");
    assert_ne!(report.parse::<usize>("addr"), parent_addr, "{ctx}");
    assert_eq!(report.value("kept"), "true", "{ctx}");
    assert_eq!(report.parse::<u32>("attempts"), 6, "{ctx}");

    let after = client.try_get().expect("the parent's value is still there");
    assert_eq!(after as *const (String, u32) as usize, parent_addr);
    assert_eq!(after.1, parent);
    assert_eq!(
        FALLIBLE_ATTEMPTS.load(Ordering::SeqCst),
        3,
        "the parent built nothing more"
    );
}

static CLONE_LOG: DropLog = DropLog::new();

/// `ForkLocal::detached`: the same initialiser, a value of its own (what `clone` did before
/// clones shared the value; `tests/fork_local_clones.rs` tests `clone`). Detached in the parent
/// and inherited, each instance builds its own value once per process (the parent's and the
/// child's are distinct), one detached in the child does the same, and dropping them in the
/// child drops only the child's own values.
#[test]
fn a_detached_copy_builds_its_own_value_once_per_process() {
    let parent = getpid();
    let endpoint = String::from("http://a:1");
    let a = ForkLocal::with_init(move || (endpoint.clone(), CLONE_LOG.build()));
    let b = a.detached();
    assert_eq!(a.get().0, "http://a:1");
    assert_eq!(b.get().0, "http://a:1");
    let addr = |local: &ForkLocal<(String, Resource)>| local.get() as *const _ as usize;
    let parent_addrs = (addr(&a), addr(&b));
    assert_ne!(
        parent_addrs.0, parent_addrs.1,
        "a detached copy builds its own value"
    );
    assert_eq!(CLONE_LOG.inits.load(Ordering::SeqCst), 2);

    let mut locals = Some((a, b));
    let report = fork_child(ForkMethod::Libc, Duration::from_secs(30), |rep| {
        let (a, b) = locals.as_ref().unwrap();
        rep.kv("a.built_before_get", a.get_if_built().is_some());
        rep.kv("b.built_before_get", b.get_if_built().is_some());
        let c = b.detached();
        for (name, local) in [("a", a), ("b", b), ("c", &c)] {
            let (endpoint, resource) = local.get();
            rep.kv(&format!("{name}.endpoint"), endpoint);
            rep.kv(&format!("{name}.built_by"), resource.built_by);
            rep.kv(&format!("{name}.addr"), addr(local));
            assert_eq!(addr(local), addr(local), "built once");
        }
        drop(c);
        drop(locals.take());
        CLONE_LOG.report(rep, "log.");
    });
    report.assert_ok();
    let child = report.pid as u32;
    let ctx = format!("output:\n{}", report.output);
    assert_eq!(report.value("a.built_before_get"), "false", "{ctx}");
    assert_eq!(report.value("b.built_before_get"), "false", "{ctx}");
    let mut child_addrs = Vec::new();
    for name in ["a", "b", "c"] {
        assert_eq!(
            report.value(&format!("{name}.endpoint")),
            "http://a:1",
            "{ctx}"
        );
        assert_eq!(
            report.parse::<u32>(&format!("{name}.built_by")),
            child,
            "{ctx}"
        );
        child_addrs.push(report.parse::<usize>(&format!("{name}.addr")));
    }
    child_addrs.sort_unstable();
    child_addrs.dedup();
    assert_eq!(child_addrs.len(), 3, "three instances, three values; {ctx}");
    assert!(!child_addrs.contains(&parent_addrs.0) && !child_addrs.contains(&parent_addrs.1));
    assert_eq!(
        report.parse::<u32>("log.inits"),
        5,
        "2 inherited + 3 built; {ctx}"
    );
    assert_eq!(
        report.parse::<u32>("log.drops"),
        3,
        "only its own three; {ctx}"
    );
    assert_eq!(report.parse::<u32>("log.drops_built_elsewhere"), 0, "{ctx}");

    let (a, b) = locals.as_ref().unwrap();
    assert_eq!((addr(a), addr(b)), parent_addrs);
    assert_eq!(a.get().1.built_by, parent);
    assert_eq!(CLONE_LOG.inits.load(Ordering::SeqCst), 2);
    drop(locals);
    assert_eq!(CLONE_LOG.drops.load(Ordering::SeqCst), 2);
}
