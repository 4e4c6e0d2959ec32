// The gosse demo page.  Every text that comes from the server is put into the
// page with textContent, never as markup.
"use strict";

(function () {
  const MAX_ROWS = 200;
  const $ = (id) => document.getElementById(id);
  const listened = new Set();
  let source = null;

  function setState(name) {
    const el = $("state");
    el.textContent = name;
    el.className = "state-" + name;
  }

  function cell(cls, text) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    return span;
  }

  function show(type, e) {
    if (e.lastEventId) $("last-id").textContent = e.lastEventId;
    if (type === "clock") {
      $("clock").textContent = e.data;
      if (!$("show-clock").checked) return;
    }
    const li = document.createElement("li");
    li.className = "event type-" + type.replace(/[^A-Za-z0-9_-]/g, "_");
    li.dataset.type = type;
    li.dataset.id = e.lastEventId;
    li.append(
      cell("time", new Date().toLocaleTimeString()),
      cell("type", "[" + type + "]"),
      cell("id", e.lastEventId ? "id=" + e.lastEventId : ""),
      cell("data", e.data));
    const list = $("events");
    list.prepend(li);
    while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
  }

  function listen(type) {
    type = type.trim();
    if (!type || listened.has(type)) return;
    listened.add(type);
    source.addEventListener(type, (e) => show(type, e));
    $("types").textContent = Array.from(listened).join(", ");
  }

  function connect() {
    setState("connecting");
    source = new EventSource("sse");
    source.addEventListener("open", () => {
      setState("open");
      refreshStats();
    });
    source.addEventListener("error", () => {
      // The browser reconnects by itself (sending Last-Event-ID) unless the
      // server answered with an error status or a wrong content type.
      setState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
    });
    const wanted = ["message", "clock", "gosse-reset"];
    const fromUrl = new URLSearchParams(location.search).get("types");
    if (fromUrl) wanted.push(...fromUrl.split(","));
    wanted.forEach(listen);
  }

  async function publish(ev) {
    ev.preventDefault();
    const form = ev.target;
    const body = {data: form.data.value};
    if (form.event.value) body.event = form.event.value;
    if (form.id.value) body.id = form.id.value;
    if (body.event) listen(body.event);
    const result = $("publish-result");
    try {
      const r = await fetch("publish", {
        method: "POST",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify(body),
      });
      const text = await r.text();
      if (r.ok) {
        const n = JSON.parse(text).delivered;
        result.textContent = "sent to " + n + " stream" + (n === 1 ? "" : "s");
        form.data.value = "";
      } else {
        result.textContent = "error " + r.status + ": " + text;
      }
    } catch (err) {
      result.textContent = "error: " + err;
    }
  }

  async function refreshStats() {
    try {
      const r = await fetch("stats", {cache: "no-store"});
      if (r.ok) $("sessions").textContent = String((await r.json()).sessions);
    } catch (err) {
      $("sessions").textContent = "?";
    }
  }

  function fillCommands() {
    const base = new URL(".", location.href).href;  // ends with "/"
    $("cmd-gosse").textContent = "gosse publish " + base + "publish --data 'hello'";
    $("cmd-curl").textContent = "curl -d data='hello' " + base + "publish";
    $("cmd-listen").textContent = "gosse listen " + base + "sse";
  }

  fillCommands();
  connect();
  $("publish").addEventListener("submit", publish);
  $("options").addEventListener("submit", (ev) => {
    ev.preventDefault();
    listen($("add-type").value);
    $("add-type").value = "";
  });
  refreshStats();
  setInterval(refreshStats, 5000);
})();
