//! Moving a tunnel's bytes between a plain TCP connection (a client or a backend) and a peer
//! connection, in frames.
//!
//! Each direction of a tunnel is a run of frames: a 4-byte big-endian length and that many bytes.
//! A zero length ends the direction, as a TCP half-close would. Once both directions have ended
//! that way, the peer connection carries nothing more of this tunnel and is free for the next one:
//! that is what lets a gateway keep warm connections to its peers and open a tunnel without a
//! handshake (see [`super::pool`]).
//!
//! Anything else is a broken tunnel, reported as an error so the caller resets the plain side:
//! a peer connection that ends mid-frame or without TLS `close_notify`, or a plain side that
//! resets. A `close_notify` where a frame would start ends that direction cleanly, but the
//! connection is then closed rather than reused.

use std::io;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::metrics::TunnelMeter;

/// Bytes of a frame's length prefix.
const HEADER: usize = 4;
/// A direction's first buffer, header included: a request or a reply fits, and a tunnel that
/// sits idle holds little.
const INITIAL_BUFFER: usize = 4 * 1024;
/// A direction's largest buffer, reached only by a direction whose reads keep filling it. A frame
/// of this size is exactly four full TLS records.
const MAX_BUFFER: usize = 256 * 1024;
/// Encrypted bytes a peer connection may queue before the socket takes them (rustls's default is
/// 64 KiB): a whole frame with its records' overhead, so a frame leaves in one system call.
pub(crate) const TLS_SEND_BUFFER: usize = MAX_BUFFER + 4 * 1024;
/// How much a buffer grows when a read fills it.
const GROWTH: usize = 4;
/// The most of a client's first bytes that travel with the tunnel request: what the first read
/// of a direction would have framed anyway.
pub(crate) const MAX_FIRST_FRAME: usize = INITIAL_BUFFER - HEADER;

/// Appends `bytes` to `out` as one frame, as [`relay`] would have sent them. Empty `bytes`
/// append nothing: an empty frame would end the direction.
pub(crate) fn push_frame(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // At most MAX_FIRST_FRAME bytes are ever pushed, far below 4 GiB.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Takes the first frame off `frames` and returns its bytes, when it is all there and not the
/// end frame: the client's first bytes, when they came with a tunnel request ([`push_frame`]).
/// Otherwise returns nothing and leaves `frames` as it was, for [`relay`] to read.
pub(crate) fn take_first_frame(frames: &mut Vec<u8>) -> Vec<u8> {
    let complete = frames
        .split_first_chunk::<HEADER>()
        .and_then(|(header, rest)| {
            let len = usize::try_from(u32::from_be_bytes(*header)).ok()?;
            (len > 0 && len <= rest.len()).then_some(len)
        });
    let Some(len) = complete else {
        return Vec::new();
    };
    let rest = frames.split_off(HEADER + len);
    let mut first = std::mem::replace(frames, rest);
    first.drain(..HEADER);
    first
}

/// What a finished tunnel moved, and whether its peer connection may carry another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Relayed {
    /// Bytes from the plain side into the tunnel.
    pub sent: u64,
    /// Bytes from the tunnel to the plain side.
    pub received: u64,
    pub reusable: bool,
}

/// How the direction from the peer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerEnd {
    /// With an end frame: the connection can carry another tunnel.
    Frame,
    /// With TLS `close_notify` between frames.
    Closed,
}

/// Relays between `plain` and the peer connection `tunnel` until both directions have ended,
/// adding what moves to `meter` as it moves. `leftover` is what was read from `tunnel` past the
/// tunnel's head: the start of its frames.
pub(crate) async fn relay<T>(
    plain: &mut TcpStream,
    tunnel: &mut T,
    leftover: Vec<u8>,
    meter: &TunnelMeter,
    plain_is_client: bool,
) -> io::Result<Relayed>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (mut plain_read, mut plain_write) = plain.split();
    let (tunnel_read, mut tunnel_write) = tokio::io::split(tunnel);
    let mut tunnel_read = io::Cursor::new(leftover).chain(tunnel_read);
    let (into, out_of) = counters(plain_is_client);
    let into_tunnel: &(dyn Fn(u64) + Sync) = &|n| into(meter, n);
    let out_of_tunnel: &(dyn Fn(u64) + Sync) = &|n| out_of(meter, n);
    let (sent, (received, end)) = tokio::try_join!(
        to_frames(&mut plain_read, &mut tunnel_write, into_tunnel),
        from_frames(&mut tunnel_read, &mut plain_write, out_of_tunnel),
    )?;
    let reusable = end == PeerEnd::Frame;
    if !reusable {
        tunnel_write.shutdown().await?;
    }
    Ok(Relayed {
        sent,
        received,
        reusable,
    })
}

