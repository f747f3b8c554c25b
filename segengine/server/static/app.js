"use strict";
// The segment builder: a tree of rules, kept as plain objects, rendered into forms.
// Every change schedules a count (debounced); answers older than the newest request
// are dropped, so the numbers on screen always belong to what is on screen.

const DEBOUNCE_MS = 150;
const ACTIVITIES = ["sent", "opened", "clicked", "bounced", "unsubscribed"];
const WHEN_OPS = ["on", "before", "after", "between", "in_last_days", "older_than_days"];
const COUNT_OPS = ["gte", "gt", "eq", "lte", "lt", "between"];
const NO_VALUE = new Set(["is_empty", "is_not_empty"]);
const LIST_OPS = new Set(["in", "not_in"]);
const DAY_OPS = new Set(["in_last_days", "older_than_days"]);

let schema = { fields: [], lists: [], campaigns: [], statuses: [], segments: [] };
let root = { kind: "group", match: "all", negate: false, rules: [] };
let seq = 0;            // the newest evaluation request
let timer = null;
const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json() : await res.blob();
  return { ok: res.ok, status: res.status, data, headers: res.headers };
}

// --- the model -----------------------------------------------------------------

function fieldType(name) {
  const f = schema.fields.find((x) => x.name === name);
  return f ? f.type : "text";
}
function operatorsOf(name) {
  const f = schema.fields.find((x) => x.name === name);
  return f ? f.operators : [];
}
function newRule(kind) {
  if (kind === "group") return { kind, match: "any", negate: false, rules: [] };
  if (kind === "activity") return { kind, activity: "opened", campaigns: "any", when: null, count: null, url: "", negate: false };
  if (kind === "segment") return { kind, segment: schema.segments[0] || "", negate: false };
  const field = schema.fields.find((f) => f.name === "status") ? "status" : (schema.fields[0] || {}).name;
  const node = { kind: "field", field, op: operatorsOf(field)[0], value: "", negate: false };
  if (field === "status") node.value = "active";
  return node;
}

function parseValue(node) {
  const t = fieldType(node.field);
  const num = (v) => (v === "" || isNaN(Number(v)) ? v : Number(v));
  const conv = (v) => (t === "number" ? num(v) : t === "boolean" ? v === "true" : v);
  if (NO_VALUE.has(node.op)) return undefined;
  if (DAY_OPS.has(node.op)) return num(node.value);
  if (node.op === "between") return [conv(node.value), conv(node.value2 || "")];
  if (LIST_OPS.has(node.op) || (t === "set" && Array.isArray(node.value))) {
    const items = Array.isArray(node.value) ? node.value : String(node.value).split(",").map((s) => s.trim()).filter(Boolean);
    return items.map(conv);
  }
  return conv(node.value);
}

function toDefinition(node) {
  let out;
  if (node.kind === "group") out = { match: node.match, rules: node.rules.map(toDefinition) };
  else if (node.kind === "segment") out = { segment: node.segment };
  else if (node.kind === "raw") out = { ...node.doc };
  else if (node.kind === "activity") {
    out = { activity: node.activity };
    if (Array.isArray(node.campaigns)) out.campaigns = node.campaigns;
    else if (node.campaigns && node.campaigns.last !== undefined) out.campaigns = { last: Number(node.campaigns.last) };
    if (node.when) out.when = { [node.when.op]: node.when.op === "between" ? [node.when.value, node.when.value2 || ""]
      : DAY_OPS.has(node.when.op) ? Number(node.when.value) : node.when.value };
    if (node.count) out.count = { [node.count.op]: node.count.op === "between"
      ? [Number(node.count.value), Number(node.count.value2)] : Number(node.count.value) };
    if (node.activity === "clicked" && node.url) out.url_contains = node.url;
  } else {
    out = { field: node.field, op: node.op };
    const v = parseValue(node);
    if (v !== undefined) out.value = v;
  }
  if (node.negate) out.negate = true;
  return out;
}

