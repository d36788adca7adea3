//! gzip for SSE streams (`Content-Encoding: gzip` when the client sends `Accept-Encoding: gzip`).
//!
//! One compressor per stream, so later events compress against earlier ones (envelopes repeat their field
//! names, peer ids and SDP lines). Every chunk the pump hands over is followed by a sync flush, so each event
//! reaches the client whole as soon as it is sent: without it deflate would sit on small events until it has a
//! block's worth. The compressor's memory is fixed per stream, whatever passes through it (see
//! [`COMPRESSOR_BYTES`]); its output per chunk is at most the chunk plus a few bytes, and that output is what
//! the pump's bounded channel holds.

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;

/// What one stream's compressor holds, about, from miniz_oxide 0.9's buffer sizes: the 32 KiB window, two
/// 64 KiB hash tables, the 64 KiB LZ code buffer, an 83 KiB output buffer and the Huffman tables (≈ 312 KiB),
/// plus flate2's 32 KiB buffer. It is allocated once per gzipped stream and never grows; streams are capped
/// by `--max-connections`, so gzip adds at most that many times this.
pub const COMPRESSOR_BYTES: usize = 350 * 1024;

/// Level 1: signaling JSON is repetitive enough that the fastest level keeps most of the gain, and a
/// stream flooded with large relays costs the least CPU.
const LEVEL: u32 = 1;

/// A gzip stream written one flushed chunk at a time.
pub struct GzipStream {
    enc: GzEncoder<Vec<u8>>,
}

impl std::fmt::Debug for GzipStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GzipStream").finish_non_exhaustive()
    }
}

impl Default for GzipStream {
    fn default() -> Self {
        Self::new()
    }
}

impl GzipStream {
    /// A new stream; its gzip header goes out with the first chunk.
    pub fn new() -> Self {
        GzipStream { enc: GzEncoder::new(Vec::new(), Compression::new(LEVEL)) }
    }

    /// Compresses `chunk` and sync-flushes: the bytes returned decode to everything written so far.
    pub fn chunk(&mut self, chunk: &[u8]) -> Bytes {
        // Writing to a Vec cannot fail; were the compressor ever to, an empty chunk only loses this one.
        if self.enc.write_all(chunk).and_then(|()| self.enc.flush()).is_err() {
            tracing::warn!("gzip of an SSE chunk failed");
        }
        Bytes::from(std::mem::take(self.enc.get_mut()))
    }
}

/// Whether an `Accept-Encoding` value accepts gzip: `gzip` (or `x-gzip`, or `*` when gzip is not named)
/// with a q-value above 0.
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    let (mut gzip, mut any) = (None, None);
    for item in accept_encoding.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
            .map(|v| v.trim().parse::<f32>().unwrap_or(0.0))
            .next()
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(q > 0.0);
        } else if name == "*" {
            any = Some(q > 0.0);
        }
    }
    gzip.or(any).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn accept_encoding_values() {
        for yes in ["gzip", "gzip, deflate, br", "br;q=1.0, gzip;q=0.5", "x-gzip", "*", "GZIP", "deflate, *;q=0.1"] {
            assert!(accepts_gzip(yes), "{yes:?}");
        }
        for no in ["", "identity", "br", "gzip;q=0", "gzip; q=0.0, br", "*;q=0", "gzip;q=0, *", "gzip;q=x", "gzipx"] {
            assert!(!accepts_gzip(no), "{no:?}");
        }
    }

    #[test]
    fn every_chunk_decodes_on_its_own_arrival() {
        let mut gz = GzipStream::new();
        let mut dec = flate2::write::GzDecoder::new(Vec::new());
        let mut expect = String::new();
        for i in 0..50 {
            let event = format!("id: t-{i}\ndata: {{\"type\":\"pong\",\"seq\":{i}}}\n\n");
            expect.push_str(&event);
            dec.write_all(&gz.chunk(event.as_bytes())).unwrap();
            dec.flush().unwrap();
            // Everything sent so far is readable now, not when a later chunk comes.
            assert_eq!(std::str::from_utf8(dec.get_ref()).unwrap(), expect);
        }
    }
}
