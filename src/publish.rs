//! [`Published<T>`]: a boxed value published through one atomic pointer, without a lock.
//!
//! Modelled on once_cell's `race::OnceBox`, widened to what the crate needs: a cell moves from
//! null (or from a value it expected) to a new value by one compare-and-swap, and a value it
//! held is never freed while the cell is reachable. The guard's choice, the lineage head, each
//! process's record in the wipe-on-fork page, the configuration and each `ForkLocal` slot are
//! all published this way.
//!
//! # Contract
//!
//! * A cell holds null or a pointer to a `T` that stays valid for as long as the cell is
//!   borrowed: a box given to [`publish`](Published::publish), [`get_or_publish`](Published::get_or_publish)
//!   or [`replace`](Published::replace), or a `&'static T` given to [`share`](Published::share).
//! * The cell never frees anything by itself (it has no `Drop`). A value that a later
//!   publication replaces is leaked: a reader may still hold it, and inherited state is leaked by
//!   design (invariant 2). Only [`take`](Published::take), with `&mut self` (so no reader is
//!   left), hands the current box back, to be dropped or leaked by its owner.
//! * Nothing waits: a racer that loses gets its box back (and drops it, or tries again) and reads
//!   the winner's value. There is no lock a fork could leave held, so a child may read, publish
//!   and replace through a cell it inherited mid-race (invariant 3).
//! * All-zero memory is a valid empty cell (`#[repr(transparent)]` over `AtomicPtr<T>`): the
//!   kernel's zeroed wipe-on-fork page is read as one.
//!
//! # Orderings
//!
//! Every publication is a `Release` write (a compare-and-swap with `AcqRel`, or a `Release`
//! store), and every read an `Acquire` load: a thread that sees the pointer sees every field
//! written before it was published. A failed compare-and-swap reads with `Acquire`, so the
//! losing racer reads the winner's value whole before it drops its own box. No `Relaxed` load
//! hands out a pointer, and nothing needs `SeqCst`: no decision depends on the order in which
//! two different cells were published.

use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

/// A `T` published once per expected value; see the module docs for the contract.
#[repr(transparent)]
pub(crate) struct Published<T> {
    ptr: AtomicPtr<T>,
    /// The cell may hand its box back ([`take`](Published::take)): it owns a `T`.
    _owns: PhantomData<Box<T>>,
}

// SAFETY: a shared cell hands out `&T` to every thread (needs `T: Sync`), and a box published by
// one thread may be taken and dropped by another (needs `T: Send`), as for once_cell's OnceBox.
unsafe impl<T: Send + Sync> Sync for Published<T> {}

/// A refused publication: the box that was not published, and what the cell holds instead.
pub(crate) struct Refused<'a, T> {
    /// The caller's value, never seen by another thread.
    pub(crate) value: Box<T>,
    /// The value that won, read with `Acquire`.
    pub(crate) current: Option<&'a T>,
}

impl<T> Published<T> {
    /// An empty cell. `const`, for statics.
    pub(crate) const fn new() -> Self {
        Published {
            ptr: AtomicPtr::new(ptr::null_mut()),
            _owns: PhantomData,
        }
    }

    /// The published value, if any.
    #[inline]
    pub(crate) fn get(&self) -> Option<&T> {
        // Acquire: pairs with the Release half of the publication.
        let current = self.ptr.load(Ordering::Acquire);
        // SAFETY: null or a pointer the contract keeps valid while `self` is borrowed.
        unsafe { current.as_ref() }
    }

