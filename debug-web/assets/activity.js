// The live activity monitor: call events as the control plane records them,
// newest first, from `GET activity/stream` (server-sent events).
//
// Filters are applied here, to the rows already shown and to every new one,
// so changing a filter never loses events: the stream itself is unfiltered.
// "Group by call" lays the same rows out under one heading per call, the call
// with the latest event first; it too only moves rows, so nothing is lost.

import { apiUrl, formatTime, getJson, h, isoTime, shortId, statusBadge } from './common.js';

/** Rows kept on screen; older ones are dropped. */
const MAX_ROWS = 500;
/** Events kept while paused; beyond it the oldest buffered are dropped. */
const MAX_BUFFER = 5000;
/** Wait before reconnecting after the stream closed, growing to MAX_RETRY_MS. */
const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 15000;

const $ = (id) => document.getElementById(id);
const form = $('filters');
const body = $('events-body');
const empty = $('empty');
const counts = $('counts');
const pauseButton = $('pause');
const connection = $('connection');

const state = {
  paused: false,
  buffer: [],
  droppedWhilePaused: 0,
  /** `call_id/sequence` of every shown or buffered event, to skip duplicates. */
  seen: new Set(),
  source: null,
  retryMs: FIRST_RETRY_MS,
  /** Every event row on screen, oldest first (the trimming order). */
  rows: [],
  /** Whether rows are grouped under one heading per call. */
  grouped: false,
  layoutPending: false,
};

// ---- Filters ---------------------------------------------------------------

function currentFilter() {
  return {
    callId: $('f-call-id').value.trim(),
    model: $('f-model').value.trim().toLowerCase(),
    eventType: $('f-event-type').value,
  };
}

function matches(row, filter) {
  const data = row.dataset;
  return (!filter.callId || data.callId.includes(filter.callId))
    && (!filter.model || data.model.toLowerCase().includes(filter.model))
    && (!filter.eventType || data.eventType === filter.eventType);
}

function applyFilters() {
  const filter = currentFilter();
  for (const row of state.rows) row.hidden = !matches(row, filter);
  const grouped = $('f-group').checked;
  if (grouped !== state.grouped) {
    state.grouped = grouped;
    layout();
  } else if (state.grouped) {
    hideEmptyGroups();
  }
  // Keep the filters in the URL so the view can be shared or reloaded.
  const url = new URL(location.href);
  for (const [key, value] of [['call_id', filter.callId], ['model', $('f-model').value.trim()],
    ['event_type', filter.eventType], ['group', grouped ? 'call' : '']]) {
    if (value) url.searchParams.set(key, value);
    else url.searchParams.delete(key);
  }
  history.replaceState(null, '', url);
  updateCounts();
}

form.addEventListener('input', applyFilters);
form.addEventListener('change', applyFilters);
form.addEventListener('submit', (event) => event.preventDefault());

// ---- Rows ------------------------------------------------------------------

function eventRow(message) {
  const href = `diff?call_id=${encodeURIComponent(message.call_id)}`;
  return h('tr', {
    class: `event type-${message.event_type}`,
    dataset: {
      callId: message.call_id,
      sequence: String(message.sequence),
      model: message.model ?? '',
      eventType: message.event_type,
      status: message.status ?? '',
    },
  },
    h('td', { class: 'time' }, h('time', { datetime: isoTime(message.timestamp_micros) }, formatTime(message.timestamp_micros))),
    h('td', { class: 'mono' }, h('a', { href, title: `Open ${message.call_id} in the diff viewer` }, shortId(message.call_id))),
    h('td', null, message.model || '—', h('div', { class: 'sub' }, message.api ?? '')),
    h('td', null, h('span', { class: `badge type type-${message.event_type}` }, message.event_type)),
    h('td', { class: 'summary' }, message.summary ?? ''),
    h('td', null, statusBadge(message.status)),
  );
}

function show(messages) {
  if (!messages.length) return;
  const filter = currentFilter();
  const fragment = document.createDocumentFragment();
  const rows = messages.map((message) => {
    const row = eventRow(message);
    row.hidden = !matches(row, filter);
    return row;
  });
  state.rows.push(...rows);
  while (state.rows.length > MAX_ROWS) {
    const oldest = state.rows.shift();
    state.seen.delete(`${oldest.dataset.callId}/${oldest.dataset.sequence}`);
    oldest.remove();
  }
  if (state.grouped) {
    // Many events can arrive in one frame: lay out once for all of them.
    if (!state.layoutPending) {
      state.layoutPending = true;
      requestAnimationFrame(() => {
        state.layoutPending = false;
        layout();
      });
    }
  } else {
    // `rows` is oldest first; the newest goes on top.
    for (let i = rows.length - 1; i >= 0; i--) fragment.append(rows[i]);
    body.prepend(fragment);
  }
  updateCounts();
}

/**
 * Puts every row in its place: newest first, or, grouped, under one heading per call (the
 * call with the latest event first; its events in the order they happened, so a call reads
 * top down as request, policy events, response).
 */
function layout() {
  const newestFirst = [...state.rows].reverse();
  if (!state.grouped) {
    body.replaceChildren(...newestFirst);
    return;
  }
  const groups = new Map();
  for (const row of newestFirst) {
    const callId = row.dataset.callId;
    if (!groups.has(callId)) groups.set(callId, []);
    groups.get(callId).push(row);
  }
  const out = [];
  for (const [callId, newest] of groups) out.push(groupHead(callId, newest), ...[...newest].reverse());
  body.replaceChildren(...out);
  hideEmptyGroups();
}

