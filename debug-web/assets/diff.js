// The diff viewer: recent calls on the left, the selected call on the right
// with its request and response as the client sent / upstream answered them
// (original) next to what policies made of them (final).

import {
  ApiError, debounce, formatDateTime, formatMs, formatTime, formatTokens, getJson, h, isTyping,
  isoTime, postJson, prettyJson, replace, shortId, statusBadge,
} from './common.js';

const PAGE_SIZE = 50;

const $ = (id) => document.getElementById(id);
const form = $('filters');
const searchInput = $('f-q');
const callsBody = $('calls-body');
const callsStatus = $('calls-status');
const loadMoreButton = $('load-more');
const detail = $('detail');

const state = {
  calls: [],
  cursor: null,
  /** Bumped on every new list query; answers to older queries are dropped. */
  listGeneration: 0,
  loadingMore: false,
  selected: null,
  detailGeneration: 0,
  models: new Set(),
  /** The replay box's text once edited (kept across calls); null shows the active chain. */
  replayDraft: null,
  /** Bumped on every replay; answers to older ones are dropped. */
  replayGeneration: 0,
};

// ---- The calls list --------------------------------------------------------

function filters() {
  const data = new FormData(form);
  const params = {};
  for (const [key, value] of data) params[key] = String(value).trim();
  return params;
}

async function loadCalls({ more = false } = {}) {
  if (more && (state.loadingMore || !state.cursor)) return;
  const generation = more ? state.listGeneration : ++state.listGeneration;
  const params = { ...filters(), limit: PAGE_SIZE };
  if (more) {
    params.cursor = state.cursor;
    state.loadingMore = true;
  }
  callsStatus.textContent = more ? 'Loading more…' : 'Loading…';
  try {
    const page = await getJson('calls', params);
    if (generation !== state.listGeneration) return;
    if (!more) {
      state.calls = [];
      callsBody.replaceChildren();
    }
    state.calls.push(...page.calls);
    state.cursor = page.next_cursor ?? null;
    callsBody.append(...page.calls.map(callRow));
    rememberModels(page.calls);
    loadMoreButton.hidden = !state.cursor;
    callsStatus.textContent = state.calls.length
      ? `${state.calls.length} call${state.calls.length === 1 ? '' : 's'}${state.cursor ? ' (more available)' : ''}`
      : 'No calls match.';
  } catch (error) {
    if (generation !== state.listGeneration) return;
    callsStatus.textContent = `Cannot list calls: ${error.message}`;
    loadMoreButton.hidden = true;
  } finally {
    if (more) state.loadingMore = false;
  }
}

function callRow(call) {
  const link = h('a', { href: callHref(call.call_id), class: 'call-link', title: call.call_id },
    formatTime(call.created_at_micros));
  const row = h('tr', {
    dataset: { callId: call.call_id },
    class: call.call_id === state.selected ? 'selected' : null,
    'aria-current': call.call_id === state.selected ? 'true' : null,
  },
    h('td', { class: 'time' }, link, h('div', { class: 'sub mono' }, shortId(call.call_id))),
    h('td', null,
      h('div', { class: 'model', title: call.model }, call.model || '—'),
      h('div', { class: 'sub' }, call.api, call.stream ? ' · stream' : '')),
    h('td', null,
      call.preview
        ? h('div', { class: 'preview', title: call.preview }, call.preview)
        : h('div', { class: 'preview muted' }, '—'),
      call.policies?.length
        ? h('div', { class: 'acted', 'aria-label': 'Policies that acted' },
          call.policies.map((name) => h('span', { class: 'badge type-policy', title: `${name} recorded an event` }, name)))
        : null),
    h('td', null, statusBadge(call.status),
      call.policy_changed
        ? h('div', null, h('span', { class: 'badge changed', title: 'A policy changed the request or the response' }, 'changed'))
        : null),
    h('td', { class: 'num' },
      formatMs(call.duration_ms),
      call.stream ? h('div', { class: 'sub', title: 'time to first chunk' }, 'TTFT ', formatMs(call.time_to_first_chunk_ms)) : null),
    h('td', { class: 'num' }, formatTokens(call.usage)),
  );
  return row;
}

function callHref(callId) {
  const url = new URL(location.href);
  url.searchParams.set('call_id', callId);
  return url.search;
}

function rememberModels(calls) {
  let added = false;
  for (const call of calls) {
    if (call.model && !state.models.has(call.model)) {
      state.models.add(call.model);
      added = true;
    }
  }
  if (!added) return;
  let list = $('models');
  if (!list) {
    list = h('datalist', { id: 'models' });
    document.body.append(list);
    $('f-model').setAttribute('list', 'models');
  }
  replace(list, [...state.models].sort().map((model) => h('option', { value: model })));
}

