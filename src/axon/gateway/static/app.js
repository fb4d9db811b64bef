// Axon web chat: a single page over the session API. No framework, no build step.
// Model output is only ever written with textContent, never parsed as HTML.
// Served under a strict Content-Security-Policy: no inline scripts or styles, no eval.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = {
  sessions: $("sessions"), more: $("more-sessions"), newSession: $("new-session"),
  title: $("chat-title"), status: $("status"), messages: $("messages"), empty: $("empty"),
  error: $("error"), form: $("composer-form"), composer: $("composer"),
  send: $("send"), stop: $("stop"), forgetKey: $("forget-key"),
  keyDialog: $("key-dialog"), keyForm: $("key-form"), keyMessage: $("key-message"),
  keyInput: $("key-input"),
};

const CANCEL_GRACE_MS = 5000; // abort the stream if no `done` arrives this long after Stop
// Re-attaching to a reply whose stream dropped: the first wait, doubling up to the cap; give
// up after this many attempts, or this long, that brought no new token.
const REATTACH_FIRST_MS = 250;
const REATTACH_MAX_MS = 4000;
const REATTACH_TRIES = 10;
const REATTACH_GIVE_UP_MS = 60000;
const PAGE_SIZE = 30;
const RECONNECTING = "Reconnecting…";
const LAST_KEY = "axon.lastSession";
const API_KEY = "axon.apiKey";

const state = {
  sessions: [],      // newest first, as the server lists them
  cursor: null,      // next_cursor of the last page loaded
  currentId: null,
  // The reply being generated: {sessionId, replyId, el, controller, timer, lastEventId,
  // tokens, stopping, userEl}.
  gen: null,
};

// ---- API key ----------------------------------------------------------------
// Kept in localStorage so a reload does not ask again (in memory only when storage is
// disabled), sent as a bearer token on every call, dropped when the server refuses it.

class ApiError extends Error {}

const auth = {
  memory: null,  // the key, when localStorage is unavailable
  pending: null, // the open prompt: {promise, resolve, reject}, shared by every waiting call
};

function apiKey() {
  try { return localStorage.getItem(API_KEY); } catch (_) { return auth.memory; }
}

function setApiKey(key) {
  auth.memory = key;
  try {
    if (key) localStorage.setItem(API_KEY, key); else localStorage.removeItem(API_KEY);
  } catch (_) { /* storage disabled: keep it for this page only */ }
  ui.forgetKey.hidden = !key;
}

// Opens the key prompt (once, however many calls are waiting); resolves when a key is
// entered, rejects when the prompt is dismissed.
function askForKey(refused) {
  ui.keyMessage.textContent = refused
    ? "That API key was refused. Enter a valid API key."
    : "This server requires an API key.";
  ui.keyMessage.classList.toggle("problem", refused);
  if (!auth.pending) {
    let resolve, reject;
    const promise = new Promise((yes, no) => { resolve = yes; reject = no; });
    auth.pending = { promise, resolve, reject };
    ui.keyInput.value = "";
    if (!ui.keyDialog.open) ui.keyDialog.showModal();
    ui.keyInput.focus();
  }
  return auth.pending.promise;
}

function submitKey() {
  const key = ui.keyInput.value.trim();
  // A header value cannot hold anything else, and fetch's error would not say why.
  if (!/^[\x21-\x7e]+$/.test(key)) {
    ui.keyMessage.textContent = "An API key has only letters, digits and punctuation.";
    ui.keyMessage.classList.add("problem");
    ui.keyInput.focus();
    return;
  }
  setApiKey(key);
  ui.keyInput.value = "";
  const pending = auth.pending;
  auth.pending = null;
  ui.keyDialog.close();
  if (pending) pending.resolve();
}

function keyPromptClosed() {
  // Dismissed without a key (Escape): the calls waiting for one fail; the next call asks again.
  const pending = auth.pending;
  auth.pending = null;
  ui.keyInput.value = "";
  if (pending) pending.reject(new ApiError("This server requires an API key."));
}

function forgetKey() {
  if (state.gen) state.gen.controller.abort();
  setApiKey(null);
  state.sessions = [];
  state.cursor = null;
  clearChat();
  report(start()); // the server asks for a key again, if it needs one
}