/** The heading of one call's events (`rows`, newest first): its id, model, how many events, its latest status. */
function groupHead(callId, rows) {
  const latest = rows[0].dataset;
  const status = rows.find((row) => row.dataset.status)?.dataset.status;
  const href = `diff?call_id=${encodeURIComponent(callId)}`;
  return h('tr', { class: 'group-head', dataset: { callId } },
    h('th', { scope: 'rowgroup', colspan: '6' },
      h('a', { href, class: 'mono', title: `Open ${callId} in the diff viewer` }, shortId(callId)),
      h('span', { class: 'muted' }, ` · ${latest.model || '—'} · ${rows.length} event${rows.length === 1 ? '' : 's'} `),
      status ? statusBadge(status) : null));
}

/** A call whose events the filters all hide loses its heading too. */
function hideEmptyGroups() {
  let head = null;
  let anyShown = false;
  for (const row of body.rows) {
    if (row.classList.contains('group-head')) {
      if (head) head.hidden = !anyShown;
      head = row;
      anyShown = false;
    } else if (!row.hidden) {
      anyShown = true;
    }
  }
  if (head) head.hidden = !anyShown;
}

function receive(message) {
  if (typeof message?.call_id !== 'string') return;
  if (message.v !== undefined && message.v > 1) return; // a newer shape than this page knows
  const key = `${message.call_id}/${message.sequence}`;
  if (state.seen.has(key)) return;
  state.seen.add(key);
  if (state.paused) {
    state.buffer.push(message);
    if (state.buffer.length > MAX_BUFFER) {
      const dropped = state.buffer.shift();
      state.seen.delete(`${dropped.call_id}/${dropped.sequence}`);
      state.droppedWhilePaused++;
    }
    updateCounts();
    return;
  }
  show([message]);
}

function updateCounts() {
  const total = state.rows.length;
  let visible = 0;
  for (const row of state.rows) if (!row.hidden) visible++;
  empty.hidden = visible > 0;
  empty.textContent = total ? 'No events match the filters.' : 'Waiting for calls…';
  const parts = [total === visible ? `${total} event${total === 1 ? '' : 's'}` : `${visible} of ${total} events shown`];
  if (total >= MAX_ROWS) parts.push(`(latest ${MAX_ROWS} kept)`);
  if (state.paused) {
    parts.push(`· paused, ${state.buffer.length} new`);
    if (state.droppedWhilePaused) parts.push(`(${state.droppedWhilePaused} dropped)`);
  }
  counts.textContent = parts.join(' ');
  pauseButton.textContent = state.paused ? `Resume (${state.buffer.length} new)` : 'Pause';
}

pauseButton.addEventListener('click', () => {
  state.paused = !state.paused;
  pauseButton.setAttribute('aria-pressed', String(state.paused));
  if (!state.paused) {
    const buffered = state.buffer;
    state.buffer = [];
    state.droppedWhilePaused = 0;
    show(buffered);
  }
  updateCounts();
});

$('clear').addEventListener('click', () => {
  body.replaceChildren();
  state.rows = [];
  state.buffer = [];
  state.seen.clear();
  state.droppedWhilePaused = 0;
  updateCounts();
});

// ---- Connection ------------------------------------------------------------

function setConnection(stateName, text) {
  connection.dataset.state = stateName;
  connection.textContent = text;
}

function connect() {
  state.source?.close();
  setConnection('connecting', 'connecting…');
  const source = new EventSource(apiUrl('activity/stream'));
  state.source = source;
  source.addEventListener('open', () => {
    state.retryMs = FIRST_RETRY_MS;
    setConnection('live', 'live');
  });
  source.addEventListener('activity', (event) => {
    try {
      receive(JSON.parse(event.data));
    } catch {
      // A malformed message is skipped; the stream goes on.
    }
  });
  source.addEventListener('error', () => {
    if (source !== state.source) return;
    if (source.readyState === EventSource.CONNECTING) {
      setConnection('reconnecting', 'reconnecting…');
      return;
    }
    // Closed for good (e.g. 401, or the server is gone): check access, then retry.
    source.close();
    setConnection('disconnected', 'disconnected');
    const wait = state.retryMs;
    state.retryMs = Math.min(state.retryMs * 2, MAX_RETRY_MS);
    setTimeout(() => checkAccess().then(connect), wait);
  });
}

/**
 * EventSource cannot show a status code, so ask the JSON API first: on 401
 * this brings up the login form and resolves once the key is accepted.
 */
async function checkAccess() {
  try {
    await getJson('calls', { limit: 1 });
  } catch {
    // Another problem (no store, server down): the stream may still work.
  }
}

// ---- Start -----------------------------------------------------------------

const params = new URL(location.href).searchParams;
$('f-call-id').value = params.get('call_id') ?? '';
$('f-model').value = params.get('model') ?? '';
$('f-event-type').value = params.get('event_type') ?? '';
$('f-group').checked = params.get('group') === 'call';
state.grouped = $('f-group').checked;
updateCounts();
checkAccess().then(connect);
