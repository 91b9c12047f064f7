// Versions: history, the diff between any two, and rollback after a dry run shows which
// production keys it changes.

import * as api from './api.js';
import { el, when, blob, bytes, utc, local } from './format.js';

export async function render(root, ctx) {
  const state = { all: false, a: null, b: null };
  const body = el('tbody');
  const diffBox = el('section', { id: 'diff' });
  const showAll = el('input', { type: 'checkbox', id: 'history-all' });

  async function load() {
    const [rows, status] = await Promise.all([
      api.get('/v1/admin/history', { limit: state.all ? 100000 : 100 }),
      api.get('/v1/admin/status'),
    ]);
    const { active_version: active, staged_version: staged } = status.sync;
    if (state.a === null && rows.length > 1) { state.a = rows[1].version; state.b = rows[0].version; }
    body.replaceChildren(...rows.map((v) => versionRow(v, active, staged)));
  }

  function versionRow(v, active, staged) {
    const tags = [];
    if (v.version === active) tags.push(el('span', { class: 'tag active', text: 'active' }));
    if (v.version === staged) tags.push(el('span', { class: 'tag staged', text: 'staged' }));
    if (v.pinned) tags.push(el('span', { class: 'tag pinned', title: 'retention keeps its content', text: 'pinned' }));
    // A dropped version can still be diffed and rolled back to while its change sets last:
    // the data server rebuilds it, or says why it cannot.
    if (v.pruned_us) tags.push(el('span', { class: 'tag pruned', title: 'content dropped ' + utc(v.pruned_us), text: 'content dropped' }));
    const radio = (side) => el('input', {
      type: 'radio', name: 'diff-' + side, value: v.version, 'aria-label': `diff ${side} = version ${v.version}`,
      checked: state[side] === v.version,
      onchange: () => { state[side] = v.version; },
    });
    return el('tr', { dataset: { version: v.version } },
      el('td', { class: 'pick' }, radio('a')), el('td', { class: 'pick' }, radio('b')),
      el('td', { class: 'num' }, el('strong', { text: v.version })),
      el('td', {}, tags, ' ', v.reason),
      el('td', { class: 'num', text: v.entries }),
      el('td', { class: 'num', text: bytes(v.size) }),
      el('td', {}, el('code', { text: v.checksum })),
      el('td', {}, when(v.created_us)),
      el('td', {}, when(v.activated_us)),
      el('td', { class: 'num', text: v.downloads }),
      el('td', { class: 'write actions' }, ctx.canWrite ? [
        el('button', { type: 'button', class: 'rollback', onclick: () => rollback(v.version) }, 'Roll back to this'),
        ' ',
        el('button', { type: 'button', class: v.pinned ? 'unpin' : 'pin', title: v.pinned ? 'let retention drop its content' : 'retention keeps its content', onclick: () => pin(v.version, !v.pinned) }, v.pinned ? 'Unpin' : 'Pin'),
      ] : null));
  }

  async function pin(version, pinned) {
    try {
      const r = await api.post(pinned ? '/v1/admin/pin' : '/v1/admin/unpin', { version });
      ctx.flash(r.message);
      await load();
    } catch (x) {
      ctx.flash(x.message, 'error');
    }
  }

  async function diff() {
    if (state.a === null || state.b === null) return;
    try {
      const d = await api.get('/v1/admin/diff', { a: state.a, b: state.b });
      diffBox.replaceChildren(el('h2', { text: `Diff from version ${d.a} to version ${d.b}` }),
        changesTable(d, 'in ' + d.a, 'in ' + d.b, await valuesIn(d.a, d.removed)));
    } catch (x) {
      ctx.flash(x.message, 'error');
    }
  }

  async function rollback(version) {
    let preview;
    try {
      preview = await api.post('/v1/admin/rollback', { version, dry_run: true });
    } catch (x) {
      return ctx.flash(x.message, 'error');
    }
    const n = preview.production.added.length + preview.production.removed.length + preview.production.changed.length;
    const removedNow = await valuesIn(null, preview.production.removed);
    const urgent = el('input', { type: 'checkbox', id: 'rollback-urgent' });
    const dialog = el('dialog', { id: 'rollback-dialog' },
      el('h2', { text: `Roll back to version ${version}?` }),
      el('p', { text: n === 0
        ? 'Production already has this content: the rollback only stages it again.'
        : `It changes ${n} production key${n === 1 ? '' : 's'} (edits made since that version are discarded from production; they stay in history):` }),
      n ? changesTable(preview.production, 'production now', 'after rollback', removedNow) : null,
      el('p', { class: 'muted', text: `Goes live at ${utc(preview.live_by_us)} (${local(preview.live_by_us)}).` }),
      el('p', {}, el('label', {}, urgent, ' Urgent: live on every web server in about a second instead')),
      el('div', { class: 'buttons' },
        el('button', { type: 'button', id: 'rollback-cancel', onclick: () => dialog.close() }, 'Cancel'),
        el('button', { type: 'button', id: 'rollback-confirm', class: 'danger', onclick: confirmRollback }, `Roll back to ${version}`)));
    async function confirmRollback() {
      dialog.close();
      try {
        const body = { version, dry_run: false, discard_edits: true };
        if (urgent.checked) body.urgent = true;
        const r = await api.post('/v1/admin/rollback', body);
        ctx.flash(r.message);
        await load();
      } catch (x) {
        ctx.flash(x.message, 'error');
      }
    }
    dialog.addEventListener('close', () => dialog.remove());
    root.append(dialog);
    dialog.showModal();
  }

  showAll.addEventListener('change', () => { state.all = showAll.checked; load().catch((x) => ctx.flash(x.message, 'error')); });
  root.append(
    el('h1', { text: 'Versions' }),
    el('div', { class: 'toolbar' },
      el('button', { type: 'button', id: 'diff-button', onclick: diff }, 'Diff A → B'),
      el('label', {}, showAll, ' all versions (else the newest 100)')),
    el('table', { class: 'data', id: 'history' },
      el('thead', {}, el('tr', {}, ...['A', 'B', 'Version', 'Why', 'Keys', 'Size', 'Checksum', 'Created', 'Activation time', 'Downloads', ''].map((h) => el('th', { text: h, class: ['Version', 'Keys', 'Size', 'Downloads'].includes(h) ? 'num' : null })))),
      body),
    diffBox);
  await load();
  await diff();
}

