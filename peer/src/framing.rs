//! Message framing on data channels, shared with the browser client (`web-demo/js/framing.js`).
//!
//! SCTP (and so every data channel) limits one message to the negotiated max-message-size: 64 KiB for
//! webrtc-rs by default, 256 KiB for Chromium. Larger messages are cut into chunks and reassembled here.
//!
//! - A **text** message that fits in one frame is sent as a plain text frame, so simple clients interoperate.
//! - Every **binary** frame starts with one header byte: bit 0 = FINAL (last frame of the message),
//!   bit 1 = TEXT (the reassembled message is UTF-8 text). `0x01` is a whole binary message, `0x00` a binary
//!   chunk with more to come, `0x02`/`0x03` the same for a text message too large for one frame.
//!   Other bits must be zero.
//! - Chunking needs an ordered, reliable channel; on other channels a message must fit in one frame.

use bytes::{Bytes, BytesMut};

/// Largest frame we send: the smallest max-message-size any peer of ours accepts (webrtc-rs' default).
pub const MAX_FRAME: usize = 64 * 1024;
/// Largest reassembled message we accept by default: a peer cannot make us buffer without bound.
pub const DEFAULT_MAX_MESSAGE: usize = 256 * 1024 * 1024;

const FINAL: u8 = 0x01;
const TEXT: u8 = 0x02;

/// One frame to put on the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A data-channel text message.
    Text(String),
    /// A data-channel binary message (header byte included).
    Binary(Bytes),
}

pub use crate::node::Payload as Message;

/// Cuts a message into frames of at most [`MAX_FRAME`] bytes.
pub fn encode(msg: &Message) -> Vec<Frame> {
    let (data, text_bit) = match msg {
        Message::Text(t) if t.len() <= MAX_FRAME => return vec![Frame::Text(t.clone())],
        Message::Text(t) => (t.as_bytes(), TEXT),
        Message::Binary(b) => (&b[..], 0),
    };
    let chunk = MAX_FRAME - 1;
    let n = data.len().div_ceil(chunk).max(1);
    (0..n)
        .map(|i| {
            let part = &data[i * chunk..((i + 1) * chunk).min(data.len())];
            let mut f = BytesMut::with_capacity(part.len() + 1);
            f.extend_from_slice(&[text_bit | if i + 1 == n { FINAL } else { 0 }]);
            f.extend_from_slice(part);
            Frame::Binary(f.freeze())
        })
        .collect()
}

/// How many frames [`encode`] makes of a message of `len` bytes (text or binary).
pub fn frame_count(len: usize, is_text: bool) -> usize {
    if is_text && len <= MAX_FRAME { 1 } else { len.div_ceil(MAX_FRAME - 1).max(1) }
}

/// A frame that breaks the framing rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// An empty binary frame (no header byte).
    #[error("empty binary frame")]
    Empty,
    /// Header bits we do not know.
    #[error("unknown frame header 0x{0:02x}")]
    BadHeader(u8),
    /// A text frame, or a frame of the other kind, in the middle of a chunked message.
    #[error("frame kind changed in the middle of a chunked message")]
    Interleaved,
    /// The reassembled message would exceed the limit; the rest of it is discarded.
    #[error("message exceeds {0} bytes")]
    TooLarge(usize),
    /// A text message that is not UTF-8.
    #[error("text message is not valid UTF-8")]
    BadUtf8,
}

/// Reassembles the frames of one channel.
#[derive(Debug)]
pub struct Reassembler {
    max: usize,
    buf: BytesMut,
    /// Kind of the message being assembled (Some(text?) while chunks are pending).
    pending: Option<bool>,
    /// Dropping the rest of an oversized message until its FINAL frame.
    discarding: bool,
}

impl Reassembler {
    /// A reassembler that refuses messages above `max` bytes.
    pub fn new(max: usize) -> Self {
        Reassembler { max, buf: BytesMut::new(), pending: None, discarding: false }
    }

    /// A text frame arrived.
    pub fn text(&mut self, text: String) -> Result<Message, FrameError> {
        if self.pending.is_some() || self.discarding {
            self.reset();
            return Err(FrameError::Interleaved);
        }
        Ok(Message::Text(text))
    }

