//! The delivery queue of one connection: what the router and the device actor hand to a
//! connected session, and the orders (takeover, kick) its device actor gives it.
//!
//! It replaces a bounded channel plus a control channel so that an idle connection holds
//! no buffer at all (the queue allocates on the first delivery and is handed over whole
//! to the connection on each wake), and so that a full queue pushes back on publishers
//! instead of dropping what they were promised:
//!
//! - the *backlog* is what was accepted for the connection and not yet written: entries
//!   in the queue plus those the connection holds waiting for a window slot;
//! - at or above `limit`, a QoS 1/2 delivery is still accepted and the caller gets
//!   [`Offer::Over`]: the publisher's acknowledgement then waits in [`ConnQueue::room`]
//!   until the backlog falls below the limit. The excess is bounded by the publishers'
//!   in-flight windows (Receive Maximum, or 65,535 packet ids), so memory stays bounded
//!   and nothing acknowledged is dropped;
//! - a QoS 0 delivery at or above `limit` is accepted with [`Offer::Over`] too, and the
//!   publisher's connection stops reading its socket until there is room (for at most a
//!   short while, so two clients publishing to each other cannot stall for good); at
//!   twice the limit it is dropped (at most once allows it; counted by the caller).
//!
//! Must not touch: sockets, MQTT encoding or session state.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::message::Delivery;
use super::slot::Control;
use crate::mqtt::QoS;

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A fresh connection id, unique on this node (also used for assigned client
/// identifiers, and for the queues that stand in for connections on other nodes).
pub fn next_conn_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// What became of an offered delivery.
#[derive(Debug)]
pub enum Offer {
    /// Queued below the limit.
    Accepted,
    /// Queued at or above the limit: the publisher's acknowledgement (QoS 1/2) or its
    /// reading (QoS 0) should wait for [`ConnQueue::room`].
    Over,
    /// QoS 0 at or above twice the limit: dropped.
    Dropped,
    /// The connection has ended; the delivery is given back.
    Closed(Delivery),
}

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Delivery>,
    control: Option<Control>,
    closed: bool,
}

/// The queue between a session's producers (router, device actor) and its connection.
#[derive(Debug)]
pub struct ConnQueue {
    /// Unique per connection; stale detaches are recognised by it.
    pub id: u64,
    limit: usize,
    inner: Mutex<Inner>,
    /// Wakes the connection: a delivery or an order arrived. A flag and an atomic waker
    /// (no lock, nothing to register per wait) as in tokio's channels: the connection
    /// waits for this on every turn of its loop.
    woken: AtomicBool,
    waker: AtomicWaker,
    /// Wakes publishers waiting for the backlog to fall below the limit.
    room: Notify,
    /// A publisher waits in [`ConnQueue::room`].
    room_wanted: AtomicBool,
    /// Deliveries the connection holds and has not written (its waiting list).
    held: AtomicUsize,
}

impl ConnQueue {
    pub fn new(id: u64, limit: usize) -> Self {
        ConnQueue {
            id,
            limit: limit.max(1),
            inner: Mutex::new(Inner::default()),
            woken: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            room: Notify::new(),
            room_wanted: AtomicBool::new(false),
            held: AtomicUsize::new(0),
        }
    }

    /// Offers one delivery (router and device actor).
    pub fn offer(&self, d: Delivery) -> Offer {
        let mut inner = self.inner.lock();
        if inner.closed {
            return Offer::Closed(d);
        }
        let backlog = inner.items.len() + self.held.load(Ordering::Acquire);
        let over = backlog >= self.limit;
        if d.qos == QoS::AtMostOnce && backlog >= self.limit.saturating_mul(2) {
            return Offer::Dropped;
        }
        let was_empty = inner.items.is_empty();
        inner.items.push_back(d);
        drop(inner);
        if was_empty {
            self.wake();
        }
        if over {
            Offer::Over
        } else {
            Offer::Accepted
        }
    }