function markSelected() {
  for (const row of callsBody.rows) {
    const selected = row.dataset.callId === state.selected;
    row.classList.toggle('selected', selected);
    if (selected) row.setAttribute('aria-current', 'true');
    else row.removeAttribute('aria-current');
  }
}

callsBody.addEventListener('click', (event) => {
  const row = event.target.closest('tr[data-call-id]');
  if (!row) return;
  // Let modified clicks on the link open a new tab.
  if (event.target.closest('a') && (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0)) return;
  event.preventDefault();
  openCall(row.dataset.callId);
});

loadMoreButton.addEventListener('click', () => loadCalls({ more: true }));

const reloadSoon = debounce(() => loadCalls(), 250);
form.addEventListener('input', (event) => {
  if (event.target instanceof HTMLSelectElement) return;
  reloadSoon();
});
form.addEventListener('change', (event) => {
  if (event.target instanceof HTMLSelectElement) loadCalls();
});
form.addEventListener('submit', (event) => {
  event.preventDefault();
  loadCalls();
});
form.addEventListener('reset', () => setTimeout(() => loadCalls(), 0));

// ---- Keyboard --------------------------------------------------------------

function rowLinks() {
  return [...callsBody.querySelectorAll('a.call-link')];
}

async function move(step) {
  const links = rowLinks();
  if (!links.length) return;
  const focusedRow = document.activeElement?.closest?.('#calls-body tr');
  let index = links.findIndex((link) => link.closest('tr') === focusedRow);
  if (index < 0) index = links.findIndex((link) => link.closest('tr').dataset.callId === state.selected);
  let next = index < 0 ? 0 : index + step;
  if (next >= links.length && state.cursor) {
    await loadCalls({ more: true });
  }
  const updated = rowLinks();
  next = Math.max(0, Math.min(next, updated.length - 1));
  updated[next].focus();
  updated[next].closest('tr').scrollIntoView({ block: 'nearest' });
}

document.addEventListener('keydown', (event) => {
  if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey) return;
  if (document.querySelector('dialog[open]')) return;
  if (isTyping(event)) {
    if (event.key === 'Escape' && event.target !== searchInput) event.target.blur();
    return;
  }
  const inList = Boolean(document.activeElement?.closest?.('#calls'));
  switch (event.key) {
    case '/':
      event.preventDefault();
      searchInput.focus();
      searchInput.select();
      break;
    case 'j':
      event.preventDefault();
      move(1);
      break;
    case 'k':
      event.preventDefault();
      move(-1);
      break;
    case 'ArrowDown':
    case 'ArrowUp':
      // Elsewhere the arrows keep scrolling the page.
      if (!inList) return;
      event.preventDefault();
      move(event.key === 'ArrowDown' ? 1 : -1);
      break;
    case 'Enter': {
      const row = document.activeElement?.closest?.('#calls-body tr');
      // On the link itself Enter is a click, handled above.
      if (row && !document.activeElement.matches('a')) {
        event.preventDefault();
        openCall(row.dataset.callId);
      }
      break;
    }
    default:
  }
});

// ---- The selected call -----------------------------------------------------

async function openCall(callId) {
  state.selected = callId;
  markSelected();
  const url = new URL(location.href);
  url.searchParams.set('call_id', callId);
  history.replaceState(null, '', url);
  const generation = ++state.detailGeneration;
  detail.setAttribute('aria-busy', 'true');
  replace(detail, h('p', { class: 'empty' }, 'Loading call ', h('code', null, callId), '…'));
  const id = encodeURIComponent(callId);
  const [call, diff] = await Promise.allSettled([getJson(`calls/${id}`), getJson(`calls/${id}/diff`)]);
  if (generation !== state.detailGeneration) return;
  detail.removeAttribute('aria-busy');
  if (call.status === 'rejected') {
    const error = call.reason;
    replace(detail, h('div', { class: 'notice error', role: 'alert' },
      error instanceof ApiError && error.status === 404
        ? ['No call with id ', h('code', null, callId), ' is recorded.']
        : `Cannot load call ${callId}: ${error.message}`));
    return;
  }
  replace(detail, renderCall(call.value, diff.status === 'fulfilled' ? diff.value : null,
    diff.status === 'rejected' ? diff.reason : null));
  document.title = `${shortId(callId)} · Diff viewer · Luthien debug`;
}

function renderCall(detailJson, diff, diffError) {
  const { call, events, trace_url: traceUrl } = detailJson;
  const request = events.find((event) => event.payload?.type === 'request');
  const response = events.find((event) => event.payload?.type === 'response');
  const policies = events.filter((event) => event.payload?.type === 'policy');

  return h('article', { class: 'call', 'aria-labelledby': 'call-title' },
    h('header', { class: 'call-header' },
      h('h2', { id: 'call-title' }, 'Call ', h('code', { class: 'call-id' }, call.call_id)),
      statusBadge(call.status),
      call.policy_changed ? h('span', { class: 'badge changed' }, 'changed by policy') : h('span', { class: 'badge' }, 'unchanged'),
      traceUrl ? h('a', { class: 'trace-link', href: traceUrl, target: '_blank', rel: 'noopener noreferrer' }, 'View trace ↗') : null,
    ),
    notices(call, request, response, diff, diffError),
    metadata(call, request, response),
    policySection(policies),
    requestSection(request, diff),
    responseSection(call, response, diff),
    replaySection(call),
    rawSection(detailJson, diff),
  );
}

