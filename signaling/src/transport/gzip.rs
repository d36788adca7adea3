//! gzip for SSE streams (`Content-Encoding: gzip` when the client sends `Accept-Encoding: gzip`).
//!
//! **Every piece is compressed on its own.** The stream carries secrets (the session token in every event's
//! `id:` and in the `welcome`, TURN credentials) next to data another peer of the room chooses (its relays and
//! SDPs), and each event goes out as soon as it is made, so an on-path observer sees its compressed length.
//! If they shared one deflate context, a peer could send guesses and watch which ones compress better
//! (CRIME/BREACH). So the pump hands over an event's header lines (`id:`, `event:`) and its `data:` lines as
//! separate pieces, and each piece ends with a *full* flush, which both sends everything at once (events are
//! never held back) and resets the dictionary: no piece can refer to another. What is left is compression
//! inside one envelope (JSON field names, SDP lines), measured in `signaling/tests/sse_gzip.rs`.
//!
//! Since no piece refers to another, a stream needs no compressor of its own: each piece is deflated by the
//! thread's one compressor, reset first, into a byte-aligned run of non-final blocks, and such runs concatenate
//! into a valid deflate stream. A stream keeps only its CRC-32 and length; the compressors cost
//! [`COMPRESSOR_BYTES`] per runtime worker thread, whatever the number of streams. The output per piece is at
//! most the piece plus a few bytes, and that output is what the pump's bounded channel holds.

use bytes::Bytes;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// What one compressor holds, about, from miniz_oxide 0.9's buffer sizes: the 32 KiB window, two 64 KiB hash
/// tables, the 64 KiB LZ code buffer, an 83 KiB output buffer and the Huffman tables (≈ 312 KiB). There is one
/// per thread that compresses (the runtime's workers), allocated on first use, never grown.
pub const COMPRESSOR_BYTES: usize = 320 * 1024;

thread_local! {
    static DEFLATE: std::cell::RefCell<Compress> = std::cell::RefCell::new(Compress::new(Compression::new(LEVEL), false));
}

/// Level 1: each piece is one envelope at most, and the fastest level keeps most of what is to be gained
/// there, at the least CPU for a stream flooded with large relays.
const LEVEL: u32 = 1;

/// The gzip member header (RFC 1952): deflate, no name or time, unknown OS.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

/// One gzip stream, written piece by piece.
pub struct GzipStream {
    crc: Crc,
    started: bool,
}

impl std::fmt::Debug for GzipStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GzipStream").field("in", &self.crc.amount()).finish_non_exhaustive()
    }
}

impl Default for GzipStream {
    fn default() -> Self {
        Self::new()
    }
}

impl GzipStream {
    /// A new stream; its gzip header goes out with the first bytes.
    pub fn new() -> Self {
        GzipStream { crc: Crc::new(), started: false }
    }

    /// Compresses each of `pieces` in a context of its own and returns the bytes to send: they decode to
    /// everything written so far.
    pub fn pieces<'a>(&mut self, pieces: impl IntoIterator<Item = &'a [u8]>) -> Bytes {
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            out.extend_from_slice(&HEADER);
        }
        for piece in pieces.into_iter().filter(|p| !p.is_empty()) {
            self.crc.update(piece);
            deflate(piece, FlushCompress::Full, &mut out);
        }
        Bytes::from(out)
    }

    /// The end of the stream: the final (empty) deflate block and the gzip trailer (CRC-32 and length).
    pub fn finish(&mut self) -> Bytes {
        let mut out = self.pieces([]).to_vec();
        deflate(&[], FlushCompress::Finish, &mut out);
        out.extend_from_slice(&self.crc.sum().to_le_bytes());
        out.extend_from_slice(&self.crc.amount().to_le_bytes());
        Bytes::from(out)
    }
}

/// Deflates `input` with the thread's compressor, reset first: the output refers to nothing before it and
/// ends byte-aligned (full flush), or with the final block (finish).
fn deflate(input: &[u8], flush: FlushCompress, out: &mut Vec<u8>) {
    DEFLATE.with(|c| {
        // Only this function borrows it, and it never yields: the borrow cannot fail.
        let Ok(mut c) = c.try_borrow_mut() else { return };
        c.reset();
        run(&mut c, input, flush, out);
    });
}

