//! Frame layout of raft-net, pure and unit-tested.
//!
//! ```text
//! +----------------+-----------+----------------+------------------+
//! | length: u32 BE | version u8| request id u64 | payload (postcard)|
//! +----------------+-----------+----------------+------------------+
//! ```
//! `length` counts everything after itself. A frame whose length is below the header size or
//! above the configured limit, or whose version is unknown, closes the connection.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::NetError;

/// The wire version this build speaks.
pub const FRAME_VERSION: u8 = 1;
/// Bytes after the length prefix that are not payload: version and request id.
pub const HEADER_BYTES: u32 = 1 + 8;

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub request_id: u64,
    pub payload: Vec<u8>,
}

/// Check a length prefix against the limits.
pub fn check_length(length: u32, max_frame_bytes: u32) -> Result<(), NetError> {
    if length < HEADER_BYTES {
        return Err(NetError::Malformed(format!(
            "frame length {length} is below the header size {HEADER_BYTES}"
        )));
    }
    if length > max_frame_bytes {
        return Err(NetError::FrameTooLarge {
            frame_bytes: u64::from(length),
            max_frame_bytes: u64::from(max_frame_bytes),
        });
    }
    Ok(())
}

/// Encode a frame into bytes ready to write, refusing payloads over the limit.
pub fn encode(request_id: u64, payload: &[u8], max_frame_bytes: u32) -> Result<Vec<u8>, NetError> {
    let length = u64::try_from(payload.len()).unwrap_or(u64::MAX) + u64::from(HEADER_BYTES);
    if length > u64::from(max_frame_bytes) {
        return Err(NetError::FrameTooLarge {
            frame_bytes: length,
            max_frame_bytes: u64::from(max_frame_bytes),
        });
    }
    let mut out = Vec::with_capacity(4 + length as usize);
    out.extend_from_slice(&(length as u32).to_be_bytes());
    out.push(FRAME_VERSION);
    out.extend_from_slice(&request_id.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Read one frame. `Ok(None)` is a clean end of stream between frames. Waiting for a frame to
/// start has no deadline (the caller bounds idleness); once its first byte is in, the rest must
/// arrive within `frame_read_timeout_ms`. The payload buffer grows as bytes arrive, never
/// ahead of them from the claimed length: a peer that claims 64 MiB and sends 10 bytes costs
/// 64 KiB, not 64 MiB.
pub async fn read<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_frame_bytes: u32,
    frame_read_timeout_ms: u64,
) -> Result<Option<Frame>, NetError> {
    let mut first = [0u8; 1];
    match reader.read_exact(&mut first).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let rest = read_rest(reader, first[0], max_frame_bytes);
    match tokio::time::timeout(Duration::from_millis(frame_read_timeout_ms), rest).await {
        Ok(frame) => frame.map(Some),
        Err(_) => Err(NetError::Timeout {
            timeout_ms: frame_read_timeout_ms,
        }),
    }
}

async fn read_rest<R: AsyncRead + Unpin>(
    reader: &mut R,
    first_byte: u8,
    max_frame_bytes: u32,
) -> Result<Frame, NetError> {
    let mut length_bytes = [first_byte, 0, 0, 0];
    reader.read_exact(&mut length_bytes[1..]).await?;
    let length = u32::from_be_bytes(length_bytes);
    check_length(length, max_frame_bytes)?;
    let mut header = [0u8; HEADER_BYTES as usize];
    reader.read_exact(&mut header).await?;
    if header[0] != FRAME_VERSION {
        return Err(NetError::Malformed(format!(
            "frame version {} is not the supported version {FRAME_VERSION}",
            header[0]
        )));
    }
    let request_id = u64::from_be_bytes(header[1..9].try_into().expect("8 bytes"));
    let payload_bytes = (length - HEADER_BYTES) as usize;
    let mut payload = Vec::with_capacity(payload_bytes.min(IO_BUFFER_BYTES));
    let read = (&mut *reader)
        .take(payload_bytes as u64)
        .read_to_end(&mut payload)
        .await?;
    if read < payload_bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("frame cut off after {read} of {payload_bytes} payload bytes"),
        )
        .into());
    }
    Ok(Frame {
        request_id,
        payload,
    })
}

/// Bytes a connection buffers on each side: a frame smaller than this shares its system call
/// with the frames around it; a bigger one is read or written directly.
pub const IO_BUFFER_BYTES: usize = 64 * 1024;

/// Most frames written between two flushes by [`write_queued`].
const MAX_FRAMES_PER_FLUSH: usize = 64;

