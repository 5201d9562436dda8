// CE-LIF dashboard: a single page over the public API (/api/v1). No framework, no build step.
// The token lives in localStorage and goes out as "Authorization: Bearer"; the SSE stream is read
// with fetch() streaming so the token never appears in a URL.
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "celif_token";
// One colour per split, the same while a job runs and after it finished.
const SPLIT_COLORS = { train: "#2855d8", val: "#d97706", test: "#157f3b", baseline: "#667085" };

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
};

const state = {
  // Every task, neuron and mode name comes from the server's catalog (/tasks, /neurons):
  // {tasks, neurons, default_task, default_neuron, training_defaults, training_schema}
  catalog: null,
  jobsTimer: null,
  jobView: null, // per-job page state, reset on navigation
  studyView: null, // per-study page state, reset on navigation
};

// ------------------------------------------------------------------ API
class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
    this.detail = detail;
  }
}

function token() {
  return localStorage.getItem(TOKEN_KEY);
}

async function api(path, { method = "GET", body, raw = false, headers = {} } = {}) {
  const opts = { method, headers: { Authorization: `Bearer ${token()}`, ...headers } };
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) {
    opts.body = JSON.stringify(body);
    opts.headers["Content-Type"] = "application/json";
  }
  const resp = await fetch(API + path, opts);
  if (resp.status === 401) {
    signOut("Your token was refused; sign in again.");
    throw new ApiError(401, "unauthorized");
  }
  if (!resp.ok) {
    let detail = resp.statusText;
    try {
      detail = (await resp.json()).detail;
    } catch (_) {}
    throw new ApiError(resp.status, detail);
  }
  if (raw) return resp;
  return resp.status === 204 ? null : resp.json();
}

function errorText(err) {
  if (err instanceof ApiError && Array.isArray(err.detail)) {
    return err.detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("\n");
  }
  return err.message || String(err);
}

// ------------------------------------------------------------------ routing
function show(view) {
  for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== `view-${view}`;
}

function stopJobView() {
  if (state.jobView) {
    state.jobView.abort.abort();
    clearInterval(state.jobView.timer);
    state.jobView = null;
  }
  clearInterval(state.jobsTimer);
  state.jobsTimer = null;
  if (state.studyView) {
    clearInterval(state.studyView.timer);
    state.studyView = null;
  }
}

async function route() {
  stopJobView();
  if (!token()) {
    $("#nav").hidden = true;
    show("signin");
    return;
  }
  $("#nav").hidden = false;
  const hash = location.hash.replace(/^#/, "") || "/";
  const m = hash.match(/^\/jobs\/([^/]+)$/);
  const ms = hash.match(/^\/studies\/([^/]+)$/);
  try {
    if (m) await showJob(m[1]);
    else if (ms) await showStudy(ms[1]);
    else if (hash === "/studies") await showStudies();
    else if (hash === "/new") await showNewJob();
    else if (hash === "/datasets") await showDatasets();
    else await showJobs();
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) console.error(err);
  }
}

function signOut(message) {
  localStorage.removeItem(TOKEN_KEY);
  state.catalog = null;
  $("#signin-error").textContent = message || "";
  location.hash = "#/";
  route();
}

async function signIn(ev) {
  ev.preventDefault();
  const value = $("#token-input").value.trim();
  if (!value) return;
  const resp = await fetch(`${API}/jobs?limit=1`, { headers: { Authorization: `Bearer ${value}` } });
  if (!resp.ok) {
    $("#signin-error").textContent = resp.status === 401 ? "That token was refused." : `Error ${resp.status}`;
    return;
  }
  localStorage.setItem(TOKEN_KEY, value);
  $("#token-input").value = "";
  $("#signin-error").textContent = "";
  route();
}

// ------------------------------------------------------------------ job list
// Integers as integers (`step 300`, not 300.0), other numbers to 4 significant digits, strings
// as they are (`split test`, not "test").
function fmtNum(v) {
  if (typeof v !== "number") return typeof v === "string" ? v : JSON.stringify(v);
  if (Number.isInteger(v)) return String(v);
  return String(Number(v.toPrecision(4)));
}

function fmtMetrics(metrics) {
  return Object.entries(metrics || {})
    .filter(([, v]) => typeof v === "number")
    .slice(0, 3)
    .map(([k, v]) => `${k} ${fmtNum(v)}`)
    .join(", ");
}

async function showJobs() {
  show("jobs");
  const refresh = async () => {
    const data = await api("/jobs?limit=100");
    const tbody = $("#jobs-table tbody");
    tbody.replaceChildren(
      ...data.items.map((j) =>
        el(
          "tr",
          { dataset: { jobId: j.id, status: j.status } },
          el("td", {}, el("a", { href: `#/jobs/${j.id}` }, j.name || j.id)),
          el("td", {}, j.task),
          el("td", {}, j.neuron),
          el("td", {}, el("span", { class: `status ${j.status}`, title: j.waiting_for ? `waiting for ${j.waiting_for}` : "" }, j.status),
            j.queue_has_worker === false ? el("span", { class: "field-error" }, `no ${j.queue} worker online`) : ""),
          el("td", {}, `${j.progress.step}/${j.progress.max_steps}`),
          el("td", {}, fmtMetrics(j.best_metrics)),
          el("td", {}, new Date(j.created_at).toLocaleString()),
        ),
      ),
    );
    $("#jobs-empty").hidden = data.items.length > 0;
  };
  await refresh();
  state.jobsTimer = setInterval(() => refresh().catch(() => {}), 2000);
}

