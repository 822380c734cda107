// Drives berthd's status page in Debian's headless chromium (playwright-core, no downloaded
// browser). Started by run.sh, which passes BERTH_API, BERTH_PROXY, BERTH_TOKEN, CHROMIUM,
// BERTH_APP (the app name to deploy), BERTH_IMAGE (local image, tags v1 and v2), BERTHD_LOG,
// ARTIFACTS and UI_TMP. Everything the page shows comes from the real daemon: two backends on
// 127.0.0.1 started here (route `web`), an app deployed through the real API into real Docker
// (route `app/NAME`), and certificates the real ACME loop fails to order (its directory is an
// unreachable loopback URL). Every wait has a deadline; the whole run is capped at 180 s.
import { chromium } from 'playwright-core';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const API = process.env.BERTH_API;
const PROXY = process.env.BERTH_PROXY;
const TOKEN = process.env.BERTH_TOKEN;
const ART = process.env.ARTIFACTS;
const TMP = process.env.UI_TMP;
const APP = process.env.BERTH_APP;
const IMAGE = process.env.BERTH_IMAGE;
const DLOG = process.env.BERTHD_LOG;
for (const [k, v] of Object.entries({ API, PROXY, TOKEN, ART, TMP, APP, IMAGE, DLOG })) {
  if (!v) { console.error(`ui test: ${k} not set (run tests/ui/run.sh)`); process.exit(2); }
}
const HOST = 'web.test';
const APP_HOST = `${APP}.test`;
const APP_ROUTE = `app/${APP}`;
const T0 = Date.now();
const hardStop = setTimeout(() => { console.error('FAIL: whole test exceeded 180 s'); process.exit(1); }, 180_000);

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

// The app spec deployed through the API: 2 replicas of the local image, checked on /health.
function appSpec(tag) {
  return {
    image: `${IMAGE}:${tag}`, domains: [APP_HOST], port: 8080, replicas: 2,
    health: { path: '/health', interval: '100ms', timeout: '1s' },
    drain_timeout: '3s', deploy_timeout: '30s',
  };
}

// Reads a deployment's SSE stream until berthd ends it (after the terminal event).
async function follow(id, ms = 60_000) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), ms);
  try {
    const r = await fetch(`${API}/v1/deployments/${encodeURIComponent(id)}/events`, { headers: { authorization: `Bearer ${TOKEN}` }, signal: ctl.signal });
    if (r.status !== 200) throw new Error(`events of ${id}: HTTP ${r.status}`);
    const text = await r.text();
    return text.split('\n').filter((l) => l.startsWith('data:')).map((l) => JSON.parse(l.slice(5)));
  } finally { clearTimeout(timer); }
}

async function deploy(tag) {
  const t = Date.now();
  const r = await api('POST', `/v1/apps/${APP}/deploy`, appSpec(tag));
  ok(r.status === 202 && r.json && r.json.id, `POST /v1/apps/${APP}/deploy (${tag}) → ${r.status} ${r.json && r.json.id}`);
  const events = await follow(r.json.id);
  const last = events[events.length - 1] || {};
  ok(last.done === true && last.state === 'succeeded', `deployment ${r.json.id} (${tag}): ${events.map((e) => e.stage).join(' → ')} in ${Date.now() - t} ms`);
  return { id: r.json.id, events };
}

