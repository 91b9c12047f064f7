// Formatting and a small DOM builder. Values from the server are only ever set as text.

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (v === true) node.setAttribute(k, '');
    else node.setAttribute(k, v);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(node, c);
    else node.append(c instanceof Node ? c : String(c));
  }
}

const pad = (n, w = 2) => String(n).padStart(w, '0');

// 2026-11-27 18:00:00.250 UTC (milliseconds only when there are any).
export function utc(us) {
  if (us === undefined || us === null) return '—';
  const d = new Date(Math.floor(us / 1000));
  const ms = d.getUTCMilliseconds();
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}` +
    (ms ? '.' + pad(ms, 3) : '') + ' UTC';
}

const localFormat = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit',
  second: '2-digit', hour12: false, timeZoneName: 'short',
});

export function local(us) {
  if (us === undefined || us === null) return '—';
  return localFormat.format(new Date(Math.floor(us / 1000)));
}

// A time as UTC with the browser's local time under it.
export function when(us) {
  if (us === undefined || us === null) return el('span', { class: 'muted', text: '—' });
  return el('span', { class: 'when' }, el('span', { text: utc(us) }),
    el('span', { class: 'local', text: local(us) }));
}

// A duration with three significant digits at most: 340 µs, 1.25 ms, 500 ms, 1 s, 2.5 min.
export function duration(us) {
  if (us === undefined || us === null) return '—';
  const a = Math.abs(us);
  const sign = us < 0 ? '−' : '';
  const fit = (n) => String(Number(n.toPrecision(3)));
  if (a < 1000) return `${sign}${Math.round(a)} µs`;
  if (a < 1e6) return `${sign}${fit(a / 1000)} ms`;
  if (a < 120e6) return `${sign}${fit(a / 1e6)} s`;
  if (a < 7200e6) return `${sign}${fit(a / 60e6)} min`;
  if (a < 172800e6) return `${sign}${fit(a / 3600e6)} h`;
  return `${sign}${fit(a / 86400e6)} d`;
}

export function ago(us) {
  return us < 1e6 ? 'just now' : duration(us) + ' ago';
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1 << 30) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  return `${(n / (1 << 30)).toFixed(2)} GiB`;
}

// A wire Blob: a string, or {b64} for bytes that are not UTF-8.
export function blob(b) {
  if (b === undefined || b === null) return '';
  return typeof b === 'string' ? b : 'base64:' + b.b64;
}

// What the person typed, as a wire Blob: text, or bytes given in base64 when they say so (a
// prefix would turn a text value that happens to start with it into other bytes).
export function toBlob(text, isBase64) {
  return isBase64 ? { b64: text.trim() } : text;
}

// A paged table body: shows `page` of `items`, with a pager under it.
export function paged(items, state, pageSize, renderRow, emptyText) {
  const pages = Math.max(1, Math.ceil(items.length / pageSize));
  state.page = Math.min(Math.max(0, state.page || 0), pages - 1);
  const start = state.page * pageSize;
  const rows = items.slice(start, start + pageSize).map(renderRow);
  const pager = el('div', { class: 'pager' });
  const rerender = () => state.onchange && state.onchange();
  if (items.length === 0) {
    pager.append(el('span', { class: 'muted', text: emptyText || 'nothing to show' }));
  } else {
    pager.append(
      el('button', { type: 'button', disabled: state.page === 0, onclick: () => { state.page--; rerender(); } }, '‹ previous'),
      el('span', { class: 'page-info', text: `${start + 1}–${start + rows.length} of ${items.length} · page ${state.page + 1} of ${pages}` }),
      el('button', { type: 'button', disabled: state.page >= pages - 1, onclick: () => { state.page++; rerender(); } }, 'next ›'),
    );
  }
  return { rows, pager };
}

// datetime-local input value read as UTC or as local time: µs since the epoch, or null.
export function parseDateTimeInput(value, zone) {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?$/.exec(value || '');
  if (!m) return null;
  const [y, mo, d, h, mi, s] = m.slice(1).map((x) => Number(x || 0));
  const ms = zone === 'utc' ? Date.UTC(y, mo - 1, d, h, mi, s) : new Date(y, mo - 1, d, h, mi, s).getTime();
  return Number.isFinite(ms) ? ms * 1000 : null;
}

// RFC 3339 in UTC, as the API wants it.
export function rfc3339(us) {
  return new Date(Math.floor(us / 1000)).toISOString().replace('.000Z', 'Z');
}