// ------------------------------------------------------------------ studies
async function showStudies() {
  show("studies");
  const refresh = async () => {
    const data = await api("/studies?limit=100");
    $("#studies-table tbody").replaceChildren(
      ...data.items.map((s) =>
        el(
          "tr",
          { dataset: { studyId: s.id, status: s.status } },
          el("td", {}, el("a", { href: `#/studies/${s.id}` }, s.name || s.id)),
          el("td", {}, el("span", { class: `status ${s.status}` }, s.status)),
          el("td", {}, `${s.progress.finished}/${s.progress.trials}`),
          el("td", {}, `${s.objective.metric} (${s.objective.mode})`),
          el("td", {}, new Date(s.created_at).toLocaleString()),
        ),
      ),
    );
    $("#studies-empty").hidden = data.items.length > 0;
  };
  await refresh();
  state.jobsTimer = setInterval(() => refresh().catch(() => {}), 2000);
}

// The objective key of latest_metrics ("val_mse") as a metric point's split and name.
function splitMetric(metric) {
  const i = metric.indexOf("_");
  const split = metric.slice(0, i);
  return i > 0 && ["train", "val", "test"].includes(split) ? [split, metric.slice(i + 1)] : [null, metric];
}

const STUDY_COLUMNS = [
  ["trial", "#"],
  ["status", "status"],
  ["step", "step"],
  ["final", "final"],
  ["best", "best"],
  ["wall_time_s", "wall s"],
  ["mean_firing_rate", "firing rate"],
  ["energy_nj", "energy nJ"],
];

async function showStudy(id) {
  show("study");
  state.studyView = { id, points: {}, seq: {}, sort: { key: "trial", dir: 1 }, table: null, study: null };
  $("#study-error").textContent = "";
  state.studyView.timer = setInterval(() => refreshStudy().catch(() => {}), 2000);
  await refreshStudy();
}

async function refreshStudy() {
  const v = state.studyView;
  if (!v || v.busy) return; // one refresh at a time: points are read incrementally
  v.busy = true;
  try {
    await loadStudy(v);
  } finally {
    v.busy = false;
  }
}

async function loadStudy(v) {
  const [study, table] = await Promise.all([api(`/studies/${v.id}`), api(`/studies/${v.id}/table`)]);
  if (state.studyView !== v) return;
  v.study = study;
  v.table = table;
  $("#study-title").textContent = study.name || study.id;
  const best = study.best_trial;
  $("#study-summary").replaceChildren(
    el("span", { class: `status ${study.status}`, id: "study-status" }, study.status),
    ` ${study.progress.finished}/${study.progress.trials} trials finished · objective ${study.objective.metric} (${study.objective.mode})`,
    best ? ` · best: trial ${best.index} (${fmtNum(best.objective)})` : "",
  );
  $("#study-cancel-btn").hidden = ["completed", "failed", "cancelled"].includes(study.status);
  renderStudyTable();
  await loadStudyPoints(study);
  plotStudy();
  // a finished study changes no more: stop polling (its last points are loaded above)
  if (["completed", "failed", "cancelled"].includes(study.status)) clearInterval(v.timer);
}

function renderStudyTable() {
  const v = state.studyView;
  const t = v.table;
  const cols = [...STUDY_COLUMNS.slice(0, 1), ...t.fields.map((f) => [`field:${f}`, f]), ...STUDY_COLUMNS.slice(1)];
  const value = (row, key) => (key.startsWith("field:") ? row.overrides[key.slice(6)] : row[key]);
  const rows = [...t.rows].sort((a, b) => {
    const x = value(a, v.sort.key);
    const y = value(b, v.sort.key);
    if (x === y) return 0;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * v.sort.dir;
  });
  $("#study-table thead tr").replaceChildren(
    ...cols.map(([key, label]) =>
      el("th", { dataset: { key }, class: v.sort.key === key ? (v.sort.dir > 0 ? "sorted asc" : "sorted desc") : "", onclick: () => sortStudy(key) }, label),
    ),
  );
  $("#study-table tbody").replaceChildren(
    ...rows.map((r) =>
      el(
        "tr",
        { dataset: { jobId: r.job_id, status: r.status } },
        ...cols.map(([key]) => {
          const x = value(r, key);
          if (key === "trial") return el("td", {}, el("a", { href: `#/jobs/${r.job_id}` }, `#${x}`));
          if (key === "status") return el("td", {}, el("span", { class: `status ${x}` }, x));
          if (key === "step") return el("td", {}, `${r.step}/${r.max_steps}`);
          return el("td", {}, x === null || x === undefined ? "–" : fmtNum(x));
        }),
      ),
    ),
  );
}

function sortStudy(key) {
  const v = state.studyView;
  v.sort = { key, dir: v.sort.key === key ? -v.sort.dir : 1 };
  renderStudyTable();
}

// New points of the objective for every trial (incremental: after= the last seq seen).
async function loadStudyPoints(study) {
  const v = state.studyView;
  const [split, name] = splitMetric(study.objective.metric);
  await Promise.all(
    study.trials.map(async (t) => {
      if (["waiting", "queued"].includes(t.status)) return;
      const page = await api(`/jobs/${t.job_id}/metrics?after=${v.seq[t.job_id] || 0}`);
      v.seq[t.job_id] = page.last_seq || v.seq[t.job_id] || 0;
      const pts = page.items.filter((p) => p.name === name && (split === null || p.split === split));
      v.points[t.job_id] = [...(v.points[t.job_id] || []), ...pts];
    }),
  );
}

