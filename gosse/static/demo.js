// The events page: every event its EventSource (common.js) delivers, newest first.
"use strict";

(function () {
  const {$, hms, openStream, post} = window.gosseDemo;
  const MAX_ROWS = 200;
  const listened = new Set();
  let source = null;

  function cell(cls, text) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    return span;
  }

  function updateEmpty() {
    $("empty").hidden = $("events").children.length > 0;
  }

  function show(type, e) {
    if (e.lastEventId) $("last-id").textContent = e.lastEventId;
    if (type === "clock" && !$("show-clock").checked) return;
    const li = document.createElement("li");
    li.className = "event type-" + type.replace(/[^A-Za-z0-9_-]/g, "_");
    li.dataset.type = type;
    li.dataset.id = e.lastEventId;
    li.append(
      cell("time", hms(new Date())),
      cell("type", type),
      cell("id", e.lastEventId || ""),
      cell("data", e.data));
    const list = $("events");
    list.prepend(li);
    while (list.children.length > MAX_ROWS) list.lastElementChild.remove();
    updateEmpty();
  }

  function listen(type) {
    type = type.trim();
    if (!type || listened.has(type)) return;
    listened.add(type);
    source.addEventListener(type, (e) => show(type, e));
    $("types").textContent = Array.from(listened).join(", ");
  }

  async function publish(ev) {
    ev.preventDefault();
    const form = ev.target;
    const body = {data: form.data.value};
    if (form.event.value) body.event = form.event.value;
    if (form.id.value) body.id = form.id.value;
    if (body.event) listen(body.event);
    const [ok, answer] = await post("publish", body);
    const result = $("publish-result");
    result.classList.toggle("error", !ok);
    if (ok) {
      const n = answer.delivered;
      result.textContent = "sent to " + n + " stream" + (n === 1 ? "" : "s");
      form.data.value = "";
    } else {
      result.textContent = answer;
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

  source = openStream("", refreshStats);
  const wanted = ["message", "clock", "gosse-reset"];
  const fromUrl = new URLSearchParams(location.search).get("types");
  if (fromUrl) wanted.push(...fromUrl.split(","));
  wanted.forEach(listen);
  updateEmpty();

  $("publish").addEventListener("submit", publish);
  $("options").addEventListener("submit", (ev) => {
    ev.preventDefault();
    listen($("add-type").value);
    $("add-type").value = "";
  });
  refreshStats();
  setInterval(refreshStats, 5000);
})();