/// One of a meter's byte counters.
type Counter = fn(&TunnelMeter, u64);

/// The meter's counters for what goes into the tunnel and what comes out of it: the meter counts
/// towards the far end (the backend) and back, whichever side this is.
fn counters(plain_is_client: bool) -> (Counter, Counter) {
    if plain_is_client {
        (TunnelMeter::sent, TunnelMeter::received)
    } else {
        (TunnelMeter::received, TunnelMeter::sent)
    }
}

/// How a tunnel's bytes travel on its peer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// In frames ([`relay`]): this project's gateways.
    Frames,
    /// As they are, until either end closes ([`relay_unframed`]): the Go ClusterLink's tunnels.
    Unframed,
}

/// Relays by `framing`.
pub(crate) async fn relay_as<T>(
    framing: Framing,
    plain: &mut TcpStream,
    tunnel: &mut T,
    leftover: Vec<u8>,
    meter: &TunnelMeter,
    plain_is_client: bool,
) -> io::Result<Relayed>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    match framing {
        Framing::Frames => relay(plain, tunnel, leftover, meter, plain_is_client).await,
        Framing::Unframed => relay_unframed(plain, tunnel, leftover, meter, plain_is_client).await,
    }
}

/// Relays bytes as they are between `plain` and `tunnel` (a Go gateway's tunnel), each end's
/// half-close passed on, until the tunnel's end: a Go gateway closes its whole connection as
/// soon as either of its ends closes, and takes nothing after, so bytes still on their way to it
/// then have nowhere to go. The connection never carries another tunnel.
pub(crate) async fn relay_unframed<T>(
    plain: &mut TcpStream,
    tunnel: &mut T,
    leftover: Vec<u8>,
    meter: &TunnelMeter,
    plain_is_client: bool,
) -> io::Result<Relayed>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (mut plain_read, mut plain_write) = plain.split();
    let (tunnel_read, mut tunnel_write) = tokio::io::split(tunnel);
    let mut tunnel_read = io::Cursor::new(leftover).chain(tunnel_read);
    let (into, out_of) = counters(plain_is_client);
    let into_tunnel: &(dyn Fn(u64) + Sync) = &|n| into(meter, n);
    let out_of_tunnel: &(dyn Fn(u64) + Sync) = &|n| out_of(meter, n);
    let into = copy_until_closed(&mut plain_read, &mut tunnel_write, into_tunnel);
    let out_of = copy_until_closed(&mut tunnel_read, &mut plain_write, out_of_tunnel);
    tokio::pin!(into, out_of);
    let mut sent = None;
    loop {
        tokio::select! {
            done = &mut into, if sent.is_none() => sent = Some(done?),
            done = &mut out_of => {
                return Ok(Relayed {
                    sent: sent.unwrap_or_default(),
                    received: done?,
                    reusable: false,
                });
            }
        }
    }
}

/// Copies until `from` ends, then half-closes `to`.
async fn copy_until_closed<R, W>(
    from: &mut R,
    to: &mut W,
    moved: &(dyn Fn(u64) + Sync),
) -> io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; INITIAL_BUFFER];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(total);
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        total += n as u64;
        moved(n as u64);
        grow_if_filled(&mut buf, n);
    }
}

/// Frames what `plain` sends until it half-closes, then sends the end frame.
async fn to_frames<R, W>(
    plain: &mut R,
    tunnel: &mut W,
    moved: &(dyn Fn(u64) + Sync),
) -> io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; INITIAL_BUFFER];
    let mut total = 0u64;
    loop {
        // Read behind the header's place, so header and bytes go out in one write (and record).
        let n = plain.read(&mut buf[HEADER..]).await?;
        // A read fills at most the buffer, which never grows past MAX_BUFFER (far below 4 GiB).
        let len = u32::try_from(n).unwrap_or(u32::MAX);
        buf[..HEADER].copy_from_slice(&len.to_be_bytes());
        tunnel.write_all(&buf[..HEADER + n]).await?;
        tunnel.flush().await?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        moved(n as u64);
        grow_if_filled(&mut buf, HEADER + n);
    }
}