function trialLabel(t) {
  const parts = Object.entries(t.overrides).map(([k, x]) => `${k.split(".").pop()}=${fmtNum(x)}`);
  return `#${t.index} ${parts.join(", ")}`;
}

function plotStudy() {
  const v = state.studyView;
  const study = v.study;
  const metric = study.objective.metric;
  const traces = study.trials
    .filter((t) => (v.points[t.job_id] || []).length)
    .map((t) => {
      const pts = v.points[t.job_id];
      return { x: pts.map((p) => p.step), y: pts.map((p) => p.value), name: trialLabel(t), mode: pts.length > 1 ? "lines" : "markers", line: { dash: t.status === "stopped_early" ? "dot" : "solid" } };
    });
  const layout = { margin: { t: 40, r: 16, b: 44, l: 56 }, title: { text: `${metric} by trial` }, xaxis: { title: { text: "step" } }, yaxis: { title: { text: metric } } };
  Plotly.react("study-curves", traces, layout, { responsive: true, displaylogo: false });
  $("#study-curves").dataset.traces = String(traces.length);
  // field vs objective: the first overridden field on x, each trial's best value on y
  const field = v.table.fields[0];
  const rows = v.table.rows.filter((r) => r.best !== null);
  const x = rows.map((r) => { const f = r.overrides[field]; return typeof f === "number" || typeof f === "string" ? f : JSON.stringify(f); });
  Plotly.react(
    "study-scatter",
    [{ x, y: rows.map((r) => r.best), text: rows.map((r) => `#${r.trial}`), mode: "markers", type: "scatter", marker: { size: 10 } }],
    { margin: { t: 40, r: 16, b: 44, l: 56 }, title: { text: `best ${metric} vs ${field || "trial"}` }, xaxis: { title: { text: field || "" } }, yaxis: { title: { text: metric } } },
    { responsive: true, displaylogo: false },
  );
}

async function downloadStudyCsv(ev) {
  ev.preventDefault();
  const v = state.studyView;
  const resp = await api(`/studies/${v.id}/table.csv`, { raw: true });
  const url = URL.createObjectURL(await resp.blob());
  const a = el("a", { href: url, download: `study-${v.id}.csv` });
  document.body.append(a);
  a.click();
  a.remove();
  URL.revokeObjectURL(url);
}

// ------------------------------------------------------------------ submit form
async function loadCatalog() {
  if (state.catalog) return state.catalog;
  const [tasks, neurons] = await Promise.all([api("/tasks"), api("/neurons")]);
  state.catalog = {
    tasks: tasks.items,
    neurons: neurons.items,
    default_task: tasks.default,
    default_neuron: neurons.default,
    training_defaults: neurons.training_defaults,
    training_schema: neurons.training_schema,
  };
  return state.catalog;
}

const taskInfo = (name) => state.catalog.tasks.find((t) => t.name === name);
const neuronInfo = (name) => state.catalog.neurons.find((n) => n.name === name);

function schemaType(prop) {
  if (prop.enum) return { type: "enum", options: prop.enum, nullable: false };
  if (prop.const !== undefined) return { type: "enum", options: [prop.const], nullable: false };
  if (prop.anyOf) {
    const nonNull = prop.anyOf.filter((p) => p.type !== "null");
    const nullable = nonNull.length < prop.anyOf.length;
    const inner = nonNull.length ? schemaType(nonNull[0]) : { type: "string" };
    return { ...inner, nullable };
  }
  return { type: prop.type || "string", nullable: false };
}

function field(loc, name, prop, value) {
  const t = schemaType(prop);
  const id = `f-${loc}`;
  let input;
  if (t.type === "enum") {
    input = el("select", { id }, ...t.options.map((o) => el("option", { value: o, selected: o === value }, o)));
  } else if (t.type === "boolean") {
    input = el("input", { id, type: "checkbox", checked: !!value });
  } else {
    input = el("input", {
      id,
      type: "text",
      inputmode: t.type === "integer" || t.type === "number" ? "decimal" : undefined,
      value: value === null || value === undefined ? "" : String(value),
      placeholder: t.nullable ? "none" : prop.default === undefined ? "required" : "",
    });
  }
  input.dataset.loc = loc;
  input.dataset.type = t.type;
  input.dataset.nullable = t.nullable ? "1" : "";
  return el(
    "div",
    { class: "field" },
    el("label", { for: id, title: prop.description || "" }, name),
    input,
    ...(prop.description ? [el("span", { class: "field-help" }, prop.description)] : []),
    el("span", { class: "field-error", dataset: { errorFor: loc } }),
  );
}

function renderParams(container, prefix, schema, defaults) {
  const props = (schema && schema.properties) || {};
  container.replaceChildren(
    ...Object.entries(props)
      // Facts filled from the stored dataset are not the user's to set.
      .filter(([name]) => !(prefix === "task.params" && ["seq_len", "input_size", "output_size", "target"].includes(name) && "dataset_id" in props))
      .map(([name, prop]) => field(`${prefix}.${name}`, name, prop, name in defaults ? defaults[name] : prop.default)),
  );
}

function renderTraining(container, defaults) {
  container.replaceChildren(
    ...Object.entries(defaults).map(([name, value]) => {
      let prop;
      const schema = state.catalog.training_schema?.properties?.[name] || {};
      const description = schema.description;
      if (schema.enum) prop = { enum: schema.enum };
      else if (typeof value === "boolean") prop = { type: "boolean" };
      else if (Number.isInteger(value)) prop = { type: "integer" };
      else if (typeof value === "number") prop = { type: "number" };
      else if (value === null) prop = { anyOf: [{ type: "number" }, { type: "null" }] };
      else prop = { type: "string" };
      return field(`training.${name}`, name, { ...prop, description }, value);
    }),
  );
}

