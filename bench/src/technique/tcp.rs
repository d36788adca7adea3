//! Baseline: a raw tokio `TcpStream` on loopback, `TCP_NODELAY`, frames prefixed with a 4-byte
//! big-endian length. No TLS, no relay: the floor any technique on this machine pays.

use crate::link::{BoxFut, Link, MsgRx, MsgTx};
use crate::technique::Technique;
use anyhow::Context;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Raw TCP on 127.0.0.1.
#[derive(Debug)]
pub struct TcpLoopback;

impl Technique for TcpLoopback {
    fn name(&self) -> &'static str {
        "tcp-loopback"
    }
    fn description(&self) -> &'static str {
        "raw tokio TcpStream on 127.0.0.1, TCP_NODELAY, 4-byte length prefix (baseline)"
    }
    fn setup_means(&self) -> &'static str {
        "connect() + accept() on a listener bound beforehand"
    }
    fn connect(&self) -> BoxFut<'_, anyhow::Result<Link>> {
        Box::pin(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.context("bind")?;
            let addr = listener.local_addr()?;
            let started = Instant::now();
            let (a, b) = tokio::try_join!(TcpStream::connect(addr), async { listener.accept().await.map(|(s, _)| s) })
                .context("connect")?;
            let setup = started.elapsed();
            a.set_nodelay(true)?;
            b.set_nodelay(true)?;
            let (ar, aw) = a.into_split();
            let (br, bw) = b.into_split();
            Ok(Link {
                a_tx: Box::new(TcpTx::new(aw)),
                a_rx: Box::new(TcpRx::new(ar)),
                b_tx: Box::new(TcpTx::new(bw)),
                b_rx: Box::new(TcpRx::new(br)),
                setup,
                close: Box::pin(async {}),
            })
        })
    }
}

struct TcpTx {
    w: OwnedWriteHalf,
    buf: BytesMut,
}

impl TcpTx {
    fn new(w: OwnedWriteHalf) -> Self {
        TcpTx { w, buf: BytesMut::new() }
    }
}

impl MsgTx for TcpTx {
    fn send(&mut self, msg: Bytes) -> BoxFut<'_, anyhow::Result<()>> {
        Box::pin(async move {
            // One copy and one write per message: prefix and body in a single syscall.
            self.buf.clear();
            self.buf.reserve(4 + msg.len());
            self.buf.put_u32(u32::try_from(msg.len())?);
            self.buf.extend_from_slice(&msg);
            self.w.write_all(&self.buf).await?;
            Ok(())
        })
    }
}

/// Reads into an owned buffer with `read_buf`, so a cancelled `recv` loses nothing.
struct TcpRx {
    r: OwnedReadHalf,
    buf: BytesMut,
}

impl TcpRx {
    fn new(r: OwnedReadHalf) -> Self {
        TcpRx { r, buf: BytesMut::with_capacity(256 * 1024) }
    }
}

impl MsgRx for TcpRx {
    fn recv(&mut self) -> BoxFut<'_, Option<Bytes>> {
        Box::pin(async move {
            loop {
                if self.buf.len() >= 4 {
                    let len = u32::from_be_bytes(self.buf[..4].try_into().ok()?) as usize;
                    if self.buf.len() >= 4 + len {
                        self.buf.advance(4);
                        return Some(self.buf.split_to(len).freeze());
                    }
                    self.buf.reserve(4 + len - self.buf.len());
                }
                if self.buf.capacity() - self.buf.len() < 64 * 1024 {
                    self.buf.reserve(256 * 1024);
                }
                match self.r.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
    }
}
