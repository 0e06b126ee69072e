//! Large reads under TLS while bulk data flows.
//!
//! rustls reads at most 4 KiB at a time, so a peer connection moving a bulk transfer costs four or
//! five system calls per 16 KiB TLS record. [`ReadAhead`] notices a read that fills the caller's
//! buffer (more is likely waiting) and switches to reading 64 KiB at a time, serving rustls from
//! its own buffer: a memory copy instead of system calls. As soon as a read finds less waiting than
//! the caller asked for, the buffer is released, so small exchanges and idle connections never
//! hold one.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read at once while data keeps coming: four full TLS records.
const READ_AHEAD: usize = 256 * 1024;

pub struct ReadAhead<S> {
    inner: S,
    /// Empty unless reading ahead.
    ahead: Vec<u8>,
    /// The unread part of `ahead`.
    start: usize,
    end: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> ReadAhead<S> {
        ReadAhead {
            inner,
            ahead: Vec::new(),
            start: 0,
            end: 0,
        }
    }
}

impl<S> ReadAhead<S> {
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl ReadAhead<tokio::net::TcpStream> {
    /// Whether nothing has arrived since the last read: none held ahead, and none waiting in the
    /// socket ([`crate::connections::nothing_to_read`]).
    pub fn is_quiet(&self) -> bool {
        self.start == self.end && crate::connections::nothing_to_read(&self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start < this.end {
            let n = out.remaining().min(this.end - this.start);
            out.put_slice(&this.ahead[this.start..this.start + n]);
            this.start += n;
            return Poll::Ready(Ok(()));
        }
        let wanted = out.remaining();
        if this.ahead.is_empty() {
            ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
            if wanted > 0 && out.remaining() == 0 {
                // The read filled the caller's buffer: bulk data, read ahead from now on.
                this.ahead = vec![0; READ_AHEAD];
            }
            return Poll::Ready(Ok(()));
        }
        let mut ahead = ReadBuf::new(&mut this.ahead);
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut ahead))?;
        let filled = ahead.filled().len();
        let n = wanted.min(filled);
        out.put_slice(&this.ahead[..n]);
        if filled <= wanted {
            // Everything waiting fitted the caller's buffer: the flow slowed down.
            this.ahead = Vec::new();
            (this.start, this.end) = (0, 0);
        } else {
            (this.start, this.end) = (n, filled);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bulk_reads_go_through_the_buffer_and_small_ones_release_it() {
        let (mut writer, reader) = tokio::io::duplex(1 << 20);
        let mut reader = ReadAhead::new(reader);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        writer.write_all(&data).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        // The first read fills the caller's buffer; from then on the reader reads ahead.
        let n = reader.read(&mut chunk).await.unwrap();
        got.extend_from_slice(&chunk[..n]);
        assert!(!reader.ahead.is_empty());
        while got.len() < data.len() {
            let n = reader.read(&mut chunk).await.unwrap();
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, data);
        assert!(!reader.ahead.is_empty());
        // A read that finds less waiting than asked for gives the buffer back.
        writer.write_all(b"tail").await.unwrap();
        let n = reader.read(&mut chunk).await.unwrap();
        assert_eq!(&chunk[..n], b"tail");
        assert!(reader.ahead.is_empty());
        drop(writer);
        assert_eq!(reader.read(&mut chunk).await.unwrap(), 0);
    }
}
