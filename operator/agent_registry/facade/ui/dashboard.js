// The Agent Registry dashboard: the fleet on one page, kept current by the watch stream.
//
// Everything comes from the facade's REST API, with the bearer token typed into the page:
//   GET /agents/watch                  the agents, then one event per change (Server-Sent Events)
//   GET /agents/{id}/agent-card.json   an agent's A2A card (detail panel; 404: it has none)
//   GET /agents/{id}/events            its recent Kubernetes Events (detail panel)
//
// The page itself holds no data, so it is served without a token. The token lives in this
// script's memory (in sessionStorage only if the user ticks "keep for this tab"), never in
// a URL, where proxies and browser history would keep it.
//
// Agent names, metadata and cards are written by agents, not by the registry: everything
// from the API is inserted with textContent or attribute setters, never as HTML.
"use strict";

(() => {
  const PHASES = ["healthy", "degraded", "unhealthy", "unreachable"];
  // Offered in the type filter before any agent of that type is seen.
  const KNOWN_TYPES = ["cost", "performance", "resource", "application"];
  // A table of 10,000 rows helps nobody and costs the browser a long frame per change.
  const MAX_ROWS = 500;
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 10000;
  // The facade sends a keep-alive comment every ~15 s; three missed ones mean the connection
  // is dead even though TCP has not said so (a proxy or a NAT dropped it silently).
  const SILENCE_MS = 45000;
  // The operator records an Event just after the phase change that the stream reports.
  const EVENTS_AFTER_PHASE_MS = 1000;
  const TOKEN_KEY = "agent-registry.token";
  // Failures a later attempt can cure by itself; any other (400, 401, 403) needs the user.
  const RETRYABLE = new Set([408, 429, 500, 502, 503, 504]);
  const EXPLAINED = {
    401: "the token was refused: paste a valid bearer token and press Connect",
    403: "RBAC does not let this token read agents in this namespace",
    429: "the registry is busy (or has as many watches open as it allows); retrying",
    503: "the registry cannot reach what it depends on; retrying",
  };

  // The API is beside the page: /ui -> /, /prefix/ui -> /prefix/ behind a proxy.
  const API_BASE = new URL(".", window.location.href);

  const $ = (id) => document.getElementById(id);

  const state = {
    token: "",
    namespace: "",
    agents: new Map(), // agent id -> the REST Agent, as the stream last said
    synced: false, // a snapshot has arrived since the last (re)list
    lastEventId: null, // sent back as Last-Event-ID, so a reconnect resumes without loss
    generation: 0, // bumped by every Connect: loops and fetches of an older one stop
    controller: null, // aborts the running stream
    backoff: BACKOFF_MIN_MS,
    selected: null, // id of the agent in the detail panel
    renderQueued: false,
    timeCells: [], // [element, ISO time, suffix]: refreshed every second
    retryMs: 0, // the stream's "retry:" advice, the least wait before a reconnect
  };

  // --- small helpers -------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function apiUrl(path) {
    const url = new URL(path, API_BASE);
    if (state.namespace) url.searchParams.set("namespace", state.namespace);
    return url;
  }

  function headers(extra) {
    const all = { Accept: "application/json", ...extra };
    // With authentication off on the facade no token is needed; an empty header would be a 401.
    if (state.token) all.Authorization = `Bearer ${state.token}`;
    return all;
  }

  // "401: the token was refused ... (facade: <its error>)": the facade's JSON error body, said plainly.
  async function describeFailure(response) {
    let detail = "";
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") detail = body.error;
    } catch (_) {
      // not JSON (a proxy's page): the status says enough
    }
    const head = EXPLAINED[response.status] || `the registry answered ${response.status} ${response.statusText}`.trim();
    return `${response.status}: ${head}` + (detail ? ` (registry: ${detail})` : "");
  }

  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  }

  function since(iso) {
    const at = Date.parse(iso);
    return Number.isNaN(at) ? null : (Date.now() - at) / 1000;
  }

  // A cell whose text is a time relative to now, kept current by tick().
  function timeCell(tag, className, iso, suffix) {
    const node = el(tag, className);
    if (!iso) {
      node.textContent = "–";
      return node;
    }
    node.title = iso;
    state.timeCells.push([node, iso, suffix]);
    setRelative(node, iso, suffix);
    return node;
  }

  function setRelative(node, iso, suffix) {
    const seconds = since(iso);
    node.textContent = seconds === null ? iso : duration(seconds) + suffix;
  }

  function tick() {
    // Drop cells no longer on the page (a re-render replaced them).
    state.timeCells = state.timeCells.filter(([node]) => node.isConnected);
    for (const [node, iso, suffix] of state.timeCells) setRelative(node, iso, suffix);
  }

  function setStatus(kind, text) {
    const status = $("status");
    status.dataset.state = kind;
    status.textContent = text;
  }

  function showError(message) {
    const box = $("error");
    box.hidden = !message;
    box.textContent = message || "";
  }

  function phaseBadge(phase) {
    return el("span", `phase ${PHASES.includes(phase) ? phase : ""}`, phase || "unknown");
  }

  function endpoint(agent) {
    // An IPv6 address needs brackets before the port.
    const host = String(agent.host ?? "");
    return `${host.includes(":") ? `[${host}]` : host}:${agent.port}`;
  }

  // capability -> {status, reason}: only those the agent reports degraded or unhealthy.
  function capabilityHealth(agent) {
    const health = new Map();
    for (const [name, report] of Object.entries(agent.capability_health || {})) {
      if (report && typeof report === "object") health.set(name, report);
    }
    return health;
  }

  // --- the watch stream ------------------------------------------------------------------

  // Server-Sent Events, parsed as the HTML standard says EventSource does: lines end with
  // CRLF, LF or CR; "field: value"; a blank line dispatches; ":" starts a comment. Done by
  // hand because EventSource cannot send an Authorization header. One difference: an
  // event's id is the one it carries, or null (EventSource would repeat the last one), so
  // that a "relist", which has none, can clear the position to resume from.
  function sseParser(dispatch) {
    let pending = "";
    let type = "";
    let data = [];
    let id = null;
    let retry = null;

    function line(text) {
      if (text === "") {
        if (data.length > 0) dispatch({ type: type || "message", data: data.join("\n"), id, retry });
        else if (id !== null) dispatch({ type: "", data: null, id, retry });
        type = "";
        data = [];
        id = null;
        return;
      }
      if (text.startsWith(":")) return; // a comment: the keep-alive
      const colon = text.indexOf(":");
      const field = colon === -1 ? text : text.slice(0, colon);
      let value = colon === -1 ? "" : text.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
      else if (field === "id" && !value.includes("\0")) id = value;
      else if (field === "retry" && /^\d+$/.test(value)) retry = Number(value);
    }

    let afterCR = false; // the last chunk ended in CR: an LF starting this one belongs to it
    return (chunk) => {
      let text = chunk;
      if (text === "") return;
      if (afterCR && text.startsWith("\n")) text = text.slice(1);
      text = pending + text;
      // A CR ends its line at once (an event is not held back until more arrives), and
      // afterCR keeps the LF of a CRLF split across two chunks from ending another line.
      afterCR = text.endsWith("\r");
      const lines = text.split(/\r\n|\r|\n/);
      pending = lines.pop();
      for (const each of lines) line(each);
    };
  }

  // One attempt: connect, then read until the stream ends. Resolves to what to do next:
  // {retry: true} to reconnect after the backoff, {retry: false, message} to stop.
  async function watchOnce(generation) {
    const controller = new AbortController();
    state.controller = controller;
    const extra = { Accept: "text/event-stream" };
    if (state.lastEventId !== null) extra["Last-Event-ID"] = state.lastEventId;
    setStatus("connecting", state.lastEventId !== null ? "Resuming…" : "Connecting…");
    // heartbeats=true: the times of heartbeats that changed nothing else, in batches, so the
    // "last heartbeat" column keeps up (they are not change events).
    const url = apiUrl("agents/watch");
    url.searchParams.set("heartbeats", "true");
    const response = await fetch(url, {
      headers: headers(extra),
      signal: controller.signal,
      cache: "no-store",
    });
    if (!response.ok) {
      return { retry: RETRYABLE.has(response.status), message: await describeFailure(response) };
    }
    if (!(response.headers.get("content-type") || "").startsWith("text/event-stream")) {
      return { retry: false, message: "GET /agents/watch did not answer with an event stream" };
    }
    // Open: a resume with nothing missed sends no event at all, and is still live.
    connected();

    let silent = false;
    let watchdog = null;
    const quiet = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => {
        silent = true;
        controller.abort();
      }, SILENCE_MS);
    };
    const parse = sseParser((event) => {
      if (generation !== state.generation) return;
      if (event.retry !== null) state.retryMs = event.retry;
      if (event.data !== null) receive(event.type, event.data);
      // Committed after the event is applied: a reconnect resumes after what the map holds.
      if (event.id !== null) state.lastEventId = event.id;
    });

    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    quiet();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        quiet();
        parse(value);
      }
    } catch (error) {
      if (generation !== state.generation) return { retry: false };
      return { retry: true, message: silent ? "no data from the registry for 45 s" : `connection lost (${error})` };
    } finally {
      clearTimeout(watchdog);
    }
    // Streams end on purpose (a facade shutting down, or every ~30 min so that the token is
    // checked again), so this is no error: resume from the last id; a failure to is one.
    return { retry: true, message: null };
  }

  async function watchLoop(generation) {
    while (generation === state.generation) {
      let outcome;
      try {
        outcome = await watchOnce(generation);
      } catch (error) {
        // fetch() itself failed: the facade is down or unreachable.
        outcome = { retry: true, message: `cannot reach the registry (${error.message || error})` };
      }
      if (generation !== state.generation) return;
      if (!outcome.retry) {
        setStatus("failed", "Not connected");
        showError(outcome.message);
        return;
      }
      // After a clean end the shortest wait; after a failure the backoff, doubling from 1 s
      // to 10 s until an attempt succeeds (connected() resets it); never less than the
      // stream's own "retry:" advice.
      let delay = BACKOFF_MIN_MS;
      if (outcome.message) {
        delay = state.backoff;
        state.backoff = Math.min(state.backoff * 2, BACKOFF_MAX_MS);
        // The table stays as it was: it is stale until the resume, and says so.
        showError(`${outcome.message}; the table may be out of date until it reconnects`);
      }
      delay = Math.max(delay, Math.min(state.retryMs || 0, BACKOFF_MAX_MS));
      for (let left = delay; left > 0 && generation === state.generation; left -= 1000) {
        setStatus("retrying", `Reconnecting in ${Math.ceil(left / 1000)} s`);
        await new Promise((done) => setTimeout(done, Math.min(1000, left)));
      }
    }
  }

  // One event from the stream: the map follows it (every event but "removed" puts its agent).
  function receive(type, text) {
    let payload;
    try {
      payload = JSON.parse(text);
    } catch (_) {
      return; // not from this protocol; a later snapshot puts things right
    }
    if (type === "snapshot") {
      state.agents = new Map();
      for (const agent of payload.agents || []) state.agents.set(agent.id, agent);
      state.synced = true;
      connected();
    } else if (type === "relist") {
      // Too far behind to resume: forget everything; a snapshot follows on this stream. Until
      // it has come, a reconnect must ask for a snapshot too, not resume from before the relist.
      state.agents = new Map();
      state.synced = false;
      state.lastEventId = null;
      setStatus("connecting", `Reloading the list (${payload.reason || "the registry asked"})`);
    } else if (type === "heartbeats") {
      // {last_seen: {id: time}}: only the time moves; an agent not in the map is left to its
      // own event. ISO times in one spelling (UTC, "Z") compare as strings.
      for (const [id, seen] of Object.entries(payload.last_seen || {})) {
        const agent = state.agents.get(id);
        if (agent && (!agent.last_seen || seen > agent.last_seen)) agent.last_seen = seen;
      }
      connected();
    } else if (type === "removed") {
      if (payload.agent) state.agents.delete(payload.agent.id);
      connected();
    } else if (payload.agent && payload.agent.id) {
      // registered, updated, phase; and any later kind that carries an agent.
      state.agents.set(payload.agent.id, payload.agent);
      connected();
      if (type === "phase" && payload.agent.id === state.selected) {
        setTimeout(() => loadEvents(payload.agent.id), EVENTS_AFTER_PHASE_MS);
      }
      if (type === "updated" && payload.agent.id === state.selected) loadCard(payload.agent.id);
    } else {
      return;
    }
    scheduleRender();
  }

  function connected() {
    state.backoff = BACKOFF_MIN_MS;
    showError("");
    setStatus("live", "Live");
  }

  function connect() {
    state.token = $("token").value.trim();
    state.namespace = $("namespace").value.trim();
    if ($("remember").checked && state.token) window.sessionStorage.setItem(TOKEN_KEY, state.token);
    else window.sessionStorage.removeItem(TOKEN_KEY);
    state.generation += 1;
    if (state.controller) state.controller.abort();
    state.agents = new Map();
    state.synced = false;
    state.lastEventId = null;
    state.backoff = BACKOFF_MIN_MS;
    showError("");
    closeDetail();
    scheduleRender();
    watchLoop(state.generation);
  }

  // --- the table -----------------------------------------------------------------------

  function scheduleRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    // Many events in one burst (a fleet starting) become one render.
    window.requestAnimationFrame(() => {
      state.renderQueued = false;
      render();
    });
  }

  function filters() {
    return {
      type: $("filter-type").value,
      capability: $("filter-capability").value.trim().toLowerCase(),
      phase: $("filter-phase").value,
    };
  }

  function matches(agent, wanted) {
    if (wanted.type && agent.type !== wanted.type) return false;
    if (wanted.phase && agent.status !== wanted.phase) return false;
    if (wanted.capability) {
      const names = [...(agent.capabilities || []), ...(agent.skills || [])];
      if (!names.some((name) => String(name).toLowerCase().includes(wanted.capability))) return false;
    }
    return true;
  }

  function render() {
    const all = [...state.agents.values()];
    renderCounts(all);
    renderFilterChoices(all);
    const wanted = filters();
    const shown = all
      .filter((agent) => matches(agent, wanted))
      .sort((a, b) => String(a.name).localeCompare(String(b.name)) || String(a.id).localeCompare(String(b.id)));

    const body = document.createDocumentFragment();
    for (const agent of shown.slice(0, MAX_ROWS)) body.append(row(agent));
    $("agent-rows").replaceChildren(body);

    const empty = $("empty");
    empty.hidden = shown.length > 0;
    empty.textContent = state.synced ? "No agents match." : "Waiting for the registry…";
    $("shown").textContent =
      shown.length > MAX_ROWS
        ? `showing the first ${MAX_ROWS} of ${shown.length} matching agents: narrow the filters`
        : `${shown.length} of ${all.length} agents`;
    if (state.selected) renderDetailFields();
  }

  function renderCounts(all) {
    const counts = Object.fromEntries(PHASES.map((phase) => [phase, 0]));
    for (const agent of all) if (agent.status in counts) counts[agent.status] += 1;
    const known = state.synced || all.length > 0;
    $("count-total").textContent = known ? all.length : "–";
    for (const phase of PHASES) $(`count-${phase}`).textContent = known ? counts[phase] : "–";
    const chosen = $("filter-phase").value;
    for (const tile of document.querySelectorAll(".count")) {
      tile.setAttribute("aria-pressed", String(tile.dataset.phase === chosen && chosen !== ""));
    }
  }

  // The type menu and the capability suggestions offer what the fleet has.
  function renderFilterChoices(all) {
    const types = new Set(KNOWN_TYPES);
    const capabilities = new Set();
    for (const agent of all) {
      types.add(agent.type);
      for (const name of agent.capabilities || []) capabilities.add(name);
      for (const name of agent.skills || []) capabilities.add(name);
    }
    const select = $("filter-type");
    const sortedTypes = [...types].sort();
    const current = [...select.options].slice(1).map((option) => option.value);
    if (current.join("\n") !== sortedTypes.join("\n")) {
      const chosen = select.value;
      const options = [el("option", "", "all types")];
      options[0].value = "";
      for (const type of sortedTypes) {
        const option = el("option", "", type);
        option.value = type;
        options.push(option);
      }
      select.replaceChildren(...options);
      select.value = chosen;
    }
    const list = $("known-capabilities");
    const sortedCapabilities = [...capabilities].sort().slice(0, MAX_ROWS);
    if (list.dataset.names !== sortedCapabilities.join("\n")) {
      list.dataset.names = sortedCapabilities.join("\n");
      list.replaceChildren(
        ...sortedCapabilities.map((name) => {
          const option = el("option");
          option.value = name;
          return option;
        }),
      );
    }
  }

  function row(agent) {
    const tr = el("tr");
    tr.dataset.agentId = agent.id;
    tr.tabIndex = 0;
    tr.classList.toggle("selected", agent.id === state.selected);
    tr.append(el("td", "name", agent.name), el("td", "type", agent.type));
    const phase = el("td", "phase-cell");
    phase.dataset.phase = agent.status;
    phase.append(phaseBadge(agent.status));
    tr.append(phase, el("td", "endpoint", endpoint(agent)), chips(agent));
    const heartbeat = timeCell("td", "time heartbeat", agent.last_seen, " ago");
    if (agent.last_seen) {
      heartbeat.title =
        agent.status === "unreachable"
          ? `Last heartbeat ${agent.last_seen}; none since, so the agent is unreachable.`
          : `Latest heartbeat the page was told of: ${agent.last_seen}. Heartbeats that change nothing else ` +
            `arrive in batches (every keep-alive period); an agent that is ${agent.status} has heartbeated ` +
            `within its unreachable window.`;
    }
    tr.append(heartbeat, timeCell("td", "time age", agent.registered_at, ""));
    return tr;
  }

  function chips(agent) {
    const td = el("td", "capabilities");
    const box = el("div", "chips");
    const health = capabilityHealth(agent);
    for (const name of agent.capabilities || []) {
      const report = health.get(name);
      const chip = el("span", `chip ${report && PHASES.includes(report.status) ? report.status : ""}`, name);
      chip.title = report ? `${report.status}${report.reason ? `: ${report.reason}` : ""}` : "capability";
      box.append(chip);
    }
    for (const name of agent.skills || []) {
      const chip = el("span", "chip skill", name);
      chip.title = "A2A skill (from the agent's card)";
      box.append(chip);
    }
    td.append(box);
    return td;
  }

  // --- the detail panel ------------------------------------------------------------------

  function openDetail(id) {
    state.selected = id;
    $("detail").hidden = false;
    $("detail-removed").hidden = true;
    for (const tr of $("agent-rows").children) tr.classList.toggle("selected", tr.dataset.agentId === id);
    renderDetailFields();
    loadCard(id);
    loadEvents(id);
  }

  function closeDetail() {
    state.selected = null;
    $("detail").hidden = true;
    for (const tr of $("agent-rows").children) tr.classList.remove("selected");
  }

  function renderDetailFields() {
    const agent = state.agents.get(state.selected);
    if (!agent) {
      // Removed while open (or a relist is under way): keep what is shown, say so.
      $("detail-removed").hidden = !state.synced;
      return;
    }
    $("detail-removed").hidden = true;
    $("detail-name").textContent = agent.name;
    const fields = $("detail-fields");
    const items = [];
    const add = (label, value) => {
      const dd = el("dd");
      if (value instanceof Node) dd.append(value);
      else dd.textContent = value === undefined || value === null || value === "" ? "–" : String(value);
      items.push(el("dt", "", label), dd);
    };
    add("id", agent.id);
    add("phase", phaseBadge(agent.status));
    add("type", agent.type);
    add("version", agent.version);
    add("endpoint", endpoint(agent));
    add("registered", agent.registered_at ? timeCell("span", "", agent.registered_at, " ago") : null);
    add("last heartbeat", agent.last_seen ? timeCell("span", "", agent.last_seen, " ago") : null);
    add("capabilities", chips(agent).firstChild);
    if (agent.metadata && Object.keys(agent.metadata).length > 0) {
      add("metadata", el("pre", "", JSON.stringify(agent.metadata, null, 2)));
    }
    fields.replaceChildren(...items);
  }

  async function getJson(path) {
    // "no-cache" revalidates with the ETag the facade sends: a card unchanged costs a 304.
    const response = await fetch(apiUrl(path), { headers: headers(), cache: "no-cache" });
    if (!response.ok) return { response, body: null, failure: await describeFailure(response) };
    return { response, body: await response.json(), failure: null };
  }

  async function loadCard(id) {
    const box = $("detail-card");
    try {
      const { response, body, failure } = await getJson(`agents/${encodeURIComponent(id)}/agent-card.json`);
      if (state.selected !== id) return;
      if (response.status === 404) {
        box.replaceChildren(el("p", "muted", "This agent has no A2A card."));
      } else if (failure) {
        box.replaceChildren(el("p", "error", failure));
      } else {
        box.replaceChildren(...card(body));
      }
    } catch (error) {
      if (state.selected === id) box.replaceChildren(el("p", "error", `cannot reach the registry (${error})`));
    }
  }

  function card(body) {
    const nodes = [];
    const fields = el("dl", "fields");
    const add = (label, value) => {
      if (value === undefined || value === null || value === "") return;
      fields.append(el("dt", "", label), el("dd", "", value));
    };
    add("name", body.name);
    add("description", body.description);
    add("version", body.version);
    if (body.provider) add("provider", [body.provider.organization, body.provider.url].filter(Boolean).join(" · "));
    for (const item of body.supportedInterfaces || []) {
      add("interface", [item.protocolBinding, item.protocolVersion, item.url].filter(Boolean).join(" "));
    }
    if (body.capabilities) {
      const on = Object.entries(body.capabilities)
        .filter(([, value]) => value === true)
        .map(([key]) => key);
      add("supports", on.join(", ") || "–");
    }
    add("input", (body.defaultInputModes || []).join(", "));
    add("output", (body.defaultOutputModes || []).join(", "));
    nodes.push(fields);
    const skills = el("ul", "skills");
    for (const skill of body.skills || []) {
      const li = el("li");
      li.append(el("strong", "", skill.name || skill.id), el("span", "muted", ` (${skill.id})`));
      if (skill.description) li.append(el("div", "", skill.description));
      if (skill.tags && skill.tags.length) li.append(el("div", "muted", `tags: ${skill.tags.join(", ")}`));
      skills.append(li);
    }
    if (skills.children.length) nodes.push(el("p", "", "Skills"), skills);
    const raw = el("details");
    raw.append(el("summary", "", "card as served (JSON)"), el("pre", "", JSON.stringify(body, null, 2)));
    nodes.push(raw);
    return nodes;
  }

  async function loadEvents(id) {
    const box = $("detail-events");
    try {
      const { body, failure } = await getJson(`agents/${encodeURIComponent(id)}/events`);
      if (state.selected !== id) return;
      if (failure) {
        box.replaceChildren(el("p", "error", failure));
        return;
      }
      const events = body.events || [];
      if (events.length === 0) {
        box.replaceChildren(el("p", "muted", "No Events (Kubernetes keeps them for an hour by default)."));
        return;
      }
      const table = el("table", "events");
      const head = el("tr");
      for (const label of ["Type", "Reason", "Message", "Count", "Last seen"]) head.append(el("th", "", label));
      table.append(head);
      for (const event of events) {
        const tr = el("tr");
        tr.append(
          el("td", event.type, event.type),
          el("td", "reason", event.reason),
          el("td", "", event.message),
          el("td", "", event.count),
          timeCell("td", "time", event.last_seen, " ago"),
        );
        tr.title = `from ${event.source || "?"}; first seen ${event.first_seen || "?"}`;
        table.append(tr);
      }
      box.replaceChildren(table);
    } catch (error) {
      if (state.selected === id) box.replaceChildren(el("p", "error", `cannot reach the registry (${error})`));
    }
  }

  // --- wiring ----------------------------------------------------------------------------

  function start() {
    const kept = window.sessionStorage.getItem(TOKEN_KEY);
    if (kept) {
      $("token").value = kept;
      $("remember").checked = true;
    }
    $("connect-form").addEventListener("submit", (event) => {
      event.preventDefault();
      connect();
    });
    for (const id of ["filter-type", "filter-phase"]) $(id).addEventListener("change", scheduleRender);
    $("filter-capability").addEventListener("input", scheduleRender);
    for (const tile of document.querySelectorAll(".count")) {
      tile.addEventListener("click", () => {
        const select = $("filter-phase");
        select.value = select.value === tile.dataset.phase ? "" : tile.dataset.phase;
        scheduleRender();
      });
    }
    const rows = $("agent-rows");
    rows.addEventListener("click", (event) => {
      const tr = event.target.closest("tr[data-agent-id]");
      if (tr) openDetail(tr.dataset.agentId);
    });
    rows.addEventListener("keydown", (event) => {
      const tr = event.target.closest("tr[data-agent-id]");
      if (tr && event.key === "Enter") openDetail(tr.dataset.agentId);
    });
    $("detail-close").addEventListener("click", closeDetail);
    $("detail-events-refresh").addEventListener("click", () => state.selected && loadEvents(state.selected));
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && state.selected) closeDetail();
    });
    window.setInterval(tick, 1000);
    // With authentication off (make run) an empty token works: connect at once. With it on,
    // the first answer is a 401 that says to paste a token.
    connect();
  }

  start();
})();
