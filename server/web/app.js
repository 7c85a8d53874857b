// llmd's page: a playground streamed over SSE, a live view drawn from
// /metrics, and the PIM pool. Plain JavaScript, same origin, no build step.
'use strict';

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------- API access

// The API key lives in this tab only (sessionStorage), never in the URL.
const keyInput = $('api-key');
keyInput.value = sessionStorage.getItem('llmd-api-key') || '';
keyInput.addEventListener('change', () => {
  sessionStorage.setItem('llmd-api-key', keyInput.value.trim());
  loadModel();
});

function headers(json) {
  const h = {};
  if (json) h['Content-Type'] = 'application/json';
  const key = keyInput.value.trim();
  if (key) h['Authorization'] = 'Bearer ' + key;
  return h;
}

// The error message of an OpenAI-shaped error body, or the status line.
async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body.error && body.error.message) return resp.status + ': ' + body.error.message;
  } catch (e) { /* not JSON */ }
  return resp.status + ' ' + resp.statusText;
}

async function api(path, options) {
  const resp = await fetch(path, Object.assign({ headers: headers(options && options.body) }, options));
  if (!resp.ok) throw new Error(await errorText(resp));
  return resp.json();
}

let modelId = null;
async function loadModel() {
  try {
    const list = await api('/v1/models');
    modelId = list.data[0].id;
    $('model').textContent = modelId + ' (context ' + list.data[0].max_model_len + ')';
  } catch (e) {
    $('model').textContent = e.message.startsWith('401') ? 'API key needed' : e.message;
  }
}

// ------------------------------------------------------------------ views

const views = ['play', 'live', 'pim'];
function show(view) {
  for (const v of views) $('view-' + v).hidden = v !== view;
  for (const b of document.querySelectorAll('.tab')) b.classList.toggle('active', b.dataset.view === view);
  location.hash = view;
  if (view === 'pim') refreshPim();
}
for (const b of document.querySelectorAll('.tab')) b.addEventListener('click', () => show(b.dataset.view));

// ------------------------------------------------------------- playground

const chat = [];          // the conversation so far: {role, content}
let controller = null;    // aborts the request in flight (the server cancels it)

function numberOr(id, fallback) {
  const v = $(id).value.trim();
  return v === '' ? fallback : Number(v);
}

function requestBody(prompt) {
  const body = {
    max_tokens: numberOr('max-tokens', 128),
    temperature: numberOr('temperature', 0.8),
    top_p: numberOr('top-p', 1),
    stream: true,
    stream_options: { include_usage: true },
  };
  const seed = numberOr('seed', null);
  if (seed !== null) body.seed = seed;
  const budget = numberOr('quest-budget', null);
  if (budget !== null) body.quest = { token_budget: budget };
  if ($('mode').value === 'chat') body.messages = chat.concat([{ role: 'user', content: prompt }]);
  else body.prompt = prompt;
  return body;
}

function addMessage(role, text) {
  const div = document.createElement('div');
  div.className = 'msg ' + role;
  div.textContent = text;
  $('chat-log').appendChild(div);
  return div;
}

// Reads an SSE body event by event: calls onData with each parsed payload.
async function readEvents(resp, onData) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split('\n')) {
        if (!line.startsWith('data: ')) continue; // ": keep-alive" comments
        const data = line.slice(6);
        if (data === '[DONE]') return;
        onData(JSON.parse(data));
      }
    }
  }
}

