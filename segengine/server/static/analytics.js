// Analytics panels of the builder page: an overlap heatmap, a trend line with joined/left
// bars, a why panel, and split and priority tables. Plain SVG and HTML, no library: the
// page works offline. Uses app.js's `api`, `definition`, `refreshSaved`, `$`, `el` and `fmt`.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// The server's errors on one line, each with the request key it is about ("groups: ...").
function problem(target, res) {
  target.replaceChildren(el("p", { class: "errors", role: "alert", "data-testid": "panel-error" },
    (res.data.errors || [{ message: `error ${res.status}` }])
      .map((e) => (e.location ? `${e.location}: ${e.message}` : e.message)).join("; ")));
}

// A table of counts: a header row, one row per item headed by its name, a total row.
function countTable(testid, caption, columns, rows, footer) {
  const num = (i) => (columns[i][1] ? { class: "num" } : {});
  const head = el("tr", {}, columns.map(([name], i) => el("th", { scope: "col", ...num(i) }, name)));
  const line = (cells) => el("tr", {}, cells.map((c, i) => (i === 0 ? el("th", { scope: "row" }, c)
    : el("td", num(i), typeof c === "number" ? fmt(c) : c))));
  return el("div", { class: "table-wrap" }, el("table", { "data-testid": testid, class: "counts" },
    el("caption", {}, caption), el("thead", {}, head), el("tbody", {}, rows.map(line)),
    footer ? el("tfoot", {}, line(footer)) : null));
}

// The saved segments in a picker, keeping the choice when it still exists.
function fillPicker(select, names, first) {
  const keep = select.value;
  select.replaceChildren(...(first ? [el("option", { value: "" }, first)] : []),
    ...names.map((n) => el("option", { value: n }, n)));
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

function withAsOf(req) {
  if ($("as-of").value) req.as_of = $("as-of").value;
  return req;
}

// --- overlap -------------------------------------------------------------------------

function overlapChoices() {
  const box = $("overlap-choices");
  // the list is redrawn when segments are saved: the ticks stay where they were
  const ticked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
  box.replaceChildren(...(schema.segments || []).map((name) =>
    el("label", {}, el("input", { type: "checkbox", value: name, checked: ticked.has(name) }), ` ${name}`)));
}

async function showOverlap() {
  const picked = [...$("overlap-choices").querySelectorAll("input:checked")].map((i) => i.value);
  const segments = [definition(), ...picked];
  const target = $("overlap-chart");
  const res = await api("POST", "/api/overlap", withAsOf({ segments }));
  if (!res.ok) return problem(target, res);
  const doc = res.data;
  const names = doc.segments.map((n, i) => (i === 0 ? "this segment" : n));
  const k = names.length, cell = 56, left = 120, top = 24;
  const wide = left + cell * k + 90, high = top + cell * k + 8;
  // drawn at its own size, scaled down (viewBox) when the sidebar is narrower
  const chart = svg("svg", { width: wide, height: high, viewBox: `0 0 ${wide} ${high}`, role: "img",
    "aria-label": "overlap heatmap", "data-testid": "overlap-heatmap" });
  const biggest = Math.max(1, ...doc.total.map((row, i) => row[i]));
  names.forEach((name, i) => {
    chart.append(svg("text", { x: left - 6, y: top + cell * i + cell / 2 + 4, "text-anchor": "end" }, name));
    chart.append(svg("text", { x: left + cell * i + cell / 2, y: top - 8, "text-anchor": "middle" }, `${i + 1}`));
    doc.total[i].forEach((n, j) => {
      const shade = Math.round(235 - 175 * (n / biggest));
      const g = svg("g");
      g.append(svg("rect", { x: left + cell * j, y: top + cell * i, width: cell - 2, height: cell - 2,
        fill: `rgb(${shade},${shade + 10},255)` }));
      g.append(svg("text", { x: left + cell * j + cell / 2, y: top + cell * i + cell / 2 + 4,
        "text-anchor": "middle" }, fmt(n)));
      g.append(svg("title", {}, `${names[i]} and ${names[j]}: ${fmt(n)} (sendable ${fmt(doc.sendable[i][j])})`));
      chart.append(g);
    });
    chart.append(svg("text", { x: left + cell * k + 8, y: top + cell * i + cell / 2 + 4 },
      `only: ${fmt(doc.exclusive[i])}`));
  });
  target.replaceChildren(chart, el("p", { class: "meta" },
    `union ${fmt(doc.union.total)} contacts, ${fmt(doc.union.sendable)} sendable (as of ${doc.as_of})`));
}

// --- trend ---------------------------------------------------------------------------

async function showTrend() {
  const target = $("trend-chart");
  const req = { segments: [definition()], from: $("trend-from").value, to: $("trend-to").value,
    every: $("trend-every").value };
  const res = await api("POST", "/api/trend", req);
  if (!res.ok) return problem(target, res);
  const points = res.data.points;
  const width = 420, height = 200, pad = 36, bars = 50;
  const step = points.length > 1 ? (width - 2 * pad) / (points.length - 1) : 0;
  const most = Math.max(1, ...points.map((p) => p.total));
  const moves = Math.max(1, ...points.map((p) => Math.max(p.joined || 0, p.left || 0)));
  const x = (i) => pad + step * i;
  const y = (n) => height - pad - bars - (height - 2 * pad - bars) * (n / most);
  const base = height - pad - bars / 2;
  const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "trend", "data-testid": "trend-chart" });
  points.forEach((p, i) => {
    const up = (bars / 2) * ((p.joined || 0) / moves), down = (bars / 2) * ((p.left || 0) / moves);
    chart.append(svg("rect", { x: x(i) - 2, y: base - up, width: 4, height: up, fill: "#2e9d5b" }));
    chart.append(svg("rect", { x: x(i) - 2, y: base, width: 4, height: down, fill: "#c8553d" }));
  });
  chart.append(svg("polyline", { fill: "none", stroke: "#3358c4", "stroke-width": 2,
    points: points.map((p, i) => `${x(i)},${y(p.total)}`).join(" ") }));
  points.forEach((p, i) => {
    const dot = svg("circle", { cx: x(i), cy: y(p.total), r: 3, fill: "#3358c4" });
    dot.append(svg("title", {}, `${p.as_of}: ${fmt(p.total)} (sendable ${fmt(p.sendable)}), ` +
      `joined ${fmt(p.joined)}, left ${fmt(p.left)}`));
    chart.append(dot);
  });
  chart.append(svg("text", { x: pad, y: height - 6 }, points[0].as_of));
  chart.append(svg("text", { x: width - pad, y: height - 6, "text-anchor": "end" }, points[points.length - 1].as_of));
  chart.append(svg("text", { x: 4, y: 14 }, `max ${fmt(most)}`));
  target.replaceChildren(chart, el("p", { class: "meta" },
    `line: total; green bars: joined, red bars: left since the previous point`));
}