    /// A binary frame arrived: a complete message, or None while chunks are pending.
    pub fn binary(&mut self, frame: &[u8]) -> Result<Option<Message>, FrameError> {
        let (&header, body) = frame.split_first().ok_or(FrameError::Empty)?;
        if header & !(FINAL | TEXT) != 0 {
            self.reset();
            return Err(FrameError::BadHeader(header));
        }
        let is_final = header & FINAL != 0;
        let is_text = header & TEXT != 0;
        if self.discarding {
            if is_final {
                self.reset();
            }
            return Ok(None);
        }
        if self.pending.is_some_and(|t| t != is_text) {
            self.reset();
            return Err(FrameError::Interleaved);
        }
        if self.buf.len() + body.len() > self.max {
            let max = self.max;
            self.reset();
            self.discarding = !is_final;
            return Err(FrameError::TooLarge(max));
        }
        self.buf.extend_from_slice(body);
        if !is_final {
            self.pending = Some(is_text);
            return Ok(None);
        }
        let data = std::mem::take(&mut self.buf).freeze();
        self.pending = None;
        if is_text {
            String::from_utf8(data.to_vec()).map(|t| Some(Message::Text(t))).map_err(|_| FrameError::BadUtf8)
        } else {
            Ok(Some(Message::Binary(data)))
        }
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.pending = None;
        self.discarding = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(msg: Message) {
        let mut r = Reassembler::new(DEFAULT_MAX_MESSAGE);
        let frames = encode(&msg);
        let mut out = None;
        for (i, f) in frames.iter().enumerate() {
            let got = match f {
                Frame::Text(t) => Some(r.text(t.clone()).unwrap()),
                Frame::Binary(b) => {
                    assert!(b.len() <= MAX_FRAME);
                    r.binary(b).unwrap()
                }
            };
            assert_eq!(got.is_some(), i + 1 == frames.len(), "only the last frame completes the message");
            out = got;
        }
        assert_eq!(out.unwrap(), msg);
    }

    #[test]
    fn messages_of_every_size_roundtrip() {
        for len in [0, 1, MAX_FRAME - 2, MAX_FRAME - 1, MAX_FRAME, MAX_FRAME + 1, 3 * MAX_FRAME + 17] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            roundtrip(Message::Binary(bytes.into()));
            roundtrip(Message::Text("é".repeat(len / 2)));
        }
    }

    #[test]
    fn wire_form() {
        assert_eq!(encode(&Message::Text("hi".into())), vec![Frame::Text("hi".into())]);
        assert_eq!(encode(&Message::Binary(Bytes::from_static(b"ab"))), vec![Frame::Binary(Bytes::from_static(b"\x01ab"))]);
        assert_eq!(encode(&Message::Binary(Bytes::new())), vec![Frame::Binary(Bytes::from_static(b"\x01"))]);
        let big = encode(&Message::Text("x".repeat(MAX_FRAME + 1)));
        assert_eq!(big.len(), 2);
        let Frame::Binary(first) = &big[0] else { panic!() };
        let Frame::Binary(last) = &big[1] else { panic!() };
        assert_eq!((first[0], last[0]), (0x02, 0x03));
        assert_eq!(frame_count(MAX_FRAME + 1, true), 2);
        assert_eq!(frame_count(10, true), 1);
        assert_eq!(frame_count(0, false), 1);
    }

    #[test]
    fn bad_frames_are_refused_and_do_not_poison_the_channel() {
        let mut r = Reassembler::new(100);
        assert_eq!(r.binary(b""), Err(FrameError::Empty));
        assert_eq!(r.binary(b"\x81x"), Err(FrameError::BadHeader(0x81)));
        assert_eq!(r.binary(b"\x00part"), Ok(None));
        assert_eq!(r.text("interloper".into()), Err(FrameError::Interleaved));
        assert_eq!(r.binary(b"\x00a"), Ok(None));
        assert_eq!(r.binary(b"\x03b"), Err(FrameError::Interleaved));
        assert_eq!(r.binary(b"\x03\xff\xfe"), Err(FrameError::BadUtf8));
        // Oversized: refused once, the rest discarded until its final frame, then back to normal.
        assert_eq!(r.binary(&[&[0u8][..], &[7u8; 80][..]].concat()), Ok(None));
        assert_eq!(r.binary(&[&[0u8][..], &[7u8; 80][..]].concat()), Err(FrameError::TooLarge(100)));
        assert_eq!(r.binary(b"\x00more"), Ok(None));
        assert_eq!(r.binary(b"\x01end"), Ok(None));
        assert_eq!(r.binary(b"\x01ok"), Ok(Some(Message::Binary(Bytes::from_static(b"ok")))));
    }
}
