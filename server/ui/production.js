// Production: browse by prefix, edit, delete, import a file, and schedule a change.

import * as api from './api.js';
import { el, when, utc, local, blob, toBlob, paged, parseDateTimeInput, rfc3339 } from './format.js';

const PAGE = 50;
// The keys endpoint has no cursor: the page fetches this many and pages through them here.
const FETCH_LIMIT = 1000;

export async function render(root, ctx) {
  const state = { prefix: sessionStorage.getItem('lockstep.prefix') || '', page: 0, keys: [], more: false };
  const prefixInput = el('input', { type: 'search', id: 'prefix', placeholder: 'key prefix, e.g. price:', value: state.prefix, spellcheck: 'false' });
  const tableBody = el('tbody');
  const pagerBox = el('div');
  const countBox = el('span', { class: 'muted' });

  async function load() {
    state.prefix = prefixInput.value;
    sessionStorage.setItem('lockstep.prefix', state.prefix);
    const keys = await api.get('/v1/admin/keys', { prefix: state.prefix, limit: FETCH_LIMIT + 1 });
    state.more = keys.length > FETCH_LIMIT;
    state.keys = keys.slice(0, FETCH_LIMIT);
    draw();
  }

  function draw() {
    const { rows, pager } = paged(state.keys, state, PAGE, (k) => keyRow(k, ctx, load), 'no key in production starts with this prefix');
    tableBody.replaceChildren(...rows);
    pagerBox.replaceChildren(pager);
    countBox.textContent = state.more
      ? `the first ${FETCH_LIMIT} keys; narrow the prefix to see the others`
      : `${state.keys.length} key${state.keys.length === 1 ? '' : 's'}`;
  }
  state.onchange = draw;

  root.append(
    el('h1', { text: 'Production' }),
    el('p', { class: 'muted', text: 'What the next rotation stages. An edit made now is active on every web server by the second activation after it.' }),
    el('form', { class: 'toolbar', onsubmit: (e) => { e.preventDefault(); state.page = 0; load().catch((x) => ctx.flash(x.message, 'error')); } },
      el('label', { for: 'prefix', text: 'Prefix' }), prefixInput,
      el('button', { type: 'submit' }, 'Search'), countBox),
    el('table', { class: 'data', id: 'keys' },
      el('thead', {}, el('tr', {}, el('th', { text: 'Key' }), el('th', { text: 'Value' }),
        el('th', { text: 'Changed by' }), el('th', { text: 'Changed at' }), el('th', { class: 'write', text: '' }))),
      tableBody),
    pagerBox,
  );
  if (ctx.canWrite) root.append(publishForm(ctx), changeForm(ctx, load), importForm(ctx, load));
  await load();
}

function keyRow(info, ctx, reload) {
  const key = blob(info.key);
  const valueCell = el('td', { class: 'value' }, valueView(info.value));
  const row = el('tr', { dataset: { key } },
    el('td', {}, el('code', { text: key })), valueCell,
    el('td', { text: info.changed_by }), el('td', {}, when(info.changed_at_us)));
  if (!ctx.canWrite) return row;
  const edit = el('button', { type: 'button', class: 'edit', onclick: startEdit }, 'Edit');
  const del = el('button', { type: 'button', class: 'delete danger', onclick: remove }, 'Delete');
  row.append(el('td', { class: 'actions' }, edit, ' ', del));

  function startEdit() {
    // Bytes that are not UTF-8 are edited as base64, and stay bytes.
    const bytes = typeof info.value !== 'string';
    const input = el('input', { type: 'text', class: 'edit-value', value: bytes ? info.value.b64 : info.value, spellcheck: 'false', 'aria-label': `new value of ${key}${bytes ? ' (base64)' : ''}` });
    const save = el('button', { type: 'button', class: 'save' }, 'Save');
    const cancel = el('button', { type: 'button' }, 'Cancel');
    const form = el('form', { class: 'inline', onsubmit: async (e) => {
      e.preventDefault();
      save.disabled = true;
      try {
        const r = await api.post('/v1/admin/put', { key: info.key, value: toBlob(input.value, bytes) });
        ctx.flash(`${key}: ${r.message}`);
        await reload();
      } catch (x) {
        save.disabled = false;
        ctx.flash(`${key}: ${x.message}`, 'error');
      }
    } }, input, save, cancel);
    save.type = 'submit';
    cancel.addEventListener('click', () => valueCell.replaceChildren(...[].concat(valueView(info.value))));
    valueCell.replaceChildren(form);
    input.focus();
  }

  async function remove() {
    if (!confirm(`Delete ${key} from production?`)) return;
    try {
      const r = await api.post('/v1/admin/delete', { key: info.key });
      ctx.flash(`${key}: ${r.message}`);
      await reload();
    } catch (x) {
      ctx.flash(`${key}: ${x.message}`, 'error');
    }
  }
  return row;
}

