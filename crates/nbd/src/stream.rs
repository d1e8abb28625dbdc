//! Byte streams both ends run on (TCP, then TLS after STARTTLS) and exact-read helpers.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::error::{Error, Result};

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

pub type BoxStream = Box<dyn Stream>;

/// Reads exactly N bytes; EOF anywhere becomes `Error::Closed` with `what` as context.
pub async fn read_array<const N: usize, R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    what: &'static str,
) -> Result<[u8; N]> {
    let mut b = [0; N];
    read_exact(r, &mut b, what).await?;
    Ok(b)
}

pub async fn read_exact<R: AsyncRead + Unpin + ?Sized>(r: &mut R, buf: &mut [u8], what: &'static str) -> Result<()> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::Closed(what)),
        Err(e) => Err(e.into()),
    }
}

/// Reads a length-prefixed payload after checking the length against `limit`, so a hostile peer
/// cannot make us allocate gigabytes.
pub async fn read_payload<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    len: u32,
    limit: u32,
    what: &'static str,
) -> Result<Vec<u8>> {
    if len > limit {
        return Err(Error::Oversized { what, len: len.into(), limit: limit.into() });
    }
    let mut buf = vec![0; len as usize];
    read_exact(r, &mut buf, what).await?;
    Ok(buf)
}
