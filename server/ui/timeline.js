// The last cycles drawn as the patent's Fig. 7: each rotation (the retrieval phase starts),
// each member's retrieval of the staged version, and each activation with the switch instants
// the members reported, their measured spread and the stragglers.
//
// The data server keeps the rotation log and each activation's proof, but only a member's
// latest check-in: a retrieval is drawn where this page saw the member's staged version turn
// to the new one, at that member's check-in, while the page was open.

import * as api from './api.js';
import { el, utc, local, duration } from './format.js';

const NS = 'http://www.w3.org/2000/svg';
const CYCLES = 3;
const MAX_LANES = 12;
const LANE_H = 22;
const LEFT = 190;
const RIGHT = 110;

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const memberKey = (m) => `${m.host}\u0000${m.pid}\u0000${m.name}`;

// Retrievals seen while the page is open: member → version → check-in instant. Kept across
// views in this tab, so leaving and coming back keeps what was seen.
const seen = new Map();

function noteRetrievals(farm) {
  for (const m of farm) {
    if (m.role === 'follower' || !m.staged) continue;
    const k = memberKey(m);
    let versions = seen.get(k);
    if (!versions) seen.set(k, (versions = new Map()));
    if (!versions.has(m.staged)) versions.set(m.staged, m.last_checkin_us);
    // Bounded: a few cycles are drawn, so older versions go.
    if (versions.size > 16) versions.delete(versions.keys().next().value);
  }
}

function asList(data, field) {
  if (!data) return null;
  if (Array.isArray(data)) return data;
  return Array.isArray(data[field]) ? data[field] : null;
}

export async function render(root, ctx) {
  const auto = el('input', { type: 'checkbox', id: 'timeline-auto', checked: true });
  const figure = el('div', { id: 'timeline-figure', class: 'figure' });
  const cards = el('div', { id: 'activations' });
  const every = el('span');
  root.append(
    el('h1', { text: 'Timeline' }),
    el('p', { class: 'muted', text: 'The last cycles, as in the patent\'s Fig. 7: a rotation starts the retrieval phase (active ← staged, staged ← production), each member retrieves the staged version, and at the activation time every member switches. Times are the data server\'s clock; retrievals are those this page saw while open, each at the first check-in that reported the staged version.' }),
    el('div', { class: 'toolbar' }, el('label', {}, auto, ' refresh every ', every)),
    figure, cards);

  // The rotation log only grows at a rotation: it is read again when the sync table's
  // activation time moves, not at every refresh.
  let rotations = null;
  let rotationsFor = null;
  let period = 1000;
  let timer = null;
  async function load() {
    const [status, proofs] = await Promise.all([
      api.get('/v1/admin/status'),
      api.optional('/v1/admin/activations', { limit: CYCLES + 2 }),
    ]);
    if (rotationsFor !== status.sync.activation_time_us) {
      // The newest few are all it draws (a `limit` the data server may honour; the log comes
      // oldest first either way).
      rotations = await api.get('/v1/admin/rotations', { limit: CYCLES + 1 });
      rotationsFor = status.sync.activation_time_us;
    }
    noteRetrievals(status.farm);
    draw(figure, cards, rotations, status, asList(proofs, 'activations'), root.clientWidth || 1000);
    // Often enough to see each member's staged version between its retrieval and the
    // activation: a few times per cycle, at most every 250 ms.
    period = Math.min(1000, Math.max(250, Math.floor(status.sync.interval_us / 4000)));
    every.textContent = `${period / 1000} s`;
  }
  let stopped = false;
  const tick = async () => {
    if (auto.checked) await load().catch((x) => ctx.flash(x.message, 'error'));
    if (!stopped) timer = setTimeout(tick, period);
  };
  await load();
  timer = setTimeout(tick, period);
  return () => { stopped = true; clearTimeout(timer); };
}

