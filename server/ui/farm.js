// The farm by host and process. A thousand members stay quick: both tables are paged, and a
// refresh redraws only the page shown.

import * as api from './api.js';
import { el, duration, ago, utc, paged } from './format.js';

const HOSTS_PAGE = 10;
const MEMBERS_PAGE = 50;
const REFRESH_MS = 2000;
const NUMERIC = new Set(['Processes', 'Leader', 'Following', 'Stale', 'PID', 'Active', 'Staged', 'Clock offset ± error']);
const th = (t) => el('th', { text: t, class: NUMERIC.has(t) ? 'num' : null });

export async function render(root, ctx) {
  const hostsState = { page: 0 };
  const membersState = { page: 0 };
  const filter = el('input', { type: 'search', id: 'farm-filter', placeholder: 'host, name or pid', spellcheck: 'false' });
  const hideStale = el('input', { type: 'checkbox', id: 'hide-stale' });
  const auto = el('input', { type: 'checkbox', id: 'farm-auto', checked: true });
  const summary = el('p', { id: 'farm-summary' });
  const hostsBody = el('tbody');
  const hostsPager = el('div');
  const membersBody = el('tbody');
  const membersPager = el('div');
  let status = null;

  function draw() {
    if (!status) return;
    const members = status.farm;
    const live = members.filter((m) => !m.stale);
    const lagging = live.filter((m) => m.lagging).length;
    const { active_version: active, staged_version: staged } = status.sync;
    const behind = live.filter((m) => m.active !== active).length;
    summary.replaceChildren(
      el('strong', { text: `${members.length} processes` }), ` on ${status.hosts.length} hosts: `,
      el('span', { class: 'ok-text', text: `${live.length} live` }), ', ',
      el('span', { class: 'muted', text: `${members.length - live.length} stale` }), ', ',
      el('span', { class: lagging ? 'warn-text' : '', text: `${lagging} lagging` }), ', ',
      `${behind} live not on active version ${active}`, ` (staged ${staged}).`);

    const h = paged(status.hosts, hostsState, HOSTS_PAGE, hostRow, 'no member has checked in');
    hostsBody.replaceChildren(...h.rows);
    hostsPager.replaceChildren(h.pager);

    const q = filter.value.trim().toLowerCase();
    const shown = members.filter((m) => (!hideStale.checked || !m.stale) &&
      (!q || m.host.toLowerCase().includes(q) || m.name.toLowerCase().includes(q) || String(m.pid) === q));
    const p = paged(shown, membersState, MEMBERS_PAGE, (m) => memberRow(m, active, staged), 'no member matches');
    membersBody.replaceChildren(...p.rows);
    membersPager.replaceChildren(p.pager);
  }
  hostsState.onchange = draw;
  membersState.onchange = draw;

  function hostRow(h) {
    const held = h.versions.map((v) => `${v.processes}× active ${v.active}` + (v.staged ? ` / staged ${v.staged}` : '')).join(', ');
    return el('tr', { class: h.stale === h.processes ? 'stale' : '', dataset: { host: h.host } },
      el('td', {}, el('a', { href: '#farm', onclick: (e) => { e.preventDefault(); filter.value = h.host; membersState.page = 0; draw(); } }, h.host || '(no host name)')),
      el('td', { class: 'num', text: h.processes }),
      el('td', { class: 'num', text: h.leader_pid ?? '—' }),
      el('td', { class: 'num', text: h.following }),
      el('td', { class: 'num' + (h.lagging ? ' warn-text' : ''), text: h.lagging }),
      el('td', { class: 'num', text: h.stale }),
      el('td', { text: held || '—' }));
  }

  function memberRow(m, active, staged) {
    const state = m.stale ? 'stale' : m.lagging ? 'lagging' : m.active === active ? 'current' : 'behind';
    return el('tr', { class: m.stale ? 'stale' : '', dataset: { pid: m.pid, host: m.host, state } },
      el('td', { text: m.host }),
      el('td', { class: 'num', text: m.pid }),
      el('td', { text: m.name }),
      el('td', { text: m.role || 'alone' }),
      el('td', { class: 'num' + (m.active !== active && !m.stale ? ' warn-text' : ''), text: m.active }),
      // 0: nothing staged beyond the active version (a client empties it when it switches).
      el('td', { class: 'num', text: m.staged ? m.staged : '—' }),
      el('td', { class: 'num', text: `${duration(m.offset_us)} ± ${duration(m.error_us)}` }),
      el('td', { class: m.lagging ? 'warn-text' : '', text: m.lagging ? 'lagging' : '' }),
      el('td', { title: utc(m.last_checkin_us), text: ago(m.silent_us) }),
      el('td', {}, el('span', { class: 'tag ' + state, text: state })));
  }

  async function load() {
    status = await api.get('/v1/admin/status');
    draw();
  }

  filter.addEventListener('input', () => { membersState.page = 0; draw(); });
  hideStale.addEventListener('change', () => { membersState.page = 0; draw(); });
  root.append(
    el('h1', { text: 'Farm' }),
    summary,
    el('div', { class: 'toolbar' },
      el('label', {}, auto, ` refresh every ${REFRESH_MS / 1000} s`),
      el('button', { type: 'button', onclick: () => load().catch((x) => ctx.flash(x.message, 'error')) }, 'Refresh now')),
    el('h2', { text: 'Hosts' }),
    el('table', { class: 'data compact', id: 'hosts' },
      el('thead', {}, el('tr', {}, ...['Host', 'Processes', 'Leader', 'Following', 'Lagging', 'Stale', 'Live processes hold'].map(th))),
      hostsBody),
    hostsPager,
    el('h2', { text: 'Processes' }),
    el('div', { class: 'toolbar' },
      el('label', { for: 'farm-filter', text: 'Filter' }), filter,
      el('label', {}, hideStale, ' hide stale')),
    el('table', { class: 'data compact', id: 'members' },
      el('thead', {}, el('tr', {}, ...['Host', 'PID', 'Name', 'Role', 'Active', 'Staged', 'Clock offset ± error', 'Lagging', 'Last seen', 'State'].map(th))),
      membersBody),
    membersPager,
    el('p', { class: 'muted', text: 'Stale: silent for more than three check-in periods and 5 s. A member silent for the farm expiry (lockstep serve --farm-expiry, 10 minutes by default) leaves the farm.' }));
  await load();
  const timer = setInterval(() => { if (auto.checked) load().catch((x) => ctx.flash(x.message, 'error')); }, REFRESH_MS);
  return () => clearInterval(timer);
}
