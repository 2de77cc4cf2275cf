// Shared by the debug pages: building DOM from text (never from HTML), the
// debug API client with its login flow, and formatting.
//
// Every URL is relative to the page (/debug/diff → /debug/calls), so the UI
// keeps working when a proxy mounts the control plane under a prefix.

/** Creates an element. Children are nodes or text; text is never parsed as HTML. */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  appendAll(node, children);
  return node;
}

function appendAll(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces the children of `node`. */
export function replace(node, ...children) {
  node.replaceChildren();
  appendAll(node, children);
}

/** A relative API URL with the non-empty `params` as its query. */
export function apiUrl(path, params = {}) {
  const url = new URL(path, document.baseURI);
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') url.searchParams.set(key, value);
  }
  return url;
}

/** An error answer of the debug API. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/**
 * GETs JSON from the debug API. On 401 it asks for the admin key (once for all
 * requests waiting on it) and retries.
 */
export function getJson(path, params) {
  return requestJson('GET', apiUrl(path, params));
}

/**
 * POSTs `body` (serialised as JSON; `undefined` sends no body) to the debug API
 * and returns the JSON answer. Authenticates like `getJson`: the session cookie,
 * and on 401 the login dialog, then a retry.
 */
export function postJson(path, body) {
  return requestJson('POST', apiUrl(path), body);
}

async function requestJson(method, url, body) {
  const init = { method, credentials: 'same-origin', headers: { accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  for (;;) {
    let response;
    try {
      response = await fetch(url, init);
    } catch (error) {
      throw new ApiError(0, 'network', `cannot reach the control plane (${error.message})`);
    }
    if (response.status === 401) {
      await login();
      continue;
    }
    if (!response.ok) throw await errorOf(response);
    return response.json();
  }
}

async function errorOf(response) {
  let code = 'http_' + response.status;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body?.error) {
      code = body.error.code ?? code;
      message = body.error.message ?? message;
    }
  } catch {
    // Not JSON: keep the status line.
  }
  return new ApiError(response.status, code, message);
}

let pendingLogin = null;

/**
 * Shows the login dialog until the admin key is accepted. Concurrent callers
 * share one dialog. Resolves once `POST login` has set the session cookie.
 */
export function login() {
  pendingLogin ??= showLogin().finally(() => {
    pendingLogin = null;
  });
  return pendingLogin;
}

function showLogin() {
  return new Promise((resolve) => {
    const input = h('input', {
      id: 'login-key',
      name: 'key',
      type: 'password',
      autocomplete: 'current-password',
      required: true,
      'aria-describedby': 'login-error',
    });
    const error = h('p', { id: 'login-error', class: 'login-error', role: 'alert' });
    const submit = h('button', { id: 'login-submit', type: 'submit' }, 'Sign in');
    const form = h(
      'form',
      { id: 'login-form', method: 'dialog' },
      h('h2', { id: 'login-title' }, 'Admin key required'),
      h('p', null, 'This control plane protects its debug API. Enter the admin key to continue.'),
      h('label', { for: 'login-key' }, 'Admin key'),
      input,
      error,
      h('div', { class: 'login-actions' }, submit),
    );
    const dialog = h('dialog', { id: 'login', class: 'login', 'aria-labelledby': 'login-title' }, form);
    // The page is useless without the key: Escape does not dismiss the dialog.
    dialog.addEventListener('cancel', (event) => event.preventDefault());
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      submit.disabled = true;
      error.textContent = '';
      try {
        const response = await fetch(apiUrl('login'), {
          method: 'POST',
          credentials: 'same-origin',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ key: input.value }),
        });
        if (response.ok) {
          dialog.close();
          dialog.remove();
          resolve();
          return;
        }
        error.textContent =
          response.status === 401 ? 'Wrong key. Try again.' : (await errorOf(response)).message;
      } catch (failure) {
        error.textContent = `Cannot reach the control plane (${failure.message}).`;
      } finally {
        submit.disabled = false;
      }
      input.select();
      input.focus();
    });
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
}

// ---- Formatting ------------------------------------------------------------

const pad = (n, width = 2) => String(n).padStart(width, '0');

/** `HH:MM:SS.mmm` local time, with the date in front when it is not today. */
export function formatTime(micros) {
  if (micros === null || micros === undefined) return '—';
  const date = new Date(micros / 1000);
  const time = `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
  const today = new Date();
  if (date.toDateString() === today.toDateString()) return time;
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${time}`;
}

/** Full local date and time. */
export function formatDateTime(micros) {
  if (micros === null || micros === undefined) return '—';
  const date = new Date(micros / 1000);
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

/** The UTC ISO form, for tooltips. */
export function isoTime(micros) {
  if (micros === null || micros === undefined) return undefined;
  return new Date(micros / 1000).toISOString();
}

/** `0.4 ms`, `312 ms`, `2.41 s`, or `—`. */
export function formatMs(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

/** `in → out` token counts. */
export function formatTokens(usage) {
  const input = usage?.input_tokens;
  const output = usage?.output_tokens;
  if ((input === null || input === undefined) && (output === null || output === undefined)) return '—';
  return `${input ?? '?'} → ${output ?? '?'}`;
}

/** The distinctive tail of a call id (UUIDv7 ids share their time prefix). */
export function shortId(id) {
  return id.length > 12 ? '…' + id.slice(-8) : id;
}

/** A status pill. */
export function statusBadge(status) {
  if (!status) return h('span', { class: 'muted' }, '—');
  return h('span', { class: `status status-${status}` }, status.replaceAll('_', ' '));
}

/** JSON for display: pretty for objects, as-is for strings. */
export function prettyJson(value) {
  if (value === undefined) return '';
  return JSON.stringify(value, null, 2);
}

/** Runs `fn` once no call has come for `ms`. */
export function debounce(fn, ms) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** True when a key press belongs to a text field, not to page shortcuts. */
export function isTyping(event) {
  const target = event.target;
  return (
    target instanceof HTMLInputElement ||
    target instanceof HTMLTextAreaElement ||
    target instanceof HTMLSelectElement ||
    target?.isContentEditable
  );
}