function fromDefinition(doc) {
  const negate = !!doc.negate;
  if (doc.rules) return { kind: "group", match: doc.match || "all", negate, rules: doc.rules.map(fromDefinition) };
  if (doc.segment !== undefined) return { kind: "segment", segment: doc.segment, negate };
  if (doc.field !== undefined) {
    const node = { kind: "field", field: doc.field, op: doc.op, value: "", negate };
    const v = doc.value;
    if (doc.op === "between" && Array.isArray(v)) { node.value = String(v[0]); node.value2 = String(v[1]); }
    else if (Array.isArray(v)) node.value = fieldType(doc.field) === "set" && !LIST_OPS.has(doc.op) && v.length === 1 ? v[0] : v.join(", ");
    else if (v !== undefined && v !== null) node.value = String(v);
    return node;
  }
  if (doc.activity !== undefined) {
    const node = { kind: "activity", activity: doc.activity, campaigns: "any", when: null, count: null, url: doc.url_contains || "", negate };
    if (Array.isArray(doc.campaigns)) node.campaigns = doc.campaigns;
    else if (doc.campaigns && typeof doc.campaigns === "object") node.campaigns = { last: doc.campaigns.last };
    for (const key of ["when", "count"]) {
      if (doc[key]) {
        const [op, v] = Object.entries(doc[key])[0];
        node[key] = Array.isArray(v) ? { op, value: String(v[0]), value2: String(v[1]) } : { op, value: String(v) };
      }
    }
    return node;
  }
  return { kind: "raw", doc, negate: false };
}

function definition() {
  const doc = toDefinition(root);
  const name = $("seg-name").value.trim();
  if (name) doc.name = name;
  const desc = $("seg-desc").value.trim();
  if (desc) doc.description = desc;
  return doc;
}

// --- rendering -----------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "class") e.className = v;
    else if (v === true) e.setAttribute(k, "");
    else if (v !== false && v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
  return e;
}
function select(id, label, options, value, onchange) {
  const s = el("select", { id, "aria-label": label, onchange: (ev) => onchange(ev.target.value) });
  for (const o of options) {
    const [v, text] = Array.isArray(o) ? o : [o, o];
    s.append(el("option", { value: v, selected: String(v) === String(value) }, text));
  }
  return s;
}
function input(id, label, value, oninput, attrs = {}) {
  return el("input", { id, "aria-label": label, value: value ?? "", oninput: (ev) => oninput(ev.target.value), ...attrs });
}

// Structural edits re-render the tree; focus returns to the control with the same id.
function changed(structural) {
  if (structural) {
    const focused = document.activeElement && document.activeElement.id;
    render();
    if (focused && $(focused)) $(focused).focus();
  }
  schedule();
}

function render() {
  const tree = $("tree");
  tree.replaceChildren(renderGroup(root, "", true));
}

function renderGroup(group, path, top) {
  const box = el("div", { class: top ? "group root-group" : "group", "data-path": path });
  const at = (i) => `${path ? path + "." : ""}rules[${i}]`;
  const id = path || "top";
  const head = el("div", { class: "group-head" },
    el("span", { class: "label" }, top ? "Contacts matching" : "Group:"),
    select(`${id}-match`, "match", [["all", "all of"], ["any", "any of"]], group.match,
      (v) => { group.match = v; changed(false); }),
    el("span", { class: "label" }, "these rules"),
    negateBox(group, id),
    top ? null : el("button", { class: "ghost", id: `${id}-remove`, "aria-label": "remove group",
      onclick: () => removeAt(path) }, "✕"));
  box.append(head, el("div", { class: "problem", id: `problem-${path}` }));
  if (top) box.lastChild.id = "problem-rules";
  if (top && group.rules.length) box.append(el("div", { class: "badge-head", "aria-hidden": "true" }, "on its own"));
  if (!group.rules.length) {
    box.append(el("p", { class: "empty" }, top
      ? "No rules yet: every contact matches. Add a rule below."
      : (group.match === "all" ? "An empty all-group matches every contact." : "An empty any-group matches no contact.")));
  }
  const list = el("ol", { class: "rules" });
  group.rules.forEach((rule, i) => {
    const p = at(i);
    list.append(rule.kind === "group"
      ? el("li", { class: "rule-group" }, top ? countBadge(i) : null, renderGroup(rule, p, false))
      : el("li", { class: "rule", "data-path": p }, top ? countBadge(i) : null, renderRule(rule, p)));
  });
  box.append(list);
  const add = el("div", { class: "add" }, el("span", { class: "label" }, "Add"));
  for (const [kind, text] of [["field", "field rule"], ["activity", "activity rule"], ["segment", "saved segment"], ["group", "group"]]) {
    add.append(el("button", { id: `${id}-add-${kind}`, "data-testid": top ? `add-${kind}` : null,
      onclick: () => { group.rules.push(newRule(kind)); changed(true); } }, "+ " + text));
  }
  box.append(add);
  return box;
}

