// page_test.mjs: the web page at / in headless Chromium (playwright-core over
// Debian's chromium), against the real daemon on 127.0.0.1. Run by
// tests/web/run.sh, which sets LLMD_BINARY, CHROMIUM, PLAYWRIGHT_CORE and
// LLMD_WEB_SHOTS. Checks: the page loads without console errors, a streamed
// answer appears with its TTFT and tokens/s, Stop cancels the request on the
// server, the live view updates from /metrics, a PIM job round-trips, and
// with API keys on the page asks for the key and then works. Every wait is
// bounded; a failure prints what the page showed and exits 1.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';

const { chromium } = await import(process.env.PLAYWRIGHT_CORE);
const BIN = process.env.LLMD_BINARY || 'build/llmd';
const SHOTS = process.env.LLMD_WEB_SHOTS || 'build/web-test';
// The shipped model in fp32: quick to load, and slow enough at 2000 tokens
// that Stop lands mid-answer.
const MODEL = 'models/llmd-20m.gguf';

let failures = 0;
function check(ok, what) {
  console.log((ok ? '  ok   ' : '  FAIL ') + what);
  if (!ok) failures++;
}

// Starts `llmd serve` on an ephemeral port; resolves with {proc, base}.
async function startDaemon(extra) {
  const proc = spawn(BIN, ['serve', '--model', MODEL, '--host', '127.0.0.1', '--port', '0',
    '--precision', 'fp32', '--kv-type', 'f32', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the daemon did not say its port in 60 s')), 60000);
    for (const stream of [proc.stdout, proc.stderr]) {
      createInterface({ input: stream }).on('line', (line) => {
        const m = line.match(/listening on http:\/\/127\.0\.0\.1:(\d+)/);
        if (m) { clearTimeout(timer); resolve(Number(m[1])); }
      });
    }
    proc.on('exit', (code) => reject(new Error('the daemon exited with ' + code)));
  });
  const base = 'http://127.0.0.1:' + port;
  for (let i = 0; i < 600; i++) { // the model loads after the port opens
    try { if ((await fetch(base + '/health')).status === 200) return { proc, base }; } catch (e) { /* not yet */ }
    await sleep(100);
  }
  throw new Error('the daemon was not healthy in 60 s');
}

async function stopDaemon(d) {
  const exited = new Promise((resolve) => d.proc.on('exit', (code) => resolve(code)));
  d.proc.kill('SIGTERM');
  const code = await Promise.race([exited, sleep(30000).then(() => 'timeout')]);
  check(code === 0, 'the daemon exits 0 on SIGTERM (got ' + code + ')');
}

async function metric(base, sample) {
  const text = await (await fetch(base + '/metrics')).text();
  const line = text.split('\n').find((l) => l.startsWith(sample + ' '));
  return line ? Number(line.split(' ')[1]) : NaN;
}

