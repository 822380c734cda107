// Drives berthd's status page in Debian's headless chromium (playwright-core, no downloaded
// browser). Started by run.sh, which passes BERTH_API, BERTH_PROXY, BERTH_TOKEN, CHROMIUM,
// ARTIFACTS and UI_TMP. Two real backends on 127.0.0.1 are started here. Every wait has a
// deadline; the whole run is capped at 240 s.
import { chromium } from 'playwright-core';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const API = process.env.BERTH_API;
const PROXY = process.env.BERTH_PROXY;
const TOKEN = process.env.BERTH_TOKEN;
const ART = process.env.ARTIFACTS;
const TMP = process.env.UI_TMP;
for (const [k, v] of Object.entries({ API, PROXY, TOKEN, ART, TMP })) {
  if (!v) { console.error(`ui test: ${k} not set (run tests/ui/run.sh)`); process.exit(2); }
}
const HOST = 'web.test';
const T0 = Date.now();
const hardStop = setTimeout(() => { console.error('FAIL: whole test exceeded 240 s'); process.exit(1); }, 240_000);

let failures = 0;
function ok(cond, what) {
  console.log(`${cond ? 'ok  ' : 'FAIL'} ${what}`);
  if (!cond) failures++;
  return cond;
}
function step(name) { console.log(`\n# ${name} (+${((Date.now() - T0) / 1000).toFixed(1)} s)`); }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, fn, ms = 10_000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try { last = await fn(); if (last) return last; } catch (e) { last = e; }
    await sleep(100);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last})`);
}

// ---- backends ----
function backend(name) {
  return new Promise((resolve) => {
    const srv = http.createServer((req, res) => {
      req.resume();
      // A little latency so p99 and in-flight have something to show.
      setTimeout(() => { res.writeHead(200, { 'content-type': 'text/plain' }); res.end(`hello from ${name}\n`); }, 2 + Math.random() * 8);
    });
    srv.keepAliveTimeout = 5000;
    srv.listen(0, '127.0.0.1', () => resolve(srv));
  });
}

async function api(method, p, body, headers = {}) {
  const r = await fetch(API + p, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = text; }
  return { status: r.status, json, headers: r.headers };
}

// Sends `total` GETs through the proxy over ~`spreadMs`, 4 at a time; bounded in count and time.
function proxyGet() {
  const u = new URL(PROXY);
  return new Promise((resolve) => {
    const req = http.request({ host: u.hostname, port: u.port, path: '/', headers: { host: HOST }, agent, timeout: 5000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', () => resolve(0));
    req.on('timeout', () => { req.destroy(); resolve(0); });
    req.end();
  });
}
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
async function load(total, spreadMs, deadlineMs) {
  const end = Date.now() + deadlineMs;
  const gap = spreadMs / total;
  let sent = 0, good = 0;
  const inflight = new Set();
  const start = Date.now();
  while (sent < total && Date.now() < end) {
    const due = start + sent * gap;
    if (Date.now() < due) await sleep(due - Date.now());
    const p = proxyGet().then((s) => { if (s === 200) good++; inflight.delete(p); });
    inflight.add(p);
    sent++;
    if (inflight.size >= 4) await Promise.race(inflight);
  }
  await Promise.all(inflight);
  return { sent, good, ms: Date.now() - start };
}

async function shot(page, name) {
  const file = path.join(ART, name + '.png');
  await page.screenshot({ path: file, fullPage: true });
  console.log(`     screenshot ${file}`);
}

async function main() {
  step('backends and route');
  const a = await backend('a');
  const b = await backend('b');
  const addr = (s) => `127.0.0.1:${s.address().port}`;
  const put = await api('PUT', '/v1/routes/web', {
    domains: [HOST],
    backends: [{ id: 'a', address: addr(a) }, { id: 'b', address: addr(b) }],
  });
  ok(put.status === 201 || put.status === 200, `PUT /v1/routes/web → ${put.status}`);
  ok((await proxyGet()) === 200, 'proxy serves web.test');

  step('launch chromium');
  // playwright wants the profile dir as launchPersistentContext's argument, not in args.
  const context = await chromium.launchPersistentContext(`${TMP}/chromium-profile`, {
    executablePath: process.env.CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  try {
    const page = await context.newPage();
    const consoleErrors = [];
    page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
    page.on('pageerror', (e) => consoleErrors.push('pageerror: ' + e.message));
    page.setDefaultTimeout(10_000);

    step('security headers');
    const resp = await page.goto(API + '/ui/');
    const hd = resp.headers();
    ok(/default-src 'self'/.test(hd['content-security-policy'] || '') && !/unsafe-inline/.test(hd['content-security-policy']), 'strict CSP on /ui/');
    ok(/frame-ancestors 'none'/.test(hd['content-security-policy'] || ''), "CSP frame-ancestors 'none'");
    ok(hd['x-frame-options'] === 'DENY', 'X-Frame-Options DENY');
    ok(hd['x-content-type-options'] === 'nosniff', 'X-Content-Type-Options nosniff');
    ok(hd['referrer-policy'] === 'no-referrer', 'Referrer-Policy no-referrer');

    step('bad token rejected');
    await page.locator('#login-form').waitFor();
    await page.fill('#token', 'berth_' + '0'.repeat(64));
    await page.click('#login-submit');
    await page.locator('#login-error', { hasText: 'rejected' }).waitFor();
    ok(await page.locator('#dash').isHidden(), 'dashboard stays hidden after a bad token');
    ok((await context.cookies()).length === 0, 'no cookie set for a bad token');
    await shot(page, '01-login-rejected');

    step('log in');
    await page.fill('#token', TOKEN);
    await page.click('#login-submit');
    await page.locator('#dash').waitFor({ state: 'visible' });
    const cookies = await context.cookies();
    const sess = cookies.find((c) => c.name === 'berth_session');
    ok(!!sess, 'session cookie set');
    ok(sess && sess.httpOnly && sess.sameSite === 'Strict', 'cookie is HttpOnly and SameSite=Strict');
    ok(!(await page.evaluate(() => document.cookie)).includes('berth_session'), 'cookie not readable from JS');

    step('route and backends visible');
    const route = page.locator('[data-route="web"]');
    await route.locator('tr[data-backend="a"]').waitFor();
    await route.locator('tr[data-backend="b"]').waitFor();
    await until('domains on the route card', async () => (await route.locator('.meta').textContent()).includes(HOST));
    ok((await route.locator('tr[data-backend="a"] .state').textContent()).includes('ready'), 'backend a shows "ready" as text');
    ok((await route.locator('tr[data-backend="b"] td').first().textContent()) === addr(b), 'backend b shows its address');
    // The real endpoints answer: an empty app list (or "Docker unavailable" without dockerd),
    // and an empty certificate list (TLS is off in this test).
    await until('apps section shows the real API state', async () =>
      /No apps deployed|No deployments \(Docker unavailable\)/.test(await page.locator('#apps-body').textContent()));
    ok(true, 'apps: ' + (await page.locator('#apps-body').textContent()).trim());
    await until('certificates section shows the real (empty) list', async () =>
      /No certificates/.test(await page.locator('#certs-body').textContent()));
    ok(true, 'certificates: "No certificates."');

    step('request counter rises under a bounded load loop (300 requests over ~5 s)');
    const counter = route.locator('[data-testid="route-requests"]');
    const readCounter = async () => Number(await counter.textContent());
    const before = await readCounter();
    const seen = [before];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) { seen.push(await readCounter()); await sleep(250); }
    })();
    const l = await load(300, 5000, 15_000);
    ok(l.sent === 300 && l.good === 300, `load: ${l.good}/${l.sent} requests answered 200 in ${l.ms} ms`);
    await until('counter to include all 300 requests', async () => (await readCounter()) >= before + 300, 5000);
    sampling = false;
    await sampler;
    const after = await readCounter();
    const distinct = [...new Set(seen)].filter((v) => v > before && v < before + 300);
    ok(after >= before + 300, `page counter went ${before} → ${after}`);
    ok(distinct.length >= 2, `counter rose in steps while the load ran (intermediate values: ${distinct.join(', ')})`);
    const rps = Number(await route.locator('.route-rps').textContent());
    ok(await page.evaluate(() => document.querySelector('[data-route="web"] .chart .series').getAttribute('points').split(' ').length >= 3), 'req/s chart has points');
    console.log(`     route req/s shown after load: ${rps}`);
    await shot(page, '02-dashboard-after-load');

    step('drain a backend from the page');
    const drainBtn = route.locator('tr[data-backend="b"] button[data-action="drain"]');
    await drainBtn.click();
    await page.locator('#confirm').waitFor({ state: 'visible' });
    ok((await page.locator('#confirm-text').textContent()).includes('drain'), 'confirm dialog explains the drain');
    await page.click('#confirm-cancel');
    await sleep(300);
    let st = await api('GET', '/v1/routes/web/backends/b');
    ok(st.json && st.json.state !== 'drain', `cancel leaves backend b as ${st.json && st.json.state}`);
    await drainBtn.click();
    await page.locator('#confirm').waitFor({ state: 'visible' });
    await shot(page, '03-confirm-drain');
    await page.click('#confirm-ok');
    await until('API to report b drained', async () => (await api('GET', '/v1/routes/web/backends/b')).json.state === 'drain');
    st = await api('GET', '/v1/routes/web/backends/b');
    ok(st.json.state === 'drain', 'API: backend b is drain');
    await until('page to show b as drain', async () => (await route.locator('tr[data-backend="b"] .state').textContent()).includes('drain'));
    ok(true, 'page shows backend b as "drain"');
    const stats = await api('GET', '/v1/stats');
    const sb = stats.json.routes.find((r) => r.name === 'web').backends.find((x) => x.id === 'b');
    ok(sb.state === 'drain', 'stats: backend b is drain');
    await shot(page, '04-drained');

    step('CSRF and session checks');
    const cookieHeader = `berth_session=${sess.value}`;
    const noCsrf = await fetch(API + '/v1/routes/web/backends/a/state', { method: 'PUT', headers: { cookie: cookieHeader, 'content-type': 'application/json' }, body: '{"state":"maint"}' });
    ok(noCsrf.status === 403, `session cookie without CSRF header → ${noCsrf.status}`);
    const csrf = (await (await fetch(API + '/ui/session', { headers: { cookie: cookieHeader } })).json()).csrf_token;
    const badOrigin = await fetch(API + '/v1/routes/web/backends/a/state', { method: 'PUT', headers: { cookie: cookieHeader, 'x-csrf-token': csrf, origin: 'http://evil.test', 'content-type': 'application/json' }, body: '{"state":"maint"}' });
    ok(badOrigin.status === 403, `foreign Origin → ${badOrigin.status}`);
    const wrongCsrf = await fetch(API + '/v1/routes/web/backends/a/state', { method: 'PUT', headers: { cookie: cookieHeader, 'x-csrf-token': csrf.replace(/^./, (c) => (c === 'a' ? 'b' : 'a')), 'content-type': 'application/json' }, body: '{"state":"maint"}' });
    ok(wrongCsrf.status === 403, `wrong CSRF token → ${wrongCsrf.status}`);
    ok((await api('GET', '/v1/routes/web/backends/a')).json.state === 'ready', 'backend a untouched by the rejected requests');
    ok((await fetch(API + '/v1/stats', { headers: { cookie: cookieHeader } })).status === 200, 'GET with session cookie → 200');

    step('phone width');
    const phone = await context.newPage();
    await phone.setViewportSize({ width: 390, height: 844 });
    await phone.goto(API + '/ui/');
    await phone.locator('[data-route="web"] tr[data-backend="b"]').waitFor();
    const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    ok(overflow <= 1, `no horizontal scrolling at 390 px (overflow ${overflow} px)`);
    await shot(phone, '05-phone');
    await phone.close();

    step('apps, deployments and certificates (endpoints of issues 4/5 mocked in the browser)');
    // Those APIs are not on this server yet; intercept them in the page so rendering and the
    // rollback/retry actions are still exercised. Shapes follow the deploy and tls branches.
    const now = Date.now();
    const dep = (id, state, at, extra = {}) => ({ id, app: 'shop', state, created_at: at, finished_at: state === 'running' ? null : at + 4200, created_by: 'ci', image_id: 'sha256:abc', spec: { image: `shop:${id}` }, reason: state === 'failed' ? 'health check: connection refused' : null, ...extra });
    const replica = (n, health) => ({ container_id: 'c' + n, name: `shop-${n}`, address: `172.18.0.${n}:8080`, deployment: 'd2', routing: 'ready', running: true, docker_health: health, inflight: 0 });
    const mocked = [];
    const mock = page.context();
    await mock.route('**/v1/apps', (r) => r.fulfill({ json: { apps: [{ name: 'shop' }] } }));
    await mock.route('**/v1/apps/shop', (r) => r.fulfill({ json: { name: 'shop', replicas: [replica(2, 'healthy'), replica(3, 'unhealthy')], discovered: [], current: dep('d2', 'succeeded', now - 60_000), previous: dep('d1', 'succeeded', now - 3_600_000), deploying: null } }));
    await mock.route('**/v1/apps/shop/deployments', (r) => r.fulfill({ json: { deployments: [dep('d3', 'failed', now - 30_000), dep('d2', 'succeeded', now - 60_000), dep('d1', 'succeeded', now - 3_600_000)] } }));
    await mock.route('**/v1/deployments/*/events', (r) => {
      const id = r.request().url().split('/').slice(-2)[0];
      const ev = (stage, dt, done = false) => `event: progress\ndata: ${JSON.stringify({ deployment: id, at: now - 60_000 + dt, stage, message: '', done })}\n\n`;
      r.fulfill({ status: 200, headers: { 'content-type': 'text/event-stream' }, body: ev('accepted', 0) + ev('start', 100) + ev('healthy', 2100) + ev('routed', 2200) + ev('drained', 4000) + ev(id === 'd3' ? 'failed' : 'succeeded', 4200, true) });
    });
    await mock.route('**/v1/certificates', (r) => r.fulfill({ json: { certificates: [
      { domain: 'shop.test', names: ['shop.test'], source: 'acme', path: 'certs/shop.test', issuer: 'Pebble Intermediate CA', not_after: new Date(now + 40 * 86400e3).toISOString(), next_renewal: new Date(now + 25 * 86400e3).toISOString(), last_error: null },
      { domain: 'broken.test', names: ['broken.test'], source: 'acme', path: 'certs/broken.test', issuer: 'Pebble Intermediate CA', not_after: new Date(now + 2 * 86400e3).toISOString(), next_renewal: new Date(now + 600e3).toISOString(), last_error: 'order failed: urn:ietf:params:acme:error:connection' },
    ] } }));
    for (const p of ['**/v1/apps/shop/rollback', '**/v1/certificates/*/retry']) {
      await mock.route(p, (r) => { mocked.push({ url: r.request().url(), method: r.request().method(), csrf: r.request().headers()['x-csrf-token'] }); r.fulfill({ status: 202, json: { ok: true } }); });
    }
    const mp = await context.newPage();
    mp.on('pageerror', (e) => consoleErrors.push('pageerror: ' + e.message));
    await mp.goto(API + '/ui/');
    const app = mp.locator('[data-app="shop"]');
    await app.waitFor();
    const appText = await app.textContent();
    ok(appText.includes('d2 (succeeded)') && appText.includes('1/2 healthy') && appText.includes('degraded'), 'app card: current deployment, replicas 1/2 healthy, "degraded"');
    await mp.locator('#deploys-body li.dep[data-state="failed"] li[data-stage="healthy"]').waitFor();
    ok((await mp.locator('#deploys-body li.dep').count()) === 3, 'timeline lists 3 deployments');
    ok((await mp.locator('#deploys-body').textContent()).includes('health check: connection refused'), 'timeline shows the failure reason');
    const bad = mp.locator('#certs-body tr.failed[data-domain="broken.test"]');
    await bad.waitFor();
    ok((await bad.textContent()).includes('renewal failed'), 'failed renewal highlighted, also as text');
    ok((await mp.locator('#certs-body tr[data-domain="shop.test"]').textContent()).includes('Pebble'), 'certificate issuer shown');
    await app.locator('button[data-action="rollback"]').click();
    await mp.locator('#confirm').waitFor({ state: 'visible' });
    await mp.click('#confirm-ok');
    await bad.locator('button[data-action="retry"]').click();
    await mp.locator('#confirm').waitFor({ state: 'visible' });
    await shot(mp, '06-apps-certs-mocked');
    await mp.click('#confirm-ok');
    await until('both actions to be sent', async () => mocked.length >= 2, 5000);
    ok(mocked.some((m) => m.method === 'POST' && m.url.endsWith('/v1/apps/shop/rollback') && m.csrf), 'rollback POSTed with the CSRF header');
    ok(mocked.some((m) => m.method === 'POST' && m.url.endsWith('/v1/certificates/broken.test/retry') && m.csrf), 'retry POSTed with the CSRF header');
    await mp.close();
    await mock.unrouteAll();

    step('log out');
    await page.click('#logout');
    await page.locator('#login-view').waitFor({ state: 'visible' });
    const after401 = await fetch(API + '/v1/stats', { headers: { cookie: cookieHeader } });
    ok(after401.status === 401, `old session cookie after logout → ${after401.status}`);

    const cspErrors = consoleErrors.filter((e) => /Content Security Policy|pageerror/i.test(e));
    ok(cspErrors.length === 0, `no CSP violations or page errors (${cspErrors.join(' | ') || 'none'})`);
    if (consoleErrors.length) console.log('     console errors (expected: the 401s of the bad login and logout):\n       ' + consoleErrors.join('\n       '));
  } finally {
    await context.close();
    agent.destroy();
    a.close();
    b.close();
  }
}

main().then(() => {
  clearTimeout(hardStop);
  console.log(`\n${failures === 0 ? 'PASS' : `FAIL (${failures})`} in ${((Date.now() - T0) / 1000).toFixed(1)} s`);
  process.exit(failures === 0 ? 0 : 1);
}, (e) => {
  console.error('FAIL:', e);
  process.exit(1);
});