    /// Gives the connection an order. False if it has already ended.
    pub fn order(&self, c: Control) -> bool {
        let mut inner = self.inner.lock();
        if inner.closed {
            return false;
        }
        inner.control = Some(c);
        drop(inner);
        self.wake();
        true
    }

    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Resolves when the backlog is below the limit or the connection has ended.
    pub async fn room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.room_wanted.store(true, Ordering::SeqCst);
            if self.has_room() {
                return;
            }
            notified.await;
        }
    }

    fn has_room(&self) -> bool {
        let inner = self.inner.lock();
        inner.closed || inner.items.len() + self.held.load(Ordering::SeqCst) < self.limit
    }

    /// Connection side: waits until something arrived (a wake-up before the wait counts).
    /// One waiter only: the connection.
    pub async fn ready(&self) {
        poll_fn(|cx| {
            if self.woken.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.woken.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Connection side: ready once there is something to take (or a wake), without
    /// taking the wake: a hibernating connection resumes its loop, whose `ready` sees it.
    pub fn poll_woken(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.woken.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.woken.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Wakes the connection with nothing to take, so that it looks at the node's state
    /// (shutdown) again.
    pub fn nudge(&self) {
        self.wake();
    }

    /// Connection side: takes every queued delivery (the queue keeps no buffer) and the
    /// pending order, if any.
    pub fn take(&self) -> (VecDeque<Delivery>, Option<Control>) {
        let mut inner = self.inner.lock();
        let items = std::mem::take(&mut inner.items);
        // Still the connection's backlog until it settles: counted as held meanwhile, so
        // offers in between do not see room that is not there.
        self.held.fetch_add(items.len(), Ordering::SeqCst);
        (items, inner.control.take())
    }

    /// Connection side: after a wake, how many deliveries it still holds unwritten.
    /// Wakes waiting publishers once the backlog is below the limit.
    pub fn settle(&self, held: usize) {
        self.held.store(held, Ordering::SeqCst);
        if self.room_wanted.load(Ordering::SeqCst) && self.has_room() {
            self.room_wanted.store(false, Ordering::SeqCst);
            self.room.notify_waiters();
        }
    }

    /// Connection side: the connection ends. Later offers are given back; waiting
    /// publishers are released. Returns what was still queued, in order.
    pub fn close(&self) -> VecDeque<Delivery> {
        let mut inner = self.inner.lock();
        inner.closed = true;
        inner.control = None;
        let rest = std::mem::take(&mut inner.items);
        drop(inner);
        self.held.store(0, Ordering::SeqCst);
        self.room.notify_waiters();
        rest
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::broker::test_delivery;

    fn d(qos: QoS) -> Delivery {
        test_delivery(qos, 0)
    }

    #[test]
    fn over_the_limit_both_wait_and_qos0_drops_at_twice_the_limit() {
        let q = ConnQueue::new(1, 2);
        assert!(matches!(q.offer(d(QoS::AtMostOnce)), Offer::Accepted));
        assert!(matches!(q.offer(d(QoS::AtLeastOnce)), Offer::Accepted));
        assert!(matches!(q.offer(d(QoS::AtMostOnce)), Offer::Over));
        assert!(matches!(q.offer(d(QoS::AtLeastOnce)), Offer::Over));
        assert!(matches!(q.offer(d(QoS::AtMostOnce)), Offer::Dropped));
        assert!(matches!(q.offer(d(QoS::AtLeastOnce)), Offer::Over), "QoS 1 never dropped");
        let (items, ctl) = q.take();
        assert_eq!(items.len(), 5);
        assert!(ctl.is_none());
        // Taken but not yet settled: still the backlog.
        assert!(matches!(q.offer(d(QoS::AtMostOnce)), Offer::Dropped));
        // What the connection still holds counts towards the limit.
        q.settle(4);
        assert!(matches!(q.offer(d(QoS::AtMostOnce)), Offer::Dropped));
        q.settle(2);
        assert!(matches!(q.offer(d(QoS::AtMostOnce)), Offer::Over));
        q.take();
        q.settle(1);
        assert!(matches!(q.offer(d(QoS::AtMostOnce)), Offer::Accepted));
    }

    #[test]
    fn an_idle_queue_holds_no_buffer() {
        let q = ConnQueue::new(1, 8);
        q.offer(d(QoS::AtLeastOnce));
        let (items, _) = q.take();
        assert_eq!(items.len(), 1);
        assert_eq!(q.inner.lock().items.capacity(), 0);
    }

    #[test]
    fn closed_queue_gives_deliveries_back_and_refuses_orders() {
        let q = ConnQueue::new(1, 8);
        q.offer(d(QoS::AtLeastOnce));
        assert_eq!(q.close().len(), 1);
        assert!(matches!(q.offer(d(QoS::AtLeastOnce)), Offer::Closed(_)));
        assert!(!q.order(Control::Kick(crate::mqtt::ReasonCode::AdministrativeAction)));
    }

    #[test]
    fn publishers_wait_for_room_and_are_released_by_settle_or_close() {
        let q = ConnQueue::new(1, 1);
        q.offer(d(QoS::AtLeastOnce));
        assert!(matches!(q.offer(d(QoS::AtLeastOnce)), Offer::Over));
        let mut wait = std::pin::pin!(q.room());
        assert!(wait.as_mut().now_or_never().is_none(), "no room yet");
        let (items, _) = q.take();
        assert_eq!(items.len(), 2);
        q.settle(1);
        assert!(wait.as_mut().now_or_never().is_none(), "one still held: backlog 1 of 1");
        q.settle(0);
        assert!(wait.as_mut().now_or_never().is_some(), "released once below the limit");

        q.offer(d(QoS::AtLeastOnce));
        let mut wait = std::pin::pin!(q.room());
        assert!(wait.as_mut().now_or_never().is_none());
        q.close();
        assert!(wait.as_mut().now_or_never().is_some(), "released by close");
    }

    #[test]
    fn a_wake_before_the_wait_is_not_lost() {
        let q = ConnQueue::new(1, 8);
        q.offer(d(QoS::AtMostOnce));
        assert!(std::pin::pin!(q.ready()).now_or_never().is_some(), "stored wake-up");
    }
}