function notices(call, request, response, diff, diffError) {
  const list = [];
  const notice = (kind, ...content) => list.push(h('div', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : null }, ...content));
  if (diffError) notice('error', `Structured diff unavailable (${diffError.message}); showing the stored JSON instead.`);
  if (diff?.truncated) {
    notice('warn', h('strong', null, 'Partial diff. '),
      'Comparing these payloads took longer than the diff budget, so some parts are compared as whole blocks rather than word by word',
      diff.elapsed_ms !== undefined ? ` (gave up after ${formatMs(diff.elapsed_ms)}).` : '.');
  }
  if (call.status === 'blocked') {
    notice('blocked', h('strong', null, 'Blocked by a policy. '),
      response?.payload?.detail ?? 'The client received the policy’s answer instead of the upstream response.');
  } else if (call.status === 'in_progress') {
    notice('info', 'This call is still in progress: ', response ? 'its response is not final yet.' : 'no response has been recorded yet.',
      ' ', h('button', { type: 'button', class: 'secondary small', onclick: () => openCall(call.call_id) }, 'Reload'));
  } else if (!response) {
    notice('warn', 'No response was recorded for this call.');
  } else if (call.status !== 'completed') {
    notice('error', h('strong', null, call.status.replaceAll('_', ' '), '. '), response.payload.detail ?? '');
  }
  if (!request) notice('warn', 'No request was recorded for this call.');
  for (const [label, event] of [['request', request], ['response', response]]) {
    for (const side of ['original', 'final']) {
      const value = event?.payload?.[side];
      if (isNotStored(value)) {
        notice('info', h('strong', null, `The ${side} ${label} was not stored`),
          ` (${value.setting ?? '--store-payloads'}): only what was kept can be compared.`);
      } else if (isTruncated(value)) {
        notice('warn', h('strong', null, `The ${side} ${label} was too large to store. `),
          `Only a preview of its ${formatBytes(value.original_bytes)} was kept.`,
          h('details', null, h('summary', null, 'Preview'), h('pre', { class: 'json' }, String(value.preview ?? ''))));
      }
    }
  }
  return list;
}