    /// Publishes `value` if the cell still holds `expected` (compared by address); a replaced
    /// value is leaked. On refusal the caller gets its box back with the winner's value.
    ///
    /// # Errors
    ///
    /// [`Refused`] when another publication got there first.
    pub(crate) fn publish(
        &self,
        expected: Option<&T>,
        value: Box<T>,
    ) -> Result<&T, Refused<'_, T>> {
        let expected = expected.map_or(ptr::null_mut(), |e| ptr::from_ref(e).cast_mut());
        let fresh = Box::into_raw(value);
        // AcqRel: Release publishes the value's fields; Acquire on failure reads the winner's.
        match self
            .ptr
            .compare_exchange(expected, fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            // SAFETY: just published; the cell never frees it while borrowed.
            Ok(_) => Ok(unsafe { &*fresh }),
            Err(current) => Err(Refused {
                // SAFETY: `fresh` was never published, so this thread still owns it alone.
                value: unsafe { Box::from_raw(fresh) },
                // SAFETY: as in `get`.
                current: unsafe { current.as_ref() },
            }),
        }
    }

    /// The published value, or `make()`'s if the cell was empty. Racers may each call `make`;
    /// one value is published and the losers drop theirs (so `make` must have no effect that
    /// dropping its value does not undo).
    pub(crate) fn get_or_publish(&self, make: impl FnOnce() -> T) -> &T {
        if let Some(value) = self.get() {
            return value;
        }
        let mut value = Box::new(make());
        loop {
            match self.publish(None, value) {
                Ok(published) => return published,
                Err(Refused {
                    current: Some(winner),
                    ..
                }) => return winner, // our box is dropped here
                // Emptied again in between (only `take` can, and it needs `&mut`): retry.
                Err(Refused {
                    value: mine,
                    current: None,
                }) => value = mine,
            }
        }
    }

    /// Publishes `value` whatever the cell holds; the value it replaces is leaked.
    pub(crate) fn replace(&self, value: Box<T>) -> &T {
        let fresh = Box::into_raw(value);
        // Release: pairs with the Acquire in `get`.
        self.ptr.store(fresh, Ordering::Release);
        // SAFETY: just published; the cell never frees it while borrowed.
        unsafe { &*fresh }
    }

    /// Publishes a value that is already leaked (published in another cell too); the value it
    /// replaces is leaked.
    ///
    /// # Safety
    ///
    /// Nobody may ever [`take`](Published::take) from this cell: the box it would hand back
    /// belongs to someone else.
    pub(crate) unsafe fn share(&self, value: &'static T) {
        // Release: pairs with the Acquire in `get`.
        self.ptr
            .store(ptr::from_ref(value).cast_mut(), Ordering::Release);
    }

    /// Empties the cell and hands back the value it held, to be dropped (or leaked) by its
    /// owner. `&mut self`: no reader of the value is left.
    pub(crate) fn take(&mut self) -> Option<Box<T>> {
        let current = std::mem::replace(self.ptr.get_mut(), ptr::null_mut());
        // SAFETY: non-null means a box given to this cell (`share` callers promise never to
        // take), and replaced values were leaked, never handed back, so this box is unique.
        (!current.is_null()).then(|| unsafe { Box::from_raw(current) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn the_first_publication_wins_and_the_loser_gets_its_box_back() {
        let cell = Published::new();
        assert!(cell.get().is_none());
        assert_eq!(*cell.publish(None, Box::new(1)).ok().unwrap(), 1);
        let refused = cell.publish(None, Box::new(2)).err().unwrap();
        assert_eq!((*refused.value, refused.current), (2, Some(&1)));
        let one = cell.get();
        assert_eq!(*cell.publish(one, Box::new(3)).ok().unwrap(), 3);
        assert_eq!(*cell.replace(Box::new(4)), 4);
        assert_eq!(cell.get(), Some(&4));
        let mut cell = cell;
        assert_eq!(cell.take().as_deref(), Some(&4));
        assert!(cell.get().is_none());
    }

    #[test]
    fn racing_threads_publish_one_value_and_drop_every_other() {
        struct Counted(Arc<AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let cell = Arc::new(Published::new());
        let start = Arc::new(std::sync::Barrier::new(8));
        let winners: Vec<usize> = (0..8)
            .map(|_| {
                let (cell, dropped, start) = (cell.clone(), dropped.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let value = cell.get_or_publish(|| {
                        // Slow enough that every thread finds the cell empty and races.
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        Counted(dropped)
                    });
                    ptr::from_ref(value) as usize
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert!(winners.iter().all(|&w| w == winners[0]), "{winners:?}");
        let mut cell = Arc::into_inner(cell).unwrap();
        let losers = dropped.load(Ordering::SeqCst);
        assert!(
            losers >= 1,
            "no thread lost the race: the test raced nothing"
        );
        drop(cell.take());
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            losers + 1,
            "the winner, once"
        );
    }
}