// --- why -----------------------------------------------------------------------------

function whyNode(node) {
  const rule = { ...node.rule };
  delete rule.rules;
  let text = `${node.matched ? "✓" : "✗"} ${node.kind} ${JSON.stringify(rule)}`;
  if ("value" in node) text += ` — value ${JSON.stringify(node.value)}`;
  if (node.events) text += ` — ${node.events.in_scope} event(s) in scope, ${node.events.in_window} in window`;
  const item = el("li", { class: node.matched ? "matched" : "unmatched" }, text);
  if (node.rules) item.append(el("ul", {}, ...node.rules.map(whyNode)));
  return item;
}

async function showWhy() {
  const target = $("why-result");
  const res = await api("POST", "/api/why", withAsOf({ email: $("why-email").value, segment: definition() }));
  if (!res.ok) return problem(target, res);
  const doc = res.data;
  target.replaceChildren(
    el("p", { "data-testid": "why-member" }, `${doc.email} ${doc.member ? "is in" : "is not in"} this segment`),
    el("ul", { class: "why" }, ...doc.rules.map(whyNode)));
}

// --- split ---------------------------------------------------------------------------

let splitGroups = [{ name: "a", percent: "45" }, { name: "b", percent: "45" }, { name: "holdout", percent: "10" }];

function renderSplitGroups() {
  const rows = splitGroups.map((g, i) => el("tr", {},
    el("td", {}, el("input", { id: `split-group-name-${i}`, "aria-label": `group ${i + 1} name`, value: g.name,
      size: 10, autocomplete: "off", oninput: (ev) => { g.name = ev.target.value; } })),
    el("td", { class: "num" }, el("input", { id: `split-group-percent-${i}`, "aria-label": `group ${i + 1} percent`,
      value: g.percent, class: "short num", inputmode: "decimal", autocomplete: "off",
      oninput: (ev) => { g.percent = ev.target.value; } })),
    el("td", {}, el("button", { id: `split-group-remove-${i}`, class: "ghost", "aria-label": `remove group ${i + 1}`,
      onclick: () => { splitGroups.splice(i, 1); renderSplitGroups(); } }, "✕"))));
  $("split-groups").tBodies[0].replaceChildren(...rows);
}

function splitRequest(save) {
  const picked = $("split-segment").value;
  // the seed goes as typed: an empty one is the server's to refuse, with its message
  const req = { segments: [picked || definition()], seed: $("split-seed").value,
    groups: splitGroups.map((g) => ({ name: g.name.trim(), percent: g.percent.trim() })) };
  if (save) req.save = $("split-prefix").value.trim();
  return withAsOf(req);
}