// Diffs name the keys they remove, not their values: read the first hundred, in `version`
// (null: production).
async function valuesIn(version, keys) {
  const out = new Map();
  await Promise.all(keys.slice(0, 100).map(async (k) => {
    const q = typeof k === 'string' ? { key: k } : { key_b64: k.b64 };
    if (version !== null) q.version = version;
    try {
      out.set(blob(k), blob((await api.get('/v1/admin/key', q)).value));
    } catch {
      // Gone meanwhile, or its version's content dropped: shown without a value.
    }
  }));
  return out;
}

export function changesTable(changes, oldLabel, newLabel, removedValues) {
  const rows = [];
  for (const c of changes.changed) rows.push(['changed', blob(c.key), blob(c.old), blob(c.new)]);
  for (const a of changes.added) rows.push(['added', blob(a.key), '', blob(a.value)]);
  for (const r of changes.removed) rows.push(['removed', blob(r), (removedValues && removedValues.get(blob(r))) || '', '(absent)']);
  rows.sort((x, y) => (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0));
  if (!rows.length) return el('p', { class: 'muted', text: 'No key differs.' });
  const shown = rows.slice(0, 500);
  return el('div', {},
    el('table', { class: 'data changes' },
      el('thead', {}, el('tr', {}, el('th', { text: '' }), el('th', { text: 'Key' }), el('th', { text: oldLabel }), el('th', { text: newLabel }))),
      el('tbody', {}, shown.map(([kind, key, o, n]) => el('tr', { class: kind, dataset: { key } },
        el('td', { class: 'kind', text: kind }), el('td', {}, el('code', { text: key })),
        el('td', {}, el('code', { class: 'old', text: o })), el('td', {}, el('code', { class: 'new', text: n })))))),
    rows.length > shown.length ? el('p', { class: 'muted', text: `and ${rows.length - shown.length} more keys` }) : null);
}
