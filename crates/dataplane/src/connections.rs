//! What every data-path connection gets: a tuned socket, and a bounded drain on shutdown.

use tokio::task::JoinSet;

use crate::limits::Limits;

/// Every data-path socket: no Nagle delay on small writes, and keepalive so dead ends are found.
pub(crate) fn tune_socket(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    tune(socket2::SockRef::from(stream))
}

/// The options of [`tune_socket`] on a listener: Linux gives each accepted socket its listener's
/// options, which saves four system calls per connection.
pub(crate) fn tune_listener(listener: &std::net::TcpListener) -> std::io::Result<()> {
    tune(socket2::SockRef::from(listener))
}

fn tune(socket: socket2::SockRef<'_>) -> std::io::Result<()> {
    socket.set_tcp_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Limits::DEFAULT.keepalive_idle)
        .with_interval(Limits::DEFAULT.keepalive_interval);
    socket.set_tcp_keepalive(&keepalive)
}

/// Whether nothing, not even an end of stream, waits to be read on `stream`. An idle
/// connection with something waiting was closed or reset by the other side (a `close_notify`, a
/// restarted gateway), so it is not used again.
pub(crate) fn nothing_to_read(stream: &tokio::net::TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::uninit()];
    // The socket is non-blocking: nothing waiting is `WouldBlock`, an end of stream is `Ok(0)`.
    matches!(
        socket2::SockRef::from(stream).peek(&mut probe),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    )
}

/// Waits for `connections` to end, for at most `limit` ([`Limits::drain`]); then closes the
/// rest.
pub(crate) async fn drain(mut connections: JoinSet<()>, limit: std::time::Duration, what: &str) {
    if connections.is_empty() {
        return;
    }
    tracing::info!(open = connections.len(), "draining {what}");
    let all_done = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limit, all_done).await.is_err() {
        tracing::warn!(
            left = connections.len(),
            "{what} still open after {limit:?}; closing them"
        );
        connections.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_accepted_socket_has_its_tuned_listeners_options() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tune_listener(&listener).unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let socket = socket2::SockRef::from(&accepted);
        assert!(socket.tcp_nodelay().unwrap());
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Limits::DEFAULT.keepalive_idle
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Limits::DEFAULT.keepalive_interval
        );
    }
}