async function showSplit(save) {
  const target = $("split-result");
  const res = await api("POST", "/api/split", splitRequest(save));
  if (!res.ok) return problem(target, res);
  const doc = res.data;
  const sum = (key) => doc.groups.reduce((n, g) => n + g[key], 0);
  const table = countTable("split-table", `seed ${doc.seed}, as of ${doc.as_of}`,
    [["group"], ["share", true], ["buckets"], ["total", true], ["sendable", true]],
    doc.groups.map((g) => [g.name, `${g.percent} %`, `[${g.from}, ${g.to})`, g.total, g.sendable]),
    ["all groups", "100 %", "[0, 10000)", sum("total"), sum("sendable")]);
  const out = [table];
  if (doc.saved) {
    out.push(el("p", { class: "meta", "data-testid": "split-saved" }, `saved segments: ${doc.saved.join(", ")}`));
    await refreshSaved($("saved-select").value);
  }
  target.replaceChildren(...out);
}

// --- priority ------------------------------------------------------------------------

let priorityOrder = [];

function renderPriority() {
  const last = priorityOrder.length - 1;
  const move = (i, by) => {
    [priorityOrder[i], priorityOrder[i + by]] = [priorityOrder[i + by], priorityOrder[i]];
    renderPriority();
    $(`priority-${by < 0 ? "up" : "down"}-${i + by}`)?.focus();
  };
  $("priority-list").replaceChildren(...priorityOrder.map((name, i) => el("li", { "data-name": name },
    el("span", { class: "rank", "aria-hidden": "true" }, `${i + 1}.`), el("span", { class: "name" }, name),
    el("button", { id: `priority-up-${i}`, class: "ghost", "aria-label": `move ${name} up`, disabled: i === 0,
      onclick: () => move(i, -1) }, "↑"),
    el("button", { id: `priority-down-${i}`, class: "ghost", "aria-label": `move ${name} down`, disabled: i === last,
      onclick: () => move(i, 1) }, "↓"),
    el("button", { id: `priority-remove-${i}`, class: "ghost", "aria-label": `remove ${name}`,
      onclick: () => { priorityOrder.splice(i, 1); renderPriority(); } }, "✕"))));
  // a segment listed once is all a priority list can use: the picker offers the others
  fillPicker($("priority-pick"), (schema.segments || []).filter((n) => !priorityOrder.includes(n)));
  $("priority-add").disabled = !$("priority-pick").value;
}

function addPriority() {
  const name = $("priority-pick").value;
  if (name && !priorityOrder.includes(name)) priorityOrder.push(name);
  renderPriority();
}

async function showPriority() {
  const target = $("priority-result");
  const res = await api("POST", "/api/priority", withAsOf({ segments: priorityOrder }));
  if (!res.ok) return problem(target, res);
  const doc = res.data;
  target.replaceChildren(countTable("priority-table",
    `priority ${doc.segments.map((r) => r.segment).join(" > ")} (as of ${doc.as_of})`,
    [["segment"], ["matches", true], ["gets", true], ["sendable", true], ["lost to earlier", true]],
    doc.segments.map((r) => [r.segment, r.matched, r.total, r.sendable, r.lost]),
    ["union", doc.union.total, doc.union.total, doc.union.sendable, "–"]));
}

// Saved segments came or went: the pickers offer what is saved now.
function savedChanged() {
  const names = schema.segments || [];
  fillPicker($("split-segment"), names, "this segment");
  priorityOrder = priorityOrder.filter((n) => names.includes(n));
  renderPriority();
  if ($("overlap-panel").open) overlapChoices();
}

function startAnalytics() {
  const today = new Date().toISOString().slice(0, 10);
  const before = new Date(Date.now() - 89 * 86400000).toISOString().slice(0, 10);
  $("trend-from").value = before;
  $("trend-to").value = today;
  $("overlap-show").addEventListener("click", showOverlap);
  $("trend-show").addEventListener("click", showTrend);
  $("why-show").addEventListener("click", showWhy);
  $("why-email").addEventListener("keydown", (ev) => { if (ev.key === "Enter") showWhy(); });
  $("overlap-panel").addEventListener("toggle", () => $("overlap-panel").open && overlapChoices());
  renderSplitGroups();
  $("split-add-group").addEventListener("click", () => {
    splitGroups.push({ name: "", percent: "" });
    renderSplitGroups();
    $(`split-group-name-${splitGroups.length - 1}`).focus();
  });
  $("split-show").addEventListener("click", () => showSplit(false));
  $("split-save").addEventListener("click", () => showSplit(true));
  $("split-seed").addEventListener("keydown", (ev) => { if (ev.key === "Enter") showSplit(false); });
  $("split-prefix").addEventListener("keydown", (ev) => { if (ev.key === "Enter") showSplit(true); });
  $("priority-add").addEventListener("click", addPriority);
  $("priority-pick").addEventListener("change", () => { $("priority-add").disabled = !$("priority-pick").value; });
  $("priority-show").addEventListener("click", showPriority);
  document.addEventListener("segments-changed", savedChanged);
  for (const id of ["split-panel", "priority-panel"]) {
    $(id).addEventListener("toggle", () => $(id).open && savedChanged());
  }
}

startAnalytics();
