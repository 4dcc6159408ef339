//! Output buffering shared by both directions: small frames are copied together, large ones are written
//! in place with vectored writes. Many small replies cost one system call; one large reply costs no copy.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Frames at or below this size are copied into the coalescing buffer.
const COPY_LIMIT: usize = 4096;
/// Most buffers per vectored write.
const MAX_IOV: usize = 64;

/// Pending output, in order.
#[derive(Debug, Default)]
pub struct OutBuf {
    chunks: VecDeque<Bytes>,
    small: BytesMut,
    len: usize,
}

impl OutBuf {
    /// Appends a frame, copying it if small.
    pub fn push(&mut self, b: Bytes) {
        self.len += b.len();
        if b.len() <= COPY_LIMIT {
            self.small.extend_from_slice(&b);
        } else {
            self.seal();
            self.chunks.push_back(b);
        }
    }

    /// Appends bytes by copying.
    pub fn extend(&mut self, b: &[u8]) {
        self.len += b.len();
        self.small.extend_from_slice(b);
    }

    /// Bytes pending.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn seal(&mut self) {
        if !self.small.is_empty() {
            self.chunks.push_back(self.small.split().freeze());
        }
    }

    /// Writes everything pending.
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<()> {
        while !self.is_empty() {
            self.write_some(w).await?;
        }
        Ok(())
    }

    /// One write system call (vectored if several chunks are pending); returns the bytes written.
    /// Cancel-safe: if the future is dropped before it completes, nothing was written.
    pub async fn write_some<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<usize> {
        self.seal();
        let n = match self.chunks.len() {
            0 => return Ok(0),
            1 => w.write(&self.chunks[0]).await?,
            _ => {
                let iov: Vec<IoSlice<'_>> = self
                    .chunks
                    .iter()
                    .take(MAX_IOV)
                    .map(|c| IoSlice::new(c))
                    .collect();
                w.write_vectored(&iov).await?
            }
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        self.len -= n;
        let mut left = n;
        while left > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                self.chunks.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
        // Keep the coalescing buffer's memory only while it is small: an idle client holds little.
        if self.chunks.is_empty() && self.small.capacity() > 64 * 1024 {
            self.small = BytesMut::new();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_and_large_frames_come_out_in_order() {
        let mut out = OutBuf::default();
        out.extend(b"+OK\r\n");
        let big = Bytes::from(vec![b'x'; 10_000]);
        out.push(big.clone());
        out.push(Bytes::from_static(b":1\r\n"));
        assert_eq!(out.len(), 5 + 10_000 + 4);
        let mut sink = Vec::new();
        out.write_to(&mut sink).await.expect("write to vec");
        assert!(out.is_empty());
        let mut want = b"+OK\r\n".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b":1\r\n");
        assert_eq!(sink, want);
    }
}