async function send() {
  const prompt = $('prompt').value;
  if (!prompt.trim()) return;
  const isChat = $('mode').value === 'chat';
  const body = requestBody(prompt);
  $('play-error').textContent = '';
  $('output').textContent = '';
  $('stats').textContent = 'waiting for the first token...';
  $('send').disabled = true;
  $('stop').disabled = false;
  controller = new AbortController();
  $('output').hidden = isChat; // a chat answers in the log above
  const target = isChat ? (addMessage('user', prompt), addMessage('assistant', '')) : $('output');
  if (isChat) $('prompt').value = '';
  const start = performance.now();
  let first = null, text = '', usage = null, finish = null;
  try {
    const resp = await fetch(isChat ? '/v1/chat/completions' : '/v1/completions', {
      method: 'POST', headers: headers(true), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    await readEvents(resp, (chunk) => {
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) return;
      const piece = isChat ? (choice.delta && choice.delta.content) : choice.text;
      if (piece) {
        if (first === null) {
          first = performance.now();
          $('stats').textContent = 'TTFT ' + (first - start).toFixed(0) + ' ms · streaming...';
        }
        text += piece;
        target.textContent = text;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    });
  } catch (e) {
    if (e.name === 'AbortError') finish = 'stopped';
    else $('play-error').textContent = e.message;
  } finally {
    if (isChat && text) chat.push({ role: 'user', content: prompt }, { role: 'assistant', content: text });
    const end = performance.now();
    const tokens = usage ? usage.completion_tokens : null;
    const parts = [];
    if (first !== null) parts.push('TTFT ' + (first - start).toFixed(0) + ' ms');
    if (tokens !== null && first !== null && end > first && tokens > 1)
      parts.push(((tokens - 1) / ((end - first) / 1000)).toFixed(1) + ' tokens/s');
    if (tokens !== null) parts.push(tokens + ' tokens');
    if (finish) parts.push('finish: ' + finish);
    $('stats').textContent = parts.join(' · ');
    $('send').disabled = false;
    $('stop').disabled = true;
    controller = null;
  }
}

$('send').addEventListener('click', send);
$('stop').addEventListener('click', () => { if (controller) controller.abort(); });
$('clear').addEventListener('click', () => {
  chat.length = 0;
  $('chat-log').textContent = '';
  $('output').textContent = '';
  $('stats').textContent = '';
});
$('prompt').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) send();
});

// ---------------------------------------------------------- live metrics

// Prometheus text format -> [{name, labels, value}].
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const l of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    samples.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return samples;
}

function value(samples, name) {
  const s = samples.find((x) => x.name === name);
  return s ? s.value : NaN;
}

// histogram_quantile over cumulative buckets, linear inside a bucket.
function quantile(samples, name, q) {
  const buckets = samples.filter((s) => s.name === name + '_bucket')
    .map((s) => ({ le: s.labels.le === '+Inf' ? Infinity : Number(s.labels.le), count: s.value }))
    .sort((a, b) => a.le - b.le);
  if (!buckets.length) return NaN;
  const total = buckets[buckets.length - 1].count;
  if (!total) return NaN;
  const rank = q * total;
  let prevLe = 0, prevCount = 0;
  for (const b of buckets) {
    if (b.count >= rank) {
      if (b.le === Infinity) return prevLe;
      return prevLe + (b.le - prevLe) * (b.count > prevCount ? (rank - prevCount) / (b.count - prevCount) : 1);
    }
    prevLe = b.le; prevCount = b.count;
  }
  return prevLe;
}

function ms(seconds) { return isNaN(seconds) ? '-' : (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 0) + ' ms'; }

const HISTORY = 60;
const series = { running: [], waiting: [], tps: [], kv: [], prefix: [] };
function push(list, v) { list.push(v); if (list.length > HISTORY) list.shift(); }

// A small line chart of one or two series, drawn as inline SVG.
function draw(svgId, lists) {
  const svg = $(svgId);
  const w = svg.clientWidth || 240, h = svg.clientHeight || 48;
  const max = Math.max(1e-9, ...lists.flat().filter((v) => !isNaN(v)));
  svg.setAttribute('viewBox', '0 0 ' + w + ' ' + h);
  svg.textContent = '';
  lists.forEach((list, k) => {
    const step = w / Math.max(1, list.length - 1);
    const points = list.map((v, i) => [i * step, h - 2 - ((isNaN(v) ? 0 : v) / max) * (h - 4)]);
    const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    line.setAttribute('points', points.map((p) => p[0].toFixed(1) + ',' + p[1].toFixed(1)).join(' '));
    if (k) line.setAttribute('class', 'second');
    svg.appendChild(line);
  });
}