// Text as it is; bytes that are not UTF-8 as their base64, marked so.
function valueView(b) {
  return typeof b === 'string'
    ? el('code', { text: b })
    : [el('span', { class: 'tag', title: 'bytes that are not UTF-8, shown in base64', text: 'base64' }), ' ', el('code', { text: b.b64 })];
}

// Makes what production holds now live on every web server at now + the urgent window, after
// a confirmation: an urgent activation outside the grid (queued after the activation already
// armed when that is too close to move).
function publishForm(ctx) {
  return el('form', { class: 'card', id: 'publish-form', onsubmit: async (e) => {
    e.preventDefault();
    if (!confirm('Urgent: make what production holds now live on every web server in about a second?')) return;
    try {
      const r = await api.post('/v1/admin/publish', { urgent: true });
      ctx.flash(`${r.message}. Live at ${utc(r.live_by_us)} (${local(r.live_by_us)}).`);
    } catch (x) {
      ctx.flash(x.message, 'error');
    }
  } },
  el('h2', { text: 'Publish production now' }),
  el('p', { class: 'muted', text: 'For a change that cannot wait for the next activations: every web server switches at the same instant, about a second from now.' }),
  el('button', { type: 'submit', id: 'publish-urgent', class: 'danger' }, 'Publish now (urgent)'));
}

// Put or delete one key, now or at a date and time read as UTC or as local time.
function changeForm(ctx, reload) {
  const key = el('input', { type: 'text', id: 'change-key', required: true, spellcheck: 'false' });
  const value = el('input', { type: 'text', id: 'change-value', spellcheck: 'false' });
  const valueB64 = el('input', { type: 'checkbox', id: 'change-value-b64' });
  const op = el('select', { id: 'change-op' }, el('option', { value: 'put', text: 'set' }), el('option', { value: 'delete', text: 'delete' }));
  const at = el('input', { type: 'datetime-local', id: 'change-at', step: '1' });
  const zone = el('select', { id: 'change-zone' }, el('option', { value: 'utc', text: 'UTC' }), el('option', { value: 'local', text: 'local time' }));
  const urgent = el('input', { type: 'checkbox', id: 'change-urgent' });
  const preview = el('p', { id: 'change-preview', class: 'muted' });
  const updatePreview = () => {
    const us = parseDateTimeInput(at.value, zone.value);
    preview.textContent = us === null
      ? 'No time: the change is made now.'
      : `Scheduled for ${utc(us)} = ${local(us)} (your local time). It goes live at the first activation at or after it.`;
  };
  at.addEventListener('input', updatePreview);
  zone.addEventListener('change', updatePreview);
  op.addEventListener('change', () => { value.disabled = op.value === 'delete'; });
  updatePreview();

  const form = el('form', { class: 'card', id: 'change-form', onsubmit: async (e) => {
    e.preventDefault();
    const us = parseDateTimeInput(at.value, zone.value);
    if (at.value && us === null) return ctx.flash('That date and time does not read: use the picker.', 'error');
    const body = { key: key.value };
    if (op.value === 'put') body.value = toBlob(value.value, valueB64.checked);
    if (us !== null) body.at = rfc3339(us);
    if (urgent.checked) {
      if (us !== null) return ctx.flash('An urgent change goes live now: clear the time, or the urgent box.', 'error');
      if (!confirm(`Urgent: make production, with this change, live on every web server in about a second?`)) return;
      body.urgent = true;
    }
    try {
      const r = await api.post(op.value === 'put' ? '/v1/admin/put' : '/v1/admin/delete', body);
      const live = r.live_by_us ? ` Live at ${utc(r.live_by_us)} (${local(r.live_by_us)}).` : '';
      ctx.flash(`${key.value}: ${r.message}.${live}`);
      await reload();
    } catch (x) {
      ctx.flash(`${key.value}: ${x.message}`, 'error');
    }
  } },
  el('h2', { text: 'Change a key, now or at a time' }),
  el('div', { class: 'grid' },
    el('label', { for: 'change-op', text: 'Change' }), op,
    el('label', { for: 'change-key', text: 'Key' }), key,
    el('label', { for: 'change-value', text: 'Value' }), el('span', { class: 'with-option' }, value, el('label', {}, valueB64, ' base64 (bytes)')),
    el('label', { for: 'change-at', text: 'At (optional)' }), el('span', {}, at, ' ', zone),
    el('label', { for: 'change-urgent', text: 'Urgent' }), el('span', { class: 'with-option' }, urgent, ' live everywhere at now + the urgent window, not at the next activations')),
  preview,
  el('button', { type: 'submit', id: 'change-submit' }, 'Apply'));
  return form;
}

