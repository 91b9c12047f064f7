//! Long-poll check-ins: requests held until the sync table changes (see
//! [`lockstep::wire::QUERY_WAIT_MS`]).
//!
//! One watcher task per process reads the sync table (through [`Store::rotate_if_due`], so a
//! rotation that falls due while everyone waits is performed) at once after every durable
//! write of this process, and every [`POLL`] while anyone waits, which is how changes made by
//! other instances on the same database (PostgreSQL, or another process on the SQLite file)
//! are noticed. Each read refreshes the sync table cache, so woken requests answer from
//! memory. It publishes the table's ETag on a `watch` channel when it changed; each held
//! request then looks at the table again and answers if it is no longer the client's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::clock;
use crate::store::Store;

/// How often the watcher reads the sync table while requests are held. Below the sync table
/// cache's lifetime, so the table the woken requests look at is always in memory.
pub const POLL: Duration = Duration::from_millis(40);

/// `Retry-After` on a long-poll check-in refused because [`Waiters::hold`] is at its cap; the
/// client sleeps until its next planned check-in anyway.
pub const BUSY_RETRY_AFTER_S: u64 = 30;

/// The held check-ins of this process and what wakes them.
pub struct Waiters {
    /// The sync table's ETag as the watcher last read it (`None` before its first read).
    published: watch::Sender<Option<String>>,
    held: AtomicUsize,
    /// Most check-ins held at once: a held check-in keeps its connection, and held ones must
    /// leave connections for everything else.
    max_held: usize,
    /// [`POLL`] but in tests that must tell the poll's wake from a write's.
    poll: Duration,
    /// Told when the first request is held, so an idle watcher starts polling.
    kick: Notify,
    stopping: watch::Sender<bool>,
}

impl Waiters {
    pub fn new(max_held: usize, poll: Duration) -> Self {
        Waiters {
            published: watch::channel(None).0,
            held: AtomicUsize::new(0),
            max_held,
            poll,
            kick: Notify::new(),
            stopping: watch::channel(false).0,
        }
    }
}

/// Why [`Hold::next`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The table may have changed: look again.
    Changed,
    /// The wait is over (its time, or the server is stopping): answer 304.
    Over,
}

/// One held check-in; counted in [`Waiters::held`] while it lives (a client that goes away
/// drops its request, and this with it).
pub struct Hold {
    waiters: Arc<Waiters>,
    rx: watch::Receiver<Option<String>>,
    stop: watch::Receiver<bool>,
    etag: String,
    first: bool,
}

impl Waiters {
    /// Check-ins held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Answers every held check-in (304) and holds no more: a shutdown waits for open
    /// requests, and must not wait for these.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Holds a check-in whose client has the table with `etag`; `None` when as many are held
    /// as may be.
    pub fn hold(self: &Arc<Self>, etag: String) -> Option<Hold> {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_held).then_some(n + 1)
            })
            .ok()?;
        self.kick.notify_one();
        Some(Hold {
            waiters: self.clone(),
            rx: self.published.subscribe(),
            stop: self.stopping.subscribe(),
            etag,
            first: true,
        })
    }

    /// Starts the watcher on the runtime this is called from.
    pub fn spawn_watcher(self: &Arc<Self>, store: Arc<Store>) -> tokio::task::JoinHandle<()> {
        let waiters = self.clone();
        tokio::spawn(async move { waiters.watch(store).await })
    }

    async fn watch(&self, store: Arc<Store>) {
        loop {
            if self.held() == 0 {
                // Nothing to do until someone waits; a write meanwhile is read when they do.
                self.kick.notified().await;
                continue;
            }
            tokio::select! {
                () = store.changed().notified() => {}
                () = self.kick.notified() => {}
                () = tokio::time::sleep(self.poll) => {}
            }
            let s = store.clone();
            let read = tokio::task::spawn_blocking(move || {
                s.rotate_if_due(clock::now_us(), "long-poll")
                    .map(|(sync, _)| sync.etag())
            })
            .await;
            match read {
                Ok(Ok(etag)) => {
                    self.published.send_if_modified(|last| {
                        let changed = last.as_deref() != Some(etag.as_str());
                        if changed {
                            *last = Some(etag);
                        }
                        changed
                    });
                }
                Ok(Err(e)) => {
                    tracing::debug!("long-poll watcher cannot read the sync table: {e}");
                    tokio::time::sleep(self.poll.min(POLL)).await;
                }
                Err(e) => tracing::warn!("long-poll watcher's read failed: {e}"),
            }
        }
    }
}

impl Hold {
    /// Waits until the sync table may differ from the client's, the deadline, or a stop.
    pub async fn next(&mut self, deadline: tokio::time::Instant) -> Wake {
        if *self.stop.borrow() {
            return Wake::Over;
        }
        if std::mem::take(&mut self.first) {
            // A change published between the client's table being read and this hold began
            // would otherwise be missed until the next one.
            let differs = self
                .rx
                .borrow_and_update()
                .as_deref()
                .is_some_and(|e| e != self.etag);
            if differs {
                return Wake::Changed;
            }
        }
        loop {
            tokio::select! {
                r = self.rx.changed() => {
                    if r.is_err() {
                        return Wake::Over;
                    }
                    let differs = self
                        .rx
                        .borrow_and_update()
                        .as_deref()
                        .is_some_and(|e| e != self.etag);
                    if differs {
                        return Wake::Changed;
                    }
                }
                _ = self.stop.wait_for(|s| *s) => return Wake::Over,
                () = tokio::time::sleep_until(deadline) => return Wake::Over,
            }
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.waiters.held.fetch_sub(1, Ordering::Relaxed);
    }
}