function countBadge(i) {
  return el("span", { class: "badge", id: `rule-count-${i}`, title: "contacts this rule matches on its own" }, "…");
}

function negateBox(node, path) {
  return el("label", { class: "negate" }, el("input", { type: "checkbox", id: `${path}-negate`, checked: node.negate,
    onchange: (ev) => { node.negate = ev.target.checked; changed(false); } }), "not");
}

function removeAt(path) {
  // path looks like rules[0].rules[2]: drop the rule or group at that position
  const parts = [...path.matchAll(/\[(\d+)\]/g)].map((m) => Number(m[1]));
  let parent = root;
  for (const i of parts.slice(0, -1)) parent = parent.rules[i];
  parent.rules.splice(parts[parts.length - 1], 1);
  changed(true);
}

function renderRule(rule, path) {
  const row = el("div", { class: "rule-row" });
  const parts = [negateBox(rule, path)];
  if (rule.kind === "field") parts.push(...fieldControls(rule, path));
  else if (rule.kind === "activity") parts.push(...activityControls(rule, path));
  else if (rule.kind === "segment") {
    parts.push(el("span", { class: "label" }, "in saved segment"),
      select(`${path}-segment`, "saved segment", schema.segments.length ? schema.segments : [""], rule.segment,
        (v) => { rule.segment = v; changed(false); }));
  } else parts.push(el("code", {}, JSON.stringify(rule.doc)));
  parts.push(el("button", { class: "ghost", id: `${path}-remove`, "aria-label": "remove rule",
    onclick: () => removeAt(path) }, "✕"));
  row.append(...parts);
  return el("div", {}, row, el("div", { class: "problem", id: `problem-${path}` }));
}

function fieldControls(rule, path) {
  const t = fieldType(rule.field);
  const out = [
    select(`${path}-field`, "field", schema.fields.map((f) => [f.name, `${f.name} (${f.type})`]), rule.field, (v) => {
      rule.field = v; rule.op = operatorsOf(v)[0]; rule.value = v === "status" ? "active" : ""; rule.value2 = "";
      changed(true);
    }),
    select(`${path}-op`, "operator", operatorsOf(rule.field), rule.op, (v) => { rule.op = v; changed(true); }),
  ];
  const set = (v) => { rule.value = v; changed(false); };
  const set2 = (v) => { rule.value2 = v; changed(false); };
  if (NO_VALUE.has(rule.op)) return out;
  if (DAY_OPS.has(rule.op)) {
    out.push(input(`${path}-value`, "days", rule.value, set, { type: "number", min: 0, class: "short" }), el("span", { class: "label" }, "days"));
  } else if (t === "enum" && !LIST_OPS.has(rule.op)) {
    out.push(select(`${path}-value`, "value", schema.statuses, rule.value, set));
  } else if (t === "set") {
    out.push(select(`${path}-value`, "list", [["", "choose a list"], ...schema.lists], rule.value, set));
  } else if (t === "boolean") {
    if (rule.value === "") rule.value = "true";
    out.push(select(`${path}-value`, "value", ["true", "false"], rule.value, set));
  } else {
    const kind = t === "number" ? "number" : (t === "date" || t === "datetime") && !LIST_OPS.has(rule.op) ? "date" : "text";
    const hint = LIST_OPS.has(rule.op) ? "a, b, c" : "";
    out.push(input(`${path}-value`, "value", rule.value, set, { type: kind, placeholder: hint }));
    if (rule.op === "between") out.push(el("span", { class: "label" }, "and"), input(`${path}-value2`, "upper value", rule.value2, set2, { type: kind }));
  }
  return out;
}

