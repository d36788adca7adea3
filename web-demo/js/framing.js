// Message framing on data channels, byte-compatible with the Rust `peer` crate (peer/src/framing.rs).
//
// SCTP limits one message to the negotiated max-message-size (64 KiB for webrtc-rs, 256 KiB for Chromium), so
// larger messages are cut into frames of at most MAX_FRAME bytes:
// - a text message of at most MAX_FRAME UTF-8 bytes is sent as a plain text message;
// - every binary frame starts with one header byte: bit 0 = FINAL (last frame of the message), bit 1 = TEXT
//   (the reassembled message is UTF-8 text). 0x01 is a whole binary message.
// Chunking needs an ordered, reliable channel; elsewhere a message must fit one frame.
// No DOM access here: this module is reusable outside the demo.

export const MAX_FRAME = 64 * 1024;
export const DEFAULT_MAX_MESSAGE = 256 * 1024 * 1024;
// `send` waits while the channel buffers more than this (bounded memory for any amount sent).
export const HIGH_WATER = 1024 * 1024;
export const LOW_WATER = 256 * 1024;

const FINAL = 0x01;
const TEXT = 0x02;
const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** Frames for one message (`string` or `ArrayBuffer`/typed array): an array of strings and Uint8Arrays. */
export function encode(message) {
  let bytes;
  let textBit = 0;
  if (typeof message === 'string') {
    bytes = encoder.encode(message);
    if (bytes.length <= MAX_FRAME) return [message];
    textBit = TEXT;
  } else {
    bytes = message instanceof ArrayBuffer ? new Uint8Array(message) : new Uint8Array(message.buffer, message.byteOffset, message.byteLength);
  }
  const chunk = MAX_FRAME - 1;
  const n = Math.max(1, Math.ceil(bytes.length / chunk));
  const frames = [];
  for (let i = 0; i < n; i++) {
    const part = bytes.subarray(i * chunk, Math.min((i + 1) * chunk, bytes.length));
    const frame = new Uint8Array(part.length + 1);
    frame[0] = textBit | (i + 1 === n ? FINAL : 0);
    frame.set(part, 1);
    frames.push(frame);
  }
  return frames;
}

/** Reassembles the frames of one channel. `push` returns the complete message, or null while chunks are pending. */
export class Reassembler {
  constructor(max = DEFAULT_MAX_MESSAGE) {
    this.max = max;
    this.reset();
  }

  reset() {
    this.parts = [];
    this.size = 0;
    this.pendingText = null; // null: no message in progress; else whether it is text
    this.discarding = false;
  }

  /** `data` is a string (text message) or an ArrayBuffer (binary). Throws Error with a `code` on bad frames. */
  push(data) {
    if (typeof data === 'string') {
      if (this.pendingText !== null || this.discarding) {
        this.reset();
        throw framingError('interleaved', 'text message in the middle of a chunked message');
      }
      return data;
    }
    const frame = new Uint8Array(data);
    if (frame.length === 0) throw framingError('empty', 'empty binary frame');
    const header = frame[0];
    if (header & ~(FINAL | TEXT)) {
      this.reset();
      throw framingError('bad-header', `unknown frame header 0x${header.toString(16)}`);
    }
    const isFinal = (header & FINAL) !== 0;
    const isText = (header & TEXT) !== 0;
    if (this.discarding) {
      if (isFinal) this.reset();
      return null;
    }
    if (this.pendingText !== null && this.pendingText !== isText) {
      this.reset();
      throw framingError('interleaved', 'frame kind changed in the middle of a chunked message');
    }
    const body = frame.subarray(1);
    if (this.size + body.length > this.max) {
      this.reset();
      this.discarding = !isFinal;
      throw framingError('too-large', `message exceeds ${this.max} bytes`);
    }
    this.parts.push(body);
    this.size += body.length;
    if (!isFinal) {
      this.pendingText = isText;
      return null;
    }
    const whole = new Uint8Array(this.size);
    let at = 0;
    for (const p of this.parts) {
      whole.set(p, at);
      at += p.length;
    }
    this.reset();
    if (!isText) return whole.buffer;
    try {
      return decoder.decode(whole);
    } catch {
      throw framingError('bad-utf8', 'text message is not valid UTF-8');
    }
  }
}

/**
 * Sends `message` on `channel` (an RTCDataChannel with binaryType 'arraybuffer'), waiting while its
 * bufferedAmount is above HIGH_WATER. Messages of any size on ordered reliable channels.
 */
export function send(channel, message) {
  // One message's frames must not interleave with another's: chain sends per channel.
  const previous = sendQueues.get(channel) ?? Promise.resolve();
  const next = previous.catch(() => {}).then(() => sendFrames(channel, message));
  sendQueues.set(channel, next);
  return next;
}

const sendQueues = new WeakMap();

async function sendFrames(channel, message) {
  const frames = encode(message);
  const reliable = channel.ordered && channel.maxRetransmits === null && channel.maxPacketLifeTime === null;
  if (frames.length > 1 && !reliable) throw framingError('too-large', 'message too large for an unreliable or unordered channel');
  if (channel.bufferedAmountLowThreshold !== LOW_WATER) channel.bufferedAmountLowThreshold = LOW_WATER;
  for (const frame of frames) {
    if (channel.bufferedAmount > HIGH_WATER) await drained(channel);
    if (channel.readyState !== 'open') throw framingError('channel-not-open', `channel ${channel.label} is ${channel.readyState}`);
    channel.send(frame);
  }
}

function drained(channel) {
  return new Promise((resolve) => {
    const done = () => {
      channel.removeEventListener('bufferedamountlow', done);
      channel.removeEventListener('close', done);
      resolve();
    };
    channel.addEventListener('bufferedamountlow', done);
    channel.addEventListener('close', done);
  });
}

function framingError(code, message) {
  const e = new Error(message);
  e.code = code;
  return e;
}
