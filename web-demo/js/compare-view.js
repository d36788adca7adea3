// The compare panel's DOM (the card `#compare` in index.html): controls, the two paths, the SVG chart built
// from chart.js's geometry, the summary table and a polite live summary. Like ui.js it renders plain state
// objects and reports intent through callbacks; compare.js does the measuring.

import { CHART_HEIGHT, CHART_WIDTH, chartGeometry } from './chart.js';
import { shortId, transportLabel } from './ui.js';

const SVG_NS = 'http://www.w3.org/2000/svg';
const NAMES = { dc: 'data channel', relay: 'relay' };
const LOST_NAMES = { dc: 'channel', relay: 'relay' };
const STATS = ['samples', 'p50', 'p90', 'max', 'lost'];
/** A screen reader hears the numbers this often while a run goes on (and once when it stops), not 4× a second. */
const LIVE_EVERY_MS = 10_000;
/** Narrower than this the plot would be too cramped to read; the SVG then scales down instead. */
const MIN_CHART_WIDTH = 320;

/**
 * @param {{onToggle: (peerId: string|null) => void}} handlers onToggle: the Start/Stop button, with the peer
 *   chosen; whoever runs the comparison knows whether that means start or stop
 */
export function createCompareView({ onToggle }) {
  const $ = (id) => document.getElementById(id);
  const el = {
    card: $('compare'),
    peer: $('compare-peer'),
    toggle: $('compare-toggle'),
    log: $('compare-log'),
    status: $('compare-status'),
    dcPath: $('compare-dc-path'),
    relayPath: $('compare-relay-path'),
    chart: $('compare-chart'),
    summary: $('compare-summary'),
    live: $('compare-live'),
  };

  let selected = null;
  let running = false;
  let peerOptions = '';
  let liveAt = -Infinity;
  let last = null;

  el.peer.addEventListener('change', () => { selected = el.peer.value; });
  el.toggle.addEventListener('click', () => onToggle(selected));
  el.log.addEventListener('change', () => { if (last) render(last); });

  /** @param {{peers: object, forcedTransport: string|null, compare: object}} state demo.state() */
  function render(state) {
    last = state;
    const c = state.compare;
    if (!c) {
      el.card.hidden = true;
      return;
    }
    const peers = Object.entries(state.peers);
    const ready = peers.filter(([, p]) => p.ready).map(([id]) => id);
    el.card.hidden = !(ready.length > 0 || c.running || c.sent > 0);
    if (el.card.hidden) return;

    if (c.running) selected = c.peer;
    else if (!peers.some(([id]) => id === selected)) selected = ready[0] ?? peers[0]?.[0] ?? null;
    renderPeerSelect(peers, c.running);

    const wasRunning = running;
    running = c.running;
    el.toggle.textContent = running ? 'Stop' : 'Start';
    el.toggle.disabled = !running && !selected;
    el.status.textContent = statusLine(c);
    // The chosen peer's, so the path shows before Start too.
    const peer = selected && state.peers[selected];
    el.dcPath.textContent = dcPathText(peer && {
      local: peer.pairType, remote: peer.remoteType, ready: peer.ready, channel: peer.dc,
    });
    el.relayPath.textContent = `through the signaling server: ${transportLabel(c.relayTransport)} here`
      + `${state.forcedTransport ? ' (forced)' : ''}`
      + (c.remoteTransport ? `, ${transportLabel(c.remoteTransport)} on the other page` : '; the other page\'s '
        + 'transport shows with its first answer');

    // A viewBox as wide as the element keeps the labels at their CSS size on a phone and on a wide screen.
    const width = Math.max(MIN_CHART_WIDTH, Math.round(el.chart.clientWidth) || CHART_WIDTH);
    el.chart.setAttribute('viewBox', `0 0 ${width} ${CHART_HEIGHT}`);
    const geometry = chartGeometry({
      series: c.series, end: c.end, windowMs: c.windowMs, log: el.log.checked, width, height: CHART_HEIGHT,
    });
    drawChart(el.chart, geometry, c);
    for (const path of Object.keys(NAMES)) {
      const s = c.summary[path];
      for (const stat of STATS) {
        const cell = el.summary.querySelector(`tr[data-path="${path}"] td[data-stat="${stat}"]`);
        cell.textContent = stat === 'samples' || stat === 'lost' ? String(s[stat]) : formatMs(s[stat]);
      }
    }

    const now = performance.now();
    // Starting is announced by the button's new label; the numbers follow once there are some.
    if (running && !wasRunning) liveAt = now;
    if ((wasRunning && !running) || (running && now - liveAt >= LIVE_EVERY_MS)) {
      liveAt = now;
      el.live.textContent = spoken(c);
    }
  }

  function renderPeerSelect(peers, locked) {
    const key = JSON.stringify(peers.map(([id, p]) => [id, p.ready]));
    if (key !== peerOptions) {
      peerOptions = key;
      el.peer.replaceChildren(...peers.map(([id, p]) => {
        const option = document.createElement('option');
        option.value = id;
        option.textContent = `${shortId(id)}${p.ready ? '' : ' (channel not ready)'}`;
        return option;
      }));
    }
    if (selected) el.peer.value = selected;
    el.peer.disabled = locked || peers.length === 0;
  }

  return { render };
}

