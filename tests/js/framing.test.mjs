// Unit tests of the browser client's framing (run with `node --test tests/js/`). The wire-form cases are the
// same bytes as peer/src/framing.rs's `wire_form` test, which is what keeps the two implementations compatible.
import test from 'node:test';
import assert from 'node:assert/strict';
import { encode, Reassembler, MAX_FRAME } from '../../web-demo/js/framing.js';

const buf = (u8) => u8.buffer.slice(u8.byteOffset, u8.byteOffset + u8.byteLength);

test('wire form matches the Rust implementation', () => {
  assert.deepEqual(encode('hi'), ['hi']);
  assert.deepEqual([...encode(new Uint8Array([97, 98]))[0]], [0x01, 97, 98]);
  assert.deepEqual([...encode(new Uint8Array([]))[0]], [0x01]);
  const big = encode('x'.repeat(MAX_FRAME + 1));
  assert.equal(big.length, 2);
  assert.deepEqual([big[0][0], big[1][0]], [0x02, 0x03]);
  for (const f of big) assert.ok(f.length <= MAX_FRAME);
});

test('messages of every size roundtrip', () => {
  const r = new Reassembler();
  for (const len of [0, 1, MAX_FRAME - 2, MAX_FRAME - 1, MAX_FRAME, MAX_FRAME + 1, 3 * MAX_FRAME + 17]) {
    const bytes = new Uint8Array(len).map((_, i) => (i * 31) % 251);
    const frames = encode(bytes);
    let out;
    frames.forEach((f, i) => {
      out = r.push(buf(f));
      assert.equal(out !== null, i === frames.length - 1);
    });
    assert.deepEqual(new Uint8Array(out), bytes);
    const text = 'é'.repeat(Math.floor(len / 2));
    for (const f of encode(text)) out = r.push(typeof f === 'string' ? f : buf(f));
    assert.equal(out, text);
  }
});

test('bad frames are refused with codes and do not poison the channel', () => {
  const r = new Reassembler(100);
  const code = (fn) => { try { fn(); } catch (e) { return e.code; } return 'no error'; };
  assert.equal(code(() => r.push(new ArrayBuffer(0))), 'empty');
  assert.equal(code(() => r.push(buf(new Uint8Array([0x81, 1])))), 'bad-header');
  assert.equal(r.push(buf(new Uint8Array([0x00, 1]))), null);
  assert.equal(code(() => r.push('interloper')), 'interleaved');
  assert.equal(code(() => r.push(buf(new Uint8Array([0x03, 0xff, 0xfe])))), 'bad-utf8');
  const eighty = new Uint8Array(81); // header 0x00 + 80 bytes
  assert.equal(r.push(buf(eighty)), null);
  assert.equal(code(() => r.push(buf(eighty))), 'too-large');
  assert.equal(r.push(buf(new Uint8Array([0x00, 1]))), null); // discarded
  assert.equal(r.push(buf(new Uint8Array([0x01, 1]))), null); // end of the discarded message
  assert.deepEqual(new Uint8Array(r.push(buf(new Uint8Array([0x01, 7])))), new Uint8Array([7]));
});
