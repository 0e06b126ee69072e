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
    /// Connections each thread serves now, by thread.
    serving: Vec<AtomicUsize>,
}

/// A thread serves a connection it accepted itself unless another thread serves more than this
/// many fewer.
/// Handing a connection over wakes the other thread, and a second thread waiting on a listener
/// is woken by every connection (from inside the client's `connect`, measured at 35–40 µs here);
/// so at low concurrency each connection stays where it was accepted, and under load they spread.
const HAND_OFF_MARGIN: usize = 2;

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
        let serving = handles.iter().map(|_| AtomicUsize::new(0)).collect();
        Workers {
            handles,
            next: AtomicUsize::new(0),
            serving,
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
    /// The next thread, by index, in turn (none if they could not be started).
    pub fn next(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        i.checked_rem(self.handles.len())
    }

    pub fn handle(&self, thread: usize) -> &Handle {
        &self.handles[thread]
    }

    /// Where a connection accepted on thread `me` is served: `me`, unless another thread serves
    /// more than [`HAND_OFF_MARGIN`] fewer connections.
    fn to_serve(&self, me: usize) -> usize {
        thread_to_serve(me, self.serving.len(), |i| {
            self.serving[i].load(Ordering::Relaxed)
        })
    }

    /// Counts a connection on `thread` for as long as the guard lives.
    fn serving(&'static self, thread: usize) -> Serving {
        self.serving[thread].fetch_add(1, Ordering::Relaxed);
        Serving(&self.serving[thread])
    }
}

/// Of `threads` threads serving `load(i)` connections each, the one to serve a connection that
/// thread `me` accepted.
fn thread_to_serve(me: usize, threads: usize, load: impl Fn(usize) -> usize) -> usize {
    let least = (0..threads).min_by_key(|&i| load(i)).unwrap_or(me);
    if load(me) > load(least) + HAND_OFF_MARGIN {
        least
    } else {
        me
    }
}

struct Serving(&'static AtomicUsize);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves a connection accepted on data-path thread `me` as a task of `connections`: on `me`
/// itself, or handed to a thread that serves fewer (see [`HAND_OFF_MARGIN`]). With no data-path
/// threads (`me` is none), on this runtime.
pub(crate) fn serve_accepted<F, Fut>(
    connections: &mut JoinSet<()>,
    me: Option<usize>,
    stream: TcpStream,
    serve: F,
) where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(me) = me else {
        connections.spawn(serve(stream));
        return;
    };
    let workers = workers();
    let thread = workers.to_serve(me);
    if thread != me {
        return hand_to(connections, thread, stream, serve);
    }
    let serving = workers.serving(me);
    connections.spawn(async move {
        let _serving = serving;
        serve(stream).await
    });
}

/// Serves an accepted connection on the next data-path thread, as a task of `connections`.
pub(crate) fn serve_on_worker<F, Fut>(connections: &mut JoinSet<()>, stream: TcpStream, serve: F)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    match workers().next() {
        Some(thread) => hand_to(connections, thread, stream, serve),
        None => {
            connections.spawn(serve(stream));
        }
    }
}

/// Serves `stream` on data-path thread `thread`, as a task of `connections`.
fn hand_to<F, Fut>(connections: &mut JoinSet<()>, thread: usize, stream: TcpStream, serve: F)
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
    let workers = workers();
    let serving = workers.serving(thread);
    let served = async move {
        let _serving = serving;
        match TcpStream::from_std(stream) {
            Ok(stream) => serve(stream).await,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take a connection on a data-path thread")
            }
        }
    };
    connections.spawn_on(served, workers.handle(thread));
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
    fn a_connection_stays_on_its_thread_until_another_serves_clearly_fewer() {
        let serve = |me, loads: &[usize]| thread_to_serve(me, loads.len(), |i| loads[i]);
        // At rest and at low concurrency: where it was accepted.
        assert_eq!(serve(0, &[0, 0]), 0);
        assert_eq!(serve(0, &[1, 0]), 0);
        assert_eq!(serve(0, &[HAND_OFF_MARGIN, 0]), 0);
        // Busier than another by more than the margin: to the least busy.
        assert_eq!(serve(0, &[HAND_OFF_MARGIN + 1, 0]), 1);
        assert_eq!(serve(1, &[5, 9, 2, 7]), 2);
        assert_eq!(serve(2, &[5, 9, 2, 7]), 2);
        assert_eq!(serve(0, &[3]), 0);
    }

    #[test]
    fn connections_take_turns_across_the_threads_and_their_tasks_are_counted() {
        let workers = workers();
        let threads: std::collections::HashSet<_> = (0..workers.handles.len())
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::channel();
                workers.handle(workers.next().unwrap()).spawn(async move {
                    tx.send(std::thread::current().name().map(String::from))
                        .unwrap();
                });
                rx.recv().unwrap()
            })
            .collect();
        assert_eq!(threads.len(), workers.handles.len(), "{threads:?}");

        let (release, parked) = tokio::sync::oneshot::channel::<()>();
        let task = workers.handle(workers.next().unwrap()).spawn(async move {
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