// ---- HTTP -----------------------------------------------------------------

// Every API call goes through here. A 401 means the server did nothing, so after a new key
// is entered the same request is sent again.
async function authFetch(path, init = {}) {
  for (;;) {
    const key = apiKey();
    const headers = new Headers(init.headers);
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const res = await fetch(path, { ...init, headers });
    if (res.status !== 401) return res;
    if (apiKey() !== key) continue; // a new key was entered while this call was out
    setApiKey(null);
    await askForKey(key !== null);
  }
}

async function errorFrom(res) {
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) message = body.error.message;
  } catch (_) { /* not JSON: keep the status line */ }
  return new ApiError(message);
}

async function api(path, options = {}) {
  const init = { ...options, headers: { Accept: "application/json", ...(options.headers || {}) } };
  if (options.json !== undefined) {
    init.body = JSON.stringify(options.json);
    init.headers["Content-Type"] = "application/json";
  }
  const res = await authFetch(path, init);
  if (!res.ok) throw await errorFrom(res);
  return res.status === 204 ? null : res.json();
}

// Reads a text/event-stream body and calls onEvent(name, data, id) for each event; onEvent
// returns true to stop reading. Resolves to true when the body ended, false when the
// connection failed first (an abort still rejects). An event is complete only at its blank
// line: one cut short by a dropped connection is never handed out, as in EventSource.
async function readSse(res, onEvent) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const dispatch = (block) => {
    let name = "message", id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") name = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
    }
    return data.length ? onEvent(name, JSON.parse(data.join("\n")), id) : false;
  };
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch (err) {
      if (err.name === "AbortError") throw err;
      return false; // the network failed mid-body
    }
    const { value, done } = chunk;
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    buffer = buffer.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (dispatch(block)) {
        reader.cancel().catch(() => {});
        return true;
      }
    }
    if (done) return true;
  }
}

// Event ids are "<milliseconds>-<sequence>". A re-attach that replays from earlier than
// asked (a proxy that drops the Last-Event-ID header) must not show a token twice.
function isNewEvent(id, last) {
  if (!id || !last) return true;
  const parse = (s) => /^(\d+)-(\d+)$/.exec(s);
  const a = parse(id), b = parse(last);
  if (!a || !b) return true;
  const ms = Number(a[1]) - Number(b[1]);
  return ms > 0 || (ms === 0 && Number(a[2]) > Number(b[2]));
}

// Resolves after ms, or rejects with an AbortError when signal aborts first.
function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    const aborted = () => new DOMException("The wait was aborted.", "AbortError");
    if (signal.aborted) { reject(aborted()); return; }
    const onAbort = () => { clearTimeout(timer); reject(aborted()); };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

// ---- Rendering --------------------------------------------------------------

function setStatus(text) {
  ui.status.textContent = text;
  ui.status.classList.toggle("reconnecting", text === RECONNECTING);
}

function showError(message) {
  ui.error.textContent = message;
  ui.error.hidden = !message;
}

function sessionLabel(s) {
  return s.title || "Untitled chat";
}

function renderSessions() {
  ui.sessions.replaceChildren(...state.sessions.map((s) => {
    const li = document.createElement("li");
    li.className = "session" + (s.id === state.currentId ? " active" : "");
    li.dataset.testid = "session-item";
    li.dataset.sessionId = s.id;

    const open = document.createElement("button");
    open.type = "button";
    open.className = "session-open";
    const when = document.createElement("time");
    when.dateTime = s.updated_at || s.created_at;
    when.textContent = new Date(when.dateTime).toLocaleString([], {
      month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
    });
    const label = document.createElement("span");
    label.textContent = sessionLabel(s);
    open.append(label, when);
    if (s.id === state.currentId) open.setAttribute("aria-current", "true");
    open.addEventListener("click", () => selectSession(s.id));

    const del = document.createElement("button");
    del.type = "button";
    del.className = "session-delete";
    del.dataset.testid = "delete-session";
    del.textContent = "×";
    del.setAttribute("aria-label", `Delete “${sessionLabel(s)}”`);
    del.addEventListener("click", () => deleteSession(s.id));

    li.append(open, del);
    return li;
  }));
  ui.more.hidden = !state.cursor;
}