/// Write `first` and the frames already waiting in `queue` behind it, then flush once: frames
/// queued together leave in one system call instead of one each. `writer` should be a
/// `BufWriter` of [`IO_BUFFER_BYTES`].
pub async fn write_queued<W: AsyncWrite + Unpin>(
    writer: &mut W,
    first: &[u8],
    queue: &mut tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> Result<(), NetError> {
    writer.write_all(first).await?;
    // A frame that no longer fits in the buffer makes write_all send what is buffered first;
    // at most MAX_FRAMES_PER_FLUSH frames wait for the flush, so a steady stream of small
    // frames cannot hold the last ones back.
    for _ in 1..MAX_FRAMES_PER_FLUSH {
        let Ok(next) = queue.try_recv() else { break };
        writer.write_all(&next).await?;
    }
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip() {
        let bytes = encode(7, b"hello", 1024).unwrap();
        let mut reader = &bytes[..];
        let frame = read(&mut reader, 1024, 1000).await.unwrap().unwrap();
        assert_eq!(
            frame,
            Frame {
                request_id: 7,
                payload: b"hello".to_vec()
            }
        );
        assert!(read(&mut reader, 1024, 1000).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rejects_oversized_short_and_unknown_version() {
        assert!(matches!(
            encode(1, &[0u8; 100], 50),
            Err(NetError::FrameTooLarge { .. })
        ));
        let mut big = &(1_000_000u32).to_be_bytes()[..];
        assert!(matches!(
            read(&mut big, 1024, 1000).await,
            Err(NetError::FrameTooLarge { .. })
        ));
        let mut short = &(3u32).to_be_bytes()[..];
        assert!(matches!(
            read(&mut short, 1024, 1000).await,
            Err(NetError::Malformed(_))
        ));
        let mut bytes = encode(1, b"x", 1024).unwrap();
        bytes[4] = 99;
        assert!(matches!(
            read(&mut &bytes[..], 1024, 1000).await,
            Err(NetError::Malformed(_))
        ));
    }

    /// A reader of fixed bytes that records the largest buffer it was asked to fill.
    struct Recording<'a> {
        bytes: &'a [u8],
        largest_buffer: usize,
    }

    impl tokio::io::AsyncRead for Recording<'_> {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.largest_buffer = self.largest_buffer.max(buf.remaining());
            let n = buf.remaining().min(self.bytes.len());
            buf.put_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// A frame that claims 64 MiB and brings 10 bytes is an error, and the buffer never
    /// grew ahead of the bytes that arrived (it used to be allocated at the claimed length).
    #[tokio::test]
    async fn a_claimed_length_allocates_nothing_ahead_of_the_bytes() {
        const MAX_FRAME_BYTES: u32 = 64 * 1024 * 1024;
        let mut bytes = MAX_FRAME_BYTES.to_be_bytes().to_vec();
        bytes.push(FRAME_VERSION);
        bytes.extend_from_slice(&7u64.to_be_bytes());
        bytes.extend_from_slice(&[0u8; 10]);
        let mut reader = Recording {
            bytes: &bytes,
            largest_buffer: 0,
        };
        let result = read(&mut reader, MAX_FRAME_BYTES, 1000).await;
        assert!(
            matches!(&result, Err(NetError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof),
            "{result:?}"
        );
        assert!(
            reader.largest_buffer <= IO_BUFFER_BYTES,
            "asked to fill {} bytes",
            reader.largest_buffer
        );
    }

    /// Queued frames go out together, in order, each readable on its own; more than one
    /// flush's worth stays queued for the next call.
    #[tokio::test]
    async fn write_queued_sends_queued_frames_in_order() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(200);
        for id in 2..=100u64 {
            tx.send(encode(id, &id.to_be_bytes(), 1024).unwrap())
                .await
                .unwrap();
        }
        let mut out = tokio::io::BufWriter::with_capacity(IO_BUFFER_BYTES, Vec::new());
        write_queued(
            &mut out,
            &encode(1, &1u64.to_be_bytes(), 1024).unwrap(),
            &mut rx,
        )
        .await
        .unwrap();
        let written = out.into_inner();
        let mut reader = &written[..];
        for id in 1..=MAX_FRAMES_PER_FLUSH as u64 {
            let frame = read(&mut reader, 1024, 1000).await.unwrap().unwrap();
            assert_eq!(
                (frame.request_id, frame.payload),
                (id, id.to_be_bytes().to_vec())
            );
        }
        assert!(read(&mut reader, 1024, 1000).await.unwrap().is_none());
        assert_eq!(rx.len(), 100 - MAX_FRAMES_PER_FLUSH);
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error_not_a_clean_end() {
        let bytes = encode(1, b"hello", 1024).unwrap();
        let mut truncated = &bytes[..bytes.len() - 2];
        assert!(read(&mut truncated, 1024, 1000).await.is_err());
    }

    /// A frame that starts and then stalls ends in a timeout after frame_read_timeout_ms, and
    /// what it claims is not allocated ahead of its bytes.
    #[tokio::test]
    async fn a_stalled_frame_times_out() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let claimed = 64 * 1024 * 1024u32;
        client.write_all(&claimed.to_be_bytes()).await.unwrap();
        client.write_all(&[FRAME_VERSION]).await.unwrap();
        client.write_all(&7u64.to_be_bytes()).await.unwrap();
        client.write_all(b"only this").await.unwrap();
        let started = std::time::Instant::now();
        let stalled = read(&mut server, claimed, 200).await;
        assert!(
            matches!(stalled, Err(NetError::Timeout { timeout_ms: 200 })),
            "{stalled:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // Cut off instead of stalled: an error too, not a short frame.
        drop(server);
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(&claimed.to_be_bytes()).await.unwrap();
        client.write_all(&[FRAME_VERSION]).await.unwrap();
        client.write_all(&7u64.to_be_bytes()).await.unwrap();
        client.write_all(b"cut").await.unwrap();
        drop(client);
        assert!(read(&mut server, claimed, 1000).await.is_err());
    }
}
