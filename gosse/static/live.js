// The jobs and chat page: one EventSource that joined the topic "jobs"
// (job progress) and receives every broadcast (chat messages, the clock).
"use strict";

(function () {
  const {$, hms, openStream, post} = window.gosseDemo;
  const MAX_MESSAGES = 100;
  const MAX_JOBS = 20;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function parse(e) {
    if (e.lastEventId) $("last-id").textContent = e.lastEventId;
    try {
      return JSON.parse(e.data);
    } catch (err) {
      return null;
    }
  }

  // -- jobs ------------------------------------------------------------------

  // One row per job; a state older than the one shown (the snapshot from
  // GET /jobs can cross a newer event) is ignored.
  function showJob(job) {
    if (!job || typeof job.job !== "string") return;
    const list = $("jobs");
    let li = list.querySelector('li[data-job="' + CSS.escape(job.job) + '"]');
    if (!li) {
      li = el("li", "job");
      li.dataset.job = job.job;
      li.dataset.done = "-1";
      const bar = el("progress");
      bar.setAttribute("aria-label", "progress of job " + job.job);
      li.append(el("span", "job-name", "Job " + job.job), bar,
                el("span", "job-percent"), el("span", "job-state"));
      list.prepend(li);
      while (list.children.length > MAX_JOBS) list.lastElementChild.remove();
    }
    if (job.done < Number(li.dataset.done)) return;
    const percent = job.total ? Math.round(100 * job.done / job.total) : 0;
    li.dataset.done = String(job.done);
    li.dataset.state = job.state;
    const bar = li.querySelector("progress");
    bar.max = job.total;
    bar.value = job.done;
    li.querySelector(".job-percent").textContent = percent + " %";
    li.querySelector(".job-state").textContent =
      job.state === "running" ? job.done + " / " + job.total + " steps" : job.state;
    $("jobs-empty").hidden = true;
  }

  async function loadJobs() {
    try {
      const r = await fetch("jobs", {cache: "no-store"});
      if (r.ok) (await r.json()).jobs.forEach(showJob);
    } catch (err) {
      // The stream's events still show every job from now on.
    }
  }

  async function startJob(ev) {
    ev.preventDefault();
    const [ok, answer] = await post("jobs", {steps: Number($("job-steps").value)});
    const result = $("job-result");
    result.classList.toggle("error", !ok);
    if (ok) {
      result.textContent = "job " + answer.job + " started";
      showJob(answer);
    } else {
      result.textContent = answer;
    }
  }

  // -- chat ------------------------------------------------------------------

  function showMessage(msg) {
    if (!msg || typeof msg.text !== "string") return;
    const list = $("messages");
    const li = el("li", "message");
    li.append(el("span", "time", hms(new Date(msg.time))),
              el("span", "name", String(msg.name)),
              el("span", "text", msg.text));
    list.append(li);
    while (list.children.length > MAX_MESSAGES) list.firstElementChild.remove();
    list.scrollTop = list.scrollHeight;
    $("chat-empty").hidden = true;
  }

  async function sendMessage(ev) {
    ev.preventDefault();
    const name = $("chat-name").value.trim();
    try {
      localStorage.setItem("gosse-demo-name", name);
    } catch (err) {
      // No storage (private mode): the name is just not remembered.
    }
    const [ok, answer] = await post("chat", {name: name, text: $("chat-text").value});
    const result = $("chat-result");
    result.classList.toggle("error", !ok);
    result.textContent = ok ? "" : answer;
    if (ok) $("chat-text").value = "";
  }

  let name = null;
  try {
    name = localStorage.getItem("gosse-demo-name");
  } catch (err) {
    name = null;
  }
  $("chat-name").value = name || "guest-" + Math.floor(100 + Math.random() * 900);

  const source = openStream("?topic=jobs", loadJobs);
  source.addEventListener("job", (e) => showJob(parse(e)));
  source.addEventListener("chat", (e) => showMessage(parse(e)));
  $("job-form").addEventListener("submit", startJob);
  $("chat-form").addEventListener("submit", sendMessage);
})();