function draw(figure, cards, rotations, status, proofs, width) {
  const now = status.server_time_us;
  const recent = rotations.slice(-CYCLES);
  const byTime = new Map((proofs || []).map((p) => [p.activation_time_us, p]));
  if (!recent.length) {
    figure.replaceChildren(el('p', { class: 'muted', text: 'No rotation yet: the first check-in after the first activation time performs one.' }));
    cards.replaceChildren();
    return;
  }
  const start = recent[0].rotated_at_us - status.sync.interval_us * 0.05;
  const end = Math.max(status.sync.activation_time_us, now) + status.sync.interval_us * 0.08;
  const x = (us) => LEFT + ((us - start) / (end - start)) * (width - LEFT - RIGHT);

  // Lanes: members with proof in the shown cycles first, then live check-in processes.
  const lanes = new Map();
  const activations = recent.map((r) => r.activation_time_us).concat(status.sync.activation_time_us);
  for (const t of activations) {
    const p = byTime.get(t);
    if (!p) continue;
    for (const s of [...p.switched, ...p.late, ...p.missing]) {
      if (!lanes.has(memberKey(s))) lanes.set(memberKey(s), s);
    }
  }
  for (const m of status.farm) {
    if (!m.stale && m.role !== 'follower' && !lanes.has(memberKey(m))) lanes.set(memberKey(m), m);
  }
  const shown = [...lanes.values()].slice(0, MAX_LANES);
  const hidden = lanes.size - shown.length;
  const laneY = (i) => 64 + i * LANE_H;
  const height = laneY(shown.length) + 34;

  const g = [];
  // Retrieval phases: from each rotation to the activation time it scheduled.
  for (const r of recent) {
    g.push(svg('rect', { class: 'phase-retrieval', x: x(r.rotated_at_us), y: 40, width: Math.max(1, x(r.next_activation_us) - x(r.rotated_at_us)), height: height - 60 }));
  }
  // The time axis, in whole seconds or finer, labelled on the data server's clock.
  const step = niceStep((end - start) / 8);
  for (let t = Math.ceil(start / step) * step; t <= end; t += step) {
    g.push(svg('line', { class: 'grid', x1: x(t), x2: x(t), y1: 40, y2: height - 20 }));
    g.push(svg('text', { class: 'axis', x: x(t), y: height - 6, 'text-anchor': 'middle' }, clockLabel(t, step)));
  }
  // The data server's lane: rotations.
  g.push(svg('text', { class: 'lane', x: 8, y: 52 }, 'data server'));
  for (const r of recent) {
    const rx = x(r.rotated_at_us);
    g.push(svg('path', { class: 'rotation', d: `M${rx},44 l5,8 l-5,8 l-5,-8 z` }, svg('title', {}, `rotation at ${utc(r.rotated_at_us)} by ${r.rotated_by}${r.urgent ? ' (an urgent activation)' : ''}: v${r.active_version} active, v${r.staged_version} staged for ${utc(r.next_activation_us)}`)));
    g.push(svg('text', { class: 'label', x: rx + 8, y: 36 }, `rotation: v${r.staged_version} staged`));
  }
  // What each activation made active, from the rotation log: a rotation at T logs it.
  const activeAt = new Map(rotations.map((r) => [r.activation_time_us, r.active_version]));
  const previousActive = (t) => {
    const before = rotations.filter((r) => r.activation_time_us < t);
    return before.length ? before[before.length - 1].active_version : null;
  };
  // Activation times: each rotation's own (the activation it followed) and the next one.
  for (const t of activations) {
    const p = byTime.get(t);
    const ax = x(t);
    g.push(svg('line', { class: 'activation', x1: ax, x2: ax, y1: 22, y2: height - 20 }));
    const label = p ? `T v${p.version}` + (p.spread_us === null ? '' : ` spread ${duration(p.spread_us)}`)
      : t > now ? `next activation: v${status.sync.staged_version}`
        : activeAt.has(t) ? `T v${activeAt.get(t)}` + (activeAt.get(t) === previousActive(t) ? ' unchanged' : '') : 'activation';
    g.push(svg('text', { class: 'label activation-label', x: ax + 4, y: 16 }, label));
  }
  // Members: retrievals seen, switch instants reported, and who missed.
  shown.forEach((m, i) => {
    const y = laneY(i);
    const lane = [];
    lane.push(svg('line', { class: 'lane-line', x1: LEFT, x2: width - RIGHT, y1: y, y2: y }));
    lane.push(svg('text', { class: 'lane', x: 8, y: y + 4 }, truncate(`${m.name} · ${m.host}:${m.pid}`, 28)));
    const versions = seen.get(memberKey(m));
    for (const r of recent) {
      const at = versions && versions.get(r.staged_version);
      if (at && at >= start) {
        lane.push(svg('circle', { class: 'retrieval', cx: x(at), cy: y, r: 4 }, svg('title', {}, `${m.name} retrieved v${r.staged_version} by its check-in at ${utc(at)}`)));
      }
    }
    for (const t of activations) {
      const p = byTime.get(t);
      if (!p) continue;
      const k = memberKey(m);
      const on = p.switched.find((s) => memberKey(s) === k);
      const late = p.late.find((s) => memberKey(s) === k);
      const missing = p.missing.find((s) => memberKey(s) === k);
      if (on) lane.push(svg('rect', { class: 'switch', x: x(on.switched_us) - 1.5, y: y - 8, width: 3, height: 16 }, svg('title', {}, `${m.name} switched to v${p.version} at T ${signed(on.offset_us)} ± ${duration(on.error_us)}`)));
      if (late) lane.push(svg('rect', { class: 'switch late', x: x(late.switched_us) - 1.5, y: y - 8, width: 3, height: 16 }, svg('title', {}, `${m.name} switched late to v${p.version}: T ${signed(late.offset_us)}`)));
      if (missing) lane.push(svg('text', { class: 'missing', x: x(t), y: y + 4, 'text-anchor': 'middle' }, '✕', svg('title', {}, `${m.name} has not reported switching to v${p.version}`)));
    }
    g.push(svg('g', { class: 'member', 'data-member': m.name, 'data-host': m.host, 'data-pid': m.pid }, lane));
  });
  if (hidden > 0) g.push(svg('text', { class: 'lane muted', x: 8, y: laneY(shown.length) + 2 }, `+ ${hidden} more members`));

  figure.replaceChildren(
    svg('svg', { class: 'timeline', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'timeline of the last cycles' }, g),
    el('p', { class: 'legend' },
      el('span', { class: 'key rotation-key' }), 'rotation ',
      el('span', { class: 'key phase-key' }), 'retrieval phase ',
      el('span', { class: 'key retrieval-key' }), 'retrieval seen ',
      el('span', { class: 'key activation-key' }), 'activation time ',
      el('span', { class: 'key switch-key' }), 'switch on time ',
      el('span', { class: 'key late-key' }), 'late ',
      '✕ not reported'));

  if (!proofs) {
    cards.replaceChildren(el('p', { class: 'muted', text: 'This data server reports no proof of activation (GET /v1/admin/activations).' }));
    return;
  }
  const shownProofs = activations.map((t) => byTime.get(t)).filter(Boolean).reverse();
  cards.replaceChildren(el('h2', { text: 'Activations' }), ...shownProofs.map(proofCard));
}