function readField(input) {
  const { type, nullable } = input.dataset;
  if (type === "boolean") return input.checked;
  const raw = input.value.trim();
  if (raw === "") return nullable ? null : undefined;
  if (type === "integer" || type === "number") {
    const n = Number(raw);
    return Number.isFinite(n) ? n : raw; // a non-number goes to the server, which names the field
  }
  return raw;
}

function collect(container) {
  const out = {};
  for (const input of container.querySelectorAll("[data-loc]")) {
    const v = readField(input);
    if (v !== undefined) out[input.dataset.loc.split(".").pop()] = v;
  }
  return out;
}

function clearErrors(form) {
  for (const e of form.querySelectorAll(".field-error")) e.textContent = "";
  for (const e of form.querySelectorAll(".invalid")) e.classList.remove("invalid");
  $("#form-error").textContent = "";
}

function showFieldErrors(form, detail) {
  const general = [];
  for (const d of detail) {
    const parts = (d.loc || []).filter((p) => p !== "body").map(String);
    let shown = false;
    for (let n = parts.length; n > 0 && !shown; n--) {
      const loc = parts.slice(0, n).join(".");
      const input = form.querySelector(`[data-loc="${CSS.escape(loc)}"]`);
      if (input) {
        input.classList.add("invalid");
        let slot = form.querySelector(`[data-error-for="${CSS.escape(loc)}"]`);
        if (!slot) {
          slot = el("span", { class: "field-error", dataset: { errorFor: loc } });
          input.after(slot);
        }
        slot.textContent = (slot.textContent ? slot.textContent + "; " : "") + d.msg;
        shown = true;
      }
    }
    if (!shown) general.push(`${parts.join(".")}: ${d.msg}`);
  }
  $("#form-error").textContent = general.join("\n");
}

async function showNewJob() {
  show("new");
  const cat = await loadCatalog();
  const taskSel = $("#f-task");
  const neuronSel = $("#f-neuron");
  if (!taskSel.options.length) {
    // The default task needs no download (MNIST may not be installed).
    taskSel.append(...cat.tasks.map((t) => el("option", { value: t.name, selected: t.name === cat.default_task }, t.name)));
    neuronSel.append(...cat.neurons.map((n) => el("option", { value: n.name, selected: n.name === cat.default_neuron }, n.name)));
    taskSel.addEventListener("change", onTaskChange);
    neuronSel.addEventListener("change", onNeuronChange);
    onTaskChange();
    onNeuronChange();
    renderTraining($("#training-params"), cat.training_defaults);
  }
}

function onTaskChange() {
  const t = taskInfo($("#f-task").value);
  $("#task-description").textContent = t.description;
  renderParams($("#task-params"), "task.params", t.params_schema, t.defaults);
  if ("dataset_id" in (t.params_schema.properties || {})) {
    // Offer the user's uploaded datasets as suggestions for dataset_id.
    api("/datasets")
      .then((data) => {
        const list = el("datalist", { id: "dataset-ids" }, ...data.items.map((d) => el("option", { value: d.id }, `${d.name} (N=${d.num_sequences}, T=${d.seq_len}, F=${d.input_size}, ${d.kind})`)));
        $("#task-params").append(list);
        const input = $('[data-loc="task.params.dataset_id"]');
        if (input) input.setAttribute("list", "dataset-ids");
      })
      .catch(() => {});
  }
}

function onNeuronChange() {
  const n = neuronInfo($("#f-neuron").value);
  $("#neuron-description").textContent = n.description;
  const arch = $("#f-architecture");
  arch.replaceChildren(...n.architectures.map((a) => el("option", { value: a }, a)));
  renderParams($("#neuron-params"), "model.neuron_params", n.params_schema, n.defaults);
}

function parseHidden(text) {
  const parts = text.split(/[\s,]+/).filter(Boolean);
  return parts.map((p) => (/^-?\d+$/.test(p) ? Number(p) : p));
}

async function submitJob(ev) {
  ev.preventDefault();
  const form = $("#job-form");
  clearErrors(form);
  const name = $("#f-name").value.trim();
  const spec = {
    ...(name ? { name } : {}),
    task: { name: $("#f-task").value, params: collect($("#task-params")) },
    model: {
      neuron: $("#f-neuron").value,
      architecture: $("#f-architecture").value,
      hidden: parseHidden($("#f-hidden").value),
      neuron_params: collect($("#neuron-params")),
    },
    training: collect($("#training-params")),
  };
  const button = $("#submit-job");
  button.disabled = true;
  try {
    const job = await api("/jobs", { method: "POST", body: spec });
    location.hash = `#/jobs/${job.id}`;
  } catch (err) {
    if (err instanceof ApiError && err.status === 422 && Array.isArray(err.detail)) showFieldErrors(form, err.detail);
    else $("#form-error").textContent = errorText(err);
  } finally {
    button.disabled = false;
  }
}

// ------------------------------------------------------------------ datasets
async function showDatasets() {
  show("datasets");
  const data = await api("/datasets");
  $("#datasets-empty").hidden = data.items.length > 0;
  $("#datasets-table tbody").replaceChildren(
    ...data.items.map((d) =>
      el("tr", {}, el("td", {}, el("code", {}, d.id)), el("td", {}, d.name), el("td", {}, d.num_sequences), el("td", {}, d.seq_len), el("td", {}, d.input_size), el("td", {}, d.kind), el("td", {}, d.target), el("td", {}, d.output_size)),
    ),
  );
}