function messageEl(role, text, id) {
  const el = document.createElement("article");
  el.className = `message ${role}`;
  el.dataset.testid = "message";
  el.dataset.role = role;
  if (id) el.dataset.messageId = id;
  el.setAttribute("aria-label", role === "user" ? "You" : "Assistant");
  el.textContent = text;
  return el;
}

function appendMessage(el) {
  ui.empty.hidden = true;
  ui.messages.append(el);
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function setFinish(el, reason) {
  if (reason && reason !== "stop") el.dataset.finish = reason;
}

function renderHistory(session) {
  ui.messages.replaceChildren(ui.empty);
  ui.empty.hidden = session.messages.length > 0;
  for (const m of session.messages) {
    if (m.role !== "user" && m.role !== "assistant") continue;
    const el = messageEl(m.role, m.content, m.id);
    setFinish(el, m.finish_reason);
    appendMessage(el);
  }
}

function setGenerating(on) {
  ui.stop.hidden = !on;
  ui.stop.disabled = false;
  ui.send.disabled = on;
}

// ---- Sessions ---------------------------------------------------------------

async function loadSessions(more = false) {
  const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (more && state.cursor) params.set("after", state.cursor);
  const page = await api(`/v1/sessions?${params}`);
  state.sessions = more ? state.sessions.concat(page.data) : page.data;
  state.cursor = page.has_more ? page.next_cursor : null;
  const current = state.sessions.find((s) => s.id === state.currentId);
  if (current) ui.title.textContent = sessionLabel(current); // the server may have titled it
  renderSessions();
}

function remember(id) {
  try {
    if (id) localStorage.setItem(LAST_KEY, id); else localStorage.removeItem(LAST_KEY);
  } catch (_) { /* storage disabled: the hash still works */ }
  history.replaceState(null, "", id ? `#s=${encodeURIComponent(id)}` : location.pathname);
}

function clearChat() {
  state.currentId = null;
  remember(null);
  ui.title.textContent = "New chat";
  ui.messages.replaceChildren(ui.empty);
  ui.empty.hidden = false;
  renderSessions();
}

async function selectSession(id) {
  showError("");
  if (!state.gen) setStatus("");
  const session = await api(`/v1/sessions/${encodeURIComponent(id)}`);
  state.currentId = id;
  remember(id);
  ui.title.textContent = sessionLabel(session);
  renderHistory(session);
  renderSessions();

  const gen = state.gen;
  if (gen && gen.sessionId === id) {
    // Still streaming into this session: show the live reply again.
    if (!session.messages.some((m) => m.id === gen.replyId)) appendMessage(gen.el);
    return;
  }
  // A reply still being generated (e.g. after a reload): re-attach to its stream.
  const last = session.messages[session.messages.length - 1];
  if (!gen && last && last.role === "user" && last.reply_id && last.status !== "failed") {
    const path = `/v1/sessions/${encodeURIComponent(id)}/messages/${last.reply_id}/stream`;
    const init = { method: "GET", headers: { Accept: "text/event-stream" } };
    report(stream(id, path, init, { replyId: last.reply_id }));
  }
}

// Sessions are created by their first message, so they are titled and never empty.
async function createSession(firstMessage) {
  const title = firstMessage.split("\n")[0].slice(0, 60);
  const session = await api("/v1/sessions", { method: "POST", json: { title } });
  state.sessions.unshift(session);
  await selectSession(session.id);
  return session;
}

function newChat() {
  showError("");
  if (!state.gen) setStatus("");
  clearChat();
  ui.composer.focus();
}

async function deleteSession(id) {
  if (state.gen && state.gen.sessionId === id) await stopGeneration();
  await api(`/v1/sessions/${encodeURIComponent(id)}`, { method: "DELETE" });
  state.sessions = state.sessions.filter((s) => s.id !== id);
  if (state.currentId === id) clearChat(); else renderSessions();
}

// ---- Chat turns ---------------------------------------------------------------

async function sendMessage() {
  const content = ui.composer.value.trim();
  if (!content || state.gen) return;
  showError("");
  if (!state.currentId) await createSession(content);
  const sessionId = state.currentId;
  ui.composer.value = "";
  const userEl = messageEl("user", content);
  appendMessage(userEl);
  const path = `/v1/sessions/${encodeURIComponent(sessionId)}/messages`;
  const started = await stream(sessionId, path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify({ content, stream: true }),
  }, { userEl });
  if (!started) {
    // Refused before the turn began (e.g. a rate limit): nothing was stored, so give the
    // text back to the user to retry.
    userEl.remove();
    ui.empty.hidden = ui.messages.querySelector('[data-testid="message"]') !== null;
    if (!ui.composer.value) ui.composer.value = content;
  }
}

