// bulkmdm serve: the only script. It shows the credential fields of the chosen
// product and follows a running job by server-sent events. Every page works
// without it too (the run page then reloads itself every few seconds).
"use strict";

function showCredentials() {
  const select = document.getElementById("provider");
  if (!select) return;
  const update = () => {
    for (const set of document.querySelectorAll("fieldset.creds")) {
      const on = set.dataset.provider === select.value;
      set.hidden = !on;
      for (const input of set.querySelectorAll("input")) input.disabled = !on;
    }
  };
  select.addEventListener("change", update);
  update();
}

const ORDER = ["succeeded", "skipped", "planned", "failed", "invalid", "unknown", "not-run", "in flight", "waiting"];

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  seconds = Math.round(seconds);
  if (seconds >= 3600) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  if (seconds >= 60) return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  return `${seconds} s`;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function render(p) {
  const set = (id, text) => { const el = document.getElementById(id); if (el) el.textContent = text; };
  set("done", p.done);
  set("total", p.total);
  set("rate", p.rate ? p.rate.toFixed(1) : "–");
  set("eta", p.eta === null || p.eta === undefined ? "time left: estimating…" : `${duration(p.eta)} left`);
  set("state", p.state);
  const bar = document.getElementById("bar");
  if (bar) { bar.max = p.total || 1; bar.value = p.done; }
  const chips = document.getElementById("chips");
  if (chips) {
    const list = document.createElement("ul");
    list.className = "chips";
    for (const status of ORDER) {
      if (!p.counts[status]) continue;
      const li = document.createElement("li");
      li.className = `chip s-${status.replace(" ", "-")}`;
      const b = document.createElement("b");
      b.textContent = p.counts[status];
      li.append(b, ` ${status}`);
      list.append(li);
    }
    chips.replaceChildren(list);
  }
  const failures = document.querySelector("#failures tbody");
  if (failures) {
    failures.replaceChildren();
    for (const f of p.failures) {
      const row = failures.insertRow();
      cell(row, `line ${f.line}`, "num");
      const tag = document.createElement("span");
      tag.className = `tag s-${f.status}`;
      tag.textContent = f.status;
      row.insertCell().append(tag);
      cell(row, f.detail);
    }
    if (!p.failures.length) cell(failures.insertRow(), "None so far.", "muted");
  }
  const log = document.getElementById("log");
  if (log && p.lines.length) log.textContent = p.lines.join("\n");
  refreshRows(p.done);
}

function follow() {
  const box = document.querySelector("[data-events]");
  if (!box || !window.EventSource) return;
  const source = new EventSource(box.dataset.events);
  source.onmessage = (event) => {
    const progress = JSON.parse(event.data);
    // the page was loaded before the run had rows: load it again once it has, for the row table
    if (progress.state === "running" && "reloadWhenRunning" in box.dataset) {
      source.close();
      window.location.reload();
      return;
    }
    render(progress);
  };
  source.addEventListener("end", () => { source.close(); window.location.reload(); });
}

const rows = { shown: null, asked: 0 };

async function refreshRows(done) {
  // the row table of a running job, fetched again (same filter, search and page) when rows got done,
  // at most every second and a half
  const box = document.querySelector("[data-live]");
  const part = document.getElementById("rows-live");
  if (!box || !part || !window.fetch || done === rows.shown || Date.now() - rows.asked < 1500) return;
  rows.asked = Date.now();
  rows.shown = done;
  const answer = await fetch(box.dataset.live + window.location.search, { credentials: "same-origin" });
  if (answer.status === 200) part.innerHTML = await answer.text();
}

function oneSubmitEach() {
  // a second click on "Run" must not start the same job twice
  for (const form of document.querySelectorAll("form")) {
    form.addEventListener("submit", () => {
      setTimeout(() => { for (const b of form.querySelectorAll("button")) b.disabled = true; }, 0);
    });
  }
}

document.addEventListener("DOMContentLoaded", () => { showCredentials(); follow(); oneSubmitEach(); });
