//! The one lock type of the workspace: std's mutex and read-write lock
//! without poisoning. Every critical section in this code leaves its data
//! whole (values are swapped or counters moved in one step), so a panic
//! elsewhere while a lock was held is no reason to refuse the data to every
//! later user; `clippy.toml` bans the std types so no call site has to say
//! so again.

use std::sync::{MutexGuard, RwLockReadGuard, RwLockWriteGuard};

/// A mutex whose `lock` never fails.
#[derive(Debug, Default)]
pub struct Mutex<T>(#[allow(clippy::disallowed_types)] std::sync::Mutex<T>);

impl<T> Mutex<T> {
    pub const fn new(value: T) -> Self {
        #[allow(clippy::disallowed_types)]
        Mutex(std::sync::Mutex::new(value))
    }

    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn into_inner(self) -> T {
        self.0.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

/// A read-write lock whose `read` and `write` never fail.
#[derive(Debug, Default)]
pub struct RwLock<T>(#[allow(clippy::disallowed_types)] std::sync::RwLock<T>);

impl<T> RwLock<T> {
    pub const fn new(value: T) -> Self {
        #[allow(clippy::disallowed_types)]
        RwLock(std::sync::RwLock::new(value))
    }

    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn into_inner(self) -> T {
        self.0.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_panic_while_locked_does_not_lock_others_out() {
        let m = Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let r = std::thread::spawn(move || {
            let mut g = m2.lock();
            *g = 2;
            panic!("while holding the lock");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(*m.lock(), 2);

        let l = Arc::new(RwLock::new(vec![1]));
        let l2 = l.clone();
        let r = std::thread::spawn(move || {
            l2.write().push(2);
            panic!("while writing");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(*l.read(), [1, 2]);
    }
}