// Opens the page, collecting console errors and uncaught exceptions.
async function openPage(browser, base, errors, allowed) {
  const page = await browser.newPage({ viewport: { width: 1200, height: 820 } });
  page.setDefaultTimeout(30000);
  page.on('console', (m) => {
    if (m.type() === 'error' && !(allowed && allowed.test(m.text()))) errors.push('console: ' + m.text());
  });
  page.on('pageerror', (e) => errors.push('page error: ' + e.message));
  await page.goto(base + '/');
  return page;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
let daemon = null;
try {
  // ------------------------------------------------------------ no keys
  daemon = await startDaemon([]);
  const errors = [];
  const page = await openPage(browser, daemon.base, errors, null);
  await page.waitForFunction(() => document.getElementById('model').textContent.startsWith('llmd-20m'));
  check(true, 'the page loads and names the model');

  // A streamed completion: text, TTFT and tokens/s appear.
  await page.selectOption('#mode', 'completion');
  await page.fill('#max-tokens', '32');
  await page.fill('#temperature', '0');
  await page.fill('#quest-budget', '256');
  await page.fill('#prompt', 'Once upon a time');
  await page.click('#send');
  await page.waitForFunction(() => document.getElementById('stats').textContent.includes('finish:'));
  const output = await page.textContent('#output');
  const stats = await page.textContent('#stats');
  check(output.trim().length > 0, 'a streamed answer appears: ' + JSON.stringify(output.slice(0, 60)));
  check(/TTFT \d+ ms/.test(stats) && /tokens\/s/.test(stats), 'TTFT and tokens/s are shown: ' + stats);
  // The same request straight to the API gives the same greedy text.
  const direct = await (await fetch(daemon.base + '/v1/completions', {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ prompt: 'Once upon a time', max_tokens: 32, temperature: 0, top_p: 0.95,
      quest: { token_budget: 256 } }),
  })).json();
  check(direct.choices[0].text === output, 'the streamed text equals the API\'s answer');
  await page.screenshot({ path: SHOTS + '/playground.png' });

  // A chat turn, then Stop in the middle of a long answer.
  await page.selectOption('#mode', 'chat');
  await page.fill('#max-tokens', '2000');
  await page.fill('#temperature', '0.8');
  await page.fill('#seed', '5');
  await page.fill('#prompt', 'Tell me a very long story about the sea.');
  const cancelledBefore = await metric(daemon.base, 'llmd_request_finished_total{finished_reason="cancelled"}');
  await page.click('#send');
  await page.waitForFunction(() => {
    const m = document.querySelectorAll('#chat-log .msg.assistant');
    return m.length && m[m.length - 1].textContent.length > 20;
  });
  await page.click('#stop');
  await page.waitForFunction(() => document.getElementById('stats').textContent.includes('finish: stopped'));
  let cancelled = NaN;
  for (let i = 0; i < 50; i++) {
    cancelled = await metric(daemon.base, 'llmd_request_finished_total{finished_reason="cancelled"}');
    if (cancelled > cancelledBefore) break;
    await sleep(100);
  }
  check(cancelled === cancelledBefore + 1, 'Stop cancels the request on the server (cancelled ' +
    cancelledBefore + ' -> ' + cancelled + ')');
  check(await page.isEnabled('#send'), 'Send is enabled again after Stop');

  // The live view reads /metrics every second and draws it.
  await page.click('button[data-view=live]');
  await page.waitForFunction(() => /read ([3-9]|\d\d+) times/.test(document.getElementById('live-updated').textContent));
  const kv = await page.textContent('#m-kv');
  const ttft = await page.textContent('#m-ttft');
  const lines = await page.$$eval('#c-tps polyline', (p) => p.length && p[0].getAttribute('points').split(' ').length);
  check(/^\d+ \/ \d+$/.test(kv), 'KV pages in use / capacity shown: ' + kv);
  check(/\d+(\.\d+)? ms/.test(ttft), 'TTFT percentiles shown: ' + ttft);
  check(lines >= 3, 'the tokens/s chart has points (' + lines + ')');
  await page.screenshot({ path: SHOTS + '/live.png' });

  // The PIM pool: devices, a VMM job and a solve that round-trip.
  await page.click('button[data-view=pim]');
  await page.waitForFunction(() => document.querySelectorAll('#pim-devices tbody tr').length > 0);
  check(/^presets: .*isaac/.test(await page.textContent('#pim-presets')), 'the PIM devices and presets are listed');
  await page.selectOption('#pim-type', 'vmm');
  await page.fill('#pim-matrix', '[[1, 2], [3, 4]]');
  await page.fill('#pim-vector', '[1, -1]');
  await page.click('#pim-submit');
  await page.waitForFunction(() => document.getElementById('pim-result').textContent.includes('cost'));
  const vmm = await page.textContent('#pim-result');
  const out = JSON.parse(vmm.match(/result: (.*)/)[1]).output;
  check(Math.abs(out[0] + 1) < 1e-3 && Math.abs(out[1] + 1) < 1e-3, 'the VMM job returns [[1,2],[3,4]] x [1,-1] = ' + JSON.stringify(out));
  await page.selectOption('#pim-type', 'solve');
  await page.fill('#pim-matrix', '[[4, 1], [1, 3]]');
  await page.fill('#pim-vector', '[1, 2]');
  await page.click('#pim-submit');
  await page.waitForFunction(() => document.getElementById('pim-result').textContent.includes('cost') &&
    document.querySelectorAll('#pim-jobs tbody tr').length === 2);
  const statuses = await page.$$eval('#pim-jobs tbody tr td:nth-child(3)', (t) => t.map((x) => x.textContent));
  check(statuses.length === 2 && statuses.every((s) => s === 'done'), 'both jobs are listed as done: ' + statuses);
  await page.fill('#pim-matrix', '[[1, 2');
  await page.click('#pim-submit');
  check((await page.textContent('#pim-error')).startsWith('not JSON'), 'a bad matrix is refused in the page');
  await page.screenshot({ path: SHOTS + '/pim.png' });

  check(errors.length === 0, 'no console errors' + (errors.length ? ': ' + errors.join(' | ') : ''));
  await page.close();
  await stopDaemon(daemon);
  daemon = null;

  // ------------------------------------------------------------ API keys
  daemon = await startDaemon(['--api-keys', 'key-one,key-two']);
  const keyErrors = [];
  // Before the key is given, the API's 401s are expected in the console.
  const keyed = await openPage(browser, daemon.base, keyErrors, /status of 401/);
  await keyed.waitForFunction(() => document.getElementById('model').textContent === 'API key needed');
  check(true, 'with keys on, the page loads and asks for the key');
  await keyed.fill('#api-key', 'key-two');
  await keyed.dispatchEvent('#api-key', 'change');
  await keyed.waitForFunction(() => document.getElementById('model').textContent.startsWith('llmd-20m'));
  await keyed.selectOption('#mode', 'completion');
  await keyed.fill('#max-tokens', '8');
  await keyed.fill('#prompt', 'The sea');
  await keyed.click('#send');
  await keyed.waitForFunction(() => document.getElementById('stats').textContent.includes('finish:'));
  check((await keyed.textContent('#output')).length > 0 && (await keyed.textContent('#play-error')) === '',
    'with the key, a streamed answer appears');
  const kept = await keyed.evaluate(() => sessionStorage.getItem('llmd-api-key'));
  check(kept === 'key-two', 'the key is kept in the tab (sessionStorage)');
  check(keyErrors.length === 0, 'no other console errors' + (keyErrors.length ? ': ' + keyErrors.join(' | ') : ''));
  await stopDaemon(daemon);
  daemon = null;
} catch (e) {
  failures++;
  console.log('  FAIL ' + (e.stack || e));
} finally {
  if (daemon) daemon.proc.kill('SIGKILL');
  await browser.close();
}
console.log(failures ? `web page test: ${failures} failed` : 'web page test: all passed');
process.exit(failures ? 1 : 0);