// One activation: the counts, the measured spread with its bound, and a strip on which every
// reported switch instant sits at its distance from T, with its error bar.
function proofCard(p) {
  const card = el('section', { class: 'card proof', dataset: { activation: p.activation_time_us, version: p.version } });
  const spread = p.spread_us === null || p.spread_us === undefined
    ? el('span', { class: 'muted', text: 'no on-time switch reported' })
    : el('span', { class: 'spread' }, 'measured spread ', el('strong', { class: 'spread-value', text: duration(p.spread_us) }),
      ` (true spread at most ${duration(p.spread_us + (p.error_us || 0))})`);
  card.append(
    el('h3', {}, `v${p.version} at ${utc(p.activation_time_us)} `, el('span', { class: 'muted', text: local(p.activation_time_us) }),
      p.urgent ? el('span', { class: 'tag urgent', title: 'an urgent activation, off the grid', text: 'urgent' }) : null),
    el('p', {},
      el('span', { class: 'ok-text', text: `${p.clients_switched} switched on time` }), ` on ${p.hosts_switched} host${p.hosts_switched === 1 ? '' : 's'}, `,
      el('span', { class: p.clients_late ? 'warn-text' : '', text: `${p.clients_late} late` }), ', ',
      el('span', { class: p.clients_missing ? 'error-text' : '', text: `${p.clients_missing} missing` }), ' · ', spread));
  const all = [...p.switched, ...p.late];
  if (all.length) {
    const reach = Math.max(1000, ...all.map((s) => Math.abs(s.offset_us) + s.error_us));
    const w = 900;
    const sx = (off) => 60 + ((off + reach) / (2 * reach)) * (w - 120);
    const rows = all.slice(0, 40);
    const h = 30 + rows.length * 10;
    const marks = [svg('line', { class: 'activation', x1: sx(0), x2: sx(0), y1: 4, y2: h - 14 }),
      svg('text', { class: 'axis', x: sx(-reach), y: h - 2, 'text-anchor': 'start' }, `T − ${duration(reach)}`),
      svg('text', { class: 'axis', x: sx(0), y: h - 2, 'text-anchor': 'middle' }, 'T'),
      svg('text', { class: 'axis', x: sx(reach), y: h - 2, 'text-anchor': 'end' }, `T + ${duration(reach)}`)];
    rows.forEach((s, i) => {
      const y = 10 + i * 10;
      marks.push(svg('line', { class: 'error-bar', x1: sx(s.offset_us - s.error_us), x2: sx(s.offset_us + s.error_us), y1: y, y2: y }));
      marks.push(svg('circle', { class: s.late ? 'switch late' : 'switch', cx: sx(s.offset_us), cy: y, r: 3 },
        svg('title', {}, `${s.name} (${s.host}:${s.pid}): T ${signed(s.offset_us)} ± ${duration(s.error_us)}${s.late ? ', late' : ''}`)));
    });
    card.append(svg('svg', { class: 'strip', width: w, height: h, viewBox: `0 0 ${w} ${h}` }, marks));
  }
  const stragglers = [
    ...p.late.map((s) => `${s.name} (${s.host}:${s.pid}) late, switched T ${signed(s.offset_us)}`),
    ...p.missing.map((m) => `${m.name} (${m.host}:${m.pid}) missing, still on v${m.active}`),
    ...(p.mismatched || []).map((s) => `${s.name} (${s.host}:${s.pid}) reported checksum ${s.checksum}, not ${p.checksum}`),
  ];
  card.append(stragglers.length
    ? el('div', { class: 'stragglers' }, el('strong', { text: 'Stragglers: ' }), el('ul', {}, stragglers.slice(0, 50).map((t) => el('li', { text: t }))))
    : el('p', { class: 'muted stragglers', text: 'No stragglers.' }));
  return card;
}

function signed(us) {
  return us < 0 ? `− ${duration(-us)}` : `+ ${duration(us)}`;
}

function truncate(s, n) {
  return s.length > n ? s.slice(0, n - 1) + '…' : s;
}

function niceStep(us) {
  for (const s of [1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7, 3e7, 6e7, 12e7, 3e8, 6e8, 18e8, 36e8]) {
    if (s >= us) return s;
  }
  return 36e8;
}

function clockLabel(us, step) {
  const full = utc(us).replace(' UTC', '');
  const time = full.slice(11);
  if (step >= 1e6) return time.slice(0, 8);
  return time.length > 8 ? time : time + '.000';
}
