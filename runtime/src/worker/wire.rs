//! The zygote's wire: one SEQPACKET message on the control socket carries, as
//! `SCM_RIGHTS`, a worker's reply socket and the request's descriptors; the request and
//! the reply travel as length-prefixed JSON frames over the reply socket, so their size is
//! not limited by the control socket.

use std::io::{Read, Write};

/// Upper bound for one JSON frame; requests carry paths and mount options only.
const MAX_FRAME: u32 = 16 << 20;

pub(super) fn write_frame(w: &mut impl Write, body: &[u8]) -> std::io::Result<()> {
    let len =
        u32::try_from(body.len()).map_err(|_| std::io::Error::other("frame larger than 4 GiB"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(body)?;
    w.flush()
}

pub(super) fn read_frame(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "frame of {len} bytes is too large"
        )));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    Ok(body)
}