function activityControls(rule, path) {
  const out = [
    el("span", { class: "label" }, "has"),
    select(`${path}-activity`, "activity", ACTIVITIES, rule.activity, (v) => { rule.activity = v; changed(true); }),
  ];
  const mode = Array.isArray(rule.campaigns) ? "chosen" : rule.campaigns && rule.campaigns.last !== undefined ? "last" : "any";
  out.push(el("span", { class: "label" }, "in"), select(`${path}-campaigns`, "campaigns", [["any", "any campaign"], ["chosen", "these campaigns"], ["last", "the last N campaigns"]], mode, (v) => {
    rule.campaigns = v === "chosen" ? [] : v === "last" ? { last: 3 } : "any"; changed(true);
  }));
  if (mode === "last") out.push(input(`${path}-last`, "last N campaigns", rule.campaigns.last, (v) => { rule.campaigns.last = v; changed(false); }, { type: "number", min: 1, class: "short" }));
  if (mode === "chosen") {
    const picker = el("select", { id: `${path}-campaign-list`, multiple: true, size: 4, "aria-label": "campaigns",
      onchange: (ev) => { rule.campaigns = [...ev.target.selectedOptions].map((o) => o.value); changed(false); } });
    for (const c of schema.campaigns) {
      picker.append(el("option", { value: c.id, selected: rule.campaigns.includes(c.id) }, `${c.id} · ${c.sent_at ? c.sent_at.slice(0, 10) : "never sent"}`));
    }
    out.push(picker);
  }
  const whenOp = rule.when ? rule.when.op : "";
  out.push(select(`${path}-when`, "when", [["", "at any time"], ...WHEN_OPS.map((o) => [o, "when " + o.replaceAll("_", " ")])], whenOp, (v) => {
    rule.when = v ? { op: v, value: DAY_OPS.has(v) ? "30" : "", value2: "" } : null; changed(true);
  }));
  if (rule.when) {
    const type = DAY_OPS.has(rule.when.op) ? "number" : "date";
    out.push(input(`${path}-when-value`, "when value", rule.when.value, (v) => { rule.when.value = v; changed(false); }, { type, class: type === "number" ? "short" : "" }));
    if (rule.when.op === "between") out.push(input(`${path}-when-value2`, "when upper", rule.when.value2, (v) => { rule.when.value2 = v; changed(false); }, { type: "date" }));
  }
  const countOp = rule.count ? rule.count.op : "";
  out.push(select(`${path}-count`, "count", [["", "at least once"], ...COUNT_OPS.map((o) => [o, "count " + o])], countOp, (v) => {
    rule.count = v ? { op: v, value: "1", value2: "3" } : null; changed(true);
  }));
  if (rule.count) {
    out.push(input(`${path}-count-value`, "count value", rule.count.value, (v) => { rule.count.value = v; changed(false); }, { type: "number", min: 0, class: "short" }));
    if (rule.count.op === "between") out.push(input(`${path}-count-value2`, "count upper", rule.count.value2, (v) => { rule.count.value2 = v; changed(false); }, { type: "number", min: 0, class: "short" }));
  }
  if (rule.activity === "clicked") out.push(input(`${path}-url`, "URL contains", rule.url, (v) => { rule.url = v; changed(false); }, { placeholder: "URL contains" }));
  return out;
}

// --- evaluation ----------------------------------------------------------------

function schedule() {
  clearTimeout(timer);
  timer = setTimeout(evaluate, DEBOUNCE_MS);
}