/// Runs a future whose reads and writes are all in memory, and so never wait.
#[cfg(feature = "fuzzing")]
pub(crate) fn complete<F: Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Waker};
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a read or write in memory waited"),
    }
}

/// The frame decoder over bytes in memory, for the fuzz targets: what it writes to the plain
/// side, whether the direction ended with an end frame, or why the frames were refused.
#[cfg(feature = "fuzzing")]
pub(crate) fn decode_frames(mut input: &[u8]) -> io::Result<(Vec<u8>, bool)> {
    let mut plain = Vec::new();
    let decoding = from_frames(&mut input, &mut plain, &|_| ());
    let (_, end) = complete(decoding)?;
    Ok((plain, end == PeerEnd::Frame))
}

/// Writes the bytes of the frames from `tunnel` to `plain` until the direction ends, then
/// half-closes `plain`.
async fn from_frames<R, W>(
    tunnel: &mut R,
    plain: &mut W,
    moved: &(dyn Fn(u64) + Sync),
) -> io::Result<(u64, PeerEnd)>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; INITIAL_BUFFER];
    let mut total = 0u64;
    loop {
        let Some(len) = read_header(tunnel).await? else {
            plain.shutdown().await?;
            return Ok((total, PeerEnd::Closed));
        };
        if len == 0 {
            plain.shutdown().await?;
            return Ok((total, PeerEnd::Frame));
        }
        let mut remaining = len;
        while remaining > 0 {
            let want = remaining.min(buf.len());
            let mut n = tunnel.read(&mut buf[..want]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the tunnel in the middle of a frame",
                ));
            }
            // A TLS read yields one record; what else has arrived goes out in the same write,
            // so the plain side is written (and its reader woken) once per buffer, not per record.
            while n < want {
                match read_ready(tunnel, &mut buf[n..want]).await? {
                    Some(m) if m > 0 => n += m,
                    _ => break,
                }
            }
            plain.write_all(&buf[..n]).await?;
            remaining -= n;
            total += n as u64;
            moved(n as u64);
            grow_if_filled(&mut buf, n);
        }
    }
}

/// A buffer that a read filled grows (up to [`MAX_BUFFER`]): more is likely waiting.
fn grow_if_filled(buf: &mut Vec<u8>, filled: usize) {
    if filled == buf.len() && buf.len() < MAX_BUFFER {
        buf.resize((buf.len() * GROWTH).min(MAX_BUFFER), 0);
    }
}

/// Reads what `reader` has ready into `buf` without waiting for more: `None` if nothing is.
async fn read_ready<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    buf: &mut [u8],
) -> io::Result<Option<usize>> {
    std::future::poll_fn(|cx| {
        let mut read = ReadBuf::new(buf);
        match Pin::new(&mut *reader).poll_read(cx, &mut read) {
            Poll::Pending => Poll::Ready(Ok(None)),
            Poll::Ready(result) => Poll::Ready(result.map(|()| Some(read.filled().len()))),
        }
    })
    .await
}

