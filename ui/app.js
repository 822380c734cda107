// Berth status page. Plain JS, no build step, no inline code (the page's CSP forbids it).
// Data: /v1/stats/stream (SSE, one event per second) for live numbers; /v1/routes, /v1/apps,
// /v1/certificates polled for the slower-changing parts. Endpoints that answer 404 are shown as
// "not on this server" and polled again later, so they start working when the daemon has them.
// Every state-changing call sends the session's CSRF token in X-CSRF-Token.
'use strict';

(function () {
  const HISTORY_MS = 15 * 60 * 1000;
  const POLL_ROUTES_MS = 5000;
  const POLL_APPS_MS = 2000;
  const POLL_DEPLOYS_MS = 5000;
  const POLL_CERTS_MS = 10000;
  const POLL_ABSENT_MS = 15000;

  const $ = (id) => document.getElementById(id);
  const S = {
    csrf: null,
    es: null,
    timers: [],
    routeMeta: new Map(),   // route name -> {spec, source, read_only}
    prev: new Map(),        // "route\u0000backend" -> {t, requests, r5xx, responses}
    history: new Map(),     // route name -> [{t, rps, err, p99}]
    routeCards: new Map(),  // route name -> {card, parts...}
    lastStats: null,
    deployEvents: new Map(),// deployment id -> [events] (finished ones are cached)
  };

  // ---------- small DOM helpers (textContent only: API data never becomes markup) ----------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'text') el.textContent = v;
        else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const SVGNS = 'http://www.w3.org/2000/svg';
  function s(tag, attrs) {
    const el = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    return el;
  }
  function setText(el, t) { if (el.textContent !== t) el.textContent = t; }

  function fmtNum(n, digits) {
    if (n === null || n === undefined || !Number.isFinite(n)) return '–';
    if (digits === undefined) digits = n >= 100 ? 0 : n >= 10 ? 1 : 2;
    return n.toFixed(digits);
  }
  function fmtMs(ms) { return ms === null || ms === undefined ? '–' : fmtNum(ms) + ' ms'; }
  function fmtPct(p) { return p === null || p === undefined ? '–' : fmtNum(p) + ' %'; }
  function fmtTime(v) {
    if (v === null || v === undefined || v === '') return '–';
    const d = typeof v === 'number' ? new Date(v > 1e12 ? v : v * 1000) : new Date(v);
    if (isNaN(d.getTime())) return String(v);
    return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  }
  function relTime(v) {
    if (v === null || v === undefined || v === '') return '';
    const d = typeof v === 'number' ? new Date(v > 1e12 ? v : v * 1000) : new Date(v);
    if (isNaN(d.getTime())) return '';
    const sec = Math.round((d.getTime() - Date.now()) / 1000);
    const a = Math.abs(sec);
    const txt = a < 90 ? a + ' s' : a < 5400 ? Math.round(a / 60) + ' min' : a < 172800 ? Math.round(a / 3600) + ' h' : Math.round(a / 86400) + ' days';
    return sec >= 0 ? 'in ' + txt : txt + ' ago';
  }

  function toast(msg, isError) {
    const t = $('toast');
    t.textContent = msg;
    t.className = 'toast' + (isError ? ' error' : '');
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 6000);
  }

  // ---------- API ----------
  class HttpError extends Error {
    constructor(status, body) {
      super((body && body.error && body.error.message) || ('HTTP ' + status));
      this.status = status;
      this.body = body;
    }
  }

  async function api(method, path, body) {
    const headers = { 'Accept': 'application/json' };
    const opts = { method, headers, credentials: 'same-origin', cache: 'no-store' };
    if (method !== 'GET' && method !== 'HEAD') {
      headers['X-CSRF-Token'] = S.csrf || '';
      headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body === undefined ? {} : body);
    }
    const r = await fetch(path, opts);
    let data = null;
    const text = await r.text();
    if (text) { try { data = JSON.parse(text); } catch (_) { data = text; } }
    if (r.status === 401) { sessionLost(); }
    if (!r.ok) throw new HttpError(r.status, data);
    return data;
  }

  function listOf(data, key) {
    if (Array.isArray(data)) return data;
    if (data && Array.isArray(data[key])) return data[key];
    return [];
  }

  // ---------- login / session ----------
  function showLogin(message) {
    stopLive();
    S.csrf = null;
    $('dash').hidden = true;
    $('logout').hidden = true;
    $('login-view').hidden = false;
    setText($('login-error'), message || '');
    setConn('idle', 'not connected');
    $('token').focus();
  }

  function sessionLost() {
    if (S.csrf !== null) showLogin('Your session has ended; log in again.');
  }

  async function login(ev) {
    ev.preventDefault();
    const input = $('token');
    const btn = $('login-submit');
    btn.disabled = true;
    setText($('login-error'), '');
    try {
      const r = await fetch('/ui/login', {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json', 'Accept': 'application/json' },
        body: JSON.stringify({ token: input.value }),
      });
      const data = await r.json().catch(() => null);
      if (!r.ok) {
        const msg = r.status === 401 ? 'Token rejected: it is unknown or revoked.'
          : ((data && data.error && data.error.message) || ('Login failed (HTTP ' + r.status + ')'));
        setText($('login-error'), msg);
        return;
      }
      input.value = '';
      startDashboard(data.csrf_token);
    } catch (e) {
      setText($('login-error'), 'Cannot reach berthd: ' + e.message);
    } finally {
      btn.disabled = false;
    }
  }

  async function logout() {
    try { await api('POST', '/ui/logout'); } catch (_) { /* the session is gone either way */ }
    showLogin('Logged out.');
  }

  async function boot() {
    $('login-form').addEventListener('submit', login);
    $('logout').addEventListener('click', logout);
    try {
      const r = await fetch('/ui/session', { credentials: 'same-origin', cache: 'no-store' });
      if (r.ok) {
        const data = await r.json();
        startDashboard(data.csrf_token);
        return;
      }
    } catch (_) { /* fall through to login */ }
    showLogin('');
  }

  // ---------- live ----------
  function setConn(state, text) {
    const c = $('conn');
    c.dataset.conn = state;
    setText(c, text);
  }

  function startDashboard(csrf) {
    S.csrf = csrf;
    $('login-view').hidden = true;
    $('dash').hidden = false;
    $('logout').hidden = false;
    startStream();
    poll(loadRoutes, POLL_ROUTES_MS);
    poll(loadApps, POLL_APPS_MS);
    poll(loadDeployments, POLL_DEPLOYS_MS);
    poll(loadCerts, POLL_CERTS_MS);
  }

  function stopLive() {
    if (S.es) { S.es.close(); S.es = null; }
    for (const t of S.timers) clearTimeout(t);
    S.timers = [];
  }

  // Runs fn now and then again after whatever delay it returns (or `every`).
  function poll(fn, every) {
    const run = async () => {
      if (S.csrf === null) return;
      let next = every;
      try { const r = await fn(); if (typeof r === 'number') next = r; } catch (e) { console.warn(e); }
      if (S.csrf !== null) S.timers.push(setTimeout(run, next));
    };
    run();
  }

  function startStream() {
    if (S.es) S.es.close();
    setConn('connecting', 'connecting…');
    const es = new EventSource('/v1/stats/stream', { withCredentials: true });
    S.es = es;
    es.addEventListener('open', () => setConn('live', 'live'));
    const onEvent = (ev) => {
      setConn('live', 'live');
      try { onStats(JSON.parse(ev.data)); } catch (e) { console.error(e); }
    };
    es.addEventListener('stats', onEvent);
    es.addEventListener('message', onEvent); // unnamed events, should the stream drop the name

    es.addEventListener('error', async () => {
      if (es.readyState !== EventSource.CLOSED) { setConn('down', 'reconnecting…'); return; }
      // Closed for good (e.g. a 401): check the session, then retry.
      setConn('down', 'disconnected');
      try {
        const r = await fetch('/ui/session', { credentials: 'same-origin', cache: 'no-store' });
        if (r.status === 401) { sessionLost(); return; }
      } catch (_) { /* daemon down: retry below */ }
      if (S.es === es && S.csrf !== null) S.timers.push(setTimeout(startStream, 3000));
    });
  }

  // ---------- stats ----------
  function onStats(doc) {
    const t = doc.timestamp_ms || Date.now();
    S.lastStats = doc;
    setText($('updated'), 'updated ' + new Date(t).toLocaleTimeString());
    // The store takes no changes (read-only/unopenable data dir, damaged database).
    const store = doc.store || { ok: true };
    const banner = $('store-banner');
    if (banner) {
      banner.hidden = store.ok !== false;
      setText(banner, store.ok === false
        ? 'Store DEGRADED: ' + (store.problem || 'unknown cause') +
          ' — routes are served as they are; changes, deploys and self-healing are off until it is fixed and berthd restarted.'
        : '');
    }
    const seen = new Set();
    for (const r of doc.routes || []) {
      seen.add(r.name);
      let rps = 0, d5 = 0, dresp = 0, anyPrev = false, p99 = null;
      const rows = [];
      for (const b of r.backends || []) {
        const key = r.name + '\u0000' + b.id;
        const resp = b.responses || {};
        const responses = (resp['2xx'] || 0) + (resp['3xx'] || 0) + (resp['4xx'] || 0) + (resp['5xx'] || 0);
        const cur = { t, requests: b.requests || 0, r5xx: resp['5xx'] || 0, responses };
        const prev = S.prev.get(key);
        let brps = null, berr = null;
        if (prev && t > prev.t) {
          const dt = (t - prev.t) / 1000;
          const dreq = Math.max(0, cur.requests - prev.requests);
          const dr = Math.max(0, cur.responses - prev.responses);
          const d5b = Math.max(0, cur.r5xx - prev.r5xx);
          brps = dreq / dt;
          berr = dr > 0 ? (100 * d5b) / dr : null;
          rps += brps; d5 += d5b; dresp += dr; anyPrev = true;
        }
        S.prev.set(key, cur);
        const bp99 = b.latency ? b.latency.p99_ms : null;
        if (bp99 !== null && bp99 !== undefined) p99 = p99 === null ? bp99 : Math.max(p99, bp99);
        rows.push({ b, brps, berr });
      }
      const err = dresp > 0 ? (100 * d5) / dresp : (anyPrev ? 0 : null);
      let hist = S.history.get(r.name);
      if (!hist) { hist = []; S.history.set(r.name, hist); }
      if (anyPrev) hist.push({ t, rps, err, p99 });
      while (hist.length && hist[0].t < t - HISTORY_MS) hist.shift();
      renderRoute(r, rows, { rps: anyPrev ? rps : null, err, p99 });
    }
    for (const [name, parts] of S.routeCards) {
      if (!seen.has(name)) { parts.card.remove(); S.routeCards.delete(name); S.history.delete(name); }
    }
    const body = $('routes-body');
    const placeholder = body.querySelector('p.muted');
    if (S.routeCards.size && placeholder) placeholder.remove();
    if (!S.routeCards.size && !placeholder) body.append(h('p', { class: 'muted', text: 'No routes yet.' }));
  }

  function stateOf(b) {
    // Health (when the daemon reports it) wins over the administrative state for display.
    const down = b.health === 'down' || b.healthy === false || b.up === false;
    return down ? 'down' : (b.state || 'ready');
  }
  const STATE_MARK = { ready: '● ready', drain: '◐ drain', maint: '■ maint', down: '✖ down' };

  function routeCard(name) {
    let parts = S.routeCards.get(name);
    if (parts) return parts;
    const title = h('h3', null, name);
    const meta = h('p', { class: 'meta' });
    const totals = {
      rps: h('span', { class: 'v route-rps' }),
      requests: h('span', { class: 'v route-requests', 'data-testid': 'route-requests' }),
      inflight: h('span', { class: 'v' }),
      err: h('span', { class: 'v' }),
      p99: h('span', { class: 'v' }),
    };
    const kv = (label, el) => h('div', { class: 'kv' }, h('span', { class: 'k' }, label), el);
    const charts = {
      rps: chart('req/s'), err: chart('5xx %'), p99: chart('p99 ms'),
    };
    const tbody = h('tbody');
    const table = h('table', { class: 'backends' },
      h('caption', { class: 'sr-only' }, 'Backends of route ' + name),
      h('thead', null, h('tr', null,
        ['Backend', 'Address', 'State', 'Weight', 'In-flight', 'Requests', 'req/s', '5xx', 'p99', 'Actions']
          .map((c) => h('th', { scope: 'col' }, c)))),
      tbody);
    const card = h('article', { class: 'card route', 'data-route': name },
      h('header', null, title, meta),
      h('div', { class: 'totals' },
        kv('req/s', totals.rps), kv('requests', totals.requests), kv('in-flight', totals.inflight),
        kv('5xx rate', totals.err), kv('p99', totals.p99)),
      h('div', { class: 'charts' }, charts.rps.el, charts.err.el, charts.p99.el),
      h('div', { class: 'table-wrap' }, table));
    $('routes-body').append(card);
    parts = { card, meta, totals, charts, tbody, rows: new Map() };
    S.routeCards.set(name, parts);
    return parts;
  }

  function renderMeta(p, name, source) {
    const m = S.routeMeta.get(name);
    const spec = (m && m.spec) || {};
    const domains = [].concat(spec.domains || [], (spec.aliases || []).map((a) => a + ' (alias)'));
    const balancer = typeof spec.balancer === 'string' ? spec.balancer
      : (spec.balancer && (spec.balancer.kind || spec.balancer.type || spec.balancer.name)) || 'round_robin';
    setText(p.meta, [
      domains.length ? domains.join(', ') : 'domains: –',
      'balancer: ' + balancer,
      'source: ' + (source || (m && m.source) || '?') + ((m && m.read_only) ? ' (read-only)' : ''),
    ].join(' · '));
  }

  function renderRoute(r, rows, totals) {
    const p = routeCard(r.name);
    renderMeta(p, r.name, r.source);
    setText(p.totals.rps, fmtNum(totals.rps));
    setText(p.totals.requests, String(r.requests || 0));
    setText(p.totals.inflight, String(r.inflight || 0));
    setText(p.totals.err, fmtPct(totals.err));
    setText(p.totals.p99, fmtMs(totals.p99));
    const hist = S.history.get(r.name) || [];
    p.charts.rps.draw(hist, (x) => x.rps);
    p.charts.err.draw(hist, (x) => x.err);
    p.charts.p99.draw(hist, (x) => x.p99);

    const seen = new Set();
    for (const { b, brps, berr } of rows) {
      seen.add(b.id);
      let row = p.rows.get(b.id);
      if (!row) { row = backendRow(r.name, b.id); p.rows.set(b.id, row); p.tbody.append(row.tr); }
      const st = stateOf(b);
      row.tr.dataset.state = st;
      setText(row.addr, b.address || '');
      setText(row.state, STATE_MARK[st] || st);
      row.state.dataset.state = st;
      row.state.title = st === 'down' ? 'failing health checks (admin state: ' + (b.state || '?') + ')' : 'admin state: ' + st;
      setText(row.weight, String(b.weight === undefined ? '–' : b.weight));
      setText(row.inflight, String(b.inflight || 0));
      setText(row.requests, String(b.requests || 0));
      setText(row.rps, fmtNum(brps));
      setText(row.err, fmtPct(berr));
      setText(row.p99, fmtMs(b.latency ? b.latency.p99_ms : null));
      for (const [target, btn] of row.buttons) btn.disabled = (b.state || 'ready') === target;
    }
    for (const [id, row] of p.rows) if (!seen.has(id)) { row.tr.remove(); p.rows.delete(id); }
  }

  // Deployed replicas are named by their 64-hex container id: show Docker's short form.
  function shortId(id) { return /^[0-9a-f]{64}$/.test(id) ? id.slice(0, 12) : id; }

  function backendRow(route, id) {
    const td = (label, cls) => h('td', { 'data-label': label, class: cls });
    const row = {
      addr: td('Address'), state: h('span', { class: 'state' }), weight: td('Weight', 'num'),
      inflight: td('In-flight', 'num'), requests: td('Requests', 'num backend-requests'),
      rps: td('req/s', 'num'), err: td('5xx', 'num'), p99: td('p99', 'num'), buttons: new Map(),
    };
    const actions = h('td', { 'data-label': 'Actions', class: 'actions' });
    for (const target of ['ready', 'drain', 'maint']) {
      const btn = h('button', {
        type: 'button', class: 'act act-' + target, 'data-action': target,
        'aria-label': 'Set backend ' + shortId(id) + ' of ' + route + ' to ' + target,
      }, target === 'ready' ? 'Ready' : target === 'drain' ? 'Drain' : 'Maint');
      btn.addEventListener('click', () => setBackendState(route, id, target));
      row.buttons.set(target, btn);
      actions.append(btn);
    }
    row.tr = h('tr', { 'data-backend': id },
      h('th', { scope: 'row', 'data-label': 'Backend', title: id }, shortId(id)), row.addr,
      h('td', { 'data-label': 'State' }, row.state), row.weight, row.inflight, row.requests,
      row.rps, row.err, row.p99, actions);
    return row;
  }

  // ---------- charts (SVG, drawn here; no library) ----------
  function chart(label) {
    const W = 300, H = 70, PAD = 2;
    const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', preserveAspectRatio: 'none' });
    const title = s('title');
    svg.append(title);
    const grid = s('line', { x1: 0, y1: H - PAD, x2: W, y2: H - PAD, class: 'axis' });
    const line = s('polyline', { class: 'series', fill: 'none', points: '' });
    svg.append(grid, line);
    const max = h('span', { class: 'chart-max' });
    const now = h('span', { class: 'chart-now' });
    const win = h('span', { class: 'muted' });
    const el = h('figure', { class: 'chart-box' }, svg,
      h('figcaption', null, h('strong', null, label), ' ', now, h('span', { class: 'muted' }, ' (last '), win,
        h('span', { class: 'muted' }, ', max '), max, h('span', { class: 'muted' }, ')')));
    function draw(hist, get) {
      const pts = hist.filter((x) => get(x) !== null && get(x) !== undefined && Number.isFinite(get(x)));
      const last = pts.length ? get(pts[pts.length - 1]) : null;
      let m = 0;
      for (const x of pts) m = Math.max(m, get(x));
      const top = m > 0 ? m * 1.1 : 1;
      const t1 = hist.length ? hist[hist.length - 1].t : Date.now();
      // The x axis grows with the data from 1 minute up to the full 15-minute window.
      const span = Math.min(HISTORY_MS, Math.max(60_000, hist.length ? t1 - hist[0].t : 0));
      const t0 = t1 - span;
      const coords = pts.map((x) => {
        const px = ((x.t - t0) / span) * W;
        const py = H - PAD - (get(x) / top) * (H - 2 * PAD);
        return px.toFixed(1) + ',' + py.toFixed(1);
      });
      line.setAttribute('points', coords.join(' '));
      setText(max, fmtNum(m));
      setText(win, Math.round(span / 60_000) + ' min');
      setText(now, 'now ' + fmtNum(last));
      title.textContent = label + ': ' + pts.length + ' samples, latest ' + fmtNum(last) + ', max ' + fmtNum(m);
    }
    return { el, draw };
  }

  // ---------- routes metadata ----------
  async function loadRoutes() {
    const data = await api('GET', '/v1/routes');
    S.routeMeta.clear();
    for (const r of listOf(data, 'routes')) S.routeMeta.set(r.name, r);
    for (const [name, p] of S.routeCards) renderMeta(p, name, null);
  }

  // ---------- actions ----------
  function confirmDialog(text, okLabel) {
    const d = $('confirm');
    setText($('confirm-text'), text);
    setText($('confirm-ok'), okLabel || 'Confirm');
    return new Promise((resolve) => {
      const done = () => { d.removeEventListener('close', done); resolve(d.returnValue === 'ok'); };
      d.returnValue = '';
      d.addEventListener('close', done);
      d.showModal();
      $('confirm-cancel').focus();
    });
  }

  async function act(question, okLabel, method, path, body, success) {
    if (!(await confirmDialog(question, okLabel))) return;
    try {
      await api(method, path, body);
      toast(success);
    } catch (e) {
      toast('Failed: ' + e.message, true);
    }
  }

  function setBackendState(route, id, target) {
    const what = { ready: 'back into rotation (ready)', drain: 'to drain: no new requests, in-flight ones finish', maint: 'to maintenance: no traffic at all' }[target];
    return act(`Set backend ${shortId(id)} of route ${route} ${what}?`, 'Set ' + target, 'PUT',
      `/v1/routes/${encodeURIComponent(route)}/backends/${encodeURIComponent(id)}/state`,
      { state: target }, `Backend ${shortId(id)} of ${route} is now ${target}.`);
  }

  // ---------- apps ----------
  const absent = { apps: false, certs: false };

  function notOnServer(container, what) {
    container.replaceChildren(h('p', { class: 'muted absent' }, `No ${what} API on this server (yet); checking again every ${POLL_ABSENT_MS / 1000} s.`));
  }

  async function loadApps() {
    const body = $('apps-body');
    let list;
    try {
      list = listOf(await api('GET', '/v1/apps'), 'apps');
    } catch (e) {
      if (e.status === 404) { absent.apps = true; notOnServer(body, 'deployments'); return POLL_ABSENT_MS; }
      if (e.status === 503) { absent.apps = true; notOnServer(body, 'deployments (Docker unavailable)'); return POLL_ABSENT_MS; }
      throw e;
    }
    absent.apps = false;
    const names = list.map((a) => (typeof a === 'string' ? a : a.name)).filter(Boolean);
    const details = await Promise.all(names.map((n) =>
      api('GET', '/v1/apps/' + encodeURIComponent(n)).catch(() => list.find((a) => a && a.name === n) || { name: n })));
    if (!details.length) { body.replaceChildren(h('p', { class: 'muted' }, 'No apps deployed.')); return; }
    body.replaceChildren(...details.map(appCard));
  }

  function depLabel(d) {
    if (!d) return '–';
    if (typeof d === 'string') return d;
    const img = d.spec && d.spec.image ? ' · ' + d.spec.image : '';
    return (d.id || '?') + ' (' + (d.state || '?') + ')' + img;
  }

  function replicaHealth(r) {
    if (r.running === false) return 'stopped';
    if (r.docker_health) return r.docker_health;
    if (r.healthy === true) return 'healthy';
    if (r.healthy === false) return 'unhealthy';
    return r.running ? 'running' : 'unknown';
  }

  // A canary in progress: step, split, both versions' live error rate and p99.
  function canaryFacts(c) {
    const live = (l) => l ? `${l.requests} req · ${l.error_rate}% errors · p99 ${l.p99_ms == null ? '-' : l.p99_ms + ' ms'}` : '-';
    const split = Object.entries(c.split || {}).map(([v, w]) => `${shortId(v)} ${w}%`).join(' / ');
    return [
      h('dt', null, 'canary'), h('dd', { class: 'canary' }, `${shortId(c.deployment)} · ${c.phase} · step ${c.step}/${c.steps}${c.sticky ? ' · sticky' : ''}`),
      h('dt', null, 'split'), h('dd', { class: 'canary-split' }, split),
      h('dt', null, 'stable'), h('dd', { class: 'canary-stable' }, live(c.stable_live)),
      h('dt', null, 'canary live'), h('dd', { class: 'canary-live' }, live(c.canary_live)),
    ];
  }

  function canaryButtons(a) {
    if (!a.canary) return [];
    const promote = h('button', { type: 'button', class: 'act', 'data-action': 'promote' }, 'Promote');
    promote.addEventListener('click', () => act(
      `Promote the canary of ${a.name} now? It takes all traffic; the stable replicas drain and stop.`,
      'Promote', 'POST', `/v1/apps/${encodeURIComponent(a.name)}/promote`, {}, `Canary of ${a.name} is being promoted.`));
    const abort = h('button', { type: 'button', class: 'act', 'data-action': 'abort' }, 'Abort');
    abort.addEventListener('click', () => act(
      `Abort the canary of ${a.name}? Traffic goes back to the stable version at once and the canary is removed.`,
      'Abort', 'POST', `/v1/apps/${encodeURIComponent(a.name)}/abort`, {}, `Canary of ${a.name} aborted.`));
    return [promote, abort];
  }

  function appCard(a) {
    const replicas = [].concat(a.replicas || [], a.discovered || []);
    // berthd's summary (model::api::AppSummary, the same rule as `berth status`): replicas in
    // the route against the desired number. `unknown` only when the app could not be read.
    const overall = a.health || 'unknown';
    const count = a.ready ? a.ready + ' ready' : '?';
    const rb = h('button', { type: 'button', class: 'act', 'data-action': 'rollback', disabled: !a.previous && a.previous !== undefined },
      'Roll back');
    rb.addEventListener('click', () => act(
      `Roll back app ${a.name} to its previous deployment${a.previous && a.previous.id ? ' (' + a.previous.id + ')' : ''}? This is a rolling deploy of the stored image.`,
      'Roll back', 'POST', `/v1/apps/${encodeURIComponent(a.name)}/rollback`, {}, `Rollback of ${a.name} started.`));
    return h('article', { class: 'card app', 'data-app': a.name },
      h('header', null, h('h3', null, a.name),
        h('span', { class: 'badge', 'data-health': overall }, overall)),
      h('dl', { class: 'facts' },
        h('dt', null, 'current'), h('dd', null, depLabel(a.current)),
        h('dt', null, 'previous'), h('dd', null, depLabel(a.previous)),
        a.deploying ? [h('dt', null, 'deploying'), h('dd', null, a.deploying)] : null,
        a.canary ? canaryFacts(a.canary) : null,
        // Several versions (side by side, a canary): each with its replicas and weight.
        a.versions && a.versions.length ? [h('dt', null, 'versions'), h('dd', { class: 'versions' },
          a.versions.map((v) => `${v.label || shortId(v.deployment)} ${v.ready}/${v.desired}${v.weight == null ? '' : ' · ' + v.weight + '%'}`).join(' / '))] : null,
        h('dt', null, 'replicas'), h('dd', { class: 'replica-count' }, count)),
      replicas.length ? h('ul', { class: 'replicas' }, replicas.map((r) =>
        h('li', { 'data-health': replicaHealth(r) },
          (r.name || r.container_id || '?') + ' · ' + (r.address || '') + ' · ' + replicaHealth(r) +
          (r.routing ? ' · ' + r.routing : '')))) : null,
      h('div', { class: 'buttons' }, rb, canaryButtons(a)));
  }

  // ---------- deployments timeline ----------
  async function loadDeployments() {
    const body = $('deploys-body');
    if (absent.apps) { notOnServer(body, 'deployments'); return POLL_ABSENT_MS; }
    let names;
    try {
      names = listOf(await api('GET', '/v1/apps'), 'apps').map((a) => (typeof a === 'string' ? a : a.name)).filter(Boolean);
    } catch (e) {
      if (e.status === 404) { notOnServer(body, 'deployments'); return POLL_ABSENT_MS; }
      throw e;
    }
    const all = [];
    for (const n of names) {
      try {
        const list = listOf(await api('GET', `/v1/apps/${encodeURIComponent(n)}/deployments`), 'deployments');
        for (const d of list.slice(0, 10)) all.push(Object.assign({ app: n }, d));
      } catch (e) { if (e.status !== 404) throw e; }
    }
    all.sort((x, y) => (y.created_at || 0) - (x.created_at || 0));
    const recent = all.slice(0, 20);
    await Promise.all(recent.slice(0, 8).map(loadEvents));
    if (!recent.length) { body.replaceChildren(h('p', { class: 'muted' }, 'No deployments yet.')); return; }
    body.replaceChildren(h('ol', { class: 'timeline' }, recent.map((d) => {
      const evs = d.events || d.stages || S.deployEvents.get(d.id) || [];
      const state = d.state || d.status || '?';
      const dur = d.finished_at && d.created_at ? ((d.finished_at - d.created_at) / 1000).toFixed(1) + ' s' : (state === 'running' ? 'running' : '');
      return h('li', { class: 'dep', 'data-state': state, 'data-deployment': d.id || '' },
        h('div', { class: 'dep-head' },
          h('strong', null, d.app), ' ', h('code', null, d.id || ''), ' ',
          h('span', { class: 'badge', 'data-outcome': state }, state), ' ',
          h('span', { class: 'muted' }, fmtTime(d.created_at) + (dur ? ' · ' + dur : '') +
            (d.created_by ? ' · by ' + d.created_by : '') + (d.rollback_of ? ' · rollback to ' + d.rollback_of : ''))),
        d.reason ? h('p', { class: 'error' }, 'reason: ' + d.reason) : null,
        evs.length ? h('ol', { class: 'stages' }, evs.map((e) =>
          h('li', { 'data-stage': e.stage || e.name || '' },
            h('span', { class: 'stage' }, e.stage || e.name || '?'), ' ',
            h('span', { class: 'muted' }, fmtTime(e.at || e.timestamp)), e.message ? ' ' + e.message : ''))) : null);
    })));
  }

  // Stages of one deployment from its SSE event log (finished ones replay and end; cached).
  async function loadEvents(d) {
    if (!d.id || d.events || d.stages) return;
    const finished = d.finished_at || ['succeeded', 'failed'].includes(d.state);
    // Only a complete log (ending with the terminal event) is final: one read while the
    // deployment ran holds just the stages up to then.
    const cached = S.deployEvents.get(d.id);
    if (finished && cached && cached.some((e) => e.done)) return;
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), 1500);
    let text = '';
    try {
      const r = await fetch(`/v1/deployments/${encodeURIComponent(d.id)}/events`, { credentials: 'same-origin', signal: ctl.signal, headers: { 'Accept': 'text/event-stream' } });
      if (!r.ok || !r.body) return;
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += dec.decode(value, { stream: true });
        if (/"done"\s*:\s*true/.test(text)) { ctl.abort(); break; }
      }
    } catch (_) { /* aborted by the timer: use what arrived */ } finally { clearTimeout(timer); }
    const evs = [];
    for (const line of text.split('\n')) {
      if (!line.startsWith('data:')) continue;
      try { const e = JSON.parse(line.slice(5)); if (e && (e.stage || e.name)) evs.push(e); } catch (_) { /* not JSON */ }
    }
    if (evs.length) S.deployEvents.set(d.id, evs);
  }

  // ---------- certificates ----------
  async function loadCerts() {
    const body = $('certs-body');
    let list;
    try {
      list = listOf(await api('GET', '/v1/certificates'), 'certificates');
    } catch (e) {
      if (e.status === 404) { absent.certs = true; notOnServer(body, 'certificates'); return POLL_ABSENT_MS; }
      throw e;
    }
    absent.certs = false;
    if (!list.length) { body.replaceChildren(h('p', { class: 'muted' }, 'No certificates.')); return; }
    const rows = list.map((c) => {
      const failed = !!c.last_error;
      const retry = h('button', { type: 'button', class: 'act', 'data-action': 'retry' }, 'Retry');
      // The order runs in the background: refresh the list shortly after so its outcome
      // (new expiry, or the error) shows without waiting for the next poll.
      retry.addEventListener('click', () => act(
        `Order a new certificate for ${c.domain} now? (A failed one is retried at once; a valid one is renewed early.)`, 'Retry', 'POST',
        `/v1/certificates/${encodeURIComponent(c.domain)}/retry`, {}, `Certificate order for ${c.domain} queued.`)
        .then(() => setTimeout(() => loadCerts().catch(() => {}), 3000)));
      return h('tr', { class: failed ? 'failed' : '', 'data-domain': c.domain },
        h('th', { scope: 'row', 'data-label': 'Domain' }, c.domain, (c.names && c.names.length > 1) ? h('div', { class: 'muted' }, c.names.join(', ')) : null),
        h('td', { 'data-label': 'Source' }, c.source || '–'),
        h('td', { 'data-label': 'Issuer' }, c.issuer || '–'),
        h('td', { 'data-label': 'Expires' }, fmtTime(c.not_after), h('div', { class: 'muted' }, relTime(c.not_after))),
        h('td', { 'data-label': 'Next renewal' }, fmtTime(c.next_renewal), h('div', { class: 'muted' }, relTime(c.next_renewal))),
        h('td', { 'data-label': 'Status' }, failed ? h('span', { class: 'state', 'data-state': 'down' }, '✖ renewal failed: ' + c.last_error) : h('span', { class: 'state', 'data-state': 'ready' }, '● ok')),
        h('td', { 'data-label': 'Actions', class: 'actions' }, (c.source === undefined || c.source === 'acme') ? retry : null));
    });
    body.replaceChildren(h('div', { class: 'table-wrap' }, h('table', { class: 'certs' },
      h('thead', null, h('tr', null, ['Domain', 'Source', 'Issuer', 'Expires', 'Next renewal', 'Status', 'Actions'].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', null, rows))));
  }

  document.addEventListener('DOMContentLoaded', boot);
})();
