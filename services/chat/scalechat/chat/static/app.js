// scalechat web client: one room, one WebSocket, automatic resume.
//
// Wire protocol: see services/chat/scalechat/chat/protocol.py. In short, the server sends a
// `history` frame on join, then live `message`, `presence` and `error` frames;
// we send {"type": "message", "text", "cid"} and our own message coming back
// with the same cid is its acknowledgement.
//
// Resume: after a drop we reconnect with ?since=<last seq>&epoch=<epoch>. The
// server answers with exactly the messages after that seq, or, when it cannot
// (continuity_lost, e.g. a restart gave the room a new epoch), with the latest
// messages; we then say so. Messages are deduplicated by seq within an epoch.
//
// Safety: user data only ever reaches the page through textContent.
"use strict";

(() => {
  const ROOM_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
  const MAX_NAME_CHARS = 32;
  // Python's str.isprintable() is false for these; the server refuses such names.
  const UNPRINTABLE = /[\p{C}\p{Zl}\p{Zp}]|(?! )\p{Zs}/u;
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const JITTER = 0.5; // each delay is scaled by a random factor in [1 - JITTER, 1 + JITTER]
  const MAX_LINES = 2000; // older lines are removed from the page (not from the dedupe set)
  const ALERT_MS = 6000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    join: $("join"), joinForm: $("join-form"), roomInput: $("room-input"),
    nameInput: $("name-input"), joinError: $("join-error"),
    chat: $("chat"), roomName: $("room-name"), members: $("members"), status: $("status"),
    retry: $("retry-button"), me: $("me"), leave: $("leave-button"),
    messages: $("messages"), composer: $("composer"), input: $("message-input"),
    alerts: $("alerts"),
  };

  const state = {
    room: null, name: null, token: null,
    ws: null, url: null,
    joined: false, // the current socket has delivered its history frame
    left: true,
    epoch: null, lastSeq: 0, seen: new Set(), // seqs shown in the current epoch
    me: null, node: null,
    attempt: 0, timer: null, ticker: null, retryAt: 0, why: "",
    pending: new Map(), // cid -> {text, li}: sent (or queued) but not yet echoed
  };

  // --- small helpers -------------------------------------------------------------------

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const pad = (n) => String(n).padStart(2, "0");
  function clock(ms) {
    const d = new Date(ms);
    return `[${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}]`;
  }

  function newCid() {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes); // works on plain http too, unlike randomUUID()
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function validateRoom(room) {
    return ROOM_PATTERN.test(room) ? null
      : "Room: 1-64 letters, digits, _ . - (starting with a letter or digit).";
  }

  function validateName(name) {
    const chars = [...name].length;
    if (chars < 1 || chars > MAX_NAME_CHARS) return `Name: 1-${MAX_NAME_CHARS} characters.`;
    if (UNPRINTABLE.test(name)) return "Name: printable characters only.";
    return null;
  }

  // --- the message list ----------------------------------------------------------------

  function nearBottom() {
    const list = ui.messages;
    return list.scrollHeight - list.scrollTop - list.clientHeight < 48;
  }

  function scrollToEnd() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  // New lines go above the pending (unconfirmed) messages, which stay last.
  function insertLine(li, before = ui.messages.querySelector("li.pending")) {
    const stick = nearBottom();
    ui.messages.insertBefore(li, before);
    while (ui.messages.childElementCount > MAX_LINES) ui.messages.firstElementChild.remove();
    if (stick) scrollToEnd();
  }

  function messageLine(time, from, text) {
    const li = make("li", "message");
    li.append(make("span", "time", time), " ", make("span", "from", from), ": ",
              make("span", "text", text));
    return li;
  }

  function addNotice(kind, text) {
    const li = make("li", "notice continuity");
    li.dataset.kind = kind;
    li.append(make("span", "time", clock(Date.now())), " ", make("span", "text", text));
    insertLine(li);
    return li;
  }

  function addMessage(m) {
    if (!Number.isInteger(m.seq) || state.seen.has(m.seq)) return; // already shown
    state.seen.add(m.seq);
    const own = m.from === state.me;
    if (own && m.cid && state.pending.has(m.cid)) {
      state.pending.get(m.cid).li.remove(); // confirmed: re-inserted below in seq order
      state.pending.delete(m.cid);
    }
    const li = messageLine(clock(m.ts), m.from, m.text);
    li.dataset.seq = String(m.seq);
    li.dataset.epoch = state.epoch;
    li.dataset.id = m.id;
    if (own) li.classList.add("own");
    li.title = new Date(m.ts).toLocaleString();
    let before;
    if (m.seq < state.lastSeq) { // an older message we had missed: keep seq order
      const epochLines = ui.messages.querySelectorAll(`li.message[data-epoch="${CSS.escape(state.epoch)}"]`);
      before = Array.from(epochLines).find((x) => Number(x.dataset.seq) > m.seq);
    }
    insertLine(li, before || ui.messages.querySelector("li.pending"));
    state.lastSeq = Math.max(state.lastSeq, m.seq);
  }

  function addPresence(f) {
    ui.members.textContent = `${f.count} online`;
    ui.members.dataset.count = String(f.count);
    if (f.name === state.me) return; // our own (re)joins would only be noise
    const li = make("li", `presence ${f.event}`);
    li.dataset.event = f.event;
    li.dataset.name = f.name;
    const verb = f.event === "join" ? "joined" : "left";
    li.append(make("span", "time", clock(Date.now())), " ", make("span", "from", f.name),
              ` ${verb}`);
    insertLine(li);
  }

  // --- alerts (error frames and close reasons) -----------------------------------------

  function showAlert(code, reason) {
    const box = make("div", "alert");
    box.dataset.code = code;
    box.append(make("strong", "code", code), " ", make("span", "reason", reason));
    ui.alerts.append(box);
    while (ui.alerts.childElementCount > 4) ui.alerts.firstElementChild.remove();
    setTimeout(() => box.classList.add("fade"), ALERT_MS - 600);
    setTimeout(() => box.remove(), ALERT_MS);
  }

  // --- status --------------------------------------------------------------------------

  function setStatus(kind, text) {
    ui.status.dataset.state = kind;
    ui.status.textContent = text;
    ui.retry.hidden = kind !== "reconnecting";
  }

  function tick() {
    const secs = Math.max(1, Math.ceil((state.retryAt - Date.now()) / 1000));
    setStatus("reconnecting", `${state.why} · reconnecting in ${secs} s`);
  }

  // --- the connection ------------------------------------------------------------------

  function clearTimers() {
    clearTimeout(state.timer);
    clearInterval(state.ticker);
    state.timer = state.ticker = null;
  }

  function connect() {
    clearTimers();
    const query = new URLSearchParams();
    if (state.name) query.set("name", state.name);
    if (state.token) query.set("token", state.token);
    if (state.epoch !== null) { // resume: ask for exactly what we have not seen
      query.set("since", String(state.lastSeq));
      query.set("epoch", state.epoch);
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    state.url = `${scheme}//${location.host}/ws/${encodeURIComponent(state.room)}?${query}`;
    setStatus("connecting", state.epoch === null ? "Connecting…" : "Resuming…");
    let ws;
    try {
      ws = new WebSocket(state.url);
    } catch (err) {
      state.why = "Cannot connect";
      scheduleReconnect();
      return;
    }
    state.ws = ws;
    state.joined = false;
    ws.onmessage = (ev) => { if (state.ws === ws) onFrame(ev.data); };
    ws.onclose = (ev) => { if (state.ws === ws) onClosed(ev.code, ev.reason); };
  }

  function onClosed(code, reason) {
    const wasJoined = state.joined;
    state.ws = null;
    state.joined = false;
    if (state.left) return;
    if (code === 1008 || code === 1013) showAlert(`closed ${code}`, reason || "closed by server");
    state.why = code === 1001 ? "Server going away"
      : wasJoined ? `Disconnected (${code})` : "Cannot connect";
    scheduleReconnect();
  }

  function scheduleReconnect() {
    clearTimers();
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(state.attempt, 20));
    const delay = base * (1 - JITTER + Math.random() * 2 * JITTER);
    state.attempt += 1;
    state.retryAt = Date.now() + delay;
    state.timer = setTimeout(connect, delay);
    state.ticker = setInterval(tick, 250);
    tick();
  }

  function reconnectNow() {
    if (state.left || state.ws) return;
    connect();
  }

  function onFrame(data) {
    let f;
    try {
      f = JSON.parse(data);
    } catch (err) {
      return;
    }
    switch (f.type) {
      case "history": onHistory(f); break;
      case "message": addMessage(f); break;
      case "presence": addPresence(f); break;
      case "error": onError(f); break;
      default: break; // newer server: ignore what we do not know
    }
  }

  function onHistory(f) {
    const resumed = state.epoch !== null;
    if (resumed && f.epoch !== state.epoch) {
      addNotice("epoch",
        "Continuity lost: the server restarted and the room began a new epoch. " +
        "Messages sent while you were disconnected may be missing; below are the new epoch's messages.");
      state.seen = new Set();
      state.lastSeq = 0;
    } else if (f.continuity_lost) {
      addNotice("gap",
        "Continuity lost: some messages may have been missed while you were disconnected.");
    }
    state.epoch = f.epoch;
    state.me = f.name;
    state.node = f.node;
    ui.me.textContent = f.name;
    ui.status.title = `node ${f.node}, epoch ${f.epoch}`;
    for (const m of f.messages) addMessage(m);
    // The room's latest seq, even when the history frame showed fewer (or no) messages.
    state.lastSeq = Math.max(state.lastSeq, f.last_seq || 0);
    state.attempt = 0;
    state.joined = true;
    setStatus("connected", "Connected");
    // Whatever the history did not confirm was not stored: (re)send it on this socket.
    for (const [cid, p] of state.pending) transmit(cid, p.text);
  }

  function onError(f) {
    const p = f.cid ? state.pending.get(f.cid) : undefined;
    if (p) {
      state.pending.delete(f.cid);
      p.li.classList.replace("pending", "failed");
      p.li.append(make("span", "failure", ` — not sent: ${f.reason}`));
      insertLine(p.li); // failed lines leave the pending tail
    }
    showAlert(f.code, f.reason);
  }

  function transmit(cid, text) {
    if (state.joined && state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(JSON.stringify({ type: "message", text, cid }));
    }
  }

  function send(text) {
    const cid = newCid();
    const li = messageLine(clock(Date.now()), state.me || state.name, text);
    li.classList.add("own", "pending");
    li.dataset.cid = cid;
    li.title = "not yet confirmed by the server";
    ui.messages.append(li);
    scrollToEnd();
    state.pending.set(cid, { text, li });
    transmit(cid, text); // if not connected, the next history frame triggers the send
  }

  // --- joining and leaving -------------------------------------------------------------

  function start(room, name, token) {
    Object.assign(state, {
      room, name, token, left: false, epoch: null, lastSeq: 0, seen: new Set(),
      me: name, attempt: 0, pending: new Map(),
    });
    ui.messages.replaceChildren();
    ui.members.textContent = "";
    ui.me.textContent = name;
    ui.roomName.textContent = room;
    document.title = `#${room} · scalechat`;
    ui.join.hidden = true;
    ui.chat.hidden = false;
    ui.input.focus();
    connect();
  }

  function leave() {
    state.left = true;
    clearTimers();
    const ws = state.ws;
    state.ws = null;
    if (ws) ws.close(1000, "left");
    setStatus("idle", "");
    history.replaceState(null, "", location.pathname);
    document.title = "scalechat";
    ui.chat.hidden = true;
    ui.join.hidden = false;
    ui.roomInput.value = state.room || "";
    ui.nameInput.value = state.name || "";
    ui.nameInput.focus();
  }

  ui.joinForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const room = ui.roomInput.value.trim();
    const name = ui.nameInput.value.trim();
    const problem = validateRoom(room) || validateName(name);
    ui.joinError.textContent = problem || "";
    ui.joinError.hidden = !problem;
    if (problem) return;
    const query = new URLSearchParams(location.search);
    query.set("room", room);
    query.set("name", name);
    history.replaceState(null, "", `${location.pathname}?${query}`);
    start(room, name, query.get("token"));
  });

  ui.composer.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = ui.input.value;
    if (!text.trim()) return;
    send(text);
    ui.input.value = "";
    autosize();
  });

  ui.input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      ui.composer.requestSubmit();
    }
  });

  function autosize() {
    ui.input.style.height = "auto";
    ui.input.style.height = `${Math.min(ui.input.scrollHeight, 160)}px`;
  }
  ui.input.addEventListener("input", autosize);

  ui.retry.addEventListener("click", reconnectNow);
  ui.leave.addEventListener("click", leave);
  window.addEventListener("online", reconnectNow); // the network is back: skip the wait

  // Hooks for browser tests (and curious humans in the console).
  window.__scalechat = {
    // Simulate a dropped connection: the page sees it closed at once and reconnects.
    dropConnection() {
      const ws = state.ws;
      if (!ws) return false;
      onClosed(4000, "dropped by test hook");
      ws.close(4000, "dropped by test hook");
      return true;
    },
    reconnectNow,
    snapshot: () => ({
      room: state.room, name: state.me, node: state.node, epoch: state.epoch,
      lastSeq: state.lastSeq, connected: state.joined, attempt: state.attempt,
      pending: state.pending.size, url: state.url,
    }),
  };

  // --- boot ----------------------------------------------------------------------------

  const params = new URLSearchParams(location.search);
  const room = (params.get("room") || "").trim();
  const name = (params.get("name") || "").trim();
  ui.roomInput.value = room;
  ui.nameInput.value = name;
  if (room && name && !validateRoom(room) && !validateName(name)) {
    start(room, name, params.get("token"));
  } else {
    (room ? ui.nameInput : ui.roomInput).focus();
  }
})();