function drawChart(svg, g, c) {
  const nodes = [
    node('title', { id: 'compare-chart-title' }, `Round-trip times over the last ${c.windowMs / 1000} s`),
    node('desc', { id: 'compare-chart-desc' }, spoken(c)),
  ];
  for (const tick of g.yTicks) {
    nodes.push(node('line', { class: 'grid', x1: g.plot.left, y1: tick.y, x2: g.plot.right, y2: tick.y }));
    nodes.push(node('text', { class: 'tick', x: g.plot.left - 6, y: tick.y + 4, 'text-anchor': 'end' }, tick.label));
  }
  nodes.push(node('text', { class: 'tick unit', x: g.plot.left - 6, y: g.plot.top - 12, 'text-anchor': 'end' }, 'ms'));
  for (const tick of g.xTicks) {
    nodes.push(node('text', {
      class: 'tick', x: tick.x, y: g.plot.bottom + 16, 'text-anchor': tick.label === 'now' ? 'end' : 'middle',
    }, tick.label));
  }
  nodes.push(node('line', { class: 'axis', x1: g.plot.left, y1: g.plot.bottom, x2: g.plot.right, y2: g.plot.bottom }));
  Object.keys(NAMES).forEach((name) => {
    const line = g.lines[name];
    nodes.push(node('path', { class: `line line-${name}`, d: line.d, 'data-points': line.points }));
    const marks = g.lostMarks[name];
    if (marks.count > 0) {
      nodes.push(node('path', { class: `lost lost-${name}`, d: marks.d, 'data-count': marks.count }));
      nodes.push(node('text', { class: `tick label-${name}`, x: g.plot.right + 6, y: marks.y + 4 }, `lost (${LOST_NAMES[name]})`));
    }
    const label = g.labels[name];
    if (label) {
      nodes.push(node('text', {
        class: `end-label label-${name}`, x: label.x, y: label.y + 4, 'text-anchor': label.anchor,
      }, NAMES[name]));
    }
  });
  if (g.empty) {
    const text = c.running || c.sent > 0 ? 'No answers yet' : 'Press Start to send pings';
    nodes.push(node('text', {
      class: 'tick', x: (g.plot.left + g.plot.right) / 2, y: (g.plot.top + g.plot.bottom) / 2, 'text-anchor': 'middle',
    }, text));
  }
  svg.replaceChildren(...nodes);
}

function node(name, attributes, text) {
  const n = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) n.setAttribute(key, String(value));
  if (text !== undefined) n.textContent = text;
  return n;
}

function statusLine(c) {
  const rate = `a ping every ${c.intervalMs} ms`;
  if (c.running) return `Running: ${rate} to ${shortId(c.peer)}; ${c.sent} sent.`;
  if (c.sent === 0) return `Sends ${rate} to the chosen peer until stopped.`;
  return `Stopped${c.stopReason ? `: ${c.stopReason}` : ''}; ${c.sent} pings sent to ${shortId(c.peer)}.`;
}

function dcPathText(path) {
  if (!path) return '–';
  if (!path.ready) return path.channel === 'open' ? 'channel open, waiting for its hello' : `channel ${path.channel}`;
  if (!path.local) return 'peer-to-peer (path not known yet)';
  const pair = `${path.local} → ${path.remote ?? '?'}`;
  // A TURN relay carries the data then: still not the signaling server, but not direct either.
  return path.local === 'relay' || path.remote === 'relay' ? `through a TURN relay (${pair})` : `peer-to-peer (${pair})`;
}

/** The summary as a sentence, for the live region and the chart's description. */
function spoken(c) {
  return Object.entries(NAMES).map(([path, name]) => {
    const s = c.summary[path];
    const label = name[0].toUpperCase() + name.slice(1);
    if (s.samples === 0) return `${label}: no answers, ${s.lost} lost.`;
    return `${label}: ${s.samples} answers, median ${formatMs(s.p50)}, 90th percentile ${formatMs(s.p90)}, `
      + `max ${formatMs(s.max)}, ${s.lost} lost.`;
  }).join(' ');
}

/** One decimal below 100 ms (a page's performance.now() is coarsened to 0.1 ms anyway), whole ms above. */
function formatMs(ms) {
  if (typeof ms !== 'number') return '–';
  return ms < 100 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}