const fmt = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "–");

function body(extra = {}) {
  const out = { segments: [definition()], ...extra };
  const asOf = $("as-of").value;
  if (asOf) out.as_of = asOf;
  return out;
}

async function evaluate() {
  const mine = ++seq;
  const started = performance.now();
  const req = body();
  document.body.classList.add("busy");
  const explainBody = { segment: req.segments[0] };
  if (req.as_of) explainBody.as_of = req.as_of;
  let count, explain;
  try {
    [count, explain] = await Promise.all([api("POST", "/api/count", req), api("POST", "/api/explain", explainBody)]);
  } catch (err) {
    if (mine === seq) $("count-meta").textContent = "the server cannot be reached: is segengine serve running?";
    return;
  }
  if (mine !== seq) return;  // a newer definition is on screen
  document.body.classList.remove("busy");
  showProblems(count.ok ? [] : count.data.errors || []);
  if (!count.ok) {
    for (const id of ["count-total", "count-active", "count-unsubscribed", "count-bounced", "count-sendable"]) $(id).textContent = "–";
    $("count-meta").textContent = count.status === 400 ? "fix the problems shown at the rules"
      : (count.data.errors || [{ message: `error ${count.status}` }])[0].message;
    document.querySelectorAll(".badge").forEach((b) => { b.textContent = "–"; });
    $("members-meta").textContent = "";
    $("members").tBodies[0].replaceChildren();
    return;
  }
  const c = count.data;
  $("count-total").textContent = fmt(c.total);
  for (const s of ["active", "unsubscribed", "bounced"]) $(`count-${s}`).textContent = fmt(c.by_status[s]);
  $("count-sendable").textContent = fmt(c.sendable);
  $("count-meta").textContent = `as of ${c.as_of} · server ${c.elapsed_ms.toFixed(1)} ms · round trip ${Math.round(performance.now() - started)} ms`;
  document.body.dataset.countedAt = String(performance.now());
  if (explain.ok) {
    (explain.data.tree.rules || []).forEach((r, i) => { const b = $(`rule-count-${i}`); if (b) b.textContent = fmt(r.matches); });
  }
  loadMembers(mine);
  if ($("sql-panel").open) loadSql(mine);
}

function showProblems(errors) {
  document.querySelectorAll(".problem").forEach((p) => { p.textContent = ""; });
  document.querySelectorAll(".invalid").forEach((p) => p.classList.remove("invalid"));
  const general = [];
  for (const e of errors) {
    // rules[1].rules[0].value -> the nearest rule or group shown on the page
    let loc = e.location || "";
    let target = null;
    while (loc && !(target = $(`problem-${loc}`))) {
      const cut = Math.max(loc.lastIndexOf("."), loc.lastIndexOf("["));
      loc = cut > 0 ? loc.slice(0, cut) : "";
    }
    if (target) {
      // the part of the location below the rule says which value is wrong
      const rest = e.location.slice(loc.length).replace(/^\./, "");
      const text = rest ? `${rest}: ${e.message}` : e.message;
      target.textContent += (target.textContent ? "\n" : "") + text;
      target.parentElement.classList.add("invalid");
    } else general.push(e.location ? `${e.location}: ${e.message}` : e.message);
  }
  $("general-errors").textContent = general.join("\n");
}

async function loadMembers(mine) {
  if (!$("members-panel").open) return;
  const fields = schema.fields.map((f) => f.name);
  const columns = ["email", "status", ...fields.filter((f) => !["email", "status", "lists", "email_domain", "date_added"].includes(f)).slice(0, 3)];
  const res = await api("POST", "/api/members", body({ limit: 20, columns }));
  if (mine !== seq || !res.ok) return;
  $("members-meta").textContent = `${fmt(res.data.total)} active contacts; the first ${res.data.rows.length} by email`;
  const table = $("members");
  table.tHead.replaceChildren(el("tr", {}, columns.map((c) => el("th", {}, c))));
  table.tBodies[0].replaceChildren(...res.data.rows.map((r) => el("tr", {}, columns.map((c) => el("td", {}, r[c] === null ? "" : String(r[c]))))));
}

