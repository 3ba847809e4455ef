// The status page of pyvisor: a table of every instance, kept live from the event stream.
//
// Rules (supervisor/http/page.py): every piece of data goes into the document with
// textContent (or a property such as title), never as markup: a worker's status text is
// hostile input. The token is kept in sessionStorage (this tab only) and sent only as
// "Authorization: Bearer" on POST; without it there are no buttons (and the API refuses).
"use strict";

(() => {
  const TOKEN_KEY = "pyvisor-token";
  const STATES = ["STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL"];
  const NO_PROCESS = ["STOPPED", "EXITED", "FATAL", "BACKOFF"];
  const COLUMNS = ["name", "state", "pid", "uptime", "hb", "work", "text", "restarts", "cpu",
                   "mem", "actions"];
  const VERBS = ["start", "stop", "restart"];
  const MAX_EVENTS = 50;        // lines kept in "Recent events"
  const FULL_REFRESH_MS = 3000; // heartbeats, CPU, memory, work, status text: no events
  const HB_STALE = 30;          // seconds: a heartbeat older than this is shown in red
  const RECONNECT_MS = 5000;    // after the server refused the event stream
  const MAX_PENDING = 20;       // row fetches waiting at once; more: fetch the whole table

  const $ = (id) => document.getElementById(id);
  const rows = new Map();       // name -> {tr, cells, fact, at, actionsFor}
  const pending = new Map();    // name -> timer of a scheduled row fetch
  let token = sessionStorage.getItem(TOKEN_KEY) || "";
  let refreshing = null;

  // -- formatting -------------------------------------------------------------------------
  function duration(s) {
    s = Math.max(0, Math.floor(s));
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600);
    const m = Math.floor(s % 3600 / 60), sec = s % 60;
    const two = (n) => String(n).padStart(2, "0");
    return (d ? `${d}d ` : "") + `${h}:${two(m)}:${two(sec)}`;
  }

  function bytes(n) {
    const units = ["B", "K", "M", "G"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i ? `${n.toFixed(1)}${units[i]}` : `${n}B`;
  }

  const dash = "–";
  const known = (v) => v !== null && v !== undefined;

  // -- the table --------------------------------------------------------------------------
  function makeRow(name) {
    const tr = document.createElement("tr");
    tr.dataset.name = name;
    const cells = {};
    for (const col of COLUMNS) {
      const td = document.createElement("td");
      td.className = `c-${col}`;
      tr.appendChild(td);
      cells[col] = td;
    }
    cells.name.textContent = name;
    const badge = document.createElement("span");
    cells.state.appendChild(badge);
    cells.badge = badge;
    return {tr, cells, fact: {name}, at: performance.now(), actionsFor: null};
  }

  function render(r) {
    const f = r.fact, c = r.cells;
    const running = known(f.pid);
    const elapsed = running ? (performance.now() - r.at) / 1000 : 0;
    const state = STATES.includes(f.state) ? f.state : "unknown";
    c.badge.textContent = f.state || "?";
    c.badge.className = `state state-${state}`;
    c.pid.textContent = running ? String(f.pid) : dash;
    c.uptime.textContent = running && known(f.uptime) ? duration(f.uptime + elapsed) : dash;
    if (running && known(f.heartbeat_age)) {
      // as of the last fetch: a worker that beats would be shown older than it is if this
      // counted on (uptime does count on: it only grows while the process lives)
      const age = f.heartbeat_age;
      c.hb.textContent = `${age.toFixed(1)}s ago`;
      c.hb.className = age > HB_STALE ? "c-hb stale" : "c-hb";
    } else {
      c.hb.textContent = dash;
      c.hb.className = "c-hb dim";
    }
    c.work.textContent = known(f.work_done) ? String(f.work_done) : dash;
    let text = f.status_text || "";
    if (!running && !text) text = f.fatal_reason || (f.last_exit ? `last: ${f.last_exit}` : "");
    c.text.textContent = text;
    c.text.title = text;
    c.restarts.textContent = known(f.restarts) ? String(f.restarts) : dash;
    c.cpu.textContent = known(f.cpu_seconds) ? `${f.cpu_seconds.toFixed(2)}s` : dash;
    c.mem.textContent = known(f.rss) ? bytes(f.rss) : dash;
    renderActions(r);
  }

  function renderActions(r) {
    const c = r.cells.actions;
    c.hidden = !token;
    if (!token) {
      if (r.actionsFor !== null) { c.replaceChildren(); r.actionsFor = null; }
      return;
    }
    if (r.actionsFor === null) {
      c.replaceChildren();
      for (const verb of VERBS) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = `act act-${verb}`;
        b.dataset.verb = verb;
        b.textContent = verb;
        b.addEventListener("click", () => control(r.fact.name, verb, b));
        c.appendChild(b);
      }
      r.actionsFor = token;
    }
    const s = r.fact.state;
    for (const b of c.querySelectorAll("button")) {
      if (b.dataset.busy) continue;
      b.disabled = (b.dataset.verb === "start" && !NO_PROCESS.includes(s) && s !== undefined)
        || (b.dataset.verb === "stop" && (s === "STOPPED" || s === "EXITED" || s === "FATAL"));
    }
  }

  function setRows(facts) {
    const tbody = $("rows");
    const seen = new Set();
    const now = performance.now();
    for (const f of facts) {
      if (typeof f !== "object" || f === null || typeof f.name !== "string") continue;
      seen.add(f.name);
      let r = rows.get(f.name);
      if (!r) { r = makeRow(f.name); rows.set(f.name, r); }
      r.fact = f;
      r.at = now;
      tbody.appendChild(r.tr);     // keeps the API's order (worker, index)
      render(r);
    }
    for (const [name, r] of rows) {
      if (!seen.has(name)) { r.tr.remove(); rows.delete(name); }
    }
    $("empty").hidden = rows.size > 0;
    summary();
  }

  function summary() {
    const counts = {};
    for (const r of rows.values()) counts[r.fact.state] = (counts[r.fact.state] || 0) + 1;
    const parts = STATES.filter((s) => counts[s]).map((s) => `${counts[s]} ${s}`);
    $("summary").textContent = `${rows.size} instances` + (parts.length ? `: ${parts.join(", ")}` : "");
  }

  // -- fetching ---------------------------------------------------------------------------
  async function getJSON(url) {
    const resp = await fetch(url, {cache: "no-store", credentials: "omit"});
    const doc = await resp.json();
    return {status: resp.status, doc};
  }

  function refreshAll() {
    if (refreshing) return refreshing;
    refreshing = getJSON("api/v1/status").then(({doc}) => {
      if (Array.isArray(doc.data)) setRows(doc.data);
    }).catch((e) => message(`status: ${e}`, true)).finally(() => { refreshing = null; });
    return refreshing;
  }

  function refreshOne(name) {
    if (pending.has(name)) return;
    if (pending.size >= MAX_PENDING) {      // a burst over many instances: one full fetch
      for (const t of pending.values()) clearTimeout(t);
      pending.clear();
      refreshAll();
      return;
    }
    pending.set(name, setTimeout(async () => {
      pending.delete(name);
      try {
        const {status, doc} = await getJSON(`api/v1/instances/${encodeURIComponent(name)}`);
        const r = rows.get(name);
        if (status === 200 && r && Array.isArray(doc.data) && doc.data.length === 1) {
          r.fact = doc.data[0];
          r.at = performance.now();
          render(r);
          summary();
        } else if (status === 404) {
          refreshAll();
        }
      } catch (e) { /* the next event or the periodic refresh fixes the row */ }
    }, 100));
  }

  // -- control ----------------------------------------------------------------------------
  function message(text, isError) {
    const m = $("message");
    m.textContent = text;
    m.className = isError ? "message error" : "message";
    m.hidden = !text;
  }

  async function control(name, verb, button) {
    if (!token) return;
    button.disabled = true;
    button.dataset.busy = "1";
    message(`${name}: ${verb}…`, false);
    try {
      const resp = await fetch(`api/v1/instances/${encodeURIComponent(name)}/${verb}`, {
        method: "POST", cache: "no-store", credentials: "omit",
        headers: {"Authorization": `Bearer ${token}`},
      });
      let doc = {};
      try { doc = await resp.json(); } catch (e) { doc = {err: `HTTP ${resp.status}`}; }
      const text = `${doc.out || ""}${doc.err || ""}`.trim() || `HTTP ${resp.status}`;
      message(text, !resp.ok);
    } catch (e) {
      message(`${name}: ${verb} failed: ${e}`, true);
    } finally {
      delete button.dataset.busy;
      refreshOne(name);
    }
  }

  function setToken(value) {
    token = value;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
    $("auth-off").hidden = !!token;
    $("auth-on").hidden = !token;
    $("actions-head").hidden = !token;
    for (const r of rows.values()) renderActions(r);
  }

  // -- the event stream -------------------------------------------------------------------
  function setConn(on) {
    const c = $("conn");
    c.textContent = on ? "live" : "reconnecting…";
    c.className = on ? "conn conn-on" : "conn conn-off";
  }

  function describe(ev) {
    const t = new Date(ev.time * 1000).toLocaleTimeString();
    let s = `${t} ${ev.instance} ${ev.kind}`;
    if (ev.kind === "state") s += ` ${ev.from} → ${ev.to}`;
    else if (ev.to) s += ` (${ev.to})`;
    if (known(ev.pid)) s += `, pid ${ev.pid}`;
    if (ev.reason) s += `, ${ev.reason}`;
    return s;
  }

  function logEvent(ev) {
    const list = $("events");
    const li = document.createElement("li");
    li.value = ev.seq;
    li.textContent = describe(ev);
    list.prepend(li);
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  }

  function apply(ev) {
    if (typeof ev !== "object" || ev === null || typeof ev.instance !== "string") return;
    logEvent(ev);
    const r = rows.get(ev.instance);
    if (!r) { refreshAll(); return; }          // an instance the table lacks: a reload
    if (ev.kind === "state" && typeof ev.to === "string") {
      r.fact = {...r.fact, state: ev.to};
      if (NO_PROCESS.includes(ev.to)) {      // until the row's fetch brings the rest
        r.fact.pid = null;
        r.fact.uptime = r.fact.heartbeat_age = r.fact.cpu_seconds = r.fact.rss = null;
      }
      render(r);
      summary();
    }
    refreshOne(ev.instance);
  }

  function connect() {
    const es = new EventSource("api/v1/events");
    es.addEventListener("hello", () => { setConn(true); refreshAll(); });
    es.addEventListener("lost", () => refreshAll());
    es.onmessage = (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      apply(ev);
    };
    es.onerror = () => {
      setConn(false);
      // a dropped stream reconnects by itself (after "retry"); a refused one (503: too many
      // streams, or a daemon that answers something else) is closed for good: retry later
      if (es.readyState === EventSource.CLOSED) setTimeout(connect, RECONNECT_MS);
    };
  }

  // -- start ------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    $("token-use").addEventListener("click", () => {
      const v = $("token").value.trim();
      $("token").value = "";
      if (v) setToken(v);
    });
    $("token").addEventListener("keydown", (e) => {
      if (e.key === "Enter") $("token-use").click();
    });
    $("token-forget").addEventListener("click", () => setToken(""));
    setToken(token);
    refreshAll();
    connect();
    setInterval(() => { for (const r of rows.values()) render(r); }, 1000);
    // the daemon reads /proc for every row of a status: a big table is fetched less often
    const periodic = () => {
      const next = Math.max(FULL_REFRESH_MS, rows.size * 3);
      setTimeout(() => {
        (document.hidden ? Promise.resolve() : refreshAll()).finally(periodic);
      }, next);
    };
    periodic();
  });
})();