function formatBytes(bytes) {
  if (typeof bytes !== 'number') return 'bytes';
  if (bytes < 1024) return `${bytes} bytes`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function isTruncated(value) {
  return value !== null && typeof value === 'object' && value.luthien_truncated === true;
}

/** A body `--store-payloads` kept out of the store. */
function isNotStored(value) {
  return value !== null && typeof value === 'object' && value.luthien_not_stored === true;
}

function metadata(call, request, response) {
  const r = response?.payload;
  const rows = [
    ['Call id', h('code', null, call.call_id)],
    ['Session', call.session_id ? h('code', null, call.session_id) : '—'],
    ['API', call.api],
    ['Model', call.model || '—'],
    ['Stream', call.stream ? 'yes' : 'no'],
    ['Status', statusBadge(call.status)],
    ['Upstream status', r?.upstream_status ?? '—'],
    ['Created', h('time', { datetime: isoTime(call.created_at_micros), title: isoTime(call.created_at_micros) }, formatDateTime(call.created_at_micros))],
    ['Completed', call.completed_at_micros
      ? h('time', { datetime: isoTime(call.completed_at_micros), title: isoTime(call.completed_at_micros) }, formatDateTime(call.completed_at_micros))
      : '—'],
    ['Duration', formatMs(call.duration_ms)],
    ['Time to first chunk', formatMs(call.time_to_first_chunk_ms)],
    ['Luthien overhead', formatMs(r?.overhead_ms)],
    ['Tokens in → out', formatTokens(call.usage)],
    ['Chunks received / sent', r && call.stream ? `${r.chunks_received} / ${r.chunks_sent}` : '—'],
  ];
  if (r?.detail) rows.push(['Detail', r.detail]);
  return h('section', { class: 'meta', 'aria-label': 'Call metadata' },
    h('dl', null, rows.map(([term, value]) => h('div', null, h('dt', null, term), h('dd', null, value)))));
}

function policySection(policies) {
  const title = h('h3', null, 'Policy events ', h('span', { class: 'count' }, String(policies.length)));
  if (!policies.length) {
    return h('section', { class: 'policies' }, title, h('p', { class: 'muted' }, 'No policy recorded an event for this call.'));
  }
  return h('section', { class: 'policies' }, title,
    h('table', { class: 'policy-events' },
      h('thead', null, h('tr', null,
        h('th', { scope: 'col' }, '#'), h('th', { scope: 'col' }, 'Time'), h('th', { scope: 'col' }, 'Policy'),
        h('th', { scope: 'col' }, 'Action'), h('th', { scope: 'col' }, 'Summary'))),
      h('tbody', null, policies.map((event) => {
        const p = event.payload;
        const hasData = p.data !== null && p.data !== undefined && !(typeof p.data === 'object' && Object.keys(p.data).length === 0);
        return h('tr', { class: 'policy-event' },
          h('td', { class: 'num' }, event.sequence),
          h('td', { class: 'time' }, formatTime(event.timestamp_micros)),
          h('td', null, h('code', null, p.policy)),
          h('td', null, h('span', { class: 'badge' }, p.action)),
          h('td', null, p.summary,
            hasData ? h('details', null, h('summary', null, 'data'), h('pre', { class: 'json' }, prettyJson(p.data))) : null));
      }))));
}

// ---- Request and response --------------------------------------------------

function sideHeads(before, after) {
  return h('div', { class: 'pair heads', 'aria-hidden': 'true' },
    h('div', { class: 'side before' }, before), h('div', { class: 'side after' }, after));
}

function sectionTitle(text, changed) {
  return h('h3', null, text, ' ',
    changed === undefined ? null
      : changed ? h('span', { class: 'badge changed' }, 'changed') : h('span', { class: 'badge' }, 'unchanged'));
}

function requestSection(request, diff) {
  const heads = sideHeads('Original — from the client', 'Final — sent upstream');
  if (!request) return h('section', { class: 'side-by-side request' }, sectionTitle('Request'), h('p', { class: 'muted' }, 'Not recorded.'));
  const d = diff?.request;
  const parts = [sectionTitle('Request', d?.changed ?? !sameJson(request.payload.original, request.payload.final)), heads];
  if (!d) {
    parts.push(jsonPair(request.payload.original, request.payload.final));
  } else {
    parts.push(...requestDiffParts(d));
  }
  if (parts.length === 2) parts.push(nothingToCompare(request.payload));
  if (request.payload.headers && Object.keys(request.payload.headers).length) {
    parts.push(h('details', { class: 'headers' }, h('summary', null, 'Request headers'),
      h('pre', { class: 'json' }, prettyJson(request.payload.headers))));
  }
  return h('section', { class: 'side-by-side request', 'aria-label': 'Request, original and final' }, parts);
}

function responseSection(call, response, diff) {
  const heads = sideHeads('Original — from upstream', 'Final — sent to the client');
  if (!response) {
    return h('section', { class: 'side-by-side response' }, sectionTitle('Response'),
      h('p', { class: 'muted' }, call.status === 'in_progress' ? 'No response yet.' : 'No response was recorded.'));
  }
  const p = response.payload;
  const d = diff?.response;
  const parts = [sectionTitle('Response', d?.changed ?? !sameJson(p.original, p.final)), heads];
  if (p.original === null || p.final === null) {
    parts.push(h('div', { class: 'pair' },
      h('div', { class: 'side before' }, p.original === null ? h('p', { class: 'absent' }, 'No upstream response (upstream was not called or did not answer).') : null),
      h('div', { class: 'side after' }, p.final === null ? h('p', { class: 'absent' }, 'Nothing was sent to the client.') : null)));
  }
  if (!d) {
    parts.push(jsonPair(p.original, p.final));
  } else {
    parts.push(...responseDiffParts(d));
  }
  if (parts.length === 2) parts.push(nothingToCompare(p));
  return h('section', { class: 'side-by-side response', 'aria-label': 'Response, original and final' }, parts);
}

/** The structured request diff (`diff.request`) as headed blocks; empty when there is nothing to show. */
function requestDiffParts(d, columns) {
  const parts = [];
  if (d.params?.length) parts.push(fieldsTable('Parameters', d.params, columns));
  if (d.system) parts.push(h('h4', null, 'System prompt'), textPair(d.system));
  if (d.messages?.length) parts.push(h('h4', null, 'Messages'), messagesList(d.messages));
  if (d.tools?.length) parts.push(h('h4', null, 'Tools'), itemsList(d.tools, toolDefinition));
  return parts;
}

/** The structured response diff (`diff.response`) as headed blocks; empty when there is nothing to show. */
function responseDiffParts(d, columns) {
  const parts = [];
  if (d.text) parts.push(h('h4', null, 'Text'), textPair(d.text));
  if (d.tool_calls?.length) parts.push(h('h4', null, 'Tool calls'), itemsList(d.tool_calls, toolCall));
  const fields = [];
  if (d.finish_reason) fields.push({ path: 'finish_reason', before: d.finish_reason.before, after: d.finish_reason.after });
  if (d.usage) fields.push(...usageRows(d.usage));
  fields.push(...(d.params ?? []));
  if (fields.length) parts.push(fieldsTable('Fields', fields, columns));
  return parts;
}

function nothingToCompare(payload) {
  const withheld = [payload.original, payload.final];
  return h('p', { class: 'muted' }, withheld.some(isNotStored)
    ? 'One side of this payload was not stored (see above), so there is nothing to compare.'
    : withheld.some(isTruncated)
      ? 'Only a preview of this payload was stored (see above), so there is nothing to compare.'
      : 'No text, messages, tools or parameters to compare.');
}

function usageRows(usage) {
  const before = usage.before ?? {};
  const after = usage.after ?? {};
  const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])];
  return keys.map((key) => ({ path: `usage.${key}`, before: before[key], after: after[key] }));
}

