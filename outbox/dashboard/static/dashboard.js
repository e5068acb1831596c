// The dashboard's only script: the overview refreshes itself every 2 s from /api/overview,
// and the dead-letter list's "choose all" box. Text goes in through
// textContent only (types, keys and worker ids are data, never markup).
"use strict";

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "-" : String(text);
  row.appendChild(td);
}

function fillTable(body, items, columns) {
  const rows = items.map((item) => {
    const tr = document.createElement("tr");
    columns.forEach((column) => cell(tr, item[column]));
    return tr;
  });
  body.replaceChildren(...rows);
}

function render(data) {
  for (const [name, value] of Object.entries(data.totals)) {
    const node = document.getElementById("total-" + name);
    if (node) node.textContent = String(value);
  }
  fillTable(document.getElementById("prefixes"), data.prefixes,
    ["prefix", "pending", "in_progress", "dead", "oldest_due_age", "published"]);
  fillTable(document.getElementById("leases"), data.lease_holders,
    ["worker_id", "rows", "earliest_lease_in"]);
  document.getElementById("chart-line").setAttribute("points", data.chart.points);
  document.getElementById("chart-peak").textContent = String(data.chart.peak);
  document.getElementById("taken-at").textContent = data.taken_at;
}

function live(section) {
  const refresh = async () => {
    try {
      const response = await fetch(section.dataset.live, { credentials: "same-origin" });
      if (response.ok) render(await response.json());
    } catch (error) {
      // the server is restarting or unreachable: try again at the next tick
    }
  };
  setInterval(refresh, 2000);
}

function deadList(form) {
  const all = document.getElementById("choose-all");
  if (all) {
    all.addEventListener("change", () => {
      form.querySelectorAll('input[name="id"]').forEach((box) => { box.checked = all.checked; });
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const section = document.getElementById("overview");
  if (section) live(section);
  const form = document.getElementById("dead-form");
  if (form) deadList(form);
});
