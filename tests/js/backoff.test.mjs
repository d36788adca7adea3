// Unit tests of the browser client's reconnection backoff (run with `node --test tests/js/`), against the rule
// in docs/protocol.md: 0.5 s + uniform[0, min(19.5 s, 0.5 s × 2^attempt)).
import test from 'node:test';
import assert from 'node:assert/strict';
import {
  backoffCeilingMs, backoffDelayMs, backoffSpreadMs, BACKOFF_FLOOR_MS, BACKOFF_SPREAD_CAP_MS,
} from '../../web-demo/js/backoff.js';

const DRAWS = 1000;

test('the ceiling follows the formula and never decreases', () => {
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6].map(backoffCeilingMs), [1000, 1500, 2500, 4500, 8500, 16500, 20000]);
  let previous = 0;
  for (let attempt = 0; attempt <= 2000; attempt++) {
    const ceiling = backoffCeilingMs(attempt);
    assert.ok(ceiling >= previous, `ceiling fell at attempt ${attempt}`);
    assert.ok(ceiling <= 20_000);
    previous = ceiling;
  }
  assert.equal(backoffCeilingMs(1e9), 20_000, 'no overflow to NaN or Infinity');
  assert.equal(backoffSpreadMs(-3), 500, 'a negative attempt counts as the first');
});

test('the random extremes map to the ends of the range', () => {
  for (const attempt of [0, 3, 10]) {
    assert.equal(backoffDelayMs(attempt, () => 0), BACKOFF_FLOOR_MS);
    const top = backoffDelayMs(attempt, () => 1 - Number.EPSILON);
    assert.ok(top < backoffCeilingMs(attempt) && top > backoffCeilingMs(attempt) - 1);
  }
});

test('samples stay within [0.5 s, ceiling) at every attempt', () => {
  for (let attempt = 0; attempt <= 40; attempt++) {
    const ceiling = backoffCeilingMs(attempt);
    for (let i = 0; i < DRAWS; i++) {
      const d = backoffDelayMs(attempt);
      assert.ok(d >= BACKOFF_FLOOR_MS && d < ceiling, `attempt ${attempt}: ${d} outside [500, ${ceiling})`);
    }
  }
});

test('at the cap the spread stays wide (no collapse)', () => {
  for (const attempt of [6, 10, 30, 1000]) {
    const samples = Array.from({ length: DRAWS }, () => backoffDelayMs(attempt));
    const below5 = samples.filter((d) => d < 5000).length;
    const above15 = samples.filter((d) => d > 15_000).length;
    // Uniform over [500, 20000): about 23 % below 5 s and 26 % above 15 s; 10 % each is far outside chance.
    assert.ok(below5 > DRAWS / 10, `attempt ${attempt}: only ${below5} of ${DRAWS} below 5 s`);
    assert.ok(above15 > DRAWS / 10, `attempt ${attempt}: only ${above15} of ${DRAWS} above 15 s`);
    const mean = samples.reduce((a, b) => a + b, 0) / DRAWS;
    assert.ok(Math.abs(mean - (BACKOFF_FLOOR_MS + BACKOFF_SPREAD_CAP_MS / 2)) < 1000, `mean ${mean}`);
  }
});

test('early attempts are spread over their whole range too', () => {
  for (const attempt of [0, 2, 4]) {
    const ceiling = backoffCeilingMs(attempt);
    const mid = (BACKOFF_FLOOR_MS + ceiling) / 2;
    const samples = Array.from({ length: DRAWS }, () => backoffDelayMs(attempt));
    assert.ok(samples.some((d) => d < mid) && samples.some((d) => d > mid), `attempt ${attempt} not spread`);
  }
});