/** A table of changed scalar fields: path, original, final (or other `columns` names). */
function fieldsTable(title, rows, columns = ['Original', 'Final']) {
  return h('table', { class: 'fields' },
    h('caption', null, title),
    h('thead', null, h('tr', null, h('th', { scope: 'col' }, 'Field'), h('th', { scope: 'col' }, columns[0]), h('th', { scope: 'col' }, columns[1]))),
    h('tbody', null, rows.map((row) => {
      const changed = !sameJson(row.before, row.after);
      return h('tr', { class: changed ? 'changed' : null },
        h('th', { scope: 'row' }, h('code', null, row.path)),
        h('td', { class: changed ? 'before del-bg' : null }, compactValue(row.before)),
        h('td', { class: changed ? 'after ins-bg' : null }, compactValue(row.after)));
    })));
}

/** A field value; the diff reports an absent field as null. */
function compactValue(value) {
  if (value === undefined || value === null) return h('span', { class: 'muted', title: 'absent (or null)' }, '—');
  return h('code', null, JSON.stringify(value));
}

/** Original and final text side by side, with the word-level segments marked. */
function textPair(text) {
  if (text.segments?.length) {
    return h('div', { class: 'pair' },
      h('div', { class: 'side before' }, textBlock(segmentsFor(text.segments, 'before'))),
      h('div', { class: 'side after' }, textBlock(segmentsFor(text.segments, 'after'))));
  }
  const plain = (value) => value === null || value === undefined
    ? h('p', { class: 'absent' }, 'none')
    : textBlock([value]);
  return h('div', { class: 'pair' },
    h('div', { class: 'side before' }, plain(text.before)),
    h('div', { class: 'side after' }, plain(text.after)));
}

/** The segments one side shows: equal text, plus deletions (before) or insertions (after). */
function segmentsFor(segments, side) {
  const own = side === 'before' ? 'delete' : 'insert';
  return segments
    .filter((segment) => segment.op === 'equal' || segment.op === own)
    .map((segment) => segment.op === 'equal' ? segment.text
      : h(side === 'before' ? 'del' : 'ins', null, segment.text));
}

function textBlock(children) {
  const empty = children.every((child) => child === '' || (typeof child !== 'string' && child.textContent === ''));
  return h('div', { class: 'text' }, empty ? h('span', { class: 'muted' }, '(empty)') : children);
}

/** Messages, with runs of unchanged ones folded behind an expander. */
function messagesList(messages) {
  const out = [];
  for (let i = 0; i < messages.length;) {
    if (messages[i].op === 'equal') {
      let j = i;
      while (j < messages.length && messages[j].op === 'equal') j++;
      const run = messages.slice(i, j);
      const roles = run.length <= 8 ? run.map((m) => m.role ?? '?').join(', ') : `#${run[0].before_index}–#${run.at(-1).before_index}`;
      const details = h('details', { class: 'equal-run' },
        h('summary', null, `${run.length} unchanged message${run.length === 1 ? '' : 's'}`,
          h('span', { class: 'muted' }, ` (${roles})`)));
      // Long agent conversations repeat hundreds of messages: build them only when opened.
      details.addEventListener('toggle', () => {
        if (details.open && details.childElementCount === 1) details.append(...run.map(messagePair));
      });
      out.push(details);
      i = j;
    } else {
      out.push(messagePair(messages[i]));
      i++;
    }
  }
  return h('div', { class: 'messages' }, out);
}

const OP_LABELS = { equal: 'unchanged', insert: 'added', delete: 'removed', change: 'changed' };

