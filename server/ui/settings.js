// Scheduled changes, and the interval with the minimum retrieval window.

import * as api from './api.js';
import { el, when, blob, duration, utc, local } from './format.js';

export async function renderScheduled(root, ctx) {
  const rows = await api.get('/v1/admin/scheduled');
  const status = await api.get('/v1/admin/status');
  const { activation_time_us: next, interval_us: interval } = status.sync;
  root.append(
    el('h1', { text: 'Scheduled changes' }),
    el('p', { class: 'muted', text: 'Changes waiting for their time. Each goes live on every web server at the first activation at or after its time.' }),
    el('table', { class: 'data', id: 'scheduled' },
      el('thead', {}, el('tr', {}, ...['#', 'Effective (UTC)', 'Your local time', 'Live at activation', 'Change', 'Key', 'Value', 'By'].map((h) => el('th', { text: h })))),
      el('tbody', {}, rows.length === 0
        ? el('tr', {}, el('td', { colspan: 8, class: 'muted', text: 'Nothing scheduled.' }))
        : rows.map((s) => el('tr', { dataset: { key: blob(s.key) } },
          el('td', { class: 'num', text: s.id }),
          el('td', { text: utc(s.effective_us) }),
          el('td', { text: local(s.effective_us) }),
          el('td', { text: utc(liveAt(s.effective_us, next, interval)) }),
          el('td', { text: s.op }),
          el('td', {}, el('code', { text: blob(s.key) })),
          el('td', {}, el('code', { text: s.value === null || s.value === undefined ? '' : blob(s.value) })),
          el('td', { text: s.created_by }))))),
  );
  if (ctx.canWrite) root.append(el('p', { class: 'muted' }, 'Schedule a change from ', el('a', { href: '#production', text: 'Production' }), '.'));
}

// As the data server computes it: the first activation at or after `effective` on the grid
// of multiples of the interval, and never before the next activation.
function liveAt(effective, next, interval) {
  return Math.max(Math.ceil(effective / interval) * interval, next);
}

export async function renderInterval(root, ctx) {
  const status = await api.get('/v1/admin/status');
  const s = status.sync;
  const facts = el('dl', { class: 'facts', id: 'sync-table' },
    el('dt', { text: 'Interval' }), el('dd', { id: 'interval-now', text: duration(s.interval_us) }),
    el('dt', { text: 'Minimum retrieval window' }), el('dd', { id: 'window-now', text: duration(s.min_window_us) }),
    el('dt', { text: 'Next activation' }), el('dd', {}, when(s.activation_time_us)),
    el('dt', { text: 'Active version' }), el('dd', { text: s.active_version }),
    el('dt', { text: 'Staged version' }), el('dd', { text: s.staged_version }),
    el('dt', { text: 'Production keys' }), el('dd', { text: status.production_keys }),
    el('dt', { text: 'Versions' }), el('dd', { text: status.versions }),
    el('dt', { text: 'Rotations' }), el('dd', { text: status.rotations }));
  root.append(el('h1', { text: 'Interval and minimum window' }), facts);
  if (!ctx.canWrite) return;
  const interval = el('input', { type: 'text', id: 'interval-input', value: compact(s.interval_us), spellcheck: 'false', size: 8 });
  const window = el('input', { type: 'text', id: 'window-input', placeholder: 'half the interval', spellcheck: 'false', size: 8 });
  root.append(el('form', { class: 'card', id: 'interval-form', onsubmit: async (e) => {
    e.preventDefault();
    const body = { interval: interval.value.trim() };
    if (window.value.trim()) body.min_window = window.value.trim();
    try {
      const r = await api.post('/v1/admin/interval', body);
      ctx.flash(r.message);
      root.replaceChildren();
      await renderInterval(root, ctx);
      ctx.flash(r.message);
    } catch (x) {
      ctx.flash(x.message, 'error');
    }
  } },
  el('h2', { text: 'Change them' }),
  el('p', { class: 'muted', text: `From 100ms to 1d, written like 500ms, 30s or 10m. The minimum window is the least time a rotation leaves clients to download (10ms up to the interval); empty keeps half the interval. Next activation now: ${utc(s.activation_time_us)} (${local(s.activation_time_us)}).` }),
  el('div', { class: 'grid' },
    el('label', { for: 'interval-input', text: 'Interval' }), interval,
    el('label', { for: 'window-input', text: 'Minimum window' }), window),
  el('button', { type: 'submit' }, 'Change')));
}

function compact(us) {
  if (us % 86400e6 === 0) return `${us / 86400e6}d`;
  if (us % 3600e6 === 0) return `${us / 3600e6}h`;
  if (us % 60e6 === 0) return `${us / 60e6}m`;
  if (us % 1e6 === 0) return `${us / 1e6}s`;
  return `${us / 1000}ms`;
}
