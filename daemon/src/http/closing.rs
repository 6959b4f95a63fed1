//! Telling open connections to finish, with no shared lock on the request path.
//!
//! hyper-util's `GracefulShutdown` has every connection watch one `tokio::sync::watch`
//! channel: each poll of a connection polls its `changed()` future, which takes the
//! channel's waiter lock, shared by every connection on every worker, once or twice per
//! request. Here a connection registers its waker once, when it is first polled, and every
//! later poll reads one atomic flag; the lock is taken per connection, not per request.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{
            AtomicBool, AtomicU64,
            Ordering::{Acquire, Relaxed, Release},
        },
    },
    task::{Context, Poll, Waker},
};

/// The server's side: [`Closing::close`] finishes every [`Closed`] it handed out.
#[derive(Debug, Default)]
pub struct Closing {
    closing: AtomicBool,
    next_id: AtomicU64,
    wakers: Mutex<HashMap<u64, Waker>>,
}

impl Closing {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// A future for one connection, ready once [`Closing::close`] has been called.
    pub fn watch(self: &Arc<Self>) -> Closed {
        Closed {
            closing: self.clone(),
            id: self.next_id.fetch_add(1, Relaxed),
            registered: None,
        }
    }

    /// Tells every connection, now and to come, to finish.
    pub fn close(&self) {
        // The flag before the lock: a connection registering after this lock is released
        // sees the flag; one that registered before is in the map and is woken.
        self.closing.store(true, Release);
        let wakers =
            std::mem::take(&mut *self.wakers.lock().unwrap_or_else(PoisonError::into_inner));
        for waker in wakers.into_values() {
            waker.wake();
        }
    }
}

/// Ready when the server is closing.
#[derive(Debug)]
pub struct Closed {
    closing: Arc<Closing>,
    id: u64,
    /// The waker in the map, to see whether a poll brings a different one.
    registered: Option<Waker>,
}

impl Future for Closed {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.closing.closing.load(Acquire) {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let closing = self.closing.clone();
        let mut wakers = closing
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if closing.closing.load(Acquire) {
            return Poll::Ready(());
        }
        wakers.insert(self.id, cx.waker().clone());
        drop(wakers);
        self.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Closed {
    fn drop(&mut self) {
        if self.registered.is_some() {
            self.closing
                .wakers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_finishes_waiting_and_later_watchers() {
        let closing = Closing::new();
        let waiting = tokio::spawn(closing.watch());
        // Let the task register before closing.
        tokio::task::yield_now().await;
        closing.close();
        waiting.await.unwrap();
        closing.watch().await;
    }

    #[test]
    fn a_watcher_registers_once_and_leaves_no_waker_behind() {
        let closing = Closing::new();
        let mut closed = closing.watch();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut closed).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut closed).poll(&mut cx).is_pending());
        assert_eq!(closing.wakers.lock().unwrap().len(), 1);
        drop(closed);
        assert!(closing.wakers.lock().unwrap().is_empty());
    }
}