// A JSON object {"key": "value"} or CSV lines key,value, read as the CLI's `lockstep import`.
export function parseImport(text) {
  if (text.trimStart().startsWith('{')) {
    const obj = JSON.parse(text);
    if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw new Error('not a JSON object');
    return Object.keys(obj).sort().map((k) => ({ key: k, value: typeof obj[k] === 'string' ? obj[k] : JSON.stringify(obj[k]) }));
  }
  const records = parseCsv(text);
  const out = [];
  records.forEach((r, i) => {
    if (r.length !== 2) throw new Error(`CSV line ${i + 1}: expected 'key,value', found ${r.length} fields`);
    if (i === 0 && r[0] === 'key' && r[1] === 'value') return;
    out.push({ key: r[0], value: r[1] });
  });
  return out;
}

// RFC 4180: quoted fields may hold commas, newlines and doubled quotes.
function parseCsv(text) {
  const records = [];
  let field = '';
  let record = [];
  let quoted = false;
  let i = 0;
  const endRecord = () => { record.push(field); records.push(record); record = []; field = ''; };
  while (i < text.length) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i += 2; continue; }
      if (c === '"') { quoted = false; i++; continue; }
      field += c; i++; continue;
    }
    if (c === '"' && field === '') { quoted = true; i++; continue; }
    if (c === ',') { record.push(field); field = ''; i++; continue; }
    if (c === '\r' && text[i + 1] === '\n') { endRecord(); i += 2; continue; }
    if (c === '\n') { endRecord(); i++; continue; }
    field += c; i++;
  }
  if (field !== '' || record.length) endRecord();
  return records.filter((r) => !(r.length === 1 && r[0] === ''));
}

function importForm(ctx, reload) {
  const file = el('input', { type: 'file', id: 'import-file', accept: '.csv,.json,text/csv,application/json' });
  const summary = el('p', { class: 'muted', id: 'import-summary', text: 'A JSON object {"key": "value", …} or CSV lines key,value.' });
  const button = el('button', { type: 'submit', id: 'import-submit', disabled: true }, 'Import');
  let entries = null;
  file.addEventListener('change', async () => {
    entries = null;
    button.disabled = true;
    const f = file.files[0];
    if (!f) return;
    try {
      entries = parseImport(await f.text());
      summary.textContent = `${f.name}: ${entries.length} ${entries.length === 1 ? 'entry' : 'entries'}, ready to import into production now.`;
      button.disabled = entries.length === 0;
    } catch (x) {
      summary.textContent = `${f.name}: ${x.message}`;
    }
  });
  return el('form', { class: 'card', id: 'import-form', onsubmit: async (e) => {
    e.preventDefault();
    if (!entries) return;
    try {
      const r = await api.post('/v1/admin/import', { entries });
      ctx.flash(r.message);
      await reload();
    } catch (x) {
      ctx.flash(`import: ${x.message}`, 'error');
    }
  } }, el('h2', { text: 'Import a file' }), file, summary, button);
}
