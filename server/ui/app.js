// The page's shell: sign-in, the header, and one view at a time chosen by the URL's fragment.

import * as api from './api.js';
import { utc } from './format.js';
import * as production from './production.js';
import * as versions from './versions.js';
import * as settings from './settings.js';
import * as farm from './farm.js';
import * as timeline from './timeline.js';
import * as audit from './audit.js';

const views = {
  production: production.render,
  scheduled: settings.renderScheduled,
  versions: versions.render,
  interval: settings.renderInterval,
  farm: farm.render,
  timeline: timeline.render,
  audit: audit.render,
};

const $ = (id) => document.getElementById(id);
let scope = null;
let cleanup = null;
let clockTimer = null;
let serverOffsetMs = 0;

function flash(message, kind = 'ok') {
  const box = $('flash');
  box.className = kind;
  box.textContent = message;
  box.hidden = !message;
}

async function showView() {
  if (cleanup) cleanup();
  cleanup = null;
  flash('');
  const name = (location.hash || '#production').slice(1);
  const render = views[name] || views.production;
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('current', a.getAttribute('href') === '#' + name);
  }
  const root = $('view');
  root.replaceChildren();
  root.dataset.view = name;
  const ctx = { scope, canWrite: scope === 'admin', flash, now: () => Date.now() * 1000 + serverOffsetMs * 1000 };
  try {
    cleanup = (await render(root, ctx)) || null;
  } catch (e) {
    flash(e.message, 'error');
  }
}

async function startSession() {
  scope = await api.probeScope();
  const status = await api.get('/v1/admin/status');
  serverOffsetMs = status.server_time_us / 1000 - Date.now();
  $('signin').hidden = true;
  $('main').hidden = false;
  $('nav').hidden = false;
  $('session').hidden = false;
  $('scope').textContent = scope === 'admin' ? 'admin: read and write' : 'read only';
  $('scope').className = 'badge ' + scope;
  document.body.classList.toggle('read-only', scope !== 'admin');
  const tick = () => { $('clock').textContent = 'server ' + utc(Math.floor((Date.now() + serverOffsetMs) / 1000) * 1e6); };
  tick();
  clockTimer = setInterval(tick, 1000);
  await showView();
}

function signOut(message) {
  api.clearToken();
  if (cleanup) cleanup();
  cleanup = null;
  clearInterval(clockTimer);
  scope = null;
  $('main').hidden = true;
  $('nav').hidden = true;
  $('session').hidden = true;
  $('view').replaceChildren();
  $('signin').hidden = false;
  $('signin-error').textContent = message || '';
  $('token').value = '';
  $('token').focus();
}

async function signIn(event) {
  event.preventDefault();
  const value = $('token').value.trim();
  if (!value) return;
  api.setToken(value);
  $('token').value = '';
  try {
    await startSession();
  } catch (e) {
    signOut(e.status === 401 || e.status === 403
      ? 'This token was refused: ' + e.message
      : e.message);
  }
}

window.addEventListener('DOMContentLoaded', () => {
  $('signin-form').addEventListener('submit', signIn);
  $('signout').addEventListener('click', () => signOut());
  window.addEventListener('hashchange', () => { if (scope) showView(); });
  api.events.addEventListener('unauthorized', () => signOut('The data server no longer accepts this token.'));
  if (api.token()) {
    startSession().catch((e) => signOut(e.message));
  } else {
    signOut();
  }
});
