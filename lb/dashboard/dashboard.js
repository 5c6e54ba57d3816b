// lb dashboard: reads /api/v1/status every second and renders listeners,
// pools and backends; rates and the 5-minute charts are computed here from
// successive samples of the counters. Backend changes go through the same
// API (POST /api/v1/pools/{pool}/backends/{id}) after an in-page confirmation.
// The API token, when the API asks for one (401), lives in sessionStorage
// only and travels in the Authorization header, never in a URL.
// Fields the API may lack (older lb) are shown as "—".
'use strict';
(function () {
  const POLL_MS = 1000;
  const HISTORY_MS = 5 * 60 * 1000;
  const DASH = '\u2014';
  const TOKEN_KEY = 'lb.api_token';

  const $ = (id) => document.getElementById(id);
  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let timer = 0;
  let polls = 0, rendered = 0;  // an answer older than the one shown is dropped
  let waitingForToken = false;
  let pending = null;           // the confirmed action, while #confirm is open
  const prev = new Map();       // counter samples: key -> {t, vals}
  const history = new Map();    // backend key -> [{t, conn, bytes}]
  const poolViews = new Map();  // pool name -> {root, tbody, digest, selector, rows: Map(id -> view)}

  // --- formatting --------------------------------------------------------
  const isNum = (v) => typeof v === 'number' && isFinite(v);
  const fmtInt = (v) => (isNum(v) ? v.toLocaleString('en-US') : DASH);
  function fmtRate(v) {
    if (!isNum(v)) return DASH;
    return v < 10 ? v.toFixed(1) : Math.round(v).toLocaleString('en-US');
  }
  function fmtBytes(v) {
    if (!isNum(v)) return DASH;
    const units = ['B/s', 'kB/s', 'MB/s', 'GB/s', 'TB/s'];
    let i = 0;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return (v < 10 && i > 0 ? v.toFixed(1) : Math.round(v)) + ' ' + units[i];
  }
  function fmtAge(ms) {
    if (!isNum(ms)) return '';
    if (ms < 1000) return Math.round(ms) + ' ms ago';
    if (ms < 60000) return (ms / 1000).toFixed(1) + ' s ago';
    return Math.round(ms / 60000) + ' min ago';
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function cell(tr, field, cls) {
    const td = el('td', cls);
    td.dataset.f = field;
    tr.appendChild(td);
    return td;
  }
  function setText(node, text) { if (node.textContent !== text) node.textContent = text; }
  function badge(node, kind, text) {
    node.className = 'badge b-' + kind;
    setText(node, text);
  }

  // --- the API -----------------------------------------------------------
  class AuthNeeded extends Error {}

  async function api(method, path, body) {
    const headers = {};
    if (token) headers.Authorization = 'Bearer ' + token;
    const init = { method, headers, cache: 'no-store', credentials: 'same-origin', redirect: 'error' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    if (r.status === 401) {
      askToken(token ? 'The API refused that token.' : '');
      throw new AuthNeeded('the API needs a token');
    }
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) throw new Error((data && data.error) || 'HTTP ' + r.status);
    return data;
  }

  function setConn(kind, text) {
    const c = $('conn');
    c.className = 'conn conn-' + kind;
    setText(c, text);
  }

  async function poll() {
    clearTimeout(timer);
    timer = 0;
    const mine = ++polls;
    try {
      const status = await api('GET', '/api/v1/status');
      if (mine < rendered) return;
      rendered = mine;
      render(status, performance.now());
      setConn('ok', 'live');
    } catch (e) {
      if (e instanceof AuthNeeded) setConn('wait', 'token needed');
      else setConn('err', 'no answer: ' + e.message);
    }
    // While the token dialog is open polling waits for it (no 401 storm).
    if (!waitingForToken && !timer) timer = setTimeout(poll, POLL_MS);
  }

  // Per-second rates of counters since the previous sample of `key`; a
  // counter that went back (a restart) gives no rate for that sample.
  function rates(key, t, vals) {
    const p = prev.get(key);
    prev.set(key, { t, vals });
    const out = {};
    if (!p || t <= p.t) return out;
    const dt = (t - p.t) / 1000;
    for (const k of Object.keys(vals)) {
      const a = p.vals[k], b = vals[k];
      if (isNum(a) && isNum(b) && b >= a) out[k] = (b - a) / dt;
    }
    return out;
  }

  // --- rendering ---------------------------------------------------------
  function render(st, t) {
    setText($('version'), st.version ? 'v' + st.version : '');
    setText($('generation'), fmtInt(st.generation));
    renderListeners(st.listeners || [], t);
    renderPools(st.pools || [], t);
    let up = 0, down = 0;
    for (const p of st.pools || []) for (const b of p.backends || []) (b.health === 'up' ? up++ : down++);
    document.body.dataset.samples = String(Number(document.body.dataset.samples || 0) + 1);
    document.title = 'lb \u00b7 ' + up + ' up' + (down ? ', ' + down + ' down' : '');
  }

  const REJECT_REASONS = ['acl', 'limit', 'no_backend', 'proxy_protocol', 'tls'];

  function renderListeners(listeners, t) {
    const tbody = document.querySelector('#listeners tbody');
    const frag = document.createDocumentFragment();
    const seen = new Set();
    for (const l of listeners) {
      seen.add('l/' + l.name);
      const r = rates('l/' + l.name, t, { total: l.total });
      const tr = el('tr');
      tr.dataset.listener = l.name;
      cell(tr, 'name', 'id').textContent = l.name;
      cell(tr, 'protocol').textContent = l.protocol || DASH;
      cell(tr, 'bind', 'mono').textContent = (l.bind || []).join(', ') || DASH;
      cell(tr, 'pool').textContent = l.pool || DASH;
      cell(tr, 'active', 'num').textContent = fmtInt(l.active);
      cell(tr, 'cps', 'num').textContent = fmtRate(r.total);
      cell(tr, 'total', 'num').textContent = fmtInt(l.total);
      const rej = l.rejected && typeof l.rejected === 'object' ? l.rejected : {};
      for (const reason of REJECT_REASONS) {
        const td = cell(tr, 'rejected_' + reason, 'num');
        td.textContent = fmtInt(rej[reason]);
        if (isNum(rej[reason]) && rej[reason] > 0) td.classList.add('check-fail');
      }
      frag.appendChild(tr);
    }
    for (const k of prev.keys()) if (k.startsWith('l/') && !seen.has(k)) prev.delete(k);
    tbody.replaceChildren(frag);
  }

  function renderPools(pools, t) {
    const container = $('pools');
    const seen = new Set();
    for (const p of pools) {
      seen.add(p.name);
      let view = poolViews.get(p.name);
      if (!view) {
        view = makePool(p.name);
        poolViews.set(p.name, view);
      }
      place(container, view.root, seen.size - 1);  // the API's order
      setText(view.selector, p.selector || DASH);
      setText(view.digest, p.table_digest ? 'table ' + p.table_digest : 'no lookup table');
      const ids = new Set();
      for (const b of p.backends || []) {
        ids.add(b.id);
        let row = view.rows.get(b.id);
        if (!row) {
          row = makeBackendRow(p.name, b.id);
          view.rows.set(b.id, row);
        }
        place(view.tbody, row.tr, ids.size - 1);
        updateBackend(row, p.name, b, t);
      }
      for (const [id, row] of view.rows) {
        if (ids.has(id)) continue;
        row.tr.remove();
        view.rows.delete(id);
        prev.delete(bkey(p.name, id));
        history.delete(bkey(p.name, id));
      }
    }
    for (const [name, view] of poolViews) {
      if (seen.has(name)) continue;
      view.root.remove();
      poolViews.delete(name);
    }
  }

  // Moves `node` to position `index` of `parent` only when it is elsewhere:
  // moving a row that holds the focused weight field would blur it.
  function place(parent, node, index) {
    const at = parent.children[index] || null;
    if (at !== node) parent.insertBefore(node, at);
  }

  const bkey = (pool, id) => 'b/' + pool + '/' + id;

  function makePool(name) {
    const root = el('div', 'pool');
    root.dataset.pool = name;
    const head = el('div', 'pool-head');
    head.appendChild(el('span', 'pool-name', name));
    const selector = el('span', 'badge');
    selector.dataset.f = 'selector';
    head.appendChild(selector);
    const digest = el('span', 'mono muted');
    digest.dataset.f = 'table_digest';
    head.appendChild(digest);
    root.appendChild(head);
    const scroll = el('div', 'scroll');
    const table = el('table', 'backends');
    const thead = el('thead');
    const htr = el('tr');
    const cols = [['Backend'], ['Health'], ['Admin'], ['Weight', 'num'], ['Effective', 'num', 'effective weight (slow start)'],
      ['Active', 'num'], ['Conn/s', 'num'], ['To backend', 'num'], ['To client', 'num'],
      ['Connect fail', 'num', 'failed connection attempts'], ['Last 5 min'], ['Controls']];
    for (const [label, cls, title] of cols) {
      const th = el('th', cls, label);
      if (title) th.title = title;
      htr.appendChild(th);
    }
    thead.appendChild(htr);
    table.appendChild(thead);
    const tbody = el('tbody');
    table.appendChild(tbody);
    scroll.appendChild(table);
    root.appendChild(scroll);
    return { root, tbody, selector, digest, rows: new Map() };
  }

  function makeBackendRow(pool, id) {
    const tr = el('tr');
    tr.dataset.backend = id;
    const v = { tr };
    const idCell = cell(tr, 'id');
    idCell.title = id;
    idCell.appendChild(el('span', 'id', id));
    v.address = el('span', 'addr mono');
    idCell.appendChild(v.address);
    const h = cell(tr, 'health');
    v.health = el('span', 'badge');
    v.check = el('span', 'check');
    v.check.dataset.f = 'last_check';
    h.append(v.health, v.check);
    const a = cell(tr, 'admin_state');
    v.admin = el('span', 'badge');
    v.backup = el('span', 'badge', 'backup');
    a.append(v.admin, ' ', v.backup);
    v.weight = cell(tr, 'weight', 'num');
    v.effective = cell(tr, 'effective_weight', 'num');
    v.active = cell(tr, 'active', 'num');
    v.cps = cell(tr, 'cps', 'num');
    v.toBackend = cell(tr, 'bytes_to_backend', 'num');
    v.toClient = cell(tr, 'bytes_to_client', 'num');
    v.failures = cell(tr, 'connect_failures', 'num');
    v.canvas = el('canvas', 'chart');
    cell(tr, 'chart').appendChild(v.canvas);

    const controls = el('div', 'controls');
    v.toggle = el('button', 'btn');
    v.toggle.type = 'button';
    v.toggle.addEventListener('click', () => {
      const state = v.toggle.dataset.action === 'drain' ? 'drain' : 'active';
      const text = state === 'drain'
        ? 'Drain backend ' + id + ' in pool ' + pool + '? It gets no new connections; open ones continue.'
        : 'Activate backend ' + id + ' in pool ' + pool + '? It goes back into rotation.';
      confirmAction(text, () => change(pool, id, { state }));
    });
    v.input = el('input');
    v.input.type = 'number';
    v.input.min = '0';
    v.input.max = '1000';
    v.input.step = '1';
    v.input.title = 'new weight, 0 to 1000';
    const set = el('button', 'btn', 'Set weight');
    set.type = 'button';
    set.dataset.action = 'weight';
    const askWeight = () => {
      const n = Number(v.input.value);
      if (v.input.value.trim() === '' || !Number.isInteger(n) || n < 0 || n > 1000) {
        toast('The weight is an integer from 0 to 1000.', true);
        return;
      }
      confirmAction('Set the weight of backend ' + id + ' in pool ' + pool + ' to ' + n + '?',
        () => change(pool, id, { weight: n }).then((ok) => { if (ok) v.input.value = ''; }));
    };
    set.addEventListener('click', askWeight);
    v.input.addEventListener('keydown', (e) => { if (e.key === 'Enter') askWeight(); });
    controls.append(v.toggle, v.input, set);
    cell(tr, 'controls').appendChild(controls);
    return v;
  }

  function updateBackend(v, pool, b, t) {
    const key = bkey(pool, b.id);
    const r = rates(key, t, {
      total: b.total, to_backend: b.bytes_to_backend, to_client: b.bytes_to_client,
    });
    const up = b.health === 'up';
    const drain = b.admin_state === 'drain';
    v.tr.className = drain ? 'st-drain' : up ? 'st-up' : 'st-down';
    v.tr.dataset.health = b.health || '';
    v.tr.dataset.admin = b.admin_state || '';
    setText(v.address, b.address && b.address !== b.id ? b.address : '');
    badge(v.health, up ? 'up' : 'down', b.health || DASH);
    const lc = b.last_check;
    if (lc && typeof lc === 'object' && lc.result) {
      const parts = [lc.result];
      if (lc.detail) parts.push(lc.detail);
      const age = fmtAge(lc.age_ms);
      if (age) parts.push(age);
      setText(v.check, parts.join(' \u00b7 '));
      v.check.title = parts.join(' \u00b7 ');
      v.check.className = 'check' + (lc.result === 'fail' ? ' check-fail' : '');
    } else {
      setText(v.check, 'last check ' + DASH);
      v.check.className = 'check';
    }
    badge(v.admin, drain ? 'drain' : 'active', b.admin_state || DASH);
    v.backup.hidden = !b.backup;
    setText(v.weight, fmtInt(b.weight));
    setText(v.effective, fmtInt(b.effective_weight));
    setText(v.active, fmtInt(b.active));
    setText(v.cps, fmtRate(r.total));
    setText(v.toBackend, fmtBytes(r.to_backend));
    setText(v.toClient, fmtBytes(r.to_client));
    setText(v.failures, fmtInt(b.connect_failures));
    v.failures.classList.toggle('check-fail', isNum(b.connect_failures) && b.connect_failures > 0);
    v.toggle.dataset.action = drain ? 'activate' : 'drain';
    v.toggle.className = 'btn toggle ' + (drain ? 'btn-activate' : 'btn-drain');
    setText(v.toggle, drain ? 'Activate' : 'Drain');
    v.input.placeholder = isNum(b.weight) ? String(b.weight) : '';

    let h = history.get(key);
    if (!h) history.set(key, (h = []));
    if (isNum(r.total)) {
      const bytes = (r.to_backend || 0) + (r.to_client || 0);
      h.push({ t, conn: r.total, bytes: isNum(r.to_backend) || isNum(r.to_client) ? bytes : null });
    }
    while (h.length && h[0].t < t - HISTORY_MS) h.shift();
    drawChart(v.canvas, h, t);
  }

  // Connections/s as a filled area and bytes/s as a line over the last five
  // minutes, each scaled to its own peak (the tooltip gives the peaks).
  function drawChart(canvas, h, now) {
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 180, ht = canvas.clientHeight || 36;
    if (canvas.width !== Math.round(w * ratio)) canvas.width = Math.round(w * ratio);
    if (canvas.height !== Math.round(ht * ratio)) canvas.height = Math.round(ht * ratio);
    const g = canvas.getContext('2d');
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, ht);
    const style = getComputedStyle(document.documentElement);
    const x = (t) => w - ((now - t) / HISTORY_MS) * w;
    let peakConn = 0, peakBytes = 0;
    for (const s of h) {
      peakConn = Math.max(peakConn, s.conn);
      if (s.bytes !== null) peakBytes = Math.max(peakBytes, s.bytes);
    }
    canvas.title = 'peak ' + fmtRate(peakConn) + ' conn/s, ' + fmtBytes(peakBytes) + ' (last 5 min)';
    if (h.length < 2) return;
    const y = (v, peak) => ht - 2 - (peak > 0 ? (v / peak) * (ht - 5) : 0);
    g.beginPath();
    g.moveTo(x(h[0].t), ht);
    for (const s of h) g.lineTo(x(s.t), y(s.conn, peakConn));
    g.lineTo(x(h[h.length - 1].t), ht);
    g.closePath();
    const conn = style.getPropertyValue('--chart-conn').trim() || '#2f6fde';
    g.globalAlpha = 0.25;
    g.fillStyle = conn;
    g.fill();
    g.globalAlpha = 1;
    g.beginPath();
    h.forEach((s, i) => (i ? g.lineTo : g.moveTo).call(g, x(s.t), y(s.conn, peakConn)));
    g.strokeStyle = conn;
    g.lineWidth = 1.2;
    g.stroke();
    if (peakBytes > 0) {
      g.beginPath();
      let started = false;
      for (const s of h) {
        if (s.bytes === null) continue;
        (started ? g.lineTo : g.moveTo).call(g, x(s.t), y(s.bytes, peakBytes));
        started = true;
      }
      g.strokeStyle = style.getPropertyValue('--chart-bytes').trim() || '#e08a1e';
      g.stroke();
    }
  }

  // --- actions -----------------------------------------------------------
  async function change(pool, id, body) {
    const path = '/api/v1/pools/' + encodeURIComponent(pool) + '/backends/' + encodeURIComponent(id);
    try {
      await api('POST', path, body);
      const what = body.weight !== undefined ? 'weight ' + body.weight : body.state === 'drain' ? 'draining' : 'active';
      toast(pool + ' / ' + id + ': ' + what);
      poll();
      return true;
    } catch (e) {
      toast(e instanceof AuthNeeded ? 'Enter the API token, then try again.' : pool + ' / ' + id + ': ' + e.message, true);
      return false;
    }
  }

  function confirmAction(text, action) {
    pending = action;
    setText($('confirm-text'), text);
    $('confirm').hidden = false;
    $('confirm-ok').focus();
  }
  function closeConfirm(run) {
    const action = pending;
    pending = null;
    $('confirm').hidden = true;
    if (run && action) action();
  }

  let toastTimer = 0;
  function toast(text, isError) {
    const t = $('toast');
    t.textContent = text;
    t.className = 'toast' + (isError ? ' err' : '');
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, 4000);
  }

  function askToken(message) {
    if (waitingForToken) return;
    waitingForToken = true;
    setText($('login-error'), message || '');
    $('login').hidden = false;
    $('login-token').value = '';
    $('login-token').focus();
  }

  function init() {
    $('confirm-ok').addEventListener('click', () => closeConfirm(true));
    $('confirm-cancel').addEventListener('click', () => closeConfirm(false));
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && !$('confirm').hidden) closeConfirm(false);
    });
    $('login-form').addEventListener('submit', (e) => {
      e.preventDefault();
      token = $('login-token').value.trim();
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
      $('login-token').value = '';
      $('login').hidden = true;
      $('token-button').hidden = !token;
      waitingForToken = false;
      poll();
    });
    $('token-button').hidden = !token;
    $('token-button').addEventListener('click', () => {
      token = '';
      sessionStorage.removeItem(TOKEN_KEY);
      $('token-button').hidden = true;
      poll();
    });
    poll();
  }

  init();
})();
