// Geometry of the compare panel's RTT chart: scales, ticks, and SVG path data for each series. Pure (no DOM),
// so compare-view.js only turns the result into elements and `node --test tests/js/` checks the numbers.

/** The chart's default size in viewBox units (compare-view.js makes the width the element's). */
export const CHART_WIDTH = 640;
export const CHART_HEIGHT = 240;
/** Room for the y labels (left), the lines' end labels (right), the lost-ping marks (top), the x labels. */
const MARGIN = { left: 46, right: 110, top: 32, bottom: 24 };
const X_TICK_MS = 15_000;
/** Line end labels closer than this (in viewBox units) are pushed apart so both stay readable. */
const LABEL_GAP = 13;
const MARK_SIZE = 3;
/** Each series' lost-ping marks get their own row above the plot. */
const MARK_ROW = 12;
/** How close to the right edge (viewBox units) a line's last point must be for its label to go in the margin. */
const RECENT_X = 24;
/** Log scales need a positive floor; 10 µs is below anything performance.now() can measure in a page. */
const LOG_FLOOR_MS = 0.01;

/**
 * A "nice" tick step (1, 2, 2.5 or 5 × 10^k) so that `count` steps cover `max`.
 * @returns {{step: number, top: number}} top = the axis maximum, a multiple of step ≥ max
 */
export function niceScale(max, count = 4) {
  const target = max > 0 && Number.isFinite(max) ? max : 1;
  const raw = target / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw * (1 - 1e-9));
  return { step, top: roundTo(Math.ceil(target / step - 1e-9) * step) };
}

/** "0.25", "1", "2.5", "1000": a tick label without float noise. */
export function tickLabel(value) {
  return String(roundTo(value));
}

/**
 * Everything the chart draws, in viewBox coordinates.
 * @param {{series: Object<string, {t: number, rttMs: number|null, lost: boolean}[]>, end: number,
 *   windowMs: number, log?: boolean, width?: number, height?: number}} input
 *   series: per name, entries in send order; the window is `(end - windowMs, end]`
 * @returns {{plot: {left, right, top, bottom}, yTicks: {y, label}[], xTicks: {x, label}[],
 *   lines: Object<string, {d: string, points: number}>,
 *   lostMarks: Object<string, {d: string, count: number, y: number}>,
 *   labels: Object<string, {x: number, y: number, anchor: 'start'|'end'}|null>, empty: boolean}}
 */
export function chartGeometry({ series, end, windowMs, log = false, width = CHART_WIDTH, height = CHART_HEIGHT }) {
  const plot = {
    left: MARGIN.left, right: width - MARGIN.right, top: MARGIN.top, bottom: height - MARGIN.bottom,
  };
  const names = Object.keys(series);
  const visible = Object.fromEntries(names.map((name) => [name, series[name].filter((e) => e.t > end - windowMs && e.t <= end)]));
  const rtts = names.flatMap((name) => visible[name].filter((e) => e.rttMs !== null).map((e) => e.rttMs));
  const { y, yTicks } = log ? logScale(rtts, plot) : linearScale(rtts, plot);
  const x = (t) => plot.right - ((end - t) / windowMs) * (plot.right - plot.left);

  const xTicks = [];
  for (let ago = 0; ago <= windowMs; ago += X_TICK_MS) {
    xTicks.push({ x: round1(x(end - ago)), label: ago === 0 ? 'now' : `−${ago / 1000} s` });
  }

  const lines = {};
  const lostMarks = {};
  const labels = {};
  names.forEach((name, row) => {
    const my = MARK_SIZE + 3 + row * MARK_ROW;
    let d = '';
    let points = 0;
    let broken = true;
    let last = null;
    let marks = '';
    let lost = 0;
    for (const e of visible[name]) {
      if (e.lost) {
        // A lost ping breaks the line, so a gap in the data shows as a gap, and gets a mark above the plot.
        broken = true;
        lost += 1;
        const mx = round1(x(e.t));
        marks += `M${mx - MARK_SIZE} ${my - MARK_SIZE}L${mx + MARK_SIZE} ${my + MARK_SIZE}`
          + `M${mx - MARK_SIZE} ${my + MARK_SIZE}L${mx + MARK_SIZE} ${my - MARK_SIZE}`;
      } else if (e.rttMs !== null) {
        last = { x: round1(x(e.t)), y: round1(y(e.rttMs)) };
        d += `${broken ? 'M' : 'L'}${last.x} ${last.y}`;
        broken = false;
        points += 1;
      }
      // A ping still waiting for its answer is simply not drawn yet.
    }
    lines[name] = { d, points };
    lostMarks[name] = { d: marks, count: lost, y: my };
    // A line that reaches "now" is named beside the plot; one that stopped earlier (its path went down) is
    // named where it stops, so the label never suggests a current value.
    if (last === null) labels[name] = null;
    else if (last.x >= plot.right - RECENT_X) labels[name] = { x: plot.right + 6, y: last.y, anchor: 'start' };
    else labels[name] = { x: last.x, y: Math.max(plot.top + 10, last.y - 10), anchor: 'end' };
  });
  separateLabels(Object.values(labels).filter((l) => l?.anchor === 'start'), plot);
  return { plot, yTicks, xTicks, lines, lostMarks, labels, empty: rtts.length === 0 };
}

function linearScale(rtts, plot) {
  const { step, top } = niceScale(Math.max(0, ...rtts));
  const y = (ms) => plot.bottom - (Math.min(ms, top) / top) * (plot.bottom - plot.top);
  const yTicks = [];
  for (let i = 0; i * step <= top * (1 + 1e-9); i++) {
    const value = i * step;
    yTicks.push({ y: round1(y(value)), label: tickLabel(value) });
  }
  return { y, yTicks };
}

/** Powers of ten around the data: what a log scale is for is seeing 0.5 ms next to 800 ms. */
function logScale(rtts, plot) {
  const floor = (v) => Math.floor(Math.log10(Math.max(v, LOG_FLOOR_MS)));
  const lo = rtts.length > 0 ? floor(Math.min(...rtts)) : -1;
  let hi = rtts.length > 0 ? Math.ceil(Math.log10(Math.max(...rtts, LOG_FLOOR_MS))) : 1;
  if (hi <= lo) hi = lo + 1;
  const y = (ms) => {
    const v = Math.min(Math.max(Math.log10(Math.max(ms, LOG_FLOOR_MS)), lo), hi);
    return plot.bottom - ((v - lo) / (hi - lo)) * (plot.bottom - plot.top);
  };
  const yTicks = [];
  for (let k = lo; k <= hi; k++) yTicks.push({ y: round1(y(10 ** k)), label: tickLabel(10 ** k) });
  return { y, yTicks };
}

/** Moves end labels (sorted by y) apart by at least LABEL_GAP, keeping them inside the plot's height. */
function separateLabels(labels, plot) {
  labels.sort((a, b) => a.y - b.y);
  for (let i = 1; i < labels.length; i++) {
    if (labels[i].y - labels[i - 1].y < LABEL_GAP) labels[i].y = round1(labels[i - 1].y + LABEL_GAP);
  }
  const overflow = labels.length > 0 ? labels[labels.length - 1].y - plot.bottom : 0;
  if (overflow > 0) for (const label of labels) label.y = round1(label.y - overflow);
}

function round1(v) {
  return Math.round(v * 10) / 10;
}

function roundTo(v) {
  return Number(v.toPrecision(12));
}