// Sends `total` GETs through the proxy over ~`spreadMs`, 4 at a time; bounded in count and time.
function proxyGet(host = HOST, wantBody = false) {
  const u = new URL(PROXY);
  return new Promise((resolve) => {
    const req = http.request({ host: u.hostname, port: u.port, path: '/', headers: { host }, agent, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { if (wantBody) body += c; });
      res.on('end', () => resolve(wantBody ? { status: res.statusCode, body } : res.statusCode));
    });
    req.on('error', () => resolve(wantBody ? { status: 0, body: '' } : 0));
    req.on('timeout', () => { req.destroy(); });
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

  step(`deploy app ${APP} through the API: v1, then v2 (2 replicas each, real Docker)`);
  const d1 = await deploy('v1');
  const d2 = await deploy('v2');
  const served = await proxyGet(APP_HOST, true);
  ok(served.status === 200 && served.body.trim() === 'v2', `proxy serves ${APP_HOST}: ${served.status} ${served.body.trim()}`);
  const appState = (await api('GET', `/v1/apps/${APP}`)).json;
  ok(appState.current.id === d2.id && appState.previous.id === d1.id && appState.health === 'healthy' && appState.replicas.length === 2,
    `API: current ${appState.current.id}, previous ${appState.previous.id}, ${appState.health}, ${appState.ready} ready`);
  const appBackends = (await api('GET', '/v1/stats')).json.routes.find((r) => r.name === APP_ROUTE);
  ok(!!appBackends && appBackends.backends.length === 2, `stats: route ${APP_ROUTE} has ${appBackends ? appBackends.backends.length : 0} backends`);

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

    step(`deployed app ${APP}: card, backends in the routes section, deployments timeline`);
    const app = page.locator(`[data-app="${APP}"]`);
    await app.waitFor();
    await until('app card to show the current deployment', async () => (await app.textContent()).includes(`${d2.id} (succeeded) · ${IMAGE}:v2`));
    const appText = await app.textContent();
    ok(true, `app card shows current ${d2.id} (succeeded) · ${IMAGE}:v2`);
    ok(appText.includes(`${d1.id} (succeeded) · ${IMAGE}:v1`), `app card shows previous ${d1.id} · ${IMAGE}:v1`);
    ok((await app.locator('.replica-count').textContent()) === '2/2 ready', `app card replicas: "${await app.locator('.replica-count').textContent()}"`);
    ok((await app.locator('.badge').textContent()) === 'healthy', 'app card health: "healthy" (as text)');
    const replicaItems = await app.locator('ul.replicas li').allTextContents();
    ok(replicaItems.length === 2 && appState.replicas.every((r) => replicaItems.some((t) => t.includes(r.name) && t.includes(r.address) && t.includes('ready'))),
      `app card lists both replicas with name, address and routing state: ${replicaItems.join(' | ')}`);
    const appRoute = page.locator(`[data-route="${APP_ROUTE}"]`);
    for (const be of appBackends.backends) {
      const row = appRoute.locator(`tr[data-backend="${be.id}"]`);
      await row.waitFor();
      ok((await row.locator('td').first().textContent()) === be.address && (await row.locator('.state').textContent()).includes('ready'),
        `routes section: ${APP_ROUTE} backend ${be.id.slice(0, 12)} at ${be.address}, "ready"`);
    }
    ok(appState.replicas.every((r) => appBackends.backends.some((be) => be.address === r.address)), 'the route\'s backends are the app\'s replicas');
    await until('app route domains', async () => (await appRoute.locator('.meta').textContent()).includes(APP_HOST));
    ok(true, `route ${APP_ROUTE} shows domain ${APP_HOST}`);
    for (const d of [d1, d2]) {
      const li = page.locator(`#deploys-body li.dep[data-deployment="${d.id}"]`);
      await until(`timeline stages of ${d.id}`, async () => (await li.locator('li[data-stage]').count()) === d.events.length);
      const stages = await li.locator('li[data-stage]').evaluateAll((els) => els.map((e) => e.dataset.stage));
      ok(stages.join(',') === d.events.map((e) => e.stage).join(','), `timeline ${d.id}: ${stages.join(' → ')} (same as its SSE events)`);
      ok((await li.getAttribute('data-state')) === 'succeeded' && (await li.locator('.badge').textContent()) === 'succeeded', `timeline ${d.id}: outcome "succeeded"`);
    }
    ok(d2.events.some((e) => e.stage === 'drained') && d2.events.some((e) => e.stage === 'routed'), 'v2 was a rolling deploy (routed, drained stages)');
    await shot(page, '02-app-deployed');

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
    await shot(page, '03-dashboard-after-load');

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
    await shot(page, '04-confirm-drain');
    await page.click('#confirm-ok');
    await until('API to report b drained', async () => (await api('GET', '/v1/routes/web/backends/b')).json.state === 'drain');
    st = await api('GET', '/v1/routes/web/backends/b');
    ok(st.json.state === 'drain', 'API: backend b is drain');
    await until('page to show b as drain', async () => (await route.locator('tr[data-backend="b"] .state').textContent()).includes('drain'));
    ok(true, 'page shows backend b as "drain"');
    const stats = await api('GET', '/v1/stats');
    const sb = stats.json.routes.find((r) => r.name === 'web').backends.find((x) => x.id === 'b');
    ok(sb.state === 'drain', 'stats: backend b is drain');
    await shot(page, '05-drained');

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
    const rbNoCsrf = await fetch(`${API}/v1/apps/${APP}/rollback`, { method: 'POST', headers: { cookie: cookieHeader, 'content-type': 'application/json' }, body: '{}' });
    ok(rbNoCsrf.status === 403, `rollback with the session cookie but no CSRF header → ${rbNoCsrf.status}`);
    const retryNoCsrf = await fetch(`${API}/v1/certificates/${HOST}/retry`, { method: 'POST', headers: { cookie: cookieHeader, 'content-type': 'application/json' }, body: '{}' });
    ok(retryNoCsrf.status === 403, `certificate retry with the session cookie but no CSRF header → ${retryNoCsrf.status}`);
    ok((await api('GET', `/v1/apps/${APP}/deployments`)).json.deployments.length === 2, 'no deployment started by the refused rollback');
    ok((await fetch(API + '/v1/stats', { headers: { cookie: cookieHeader } })).status === 200, 'GET with session cookie → 200');

    step('phone width');
    const phone = await context.newPage();
    await phone.setViewportSize({ width: 390, height: 844 });
    await phone.goto(API + '/ui/');
    await phone.locator('[data-route="web"] tr[data-backend="b"]').waitFor();
    await phone.locator(`[data-app="${APP}"] .replica-count`).waitFor();
    const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    if (!ok(overflow <= 1, `no horizontal scrolling at 390 px (overflow ${overflow} px)`)) {
      // Name the innermost elements that stick out, to make the failure actionable.
      const wide = await phone.evaluate(() => [...document.querySelectorAll('body *')]
        .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1 && ![...e.children].some((c) => c.getBoundingClientRect().right > window.innerWidth + 1))
        .slice(0, 8).map((e) => `${e.tagName.toLowerCase()}.${e.className} "${(e.textContent || '').trim().slice(0, 60)}" right=${Math.round(e.getBoundingClientRect().right)}`));
      console.log('     sticking out:\n       ' + wide.join('\n       '));
    }
    await shot(phone, '06-phone');
    await phone.close();

    step('roll back the app from the page');
    const rollbackBtn = app.locator('button[data-action="rollback"]');
    await rollbackBtn.click();
    await page.locator('#confirm').waitFor({ state: 'visible' });
    ok((await page.locator('#confirm-text').textContent()).includes(`(${d1.id})`), `confirm dialog names the target ${d1.id}`);
    await page.click('#confirm-cancel');
    await sleep(300);
    ok((await api('GET', `/v1/apps/${APP}/deployments`)).json.deployments.length === 2, 'cancel starts no deployment');
    await rollbackBtn.click();
    await page.locator('#confirm').waitFor({ state: 'visible' });
    const rbResp = page.waitForResponse((r) => r.url().endsWith(`/v1/apps/${APP}/rollback`) && r.request().method() === 'POST');
    await page.click('#confirm-ok');
    const rb = await rbResp;
    const rbBody = await rb.json();
    ok(rb.status() === 202 && !!rbBody.id, `page's rollback request → ${rb.status()} ${rbBody.id}`);
    const d3 = { id: rbBody.id, events: await follow(rbBody.id) };
    const last3 = d3.events[d3.events.length - 1] || {};
    ok(last3.state === 'succeeded', `rollback ${d3.id}: ${d3.events.map((e) => e.stage).join(' → ')}`);
    const rec3 = (await api('GET', `/v1/deployments/${d3.id}`)).json;
    ok(rec3.rollback_of === d1.id && rec3.created_by === 'session' && rec3.spec.image === `${IMAGE}:v1`,
      `API: ${d3.id} rolls back to ${rec3.rollback_of}, image ${rec3.spec.image}, by "${rec3.created_by}" (the page's session)`);
    const deps = (await api('GET', `/v1/apps/${APP}/deployments`)).json.deployments;
    ok(deps.length === 3 && deps.every((d) => d.state === 'succeeded'), `API: ${deps.length} deployments, all succeeded`);
    const servedV1 = await proxyGet(APP_HOST, true);
    ok(servedV1.status === 200 && servedV1.body.trim() === 'v1', `proxy serves ${APP_HOST} from v1 again: ${servedV1.body.trim()}`);
    await until('app card to show the rollback as current', async () => (await app.textContent()).includes(`${d3.id} (succeeded) · ${IMAGE}:v1`), 10_000);
    ok(true, `app card: current ${d3.id} · ${IMAGE}:v1`);
    const li3 = page.locator(`#deploys-body li.dep[data-deployment="${d3.id}"]`);
    await until(`timeline entry of ${d3.id} with its stages`, async () => (await li3.locator('li[data-stage="succeeded"]').count()) === 1, 10_000);
    ok((await li3.textContent()).includes(`rollback to ${d1.id}`), `timeline: ${d3.id} marked "rollback to ${d1.id}"`);
    await shot(page, '07-rolled-back');

    step('certificates: failed ACME orders highlighted, retry from the page');
    let certs;
    await until('the ACME loop to record failures for both domains', async () => {
      certs = (await api('GET', '/v1/certificates')).json.certificates;
      return [HOST, APP_HOST].every((d) => certs.some((c) => c.domain === d && c.source === 'acme' && c.last_error));
    }, 15_000);
    const webCert = certs.find((c) => c.domain === HOST);
    ok(true, `API: ${certs.length} certificates; ${HOST}: last_error "${webCert.last_error}"`);
    const certRow = page.locator(`#certs-body tr.failed[data-domain="${HOST}"]`);
    await certRow.waitFor({ timeout: 15_000 });
    const certText = await certRow.textContent();
    ok(certText.includes('renewal failed') && certText.includes(webCert.last_error), 'failed certificate highlighted, with "renewal failed" and the error as text');
    ok(await page.locator(`#certs-body tr.failed[data-domain="${APP_HOST}"]`).count() === 1, `the app's domain ${APP_HOST} is listed as failed too`);
    const logBefore = fs.readFileSync(DLOG, 'utf8').split('\n').length;
    await certRow.locator('button[data-action="retry"]').click();
    await page.locator('#confirm').waitFor({ state: 'visible' });
    ok((await page.locator('#confirm-text').textContent()).includes(HOST), 'confirm dialog names the domain');
    const retryResp = page.waitForResponse((r) => r.url().endsWith(`/v1/certificates/${HOST}/retry`) && r.request().method() === 'POST');
    await shot(page, '08-confirm-retry');
    const tRetry = Date.now();
    await page.click('#confirm-ok');
    const rr = await retryResp;
    const rrBody = await rr.json();
    ok(rr.status() === 202 && rrBody.domain === HOST && rrBody.status === 'queued', `page's retry request → ${rr.status()} ${JSON.stringify(rrBody)}`);
    // The daemon really tried again: the operator request is logged, then a new failed attempt.
    const newLog = async () => fs.readFileSync(DLOG, 'utf8').split('\n').slice(logBefore - 1);
    await until('berthd to log the requested order and a new failed attempt', async () => {
      const lines = await newLog();
      const i = lines.findIndex((l) => l.includes('certificate order requested by an operator') && l.includes(HOST));
      return i >= 0 && lines.slice(i + 1).some((l) => l.includes('ACME account unavailable'));
    }, 10_000);
    ok(true, 'berthd log: "certificate order requested by an operator", then a new failed attempt');
    let certAfter;
    await until('the certificate status to show the new attempt', async () => {
      certAfter = (await api('GET', '/v1/certificates')).json.certificates.find((c) => c.domain === HOST);
      const next = Date.parse(certAfter.next_renewal);
      // The retry cleared the backoff: the next attempt is one base delay (10 s) after this one.
      return certAfter.last_error && next >= tRetry + 5_000 && next <= Date.now() + 12_000;
    }, 10_000);
    ok(true, `API: ${HOST} next attempt ${certAfter.next_renewal} (backoff reset by the retry; was ${webCert.next_renewal}), still failing: ${certAfter.last_error}`);
    const shown = certAfter.next_renewal.replace('T', ' ');
    await until('page to show the new next attempt', async () =>
      (await page.locator(`#certs-body tr.failed[data-domain="${HOST}"]`).textContent()).includes(shown), 10_000);
    ok(true, `page shows the new next attempt ${shown}, still "renewal failed"`);
    await shot(page, '09-certificates');

    step('stop the app');
    const stop = await api('POST', `/v1/apps/${APP}/stop`, {});
    ok(stop.status === 200, `POST /v1/apps/${APP}/stop → ${stop.status}`);
    ok((await proxyGet(APP_HOST)) !== 200, `${APP_HOST} no longer served`);

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