let lastTokens = null, lastTime = null, liveReads = 0;
async function refreshLive() {
  try {
    const resp = await fetch('/metrics', { headers: headers(false) });
    if (!resp.ok) throw new Error(await errorText(resp));
    const samples = parseMetrics(await resp.text());
    const now = performance.now();
    const tokens = value(samples, 'llmd_generation_tokens_total');
    const tps = lastTokens === null ? 0 : Math.max(0, tokens - lastTokens) / ((now - lastTime) / 1000);
    lastTokens = tokens; lastTime = now;
    const running = value(samples, 'llmd_num_requests_running');
    const waiting = value(samples, 'llmd_num_requests_waiting');
    const used = value(samples, 'llmd_kv_pages_used'), capacity = value(samples, 'llmd_kv_pages_capacity');
    const hit = value(samples, 'llmd_prefix_cache_hit_ratio');
    push(series.running, running); push(series.waiting, waiting); push(series.tps, tps);
    push(series.kv, used); push(series.prefix, hit);
    $('m-requests').textContent = running + ' / ' + waiting;
    $('m-tps').textContent = tps.toFixed(1);
    $('m-kv').textContent = used + ' / ' + capacity;
    $('m-prefix').textContent = isNaN(hit) ? 'n/a' : (hit * 100).toFixed(1) + '%';
    const q = (name) => [0.5, 0.9, 0.99].map((p) => ms(quantile(samples, name, p))).join(' / ');
    $('m-ttft').textContent = q('llmd_time_to_first_token_seconds');
    $('m-tpot').textContent = q('llmd_time_per_output_token_seconds');
    draw('c-requests', [series.running, series.waiting]);
    draw('c-tps', [series.tps]);
    draw('c-kv', [series.kv]);
    draw('c-prefix', [series.prefix]);
    liveReads++;
    $('live-updated').textContent = 'read ' + liveReads + ' times, last at ' + new Date().toLocaleTimeString();
    $('live-error').textContent = '';
    const queue = value(samples, 'llmd_pim_queue_length'), queueCap = value(samples, 'llmd_pim_queue_capacity');
    $('pim-queue').textContent = 'queue: ' + queue + ' waiting of ' + queueCap;
  } catch (e) {
    $('live-error').textContent = e.message;
  }
}

// ---------------------------------------------------------------- PIM pool

const jobs = new Map(); // id -> the last answer for it

function cell(row, text) { const td = document.createElement('td'); td.textContent = text; row.appendChild(td); }

async function refreshPim() {
  try {
    const devices = await api('/v1/pim/devices');
    const body = $('pim-devices').tBodies[0];
    body.textContent = '';
    for (const d of devices.data) {
      const row = body.insertRow();
      for (const v of [d.id, d.name, d.busy ? 'yes' : 'no', d.current_job || '-', d.jobs_done,
        d.busy_seconds.toFixed(4), d.energy_j.toExponential(3)]) cell(row, v);
    }
    $('pim-presets').textContent = 'presets: ' + devices.presets.join(', ') + ' (jobs that name none: ' +
      devices.default_preset + ')' + (devices.replica_id ? '; replica ' + devices.replica_id : '');
    $('pim-error').textContent = '';
  } catch (e) {
    $('pim-error').textContent = e.message;
  }
  drawJobs();
}

function drawJobs() {
  const body = $('pim-jobs').tBodies[0];
  body.textContent = '';
  for (const job of [...jobs.values()].reverse()) {
    const row = body.insertRow();
    const cost = job.result && job.result.cost;
    for (const v of [job.id, job.type, job.status, job.device === undefined ? '-' : job.device,
      cost ? cost.latency_s.toExponential(3) : '-',
      cost ? cost.energy_j.total.toExponential(3) : '-']) cell(row, v);
  }
}

$('pim-type').addEventListener('change', () => {
  $('pim-vector-label').textContent = ($('pim-type').value === 'solve' ? 'rhs' : 'input') + ' (JSON)';
});

async function submitPim() {
  $('pim-error').textContent = '';
  $('pim-result').textContent = '';
  let matrix, vector;
  try {
    matrix = JSON.parse($('pim-matrix').value);
    vector = JSON.parse($('pim-vector').value);
  } catch (e) {
    $('pim-error').textContent = 'not JSON: ' + e.message;
    return;
  }
  const type = $('pim-type').value;
  const job = { type, matrix };
  job[type === 'solve' ? 'rhs' : 'input'] = vector;
  try {
    let answer = await api('/v1/pim/jobs', { method: 'POST', body: JSON.stringify(job) });
    jobs.set(answer.id, answer);
    drawJobs();
    // Poll until the job ends: the server holds each GET up to `wait` seconds.
    while (answer.status === 'queued' || answer.status === 'running') {
      answer = await api('/v1/pim/jobs/' + encodeURIComponent(answer.id) + '?wait=5');
      jobs.set(answer.id, answer);
      drawJobs();
    }
    const { cost, ...numbers } = answer.result || {};
    $('pim-result').textContent = answer.status === 'done'
      ? 'result: ' + JSON.stringify(numbers) + '\ncost: ' + JSON.stringify(cost, null, 1)
      : answer.status + ': ' + JSON.stringify(answer.error || answer);
    refreshPim();
  } catch (e) {
    $('pim-error').textContent = e.message;
  }
}
$('pim-submit').addEventListener('click', submitPim);

// ------------------------------------------------------------------ start

loadModel();
refreshLive();
setInterval(refreshLive, 1000);
show(views.includes(location.hash.slice(1)) ? location.hash.slice(1) : 'play');
