// What both demo pages share: the connection badge, the clock, one time
// format, and the terminal commands with this server's own URL.  Every text
// that comes from the server goes into the page with textContent, never as
// markup.
"use strict";

window.gosseDemo = (function () {
  const $ = (id) => document.getElementById(id);
  const pad = (n) => String(n).padStart(2, "0");

  // The one time format of the demo: 24-hour HH:MM:SS in the browser's
  // time zone.  Anything that is not a valid date shows as "--:--:--".
  function hms(date) {
    if (!(date instanceof Date) || isNaN(date.getTime())) return "--:--:--";
    return pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds());
  }

  function setState(name) {
    const el = $("state");
    el.textContent = name;
    el.className = "badge state-" + name;
  }

  // A clock event's data is the server's time in ISO 8601.
  function showClock(iso) {
    const el = $("clock");
    el.textContent = hms(new Date(iso));
    el.dateTime = iso;
    el.title = "server time " + iso;
  }

  // The page's base URL, ending in "/": the commands shown work as pasted.
  const base = new URL(".", location.href).href;

  // Fill every element with a data-command attribute: "{base}" is replaced.
  function fillCommands() {
    document.querySelectorAll("[data-command]").forEach((el) => {
      el.textContent = el.dataset.command.split("{base}").join(base);
    });
  }

  // An EventSource on "sse" + query, its state shown in the badge, and the
  // clock kept up to date.  onOpen runs after every (re)connection.
  function openStream(query, onOpen) {
    setState("connecting");
    const source = new EventSource("sse" + query);
    source.addEventListener("open", () => {
      setState("open");
      if (onOpen) onOpen();
    });
    source.addEventListener("error", () => {
      // The browser reconnects by itself (sending Last-Event-ID) unless the
      // server answered with an error status or a wrong content type.
      setState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
    });
    source.addEventListener("clock", (e) => showClock(e.data));
    return source;
  }

  // POST a JSON body; resolve to [ok, parsed JSON or error text].
  async function post(path, body) {
    try {
      const r = await fetch(path, {
        method: "POST",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify(body),
      });
      const text = await r.text();
      if (r.ok) return [true, JSON.parse(text)];
      return [false, "error " + r.status + ": " + text.trim()];
    } catch (err) {
      return [false, "error: " + err];
    }
  }

  fillCommands();
  return {$, hms, setState, showClock, openStream, post, base};
})();