function messagePair(message) {
  const op = message.op;
  const side = (which) => {
    const value = message[which];
    const index = message[`${which}_index`];
    if (value === null || value === undefined) {
      return h('div', { class: `side ${which} missing` },
        h('p', { class: 'absent' }, op === 'insert' ? 'not in the original' : 'removed from the final'));
    }
    const body = op === 'change' && message.segments?.length
      ? textBlock(segmentsFor(message.segments, which))
      : textBlock([messageText(value)]);
    const extras = messageExtras(value);
    const otherExtras = messageExtras(message[which === 'before' ? 'after' : 'before']);
    return h('div', { class: `side ${which} op-${op}` },
      h('div', { class: 'message-head' },
        h('span', { class: 'role' }, value.role ?? message.role ?? '?'),
        index !== null && index !== undefined ? h('span', { class: 'muted' }, ` #${index}`) : null,
        op !== 'equal' ? h('span', { class: `badge op op-${op}` }, OP_LABELS[op] ?? op) : null),
      body,
      extras ? h('pre', { class: `json extras${op === 'change' && !sameJson(extras, otherExtras) ? ' differs' : ''}` }, prettyJson(extras)) : null);
  };
  return h('div', { class: `pair message op-${op}` }, side('before'), side('after'));
}

/** The readable text of a message: string content or its text parts. */
function messageText(message) {
  const content = message?.content;
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    // Joined like the control plane's diff joins them, so segments line up.
    return content.filter((part) => part?.type === 'text').map((part) => part.text ?? '').join('\n\n');
  }
  return '';
}

/** Everything in a message beyond its role and text (tool calls, images, …), or null. */
function messageExtras(message) {
  if (!message || typeof message !== 'object') return null;
  const rest = { ...message };
  delete rest.role;
  if (Array.isArray(rest.content)) {
    rest.content = rest.content.filter((part) => part?.type !== 'text');
    if (!rest.content.length) delete rest.content;
  } else if (typeof rest.content === 'string' || rest.content === null || rest.content === undefined) {
    delete rest.content;
  }
  return Object.keys(rest).length ? rest : null;
}

/** Tools or tool calls, each original and final side by side. */
function itemsList(items, render) {
  return h('div', { class: 'items' }, items.map((item) => {
    const side = (which) => {
      const value = item[which];
      if (value === null || value === undefined) {
        return h('div', { class: `side ${which} missing` },
          h('p', { class: 'absent' }, item.op === 'insert' ? 'not in the original' : 'removed from the final'));
      }
      return h('div', { class: `side ${which} op-${item.op}` }, render(item, value, item.op));
    };
    return h('div', { class: `pair item op-${item.op}` }, side('before'), side('after'));
  }));
}

function itemHead(name, id, op) {
  return h('div', { class: 'message-head' },
    h('code', { class: 'name' }, name ?? '?'),
    id ? h('span', { class: 'muted mono' }, ` ${id}`) : null,
    op !== 'equal' ? h('span', { class: `badge op op-${op}` }, OP_LABELS[op] ?? op) : null);
}

function toolDefinition(item, value, op) {
  return [itemHead(item.name ?? value.name ?? value.function?.name, null, op), h('pre', { class: 'json' }, prettyJson(value))];
}

function toolCall(item, value, op) {
  return [itemHead(value.name ?? item.name, item.id, op), h('pre', { class: 'json' }, prettyJson(parseMaybeJson(value.arguments ?? value.input ?? null)))];
}

/** OpenAI sends tool arguments as a JSON string; show it parsed when it parses. */
function parseMaybeJson(value) {
  if (typeof value !== 'string') return value;
  try {
    return JSON.parse(value);
  } catch {
    return value;
  }
}

/** Without a structured diff: both stored JSON documents side by side. */
function jsonPair(before, after) {
  const block = (value) => value === null || value === undefined
    ? h('p', { class: 'absent' }, 'none')
    : h('pre', { class: 'json' }, prettyJson(value));
  return h('div', { class: 'pair' }, h('div', { class: 'side before' }, block(before)), h('div', { class: 'side after' }, block(after)));
}

