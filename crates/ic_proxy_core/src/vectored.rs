//! Writing many buffers with as few `writev` calls as the kernel allows:
//! payloads go out from where they were read, with no copy into a batch.

use std::io;

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Buffers one `writev` takes at most (Linux's IOV_MAX).
pub(crate) const MAX_IOV: usize = 1024;

/// Writes every buffer of `bufs`, in order.
pub(crate) async fn write_all_vectored<W, B>(wr: &mut W, bufs: &[B]) -> io::Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
    B: AsRef<[u8]>,
{
    let (mut i, mut off) = (0usize, 0usize);
    let mut slices: Vec<io::IoSlice<'_>> = Vec::with_capacity(bufs.len().min(MAX_IOV));
    loop {
        // Empty buffers (a header-only frame's payload) are stepped over:
        // a writev of nothing would return 0.
        while i < bufs.len() && bufs[i].as_ref().len() == off {
            i += 1;
            off = 0;
        }
        if i == bufs.len() {
            break;
        }
        slices.clear();
        slices.push(io::IoSlice::new(&bufs[i].as_ref()[off..]));
        slices.extend(
            bufs[i + 1..]
                .iter()
                .take(MAX_IOV - 1)
                .map(|b| io::IoSlice::new(b.as_ref())),
        );
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        // Step over what went out: whole buffers, then part of one.
        while n > 0 && i < bufs.len() {
            let rest = bufs[i].as_ref().len() - off;
            if n >= rest {
                n -= rest;
                i += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn every_byte_goes_out_in_order_across_partial_writes_and_iov_limits() {
        // A pipe smaller than what is written forces partial writes.
        let (mut a, mut b) = tokio::io::duplex(1000);
        // Empty buffers among them, and last.
        let bufs: Vec<Vec<u8>> = (0..(MAX_IOV + 300))
            .map(|i| vec![(i % 251) as u8; i % 7])
            .collect();
        assert!(bufs.last().unwrap().is_empty());
        let want: Vec<u8> = bufs.concat();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        });
        write_all_vectored(&mut a, &bufs).await.unwrap();
        drop(a);
        assert_eq!(reader.await.unwrap(), want);
    }
}