fn run(deflate: &mut Compress, mut input: &[u8], flush: FlushCompress, out: &mut Vec<u8>) {
    // Bounded: each round either consumes input or fills the room it was given; the cap is only a guard.
    for _ in 0..1_000_000 {
        out.reserve(input.len() / 2 + 256);
        let before = deflate.total_in();
        let status = deflate.compress_vec(input, out, flush);
        input = &input[(deflate.total_in() - before) as usize..];
        match status {
            Ok(Status::StreamEnd) => return,
            // The flush is complete once all input is in and the compressor stopped short of the room.
            Ok(_) if input.is_empty() && out.len() < out.capacity() && flush != FlushCompress::Finish => return,
            Ok(_) => {}
            Err(e) => {
                // Cannot happen with a valid level; the stream is then cut short rather than wrong.
                tracing::warn!(error = %e, "gzip of an SSE piece failed");
                return;
            }
        }
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

    fn decode(stream: &[u8]) -> (String, bool) {
        let mut d = flate2::write::GzDecoder::new(Vec::new());
        d.write_all(stream).unwrap();
        d.flush().unwrap();
        let complete = d.try_finish().is_ok();
        (String::from_utf8(d.get_ref().clone()).unwrap(), complete)
    }

    #[test]
    fn every_chunk_decodes_on_its_own_arrival_and_the_end_is_a_valid_gzip() {
        let mut gz = GzipStream::new();
        let mut wire = Vec::new();
        let mut expect = String::new();
        for i in 0..50 {
            let (head, data) = (format!("id: t-{i}\n"), format!("data: {{\"type\":\"pong\",\"seq\":{i}}}\n\n"));
            expect.push_str(&head);
            expect.push_str(&data);
            wire.extend_from_slice(&gz.pieces([head.as_bytes(), data.as_bytes()]));
            // Everything sent so far is readable now, not when a later chunk comes.
            assert_eq!(decode(&wire).0, expect);
        }
        wire.extend_from_slice(&gz.finish());
        let mut whole = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&wire[..]), &mut whole).unwrap();
        assert_eq!(whole, expect, "the trailer's CRC and length check out");
    }

    #[test]
    fn streams_sharing_the_thread_compressor_stay_apart() {
        let (mut a, mut b) = (GzipStream::new(), GzipStream::new());
        let (mut wa, mut wb) = (Vec::new(), Vec::new());
        for i in 0..20 {
            wa.extend_from_slice(&a.pieces([format!("data: a{i}\n\n").as_bytes()]));
            wb.extend_from_slice(&b.pieces([format!("data: b{i}-{}\n\n", "z".repeat(i * 100)).as_bytes()]));
        }
        wa.extend_from_slice(&a.finish());
        let (text, complete) = decode(&wa);
        assert!(complete && text.starts_with("data: a0\n\n") && text.ends_with("data: a19\n\n") && !text.contains('b'));
        assert!(decode(&wb).0.ends_with(&format!("data: b19-{}\n\n", "z".repeat(1900))));
    }

    #[test]
    fn a_piece_compresses_the_same_whatever_came_before() {
        // An attacker's guess sent after the secret must not compress better when it matches.
        let secret = b"id: 9c4e0a1b2c3d4e5f60718293a4b5c6d7-12\n";
        let len_after = |before: &[u8]| {
            let mut gz = GzipStream::new();
            gz.pieces([before]);
            gz.pieces([b"data: {\"guess\":\"9c4e0a1b2c3d4e5f60718293a4b5c6d7\"}\n\n".as_slice()]).len()
        };
        assert_eq!(len_after(secret), len_after(b"id: 0000000000000000ffffffffffffffff-12\n"));
        // Inside one piece, repetition does compress.
        let mut gz = GzipStream::new();
        let header = gz.pieces([]).len();
        let sdp = "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n".repeat(20);
        assert!(gz.pieces([sdp.as_bytes()]).len() - header < sdp.len() / 4);
    }
}