function sameJson(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

// ---- Replay ----------------------------------------------------------------

/** The empty policy box shows this as an example. */
const EXAMPLE_CHAIN = `policies:
  - type: string_replace
    config:
      replacements: [{from: "fox", to: "cat"}]
  - type: all_caps`;

/** In a replay, "before" is what was recorded, "after" what the chain makes of it. */
const REPLAY_COLUMNS = ['Recorded', 'Replayed'];

/**
 * Replay: runs this call's recorded original request and upstream response
 * through a policy chain (`POST calls/{id}/replay`; no LLM is called) and shows
 * how the final request and response would differ from the recorded ones.
 */
function replaySection(call) {
  const yaml = h('textarea', {
    id: 'replay-yaml',
    name: 'policy_yaml',
    rows: 8,
    spellcheck: 'false',
    autocomplete: 'off',
    autocapitalize: 'off',
    placeholder: EXAMPLE_CHAIN,
    'aria-describedby': 'replay-help replay-active',
  });
  yaml.value = state.replayDraft ?? '';
  const active = h('p', { id: 'replay-active', class: 'sub' }, 'Reading the active chain…');
  const run = h('button', { id: 'replay-run', type: 'submit' }, 'Replay');
  const reset = h('button', { id: 'replay-reset', type: 'button', class: 'secondary', title: 'Put the active chain back in the box' },
    'Reset to active chain');
  const result = h('div', { id: 'replay-result', class: 'replay-result', 'aria-live': 'polite' });
  let activeYaml = '';

  yaml.addEventListener('input', () => {
    state.replayDraft = yaml.value;
  });
  yaml.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      if (!run.disabled) runReplay();
    }
  });
  reset.addEventListener('click', () => {
    state.replayDraft = null;
    yaml.value = activeYaml;
    yaml.focus();
  });

  getJson('policy').then((policy) => {
    activeYaml = policy.yaml ?? '';
    replace(active, activeChainText(policy));
    if (state.replayDraft === null) yaml.value = activeYaml;
    yaml.dataset.activeLoaded = 'true';
  }, (error) => {
    replace(active, `Cannot read the active chain (${error.message}).`);
  });

  async function runReplay() {
    const generation = ++state.replayGeneration;
    const text = yaml.value;
    const viaActive = text.trim() === '';
    run.disabled = true;
    result.dataset.state = 'running';
    delete result.dataset.changed;
    delete result.dataset.blocked;
    result.setAttribute('aria-busy', 'true');
    replace(result, h('p', { class: 'muted' }, viaActive ? 'Replaying through the active chain…' : 'Replaying through the chain above…'));
    try {
      const outcome = await postJson(`calls/${encodeURIComponent(call.call_id)}/replay`,
        viaActive ? undefined : { policy_yaml: text });
      if (generation !== state.replayGeneration) return;
      result.dataset.state = 'done';
      result.dataset.changed = String(Boolean(outcome.changed));
      result.dataset.blocked = String(outcome.blocked !== null && outcome.blocked !== undefined);
      replace(result, replayOutcome(outcome, viaActive));
      revealStart(result);
    } catch (error) {
      if (generation !== state.replayGeneration) return;
      result.dataset.state = 'error';
      replace(result, h('div', { class: 'notice error', role: 'alert' },
        h('strong', null, error.status === 400 ? 'The chain was rejected. ' : 'Replay failed. '),
        h('span', { class: 'replay-error' }, error.message)));
      revealStart(result);
    } finally {
      if (generation === state.replayGeneration) {
        run.disabled = false;
        result.removeAttribute('aria-busy');
      }
    }
  }

  const form = h('form', { id: 'replay-form', class: 'replay-form' },
    h('label', { for: 'replay-yaml' }, 'Policy chain (YAML)'),
    yaml,
    active,
    h('div', { class: 'replay-actions' }, run, reset,
      h('span', { class: 'sub' }, h('kbd', null, 'Ctrl'), '+', h('kbd', null, 'Enter'), ' in the box replays too')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    runReplay();
  });
  return h('section', { class: 'replay', 'aria-labelledby': 'replay-title' },
    h('h3', { id: 'replay-title' }, 'Replay through another chain'),
    h('p', { id: 'replay-help', class: 'muted' },
      'Runs this call’s recorded original request and upstream response through a policy chain — no LLM is called — ',
      'and compares the outcome with the final request and response that were recorded. ',
      'Leave the box empty to replay through the active chain.'),
    form,
    result);
}

/** Scrolls `node` to the top of the view when it starts in the lower half (or below) of the window. */
function revealStart(node) {
  if (node.getBoundingClientRect().top > window.innerHeight / 2) node.scrollIntoView({ block: 'start' });
}

/** One line about the active chain: its policies and where it came from. */
function activeChainText(policy) {
  const names = (policy.policies ?? [])
    .map((entry) => entry.name && entry.name !== entry.kind ? `${entry.name} (${entry.kind})` : entry.kind);
  const chain = names.length ? names.join(' → ') : 'no policies';
  return policy.yaml
    ? ['Active chain: ', h('code', null, chain), policy.path ? [' — from ', h('code', null, policy.path)] : null, '.']
    : ['Active chain: ', h('code', null, chain), ' — built in, not read from a file; leave the box empty to replay through it.'];
}

