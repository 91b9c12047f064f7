// The audit log: who changed what, when, and from where.

import * as api from './api.js';
import { el, utc, local, paged } from './format.js';

const PAGE = 100;

export async function render(root, ctx) {
  const data = await api.optional('/v1/admin/audit', { limit: 1000 });
  root.append(el('h1', { text: 'Audit log' }));
  const entries = data && (Array.isArray(data) ? data : data.entries);
  if (!entries) {
    root.append(el('p', { class: 'muted', text: 'This data server keeps no audit log (GET /v1/admin/audit).' }));
    return;
  }
  const filter = el('input', { type: 'search', id: 'audit-filter', placeholder: 'who, action or text', spellcheck: 'false' });
  const state = { page: 0 };
  const body = el('tbody');
  const pagerBox = el('div');
  const sorted = [...entries].sort((a, b) => b.at_us - a.at_us || b.id - a.id);
  function draw() {
    const q = filter.value.trim().toLowerCase();
    const shown = q ? sorted.filter((e) => [e.who, e.action, e.summary, e.peer].some((f) => String(f ?? '').toLowerCase().includes(q))) : sorted;
    const p = paged(shown, state, PAGE, (e) => el('tr', { dataset: { action: e.action } },
      el('td', { class: 'num', text: e.id }),
      el('td', { title: local(e.at_us), text: utc(e.at_us) }),
      el('td', { text: e.who }),
      el('td', {}, el('span', { class: 'tag', text: e.action })),
      el('td', { class: 'summary', text: e.summary }),
      el('td', { text: e.peer })), 'no change recorded');
    body.replaceChildren(...p.rows);
    pagerBox.replaceChildren(p.pager);
  }
  state.onchange = draw;
  filter.addEventListener('input', () => { state.page = 0; draw(); });
  root.append(
    el('div', { class: 'toolbar' }, el('label', { for: 'audit-filter', text: 'Filter' }), filter),
    el('table', { class: 'data', id: 'audit' },
      el('thead', {}, el('tr', {}, ...['#', 'When (UTC)', 'Who', 'Action', 'What', 'From'].map((h) => el('th', { text: h })))),
      body),
    pagerBox);
  draw();
}
