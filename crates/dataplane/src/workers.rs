//! The data path's threads: one single-threaded runtime per core, and each connection lives on one
//! of them from accept to close (as Envoy's workers do).
//!
//! On the shared work-stealing runtime, a bulk tunnel's task and the I/O events that wake it
//! bounce between threads: profiled, the single-stream path made five to ten times more context
//! switches per GB than on one thread. A connection pinned to a thread is woken by that thread's
//! own I/O driver, and the threads still use every core between them.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::task::JoinSet;

pub(crate) struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

static WORKERS: OnceLock<Workers> = OnceLock::new();

/// The data-path threads, started on first use and kept for the life of the process. If they
/// cannot be started (the process is out of threads or descriptors), connections are served on
/// the runtime that accepted them: slower, but served.
pub(crate) fn workers() -> &'static Workers {
    WORKERS.get_or_init(|| {
        let count = std::thread::available_parallelism().map_or(1, |n| n.get());
        let handles = (0..count)
            .map(start_worker)
            .collect::<std::io::Result<Vec<_>>>()
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot start the data-path threads; serving connections on the main runtime");
                Vec::new()
            });
        Workers {
            handles,
            next: AtomicUsize::new(0),
        }
    })
}

fn start_worker(index: usize) -> std::io::Result<Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(format!("dataplane-{index}"))
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

impl Workers {
    /// Every data-path thread (none if they could not be started).
    pub fn all(&self) -> &[Handle] {
        &self.handles
    }

    /// The thread for the next connection, in turn (none if they could not be started).
    pub fn next(&self) -> Option<&Handle> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.handles.get(i.checked_rem(self.handles.len())?)
    }
}

/// Serves an accepted connection on the next data-path thread, as a task of `connections`.
pub(crate) fn serve_on_worker<F, Fut>(connections: &mut JoinSet<()>, stream: TcpStream, serve: F)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // Registered again on the thread that serves it, so its readiness wakes that thread only.
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(error = %e, "cannot hand a connection to a data-path thread");
            return;
        }
    };
    let served = async move {
        match TcpStream::from_std(stream) {
            Ok(stream) => serve(stream).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take a connection on a data-path thread")
            }
        }
    };
    match workers().next() {
        Some(thread) => connections.spawn_on(served, thread),
        None => connections.spawn(served),
    };
}

/// Tasks alive on the data-path threads (zero before any connection).
pub(crate) fn alive_tasks() -> usize {
    WORKERS.get().map_or(0, |w| {
        w.handles
            .iter()
            .map(|h| h.metrics().num_alive_tasks())
            .sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_take_turns_across_the_threads_and_their_tasks_are_counted() {
        let workers = workers();
        let threads: std::collections::HashSet<_> = (0..workers.handles.len())
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::channel();
                workers.next().unwrap().spawn(async move {
                    tx.send(std::thread::current().name().map(String::from))
                        .unwrap();
                });
                rx.recv().unwrap()
            })
            .collect();
        assert_eq!(threads.len(), workers.handles.len(), "{threads:?}");

        let (release, parked) = tokio::sync::oneshot::channel::<()>();
        let task = workers.next().unwrap().spawn(async move {
            let _ = parked.await;
        });
        // Other tests run tasks on the same threads at the same time, so only a lower bound holds.
        assert!(alive_tasks() >= 1);
        release.send(()).unwrap();
        while !task.is_finished() {
            std::thread::yield_now();
        }
    }
}
