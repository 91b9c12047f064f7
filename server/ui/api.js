// The admin API over fetch. The token lives in sessionStorage (gone when the tab closes) and
// travels only in the Authorization header: never in a URL, where logs and history keep it.

const TOKEN_KEY = 'lockstep.token';

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Fired on a 401 so that the page can ask for a token again.
export const events = new EventTarget();

async function call(method, path, params, body) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, v);
  }
  const headers = { Authorization: 'Bearer ' + (token() || '') };
  const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (e) {
    throw new ApiError(0, 'the data server did not answer: ' + e.message);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message = (data && data.error) || text || response.statusText;
    if (response.status === 401) events.dispatchEvent(new Event('unauthorized'));
    throw new ApiError(response.status, message);
  }
  return data;
}

export const get = (path, params) => call('GET', path, params);
export const post = (path, body) => call('POST', path, undefined, body);

// What a token may do. A read-only token is refused by writes before their body is read, so
// an empty put (which an admin token gets a 400 for: nothing is changed either way) tells
// them apart without touching production.
export async function probeScope() {
  await get('/v1/admin/status');
  try {
    await post('/v1/admin/put', {});
  } catch (e) {
    if (e.status === 400 || e.status === 422) return 'admin';
    if (e.status === 403 || e.status === 401) return 'read';
    throw e;
  }
  return 'admin';
}

// An optional endpoint: null when this data server does not have it (404).
export async function optional(path, params) {
  try {
    return await get(path, params);
  } catch (e) {
    if (e.status === 404 && /no such endpoint/.test(e.message)) return null;
    throw e;
  }
}