/** What a replay found: the verdict, then how request and response would differ from the recorded ones. */
function replayOutcome(outcome, viaActive) {
  const d = outcome.diff ?? {};
  const chain = viaActive ? 'the active chain' : 'this chain';
  const requestChanged = Boolean(d.request?.changed);
  const responseChanged = Boolean(d.response?.changed);
  const blocked = outcome.blocked !== null && outcome.blocked !== undefined;
  const parts = [];
  if (blocked) {
    parts.push(h('div', { class: 'notice blocked replay-verdict' },
      h('strong', null, `Would be blocked by ${chain}. `), outcome.blocked,
      ' The client would get the policy’s answer instead of the upstream response.'));
  } else if (outcome.changed) {
    const halves = requestChanged && responseChanged ? 'the request and the response'
      : requestChanged ? 'the request' : 'the response';
    parts.push(h('div', { class: 'notice warn replay-verdict' },
      h('strong', null, 'Would change this call. '), `With ${chain}, ${halves} would differ from what was recorded.`));
  } else {
    parts.push(h('div', { class: 'notice replay-verdict' },
      h('strong', null, 'No change. '), `With ${chain}, the request and the response would be the same as recorded.`));
  }
  if (outcome.error) {
    parts.push(h('div', { class: 'notice error' }, h('strong', null, 'A policy failed during the replay. '), outcome.error));
  }
  if (d.truncated) {
    parts.push(h('div', { class: 'notice warn' }, h('strong', null, 'Partial diff. '),
      'Comparing took longer than the diff budget, so some parts are compared as whole blocks rather than word by word.'));
  }
  const verdict = (yes, yesText, noText) => yes
    ? h('span', { class: 'badge changed' }, yesText)
    : h('span', { class: 'badge' }, noText);
  parts.push(h('p', { class: 'replay-summary' },
    'Blocked ', verdict(blocked, 'yes', 'no'),
    ' · Request ', verdict(requestChanged, 'would change', 'unchanged'),
    ' · Response ', verdict(responseChanged, 'would change', 'unchanged')));
  parts.push(
    replayHalf('request', 'Request', d.request, ['Recorded — sent upstream', 'Replayed — would be sent upstream'],
      d.request ? requestDiffParts(d.request, REPLAY_COLUMNS) : []),
    replayHalf('response', 'Response', d.response, ['Recorded — sent to the client', 'Replayed — would be sent to the client'],
      d.response ? responseDiffParts(d.response, REPLAY_COLUMNS) : []),
    replayEvents(outcome.policy_events ?? []),
    lazyJson('Raw replay outcome', outcome));
  return parts;
}

/** One half of a replay diff: "same as recorded", or recorded and replayed side by side. */
function replayHalf(kind, title, half, heads, parts) {
  const body = !half?.changed
    ? [h('p', { class: 'muted' }, 'Same as recorded.')]
    : parts.length
      ? [sideHeads(...heads), ...parts]
      : [h('p', { class: 'muted' }, 'Differs in ways not shown here (no text, messages, tools or parameters changed); see the raw outcome.')];
  return h('section', { class: `side-by-side replay-${kind}`, 'aria-label': `${title}, recorded and replayed` },
    h('h4', { class: 'replay-half' }, title, ' ',
      half?.changed ? h('span', { class: 'badge changed' }, 'would change') : h('span', { class: 'badge' }, 'unchanged')),
    body);
}

/** The events the replayed policies recorded. */
function replayEvents(events) {
  if (!events.length) return h('p', { class: 'muted replay-events' }, 'The replayed policies recorded no events.');
  return h('div', { class: 'replay-events' },
    h('h4', { class: 'replay-half' }, 'Policy events ', h('span', { class: 'count' }, String(events.length))),
    h('table', { class: 'policy-events' },
      h('thead', null, h('tr', null,
        h('th', { scope: 'col' }, 'Policy'), h('th', { scope: 'col' }, 'Action'), h('th', { scope: 'col' }, 'Summary'))),
      h('tbody', null, events.map((event) => {
        const hasData = event.data !== null && event.data !== undefined
          && !(typeof event.data === 'object' && Object.keys(event.data).length === 0);
        return h('tr', { class: 'policy-event' },
          h('td', null, h('code', null, event.policy)),
          h('td', null, h('span', { class: 'badge' }, event.action)),
          h('td', null, event.summary,
            hasData ? h('details', null, h('summary', null, 'data'), h('pre', { class: 'json' }, prettyJson(event.data))) : null));
      }))));
}

// ---- Raw JSON --------------------------------------------------------------

/** A collapsible JSON block, pretty-printed only when opened (payloads can be large). */
function lazyJson(title, value) {
  const pre = h('pre', { class: 'json' });
  const details = h('details', { class: 'raw-part' }, h('summary', null, title), pre);
  details.addEventListener('toggle', () => {
    if (details.open && !pre.firstChild) pre.textContent = prettyJson(value);
  });
  return details;
}

/** Collapsible raw JSON of the call and its diff. */
function rawSection(detailJson, diff) {
  const parts = [lazyJson('Call summary', detailJson.call)];
  for (const event of detailJson.events) {
    parts.push(lazyJson(`Event ${event.sequence}: ${event.payload?.type ?? '?'}`, event));
  }
  if (diff) {
    parts.push(lazyJson('Diff', diff));
    if (diff.json_patch) parts.push(lazyJson('JSON Patch (RFC 6902)', diff.json_patch));
  }
  return h('section', { class: 'raw' }, h('details', { id: 'raw' }, h('summary', null, h('h3', null, 'Raw JSON')), parts));
}

// ---- Start -----------------------------------------------------------------

loadCalls();
const initial = new URL(location.href).searchParams.get('call_id');
if (initial) openCall(initial);