// Runs one reply stream (a new turn, or a re-attach when replyId is given) into a new
// assistant message. Resolves to whether the turn began (its reply id is known). A stream
// that drops once the reply id is known is re-attached to: the reply goes on on the server.
async function stream(sessionId, path, init, { replyId = null, userEl = null } = {}) {
  const el = messageEl("assistant", "", replyId);
  el.classList.add("streaming");
  const gen = {
    sessionId, replyId, el, controller: new AbortController(), timer: null,
    lastEventId: null, // id of the last event received: where a re-attach resumes
    tokens: 0,         // tokens received: a re-attach that brings some made progress
    stopping: false,
    userEl,
  };
  state.gen = gen;
  setGenerating(true);
  setStatus("Generating…");
  try {
    let res = null;
    try {
      res = await authFetch(path, { ...init, signal: gen.controller.signal });
    } catch (err) {
      // No answer at all: a new turn cannot be re-attached to (its id is unknown), and
      // sending it again could ask the same question twice.
      if (err.name === "AbortError" || !gen.replyId) throw networkError(err);
    }
    if (res && replyId && res.status === 404) { setStatus(""); return false; } // expired
    if (res && replyId && mayRetry(res)) res = null; // a page-load re-attach: try again
    if (res) {
      if (!res.ok) throw await errorFrom(res);
      showReply(gen);
    }
    if (!res || !(await follow(gen, res))) {
      if (!gen.replyId) throw new ApiError("The connection closed before the reply began.");
      await reattach(gen);
    }
  } catch (err) {
    if (err.name === "AbortError") {
      setStatus("Stopped");
      el.dataset.finish = "cancelled";
    } else {
      setStatus("");
      el.dataset.finish = "error";
      if (state.currentId === sessionId) showError(err.message || String(err));
    }
    if (!el.textContent) el.remove();
  } finally {
    clearTimeout(gen.timer);
    gen.controller.abort(); // release the connection if we stopped reading early
    el.classList.remove("streaming");
    if (state.gen === gen) state.gen = null;
    setGenerating(false);
    loadSessions().catch(() => {});
  }
  return gen.replyId !== null;
}

// Rate limited (a dropped stream may still hold its slot for a moment), restarting or
// overloaded: a re-attach may pass a moment later.
function mayRetry(res) {
  return res.status === 429 || res.status >= 500;
}

function networkError(err) {
  return err instanceof TypeError ? new ApiError("Could not reach the server.") : err;
}

function showReply(gen) {
  if (!gen.el.isConnected && state.currentId === gen.sessionId) appendMessage(gen.el);
}

// Reads one response's events into the reply. Resolves to true when the reply is over
// (`done`), false when the stream ended without its final event or with an `error` that
// asks to re-attach; an `error` that ends the reply throws.
async function follow(gen, res) {
  const el = gen.el;
  let final = false;
  await readSse(res, (event, data, id) => {
    if (!isNewEvent(id, gen.lastEventId)) return false;
    if (id) gen.lastEventId = id;
    if (event === "turn") {
      gen.replyId = data.reply_id;
      el.dataset.messageId = data.reply_id;
      if (gen.userEl && data.user_message) gen.userEl.dataset.messageId = data.user_message.id;
    } else if (event === "token") {
      gen.tokens += 1;
      el.append(data.text);
      if (state.currentId === gen.sessionId) ui.messages.scrollTop = ui.messages.scrollHeight;
    } else if (event === "done") {
      final = true;
      if (data.message && typeof data.message.content === "string") {
        el.textContent = data.message.content;
      }
      setFinish(el, data.finish_reason);
      const usage = data.usage ? ` · ${data.usage.completion_tokens} tokens` : "";
      setStatus((data.finish_reason === "cancelled" ? "Stopped" : "Done") + usage);
      return true;
    } else if (event === "error") {
      // The server is going away, or a backend failed mid-reply: the reply goes on.
      if (data.reattach === true) return true;
      final = true;
      throw new ApiError((data.error && data.error.message) || "The reply failed.");
    }
    return false;
  });
  return final;
}