async function uploadDataset(ev) {
  ev.preventDefault();
  const file = $("#dataset-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  if ($("#dataset-name").value.trim()) form.append("name", $("#dataset-name").value.trim());
  form.append("kind", $("#dataset-kind").value);
  $("#dataset-error").textContent = "";
  try {
    await api("/datasets", { method: "POST", body: form });
    $("#dataset-form").reset();
    await showDatasets();
  } catch (err) {
    $("#dataset-error").textContent = errorText(err);
  }
}

// ------------------------------------------------------------------ job page
function renderJobHeader(job) {
  const v = state.jobView;
  v.job = job;
  $("#job-title").textContent = `${job.name || job.id} — ${job.task}, ${job.neuron}`;
  const status = $("#job-status");
  status.textContent = job.status;
  status.className = `status ${job.status}`;
  $("#job-progress-bar").style.width = `${Math.round(100 * job.progress.fraction)}%`;
  $("#job-progress-text").textContent = `step ${job.progress.step} / ${job.progress.max_steps}`;
  $("#cancel-btn").hidden = !job.can_cancel;
  // A queued job says what it waits for; in red when no online worker takes its queue.
  const waiting = $("#job-waiting");
  waiting.textContent = job.waiting_for ? `queue ${job.queue}: waiting for ${job.waiting_for}` : "";
  waiting.className = job.queue_has_worker === false ? "error" : "hint";
  // A run continued from a checkpoint: its curve starts where the source stopped.
  const source = (job.spec || {}).init_from;
  const lineage = $("#job-lineage");
  if (source && source.job) {
    lineage.replaceChildren(
      "continues ", el("a", { href: `#/jobs/${source.job}` }, `job ${source.job}`),
      ` from its ${source.checkpoint} checkpoint`);
  } else if (source && source.upload) {
    lineage.textContent = `continues uploaded checkpoint ${source.upload}`;
  } else {
    lineage.textContent = "";
  }
  $("#job-error").textContent = job.error || "";
  if (job.status === "failed" && !(v.points || []).length) plotPlaceholder(job);
  const kv = (obj, label) =>
    Object.entries(obj || {}).map(([k, val]) => el("span", {}, el("b", {}, `${label}${k}`), fmtNum(val)));
  $("#job-metrics").replaceChildren(...kv(job.latest_metrics, "latest "), ...kv(job.best_metrics, "best "));
  const tel = job.telemetry || {};
  const telItems = [];
  for (const [k, val] of Object.entries(tel)) {
    if (Array.isArray(val)) telItems.push(el("span", {}, el("b", {}, k), val.map(fmtNum).join(", ")));
    else telItems.push(el("span", {}, el("b", {}, k), fmtNum(val)));
  }
  $("#telemetry").replaceChildren(...(telItems.length ? telItems : [el("span", { class: "hint" }, "no telemetry yet")]));
}

async function refreshCheckpoints() {
  const v = state.jobView;
  const list = await api(`/jobs/${v.id}/checkpoints`);
  const sel = $("#predict-checkpoint");
  const current = sel.value;
  sel.replaceChildren(
    el("option", { value: "best" }, "best"),
    el("option", { value: "latest" }, "latest"),
    ...list.map((c) => el("option", { value: c.id }, `step ${c.step}`)),
  );
  sel.value = [...sel.options].some((o) => o.value === current) ? current : "best";
  $("#checkpoints-table tbody").replaceChildren(
    ...list.map((c) =>
      el(
        "tr",
        {},
        el("td", {}, c.step),
        el("td", {}, c.is_best ? "★" : ""),
        el("td", {}, fmtMetrics(c.metrics)),
        el("td", {}, `${(c.size / 1024).toFixed(1)} KiB`),
        el("td", {}, el("code", {}, c.sha256.slice(0, 16) + "…")),
        el("td", {}, el("button", { type: "button", onclick: () => download(c) }, "Download")),
      ),
    ),
  );
  v.checkpoints = list;
  if (list.length && v.spec && v.usesTe && !v.teLoaded) loadTe();
}

async function download(c) {
  const resp = await api(`/jobs/${state.jobView.id}/checkpoints/${c.id}`, { raw: true });
  const url = URL.createObjectURL(await resp.blob());
  const a = el("a", { href: url, download: `${state.jobView.id}-step${c.step}.safetensors` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// The curve panel before any point: waiting, or why there will be none.
function plotPlaceholder(job) {
  const text = job.status === "failed" ? "job failed before any metrics (see the error above)" : "waiting for metrics…";
  const font = job.status === "failed" ? { color: "#c0262d" } : {};
  Plotly.react("curve", [], { margin: { t: 24 }, annotations: [{ text, font, showarrow: false, xref: "paper", yref: "paper", x: 0.5, y: 0.5 }] }, { displaylogo: false });
}

function plotCurves() {
  const v = state.jobView;
  const names = [...new Set(v.points.map((p) => p.name))].sort((a, b) => (a === "loss" ? -1 : b === "loss" ? 1 : a.localeCompare(b)));
  const traces = [];
  const failed = v.job && v.job.status === "failed";
  const layout = {
    // the legend above the panels, clear of the x-axis titles
    margin: { t: 56, r: 16, b: 44, l: 56 },
    legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" },
    grid: { rows: 1, columns: Math.max(names.length, 1), pattern: "independent" },
    annotations: failed ? [{ text: "job failed (see the error above)", showarrow: false, xref: "paper", yref: "paper", x: 1, y: 1, xanchor: "right", yanchor: "bottom", font: { color: "#c0262d" } }] : [],
  };
  const lastStep = Math.max(0, ...v.points.map((p) => p.step));
  names.forEach((name, i) => {
    const axis = i === 0 ? "" : String(i + 1);
    for (const split of [...new Set(v.points.filter((p) => p.name === name).map((p) => p.split))]) {
      const pts = v.points.filter((p) => p.name === name && p.split === split);
      const color = SPLIT_COLORS[split] || "#1d2330";
      const trace = { x: pts.map((p) => p.step), y: pts.map((p) => p.value), name: `${split} ${name}`, legendgroup: split, xaxis: `x${axis}`, yaxis: `y${axis}`, line: { color }, marker: { color, size: 8 } };
      if (split === "baseline" && pts.length === 1) {
        // a reference level, not an event at one step: a dashed line across the run
        Object.assign(trace, { x: [0, lastStep || 1], y: [pts[0].value, pts[0].value], mode: "lines", line: { color, dash: "dash" } });
      } else {
        trace.mode = pts.length > 1 ? "lines" : "markers"; // a single test point stays visible
      }
      traces.push(trace);
    }
    layout[`xaxis${axis}`] = { title: { text: "step" } };
    // loss spans decades: a log scale keeps the later steps readable
    layout[`yaxis${axis}`] = { title: { text: name }, type: name === "loss" ? "log" : "linear" };
  });
  Plotly.react("curve", traces, layout, { responsive: true, displaylogo: false });
  $("#curve").dataset.points = String(v.points.length);
}

async function followEvents() {
  // SSE over fetch(): EventSource cannot send the Authorization header.
  const v = state.jobView;
  let last = 0;
  while (state.jobView === v && !v.ended) {
    try {
      const headers = { Authorization: `Bearer ${token()}`, Accept: "text/event-stream" };
      if (last) headers["Last-Event-ID"] = String(last);
      const resp = await fetch(`${API}/jobs/${v.id}/events`, { headers, signal: v.abort.signal });
      if (!resp.ok) throw new Error(`events: HTTP ${resp.status}`);
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const ev = { event: "message", data: "", id: null };
          for (const line of block.split("\n")) {
            if (line.startsWith(":")) continue;
            const i = line.indexOf(":");
            const key = i < 0 ? line : line.slice(0, i);
            const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
            if (key === "data") ev.data += (ev.data ? "\n" : "") + val;
            else if (key === "event") ev.event = val;
            else if (key === "id") ev.id = val;
          }
          if (ev.id) last = Number(ev.id) || last;
          if (ev.data) onEvent(ev.event, JSON.parse(ev.data));
        }
      }
    } catch (err) {
      if (err.name === "AbortError") return;
      console.warn(err);
    }
    if (!v.ended) await new Promise((r) => setTimeout(r, 2000));
  }
}

function onEvent(kind, data) {
  const v = state.jobView;
  if (!v) return;
  if (kind === "metric") {
    if (data.value !== null && data.value !== undefined) v.points.push(data);
    v.dirty = true;
  } else if (kind === "end") {
    v.ended = true;
    refreshJob();
  } else {
    refreshJob();
    if (kind === "checkpoint" || kind === "status") refreshCheckpoints().catch(() => {});
  }
}

async function refreshJob() {
  const v = state.jobView;
  if (!v) return;
  renderJobHeader(await api(`/jobs/${v.id}`));
}

async function showJob(id) {
  show("job");
  const abort = new AbortController();
  const v = { id, points: [], ended: false, dirty: false, abort, timer: null, teLoaded: false, selected: null };
  state.jobView = v;
  $("#predict-result").hidden = true;
  $("#predict-error").textContent = "";
  $("#te-error").textContent = "";
  const [job] = await Promise.all([api(`/jobs/${id}`), loadCatalog()]);
  v.spec = job.spec;
  v.task = taskInfo(job.spec.task.name);
  v.neuron = neuronInfo(job.spec.model.neuron);
  v.usesTe = v.neuron.te_modes.includes(job.spec.model.neuron_params.ce_mode);
  renderJobHeader(job);
  plotPlaceholder(job);
  $("#curve").dataset.points = "0";
  setupPredict(job);
  $("#te-section").hidden = !v.usesTe;
  if (v.usesTe) {
    $("#te-layer").replaceChildren(...job.spec.model.hidden.map((n, i) => el("option", { value: i }, `${i} (${n} neurons)`)));
    Plotly.purge("te-heatmap"); // a previous job's plot: start afresh
  }
  await refreshCheckpoints().catch(() => {});
  // Redraw at most every 300 ms however fast points arrive; refresh status while running.
  v.timer = setInterval(() => {
    if (v.dirty) {
      v.dirty = false;
      plotCurves();
    }
  }, 300);
  followEvents();
  const poll = setInterval(() => {
    if (state.jobView !== v || v.ended) return clearInterval(poll);
    refreshJob().catch(() => {});
  }, 3000);
}

// ------------------------------------------------------------------ predict panel
function setupPredict(job) {
  const v = state.jobView;
  const spec = job.spec;
  const mnist = !!v.task.image;
  const layers = v.neuron.spiking ? spec.model.hidden : [];
  $("#predict-layer").replaceChildren(...layers.map((n, i) => el("option", { value: i }, `${i} (${n} neurons)`)));
  $("#predict-layer").disabled = !layers.length;
  $("#mnist-input").hidden = !mnist;
  $("#json-input").hidden = mnist;
  v.mnist = mnist;
  // A drawing is in raster order; PS-MNIST models expect permuted pixels, so only test digits.
  $("#draw-canvas").parentElement.hidden = !mnist || v.task.image.pixel_order !== "raster";
  if (mnist) {
    v.drawn = new Float32Array(784);
    clearCanvas();
    loadMnistSamples().catch((err) => ($("#predict-error").textContent = errorText(err)));
  } else {
    const f = v.task.input_size ?? spec.task.params.input_size ?? 1; // null: the dataset's F
    $("#expected-shape").textContent = f === 1 ? "[N, T] or [N, T, 1]" : `[N, T, F=${f}]`;
    $("#predict-json").value = "";
  }
}

async function loadMnistSamples() {
  const v = state.jobView;
  const data = await api(`/jobs/${v.id}/samples?split=test&n=10`);
  if (state.jobView !== v) return;
  v.samples = data;
  const perm = v.task.image.pixel_order === "permuted";
  $("#samples").replaceChildren(
    ...data.inputs.map((seq, i) => {
      const c = el("canvas", { width: 28, height: 28, title: `test digit, label ${data.targets[i]}`, dataset: { index: i, label: data.targets[i] } });
      // PS-MNIST sequences are permuted: the thumbnail is only a fingerprint, not the digit.
      drawPixels(c, seq);
      c.addEventListener("click", () => selectSample(i, c));
      return c;
    }),
  );
  if (perm) $("#samples").title = "permuted pixel order (PS-MNIST)";
}

function drawPixels(canvas, seq) {
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(28, 28);
  for (let p = 0; p < 784; p++) {
    const g = Math.round(255 * Math.max(0, Math.min(1, seq[p])));
    img.data.set([g, g, g, 255], p * 4);
  }
  ctx.putImageData(img, 0, 0);
}

function selectSample(i, canvas) {
  const v = state.jobView;
  v.selected = { kind: "sample", index: i };
  for (const c of document.querySelectorAll("#samples canvas, #draw-canvas")) c.classList.remove("selected");
  canvas.classList.add("selected");
}

function clearCanvas() {
  const c = $("#draw-canvas");
  const ctx = c.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, c.width, c.height);
  if (state.jobView) state.jobView.drawnAny = false;
}

function setupCanvas() {
  const c = $("#draw-canvas");
  let drawing = false;
  let last = null;
  const paint = (ev) => {
    const r = c.getBoundingClientRect();
    const x = ((ev.clientX - r.left) * c.width) / r.width;
    const y = ((ev.clientY - r.top) * c.height) / r.height;
    const ctx = c.getContext("2d");
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 22;
    ctx.lineCap = "round";
    ctx.beginPath();
    ctx.moveTo(last ? last[0] : x, last ? last[1] : y);
    ctx.lineTo(x, y);
    ctx.stroke();
    last = [x, y];
    const v = state.jobView;
    if (v) {
      v.drawnAny = true;
      v.selected = { kind: "drawn" };
      for (const s of document.querySelectorAll("#samples canvas")) s.classList.remove("selected");
      c.classList.add("selected");
    }
  };
  c.addEventListener("pointerdown", (ev) => {
    drawing = true;
    last = null;
    c.setPointerCapture(ev.pointerId);
    paint(ev);
  });
  c.addEventListener("pointermove", (ev) => drawing && paint(ev));
  c.addEventListener("pointerup", () => (drawing = false));
  $("#clear-canvas").addEventListener("click", clearCanvas);
}

function canvasSequence() {
  // Downsample the 280x280 drawing to 28x28 (mean of each 10x10 block), raster order, [0, 1].
  const c = $("#draw-canvas");
  const small = document.createElement("canvas");
  small.width = small.height = 28;
  const sctx = small.getContext("2d");
  sctx.imageSmoothingEnabled = true;
  sctx.drawImage(c, 0, 0, 28, 28);
  const data = sctx.getImageData(0, 0, 28, 28).data;
  const seq = new Array(784);
  for (let p = 0; p < 784; p++) seq[p] = Math.round((data[p * 4] / 255) * 1000) / 1000;
  return seq;
}

async function loadJsonSample() {
  const v = state.jobView;
  try {
    const data = await api(`/jobs/${v.id}/samples?split=test&n=1`);
    $("#predict-json").value = JSON.stringify(data.inputs);
    v.jsonTarget = data.targets[0];
  } catch (err) {
    $("#predict-error").textContent = errorText(err);
  }
}

async function runPredict() {
  const v = state.jobView;
  $("#predict-error").textContent = "";
  let inputs;
  let label = null;
  if (v.mnist) {
    if (v.selected && v.selected.kind === "sample") {
      inputs = [v.samples.inputs[v.selected.index]];
      label = v.samples.targets[v.selected.index];
    } else if (v.drawnAny) {
      inputs = [canvasSequence()];
    } else {
      $("#predict-error").textContent = "Pick a test digit or draw one first.";
      return;
    }
  } else {
    try {
      inputs = JSON.parse($("#predict-json").value);
    } catch (err) {
      $("#predict-error").textContent = `Not valid JSON: ${err.message}`;
      return;
    }
    label = v.jsonTarget ?? null;
  }
  const body = { inputs, checkpoint: $("#predict-checkpoint").value, return: ["probabilities", "firing_rates", "spikes"], spikes_layer: Number($("#predict-layer").value || 0) };
  const button = $("#predict-btn");
  button.disabled = true;
  try {
    const res = await api(`/jobs/${v.id}/predict`, { method: "POST", body });
    showPrediction(res, label);
  } catch (err) {
    $("#predict-error").textContent = errorText(err);
  } finally {
    button.disabled = false;
  }
}

function showPrediction(res, label) {
  $("#predict-result").hidden = false;
  const p = res.predictions[0];
  let summary;
  if ("class" in p) summary = `Predicted class ${p.class}`;
  else if ("value" in p) summary = `Predicted value ${Array.isArray(p.value) ? p.value.map(fmtNum).join(", ") : fmtNum(p.value)}`;
  else if ("classes" in p) summary = `Predicted per-step classes (last 10): ${p.classes.slice(-10).join(" ")}`;
  else summary = `Predicted values (last 10): ${p.values.slice(-10).map((x) => x.toFixed(3)).join(" ")}`;
  if (label !== null && label !== undefined) summary += ` — target ${Array.isArray(label) ? label.slice(-10).map(fmtNum).join(" ") : fmtNum(label)}`;
  summary += ` · checkpoint step ${res.checkpoint.step} · ${res.elapsed_ms.toFixed(0)} ms${res.cached ? " (cached model)" : ""}`;
  $("#predict-summary").textContent = summary;
  $("#predict-summary").dataset.kind = res.kind;
  const probs = $("#probabilities");
  if (p.probabilities && res.kind === "classification") {
    probs.hidden = false;
    Plotly.react(probs, [{ type: "bar", x: p.probabilities.map((_, i) => String(i)), y: p.probabilities, marker: { color: p.probabilities.map((_, i) => (i === p.class ? "#2855d8" : "#98a2b3")) } }], { margin: { t: 24, r: 16, b: 40, l: 48 }, title: { text: "class probabilities", font: { size: 13 } }, yaxis: { range: [0, 1] }, xaxis: { type: "category" } }, { displaylogo: false });
  } else {
    probs.hidden = true;
  }
  const raster = $("#raster");
  if (res.spikes && res.spikes.rasters.length) {
    const r = res.spikes.rasters[0];
    raster.hidden = false;
    // A 0/1 image (neurons x timesteps): tens of thousands of spikes stay one canvas image.
    // (Not scattergl: its WebGL library compiles code with eval, which the page's CSP forbids.)
    const z = Array.from({ length: r.neurons }, () => new Array(r.steps).fill(0));
    r.t.forEach((t, i) => { z[r.neuron[i]][t] = 1; });
    Plotly.react(raster, [{ type: "heatmap", z, colorscale: [[0, "#ffffff"], [1, "#1d2330"]], showscale: false, hovertemplate: "t %{x}, neuron %{y}<extra></extra>" }], { margin: { t: 28, r: 16, b: 40, l: 56 }, title: { text: `spike raster, layer ${res.spikes.layer} (${r.t.length} spikes)`, font: { size: 13 } }, xaxis: { title: { text: "timestep" } }, yaxis: { title: { text: "neuron" } } }, { displaylogo: false });
    raster.dataset.spikes = String(r.t.length);
  } else {
    raster.hidden = true;
  }
  $("#predict-rates").replaceChildren(...(res.firing_rates || []).map((rate, i) => el("span", {}, el("b", {}, `layer ${i} firing rate`), rate.toFixed(4))));
}

// ------------------------------------------------------------------ TE similarity
async function loadTe() {
  const v = state.jobView;
  const layer = Number($("#te-layer").value || 0);
  v.teLoaded = true;
  $("#te-error").textContent = "";
  try {
    const res = await api(`/jobs/${v.id}/te_similarity?layer=${layer}`);
    const axis = res.matrix.map((_, i) => i * res.stride);
    Plotly.react("te-heatmap", [{ type: "heatmap", z: res.matrix, x: axis, y: axis, zmin: -1, zmax: 1, colorscale: "RdBu", reversescale: true, colorbar: { title: { text: "cos" } } }], { margin: { t: 44, r: 16, b: 48, l: 56 }, title: { text: `TE cosine similarity, layer ${res.layer} (step ${res.checkpoint.step})`, font: { size: 13 } }, xaxis: { title: { text: "timestep" } }, yaxis: { title: { text: "timestep" }, autorange: "reversed" } }, { displaylogo: false });
    $("#te-png").onclick = async (ev) => {
      ev.preventDefault();
      const resp = await api(`/jobs/${v.id}/te_similarity.png?layer=${layer}`, { raw: true });
      window.open(URL.createObjectURL(await resp.blob()), "_blank");
    };
  } catch (err) {
    $("#te-error").textContent = errorText(err);
  }
}

// ------------------------------------------------------------------ start
window.addEventListener("DOMContentLoaded", () => {
  $("#signin-form").addEventListener("submit", signIn);
  $("#signout-btn").addEventListener("click", () => signOut());
  $("#job-form").addEventListener("submit", submitJob);
  $("#dataset-form").addEventListener("submit", uploadDataset);
  $("#predict-btn").addEventListener("click", runPredict);
  $("#load-sample").addEventListener("click", loadJsonSample);
  $("#te-layer").addEventListener("change", loadTe);
  $("#cancel-btn").addEventListener("click", async () => {
    await api(`/jobs/${state.jobView.id}/cancel`, { method: "POST" }).catch((err) => ($("#job-error").textContent = errorText(err)));
    refreshJob();
  });
  $("#study-cancel-btn").addEventListener("click", async () => {
    await api(`/studies/${state.studyView.id}/cancel`, { method: "POST" }).catch((err) => ($("#study-error").textContent = errorText(err)));
    refreshStudy();
  });
  $("#study-csv").addEventListener("click", downloadStudyCsv);
  setupCanvas();
  window.addEventListener("hashchange", route);
  route();
});