async function loadSql(mine) {
  const req = { segment: definition(), dialect: $("dialect").value };
  if ($("as-of").value) req.as_of = $("as-of").value;
  const res = await api("POST", "/api/sql", req);
  if (mine !== undefined && mine !== seq) return;
  $("sql").textContent = res.ok ? res.data.sql : (res.data.errors || []).map((e) => e.message).join("\n");
}

// --- saving, loading, exporting ------------------------------------------------

async function refreshSaved(selected) {
  const res = await api("GET", "/api/segments");
  if (!res.ok) return;
  schema.segments = res.data.segments.map((s) => s.name);
  const s = $("saved-select");
  s.replaceChildren(el("option", { value: "" }, "—"), ...res.data.segments.map((x) =>
    el("option", { value: x.name, selected: x.name === selected, title: x.description || "" }, x.name)));
  document.dispatchEvent(new Event("segments-changed"));  // the analytics panels' pickers follow
}

async function openSaved(name) {
  const res = await api("GET", `/api/segments/${encodeURIComponent(name)}`);
  if (!res.ok) {
    $("save-status").textContent = (res.data.errors || [{ message: `error ${res.status}` }])[0].message;
    return;
  }
  root = fromDefinition(res.data);
  $("seg-name").value = res.data.name;
  $("seg-desc").value = res.data.description || "";
  $("saved-select").value = res.data.name;
  $("save-status").textContent = `opened ${res.data.name}`;
  changed(true);
}

async function save() {
  const name = $("seg-name").value.trim();
  if (!/^[a-z0-9][a-z0-9_-]{0,63}$/.test(name)) {
    $("save-status").textContent = "give a name: lower-case letters, digits, - and _";
    $("seg-name").focus();
    return;
  }
  const res = await api("PUT", `/api/segments/${name}`, definition());
  if (res.ok) {
    $("save-status").textContent = `saved ${name}`;
    await refreshSaved(name);
    history.replaceState(null, "", `/?segment=${encodeURIComponent(name)}`);
  } else {
    showProblems(res.data.errors || []);
    $("save-status").textContent = `not saved: ${(res.data.errors || [{ message: res.status }])[0].message}`;
  }
}

async function exportFile() {
  const format = $("export-format").value;
  $("export-status").textContent = "exporting…";
  const res = await api("POST", "/api/export", body({ format }));
  if (!res.ok) {
    $("export-status").textContent = (res.data.errors || [{ message: `error ${res.status}` }])[0].message;
    return;
  }
  const name = ($("seg-name").value.trim() || "segment") + "." + format;
  const link = el("a", { href: URL.createObjectURL(res.data), download: name });
  document.body.append(link);
  link.click();
  link.remove();
  $("export-status").textContent = `${fmt(Number(res.headers.get("x-segengine-rows")))} rows in ${name}`;
}

async function start() {
  const res = await api("GET", "/api/schema");
  if (!res.ok) {
    $("general-errors").textContent = (res.data.errors || [{ message: `error ${res.status}` }])[0].message;
    return;
  }
  schema = res.data;
  await refreshSaved();
  $("saved-select").addEventListener("change", (ev) => ev.target.value && openSaved(ev.target.value));
  $("save").addEventListener("click", save);
  $("seg-name").addEventListener("keydown", (ev) => { if (ev.key === "Enter") save(); });
  $("export").addEventListener("click", exportFile);
  $("as-of").addEventListener("change", schedule);
  $("dialect").addEventListener("change", () => loadSql());
  $("sql-panel").addEventListener("toggle", () => $("sql-panel").open && loadSql());
  $("members-panel").addEventListener("toggle", () => $("members-panel").open && loadMembers(seq));
  const wanted = new URLSearchParams(location.search).get("segment");
  if (wanted) await openSaved(wanted);
  else changed(true);
}

start();