/// The next frame's length, or `None` if the peer closed cleanly where a frame would start.
async fn read_header<R: AsyncRead + Unpin + ?Sized>(tunnel: &mut R) -> io::Result<Option<usize>> {
    let mut header = [0u8; HEADER];
    let mut filled = 0;
    while filled < HEADER {
        let n = tunnel.read(&mut header[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the tunnel in the middle of a frame header",
                ))
            };
        }
        filled += n;
    }
    Ok(Some(u32::from_be_bytes(header) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A connected pair of TCP streams on loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap());
        let (a, b) = tokio::join!(a, listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    fn meter() -> TunnelMeter {
        crate::metrics::Metrics::default().tunnel_opened(crate::metrics::TunnelRef {
            side: crate::metrics::Side::Egress,
            import: Some("default/web".into()),
            export: "default/web".into(),
            peer: "p1".into(),
            client: None,
        })
    }

    fn frame(bytes: &[u8]) -> Vec<u8> {
        let mut f = (bytes.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(bytes);
        f
    }

    #[tokio::test]
    async fn both_directions_end_with_frames_and_the_connection_is_reusable() {
        let (mut plain, mut app) = pair().await;
        let (tunnel, mut peer) = tokio::io::duplex(1 << 20);
        let relay = tokio::spawn(async move {
            let mut tunnel = tunnel;
            // The peer's first frame arrived with the tunnel's head.
            let meter = meter();
            let relayed = relay(&mut plain, &mut tunnel, frame(b"hello "), &meter, true).await;
            (relayed, tunnel, meter.moved())
        });
        // A bulk write crosses buffer growth; the far side sees it framed, then the end frame.
        let bulk: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        app.write_all(&bulk).await.unwrap();
        app.shutdown().await.unwrap();
        let mut framed = Vec::new();
        loop {
            let mut header = [0u8; 4];
            peer.read_exact(&mut header).await.unwrap();
            let len = u32::from_be_bytes(header) as usize;
            assert!(len + HEADER <= MAX_BUFFER, "frame of {len}");
            if len == 0 {
                break;
            }
            let mut bytes = vec![0u8; len];
            peer.read_exact(&mut bytes).await.unwrap();
            framed.extend(bytes);
        }
        assert_eq!(framed, bulk);
        // The peer answers in two frames and ends its direction.
        peer.write_all(&[frame(b"world").as_slice(), &frame(b""), b"NEXT"].concat())
            .await
            .unwrap();
        let mut reply = Vec::new();
        app.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"hello world");
        let (relayed, mut tunnel, metered) = relay.await.unwrap();
        assert_eq!(
            relayed.unwrap(),
            Relayed {
                sent: bulk.len() as u64,
                received: 11,
                reusable: true
            }
        );
        assert_eq!(metered, (bulk.len() as u64, 11));
        // Bytes after the end frame belong to the next tunnel and were not consumed.
        let mut next = [0u8; 4];
        tunnel.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"NEXT");
    }

    #[test]
    fn a_complete_first_frame_is_taken_and_anything_else_left() {
        let mut frames = Vec::new();
        push_frame(&mut frames, b"hello");
        push_frame(&mut frames, b"more");
        assert_eq!(take_first_frame(&mut frames), b"hello");
        assert_eq!(frames, frame(b"more"));
        for left in [
            frame(b"hello")[..6].to_vec(),
            vec![0, 0, 0, 0],
            vec![0, 0],
            Vec::new(),
        ] {
            let mut frames = left.clone();
            assert!(take_first_frame(&mut frames).is_empty());
            assert_eq!(frames, left);
        }
    }

    #[tokio::test]
    async fn frames_split_anywhere_are_reassembled() {
        let (mut plain, mut app) = pair().await;
        // Three bytes at a time: headers and bytes arrive in pieces, and the first header is
        // split between what came with the tunnel's head and the connection.
        let (mut tunnel, mut peer) = tokio::io::duplex(3);
        let frames = [frame(b"ab").as_slice(), &frame(b"cdefgh"), &frame(b"")].concat();
        let (leftover, rest) = frames.split_at(2);
        let peer_side = tokio::spawn({
            let rest = rest.to_vec();
            async move {
                peer.write_all(&rest).await.unwrap();
                let mut ours = Vec::new();
                peer.read_to_end(&mut ours).await.unwrap();
                ours
            }
        });
        app.shutdown().await.unwrap();
        let relayed = relay(&mut plain, &mut tunnel, leftover.to_vec(), &meter(), true)
            .await
            .unwrap();
        assert!(relayed.reusable);
        assert_eq!(relayed.received, 8);
        drop(tunnel);
        assert_eq!(peer_side.await.unwrap(), frame(b""));
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"abcdefgh");
    }

    #[tokio::test]
    async fn a_peer_that_stops_mid_frame_breaks_the_tunnel() {
        let (mut plain, _app) = pair().await;
        let (mut tunnel, mut peer) = tokio::io::duplex(1024);
        peer.write_all(&[0, 0, 0, 10, b'a']).await.unwrap();
        drop(peer);
        let err = relay(&mut plain, &mut tunnel, Vec::new(), &meter(), true)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    #[tokio::test]
    async fn a_clean_close_between_frames_ends_the_tunnel_without_reuse() {
        let (mut plain, mut app) = pair().await;
        let (mut tunnel, mut peer) = tokio::io::duplex(1024);
        let peer_side = tokio::spawn(async move {
            peer.write_all(&frame(b"bye")).await.unwrap();
            peer.shutdown().await.unwrap();
            let mut rest = Vec::new();
            peer.read_to_end(&mut rest).await.unwrap();
            rest
        });
        app.shutdown().await.unwrap();
        let relayed = relay(&mut plain, &mut tunnel, Vec::new(), &meter(), false)
            .await
            .unwrap();
        assert!(!relayed.reusable);
        drop(tunnel);
        assert_eq!(peer_side.await.unwrap(), frame(b""));
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
    }
}