// Follows a reply whose stream dropped to its end, from the last event received, backing
// off between attempts. Each request goes through authFetch, so it carries the same key.
async function reattach(gen) {
  const path = `/v1/sessions/${encodeURIComponent(gen.sessionId)}` +
    `/messages/${encodeURIComponent(gen.replyId)}/stream`;
  const signal = gen.controller.signal;
  let delay = REATTACH_FIRST_MS, tries = 0, since = Date.now();
  while (tries < REATTACH_TRIES && Date.now() - since < REATTACH_GIVE_UP_MS) {
    if (!gen.stopping) setStatus(RECONNECTING);
    await pause(delay, signal);
    delay = Math.min(delay * 2, REATTACH_MAX_MS);
    tries += 1;
    const before = gen.tokens;
    // Without an id (no token yet) the server replays from the start: nothing was shown.
    const headers = { Accept: "text/event-stream" };
    if (gen.lastEventId) headers["Last-Event-ID"] = gen.lastEventId;
    let res;
    try {
      res = await authFetch(path, { method: "GET", headers, signal });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      continue; // unreachable for now (restarting, network down)
    }
    if (mayRetry(res)) continue;
    if (!res.ok) throw await errorFrom(res);
    if (!gen.stopping) setStatus("Generating…");
    showReply(gen);
    if (await follow(gen, res)) return;
    if (gen.tokens > before) { delay = REATTACH_FIRST_MS; tries = 0; since = Date.now(); }
  }
  throw new ApiError("Lost the connection to the server; the reply may still finish there.");
}

async function stopGeneration() {
  const gen = state.gen;
  if (!gen) return;
  ui.stop.disabled = true;
  gen.stopping = true;
  setStatus("Stopping…");
  gen.timer = setTimeout(() => gen.controller.abort(), CANCEL_GRACE_MS);
  if (!gen.replyId) { gen.controller.abort(); return; }
  const path = `/v1/sessions/${encodeURIComponent(gen.sessionId)}` +
    `/messages/${encodeURIComponent(gen.replyId)}/cancel`;
  try {
    await api(path, { method: "POST" });
  } catch (err) {
    gen.controller.abort();
    showError(err.message);
  }
}

// ---- Wiring -------------------------------------------------------------------

function report(promise) {
  promise.catch((err) => showError(err.message || String(err)));
}

ui.form.addEventListener("submit", (e) => { e.preventDefault(); report(sendMessage()); });
ui.composer.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    report(sendMessage());
  }
});
ui.stop.addEventListener("click", () => report(stopGeneration()));
ui.newSession.addEventListener("click", newChat);
ui.more.addEventListener("click", () => report(loadSessions(true)));
ui.forgetKey.addEventListener("click", forgetKey);
ui.keyForm.addEventListener("submit", (e) => { e.preventDefault(); submitKey(); });
ui.keyDialog.addEventListener("close", keyPromptClosed);

function initialSession() {
  const match = /^#s=(.+)$/.exec(location.hash);
  if (match) return decodeURIComponent(match[1]);
  try { return localStorage.getItem(LAST_KEY); } catch (_) { return null; }
}

async function start() {
  await loadSessions();
  const id = initialSession();
  if (!id) return;
  try {
    await selectSession(id);
  } catch (_) {
    clearChat(); // deleted or unknown: start fresh rather than show an error
  }
}

ui.forgetKey.hidden = !apiKey();
report(start());
