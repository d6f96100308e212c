// The pitscope inspection page: upload photos to POST /predict?map=embed, show the verdicts,
// re-judge them live against a threshold slider, save a new threshold with PUT /threshold, and,
// when the service keeps a history, browse it: recent inspections (GET /inspections), parts
// (GET /parts), one part's trend drawn as an SVG chart (GET /parts/{part}/trend) and its alerts
// (POST /alerts/{id}/ack).
// Plain browser JavaScript, no framework and nothing fetched from elsewhere. Every text from the
// service or a file name goes through textContent, never innerHTML.
"use strict";

const KEY_STORAGE = "pitscope-api-key";
const state = {
  apiKey: sessionStorage.getItem(KEY_STORAGE) || "",
  model: null, // GET /model
  threshold: null, // the threshold the page judges with (slider)
  results: [], // {id, name, score, card, objectUrl}
  queue: Promise.resolve(), // uploads run one after another (the service scores one at a time)
  nextId: 1,
  history: {
    open: false, // the History view is shown
    offset: 0, // first row of the inspections page
    decision: "", // "", "defective" or "good"
    note: "", // what the status line says when every call went well
    part: null, // the part whose trend is drawn
    loads: { inspections: 0, parts: 0, trend: 0 }, // newest request of each kind: older answers are dropped
  },
};
const PAGE_SIZE = 20; // inspections per page of the History table

const $ = (id) => document.getElementById(id);

function formatNumber(x) {
  if (typeof x !== "number" || !Number.isFinite(x)) return String(x);
  if (Number.isInteger(x)) return String(x);
  const abs = Math.abs(x);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return x.toExponential(3);
  return String(Number(x.toPrecision(4)));
}

// a share of the photo in %: two decimals below 10 %, one above, "< 0.01" for a tiny non-zero share
function formatPercentValue(fraction) {
  if (typeof fraction !== "number" || !Number.isFinite(fraction)) return String(fraction);
  const value = 100 * fraction;
  if (value > 0 && value < 0.005) return "< 0.01";
  return String(Number(value.toFixed(Math.abs(value) >= 10 ? 1 : 2)));
}

function formatBytes(n) {
  return n >= 1048576 ? `${formatNumber(n / 1048576)} MB` : `${formatNumber(n / 1024)} KB`;
}

function headers() {
  return state.apiKey ? { "X-API-Key": state.apiKey } : {};
}

// ---- errors in plain words --------------------------------------------------------------------

async function readDetail(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) {
    return response.statusText || "";
  }
}

function plainError(status, detail, name) {
  const file = name ? `“${name}”` : "The file";
  const limit = state.model ? formatBytes(state.model.limits.max_upload_bytes) : "the limit";
  if (status === 0) return "Could not reach the pitscope service. Check that it is still running and that this device is on its network.";
  if (status === 401) return "The service needs an API key, or the key given is wrong. Enter the key under “API key” and try again.";
  if (status === 403) return detail;
  if (status === 413) return `${file} is too large. The service accepts files up to ${limit}.`;
  if (status === 415) return `${file} is not a picture pitscope can read. Use a PNG, JPEG, BMP or TIFF photo.`;
  if (status === 422) {
    if (/empty/.test(detail)) return `${file} is empty (0 bytes).`;
    if (/truncated|corrupt/.test(detail)) return `${file} is damaged or incomplete and could not be read.`;
    if (/too small/.test(detail)) return `${file} is too small to inspect: ${detail.replace(/^image is /, "it is ")}.`;
    if (/pixels|dimensions too large/.test(detail)) return `${file} has too many pixels for this service.`;
    return `${file} was refused: ${detail}`;
  }
  if (status >= 500) return `The service failed while handling ${name ? file : "the request"}. The details are in the server's log.`;
  return `The service answered ${status}: ${detail}`;
}

async function call(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  } catch (_) {
    return { ok: false, status: 0, detail: "network error" };
  }
  if (!response.ok) return { ok: false, status: response.status, detail: await readDetail(response) };
  return { ok: true, status: response.status, body: await response.json() };
}

// ---- model panel --------------------------------------------------------------------------------

function flatten(value, prefix, out) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else if (Array.isArray(value)) {
    out.push([prefix, value.length ? value.map((v) => formatNumber(v)).join(", ") : "none"]);
  } else {
    out.push([prefix, value === null || value === undefined ? "—" : formatNumber(value)]);
  }
  return out;
}

function describeCalibration(c) {
  if (!c) return "not recorded";
  if (c.source && c.source.startsWith("set by hand")) {
    return `set by hand on ${c.set_at} (was ${formatNumber(c.previous.threshold)})`;
  }
  const parts = [];
  if (c.quantile !== undefined && c.images !== undefined) {
    const pct = formatNumber(c.quantile * 100);
    if (c.method === "out_of_fold") {
      parts.push(`${pct}th percentile of ${c.images} defect-free training images, each scored by scorers fitted without it (${c.folds} folds)`);
    } else {
      parts.push(`${pct}th percentile of the scores of ${c.images} ${c.held_back ? "held-back " : ""}defect-free images`);
    }
  }
  if (c.source) parts.push(`by ${c.source}`);
  return parts.length ? parts.join(", ") : "recorded below";
}

function describeTraining(m) {
  const t = m.training;
  const parts = [`${m.data_format} images`];
  if (t && t.images !== undefined) parts.push(`${t.images} defect-free images`);
  if (t && t.epochs !== undefined) parts.push(`${t.epochs} epochs`);
  if (t && t.minutes !== undefined) parts.push(`${formatNumber(t.minutes)} min`);
  const n = (m.labelled_defects || []).length;
  const marked = `${n} photo${n === 1 ? "" : "s"} with marked defects`;
  if (!n) parts.push("no marked defect");
  else parts.push(m.defect_probe ? `maps from a defect probe fitted on ${marked}` : `and ${marked}`);
  return parts.join(", ");
}

function renderModel() {
  const m = state.model;
  const dl = $("model-info");
  dl.replaceChildren();
  const add = (term, text, cls) => {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = text;
    if (cls) dd.className = cls;
    dl.append(dt, dd);
  };
  add("Name", `${m.name} (version ${m.version})`);
  add("Training data", describeTraining(m));
  const chance = m.training && m.training.classifier_near_chance;
  if (chance) {
    add(
      "Warning",
      `The pseudo-defect classifier ended near chance in training (cross-entropy ${formatNumber(chance.cross_entropy)}, ` +
        `${formatNumber(chance.chance)} at chance): its maps and regions may miss the defects. ` +
        "Train again with another seed or more epochs.",
      "warning",
    );
  }
  const rollbacks = (m.training && m.training.rollbacks) || [];
  if (rollbacks.length) {
    add(
      "Rollbacks",
      rollbacks
        .map(
          (r) =>
            `After epoch ${r.after_epoch} the pseudo-defect classifier had fallen back to chance: training went back ` +
            `to epoch ${r.to_epoch}'s weights` +
            (r.at_end ? " and handed that epoch back as its result." : ` and went on at ${r.lr_scale} times the learning rate.`),
        )
        .join("\n"),
      "pre",
    );
  }
  const [height, width] = m.image_shape || [m.image_size, m.image_size];
  add("Image size", `${height} × ${width} px network input, height × width (any photo size is accepted)`);
  add("Threshold", formatNumber(m.threshold));
  add("How it was set", describeCalibration(m.calibration));
  add("Pixel threshold", `${formatNumber(m.pixel_threshold)} (outlines the predicted defect region)`);
  const metrics = m.metrics ? flatten(m.metrics, "", []) : [];
  if (metrics.length) {
    add("Evaluation", metrics.map(([k, v]) => `${k}: ${v}`).join("\n"), "pre");
  } else {
    add("Evaluation", "No evaluation metrics are stored with this model.");
  }
  if (m.training && m.training.skipped_files && m.training.skipped_files.length) {
    add("Skipped in training", `${m.training.skipped_files.length} unreadable files`);
  }
  const h = m.history;
  add("History", h
    ? `${h.database}${h.writable ? "" : " (read-only: nothing new is recorded)"}, threshold version ${h.threshold_version}`
    : "not kept (start the service with --db)");
  add("Upload limits", `${formatBytes(m.limits.max_upload_bytes)}, ${formatNumber(m.limits.max_pixels / 1e6)} megapixels`);
  $("limit-text").textContent = `, up to ${formatBytes(m.limits.max_upload_bytes)} each`;
}

async function loadModel() {
  const answer = await call("/model");
  if (!answer.ok) {
    if (answer.status === 401) {
      $("key-panel").hidden = false;
      $("key-reason").textContent = state.apiKey
        ? "The API key given is not accepted. Check it and enter it again."
        : "This service needs an API key. Ask whoever runs it.";
      $("service-status").textContent = "Waiting for the API key.";
      $("api-key").focus();
    } else {
      $("service-status").textContent = plainError(answer.status, answer.detail);
    }
    return false;
  }
  state.model = answer.body;
  $("service-status").textContent = `Connected: ${state.model.name}`;
  renderModel();
  setupThreshold();
  setupHistory();
  return true;
}

// ---- threshold ----------------------------------------------------------------------------------

function sliderMax() {
  const scores = state.results.filter((r) => r.score !== null).map((r) => r.score);
  const top = Math.max(2 * state.model.threshold, 1.25 * Math.max(0, ...scores), 1e-9);
  const unit = 10 ** (Math.floor(Math.log10(top)) - 1); // round up to two significant digits
  return Math.ceil(top / unit) * unit;
}

function updateSliderRange() {
  const slider = $("threshold-slider");
  const max = Math.max(sliderMax(), state.threshold);
  // a standardised image score (score.image_features layer1+layer4) is about 0 on a typical good photo
  const scores = state.results.filter((r) => r.score !== null).map((r) => r.score);
  const min = Math.min(0, state.threshold, state.model.threshold, ...scores);
  slider.min = String(min);
  slider.max = String(max);
  slider.step = String((max - min) / 1000);
  slider.value = String(state.threshold);
}

function setupThreshold() {
  if (state.threshold === null) state.threshold = state.model.threshold;
  for (const id of ["threshold-slider", "threshold-number", "threshold-reset"]) $(id).disabled = false;
  const saving = state.model.threshold_saving;
  $("threshold-save").disabled = !saving.allowed;
  $("save-status").textContent = saving.allowed
    ? (saving.to_file ? "" : "Saving keeps the new threshold until the service restarts (it does not know its model file).")
    : "Saving is switched off: this service runs without an API key, so anyone on the network could change the threshold.";
  updateSliderRange();
  applyThreshold(state.threshold);
}

function applyThreshold(value) {
  state.threshold = value;
  $("threshold-number").value = formatNumber(value);
  const stored = state.model.threshold;
  // the model keeps float32: a value that rounds to the stored one is the stored one
  const same = Math.abs(value - stored) <= 1e-6 * Math.max(1, Math.abs(stored));
  $("threshold-note").textContent = same
    ? `Using the model's threshold, ${formatNumber(stored)}.`
    : `Trying ${formatNumber(value)} on this page; the model's threshold is still ${formatNumber(stored)}.`;
  $("threshold-save").textContent = `Save ${formatNumber(value)} as the model's threshold`;
  for (const r of state.results) if (r.score !== null) renderVerdict(r);
  renderSummary();
}

async function saveThreshold() {
  const value = state.threshold;
  $("save-status").textContent = "Saving…";
  const answer = await call("/threshold", {
    method: "PUT",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ threshold: value }),
  });
  if (!answer.ok) {
    $("save-status").textContent = `Not saved. ${plainError(answer.status, answer.detail)}`;
    if (answer.status === 401) $("key-panel").hidden = false;
    return;
  }
  const b = answer.body;
  const where = b.saved_to ? `written to ${b.saved_to}` : "kept until the service restarts";
  await loadModel();
  $("save-status").textContent = `Saved: the model's threshold is now ${formatNumber(b.threshold)} (was ${formatNumber(b.previous)}), ${where}.`;
}

// ---- results ------------------------------------------------------------------------------------

function renderVerdict(r) {
  const defect = r.score > state.threshold;
  const card = r.card;
  card.classList.toggle("defect", defect);
  card.classList.toggle("ok", !defect);
  card.querySelector(".verdict").textContent = defect ? "DEFECT" : "OK";
  const margin = r.score - state.threshold;
  card.querySelector(".score").textContent =
    `Score ${formatNumber(r.score)}, ${margin > 0 ? "above" : "at or below"} the threshold ${formatNumber(state.threshold)}`;
}

function renderSummary() {
  const done = state.results.filter((r) => r.score !== null);
  const defects = done.filter((r) => r.score > state.threshold).length;
  const pending = state.results.filter((r) => r.score === null && !r.failed).length;
  const failed = state.results.filter((r) => r.failed).length;
  let text = done.length
    ? `${done.length} image${done.length === 1 ? "" : "s"}: ${defects} DEFECT, ${done.length - defects} OK.`
    : "No images yet.";
  if (failed) text += ` ${failed} file${failed === 1 ? "" : "s"} not scored.`;
  if (pending) text += ` Scoring ${pending}…`;
  $("summary").textContent = text;
}

function showView(r, view) {
  const img = r.card.querySelector("img");
  const note = r.card.querySelector(".picture-note");
  const source = { overlay: r.overlay, heatmap: r.heatmap, original: r.objectUrl }[view];
  note.hidden = true;
  if (source) img.src = source;
  img.alt = `${r.name}: ${view === "original" ? "the photo as uploaded" : view === "heatmap" ? "anomaly heatmap" : "photo with the predicted defect region in red"}`;
  const radio = r.card.querySelector(`.view input[value="${view}"]`);
  if (radio) radio.checked = true;
  r.view = view;
}

function newCard(file) {
  const id = state.nextId++;
  const card = $("card-template").content.firstElementChild.cloneNode(true);
  card.classList.add("pending");
  card.querySelector(".name").textContent = file.name;
  card.querySelector(".verdict").textContent = "Scoring…";
  const r = { id, name: file.name, score: null, card, objectUrl: URL.createObjectURL(file), view: "overlay" };
  for (const input of card.querySelectorAll(".view input")) {
    input.name = `view-${id}`;
    input.addEventListener("change", () => showView(r, input.value));
  }
  card.querySelector(".view").disabled = true;
  const img = card.querySelector("img");
  img.addEventListener("error", () => {
    if (r.view !== "original") return;
    const note = card.querySelector(".picture-note");
    note.textContent = "This browser cannot show this file type; the overlay shows the photo.";
    note.hidden = false;
  });
  card.querySelector(".remove").addEventListener("click", () => removeResult(r));
  $("results").append(card);
  state.results.push(r);
  return r;
}

function removeResult(r) {
  URL.revokeObjectURL(r.objectUrl);
  const index = state.results.indexOf(r);
  state.results.splice(index, 1);
  r.card.remove();
  const next = state.results[index] || state.results[index - 1];
  (next ? next.card.querySelector(".remove") : $("file-input")).focus();
  renderSummary();
}

function failResult(r, message, detail) {
  r.failed = true;
  const card = r.card;
  card.classList.remove("pending");
  card.classList.add("error");
  card.setAttribute("role", "alert");
  card.querySelector(".picture").remove();
  card.querySelector(".view").remove();
  card.querySelector(".verdict").textContent = "Not scored";
  card.querySelector(".score").textContent = message;
  card.querySelector(".score").classList.add("error-text");
  card.querySelector(".region").textContent = detail ? `Service said: ${detail}` : "";
  renderSummary();
}

async function score(file, part) {
  const r = newCard(file);
  renderSummary();
  const limit = state.model && state.model.limits.max_upload_bytes;
  if (limit && file.size > limit) {
    failResult(r, plainError(413, "", file.name), `${formatBytes(file.size)} is over the limit`);
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  const query = new URLSearchParams({ map: "embed" });
  if (state.model && state.model.history) {
    query.set("source", "page");
    if (part) query.set("part", part);
  }
  const answer = await call(`/predict?${query}`, { method: "POST", body: form });
  if (!answer.ok) {
    failResult(r, plainError(answer.status, answer.detail, file.name), answer.status ? answer.detail : "");
    if (answer.status === 401) $("key-panel").hidden = false;
    return;
  }
  const b = answer.body;
  Object.assign(r, { score: b.score, overlay: b.overlay, heatmap: b.heatmap });
  r.card.classList.remove("pending");
  r.card.dataset.score = String(b.score);
  r.card.querySelector(".view").disabled = false;
  r.card.querySelector(".region").textContent = describeRegions(b);
  const all = document.querySelector('input[name="view-all"]:checked');
  showView(r, all ? all.value : "overlay");
  if (state.model) updateSliderRange();
  renderVerdict(r);
  renderSummary();
  if (state.model && state.model.history) {
    showRecorded(r, b);
    refreshHistory(); // the new row, its part's count and any alert it raised
  }
}

function showRecorded(r, b) {
  const line = r.card.querySelector(".recorded");
  let text = b.recorded
    ? `recorded #${b.inspection_id}${b.part ? `, part ${b.part}` : ", no part"}`
    : `not recorded: ${b.not_recorded_because || "the service gave no reason"}`;
  const alerts = b.alerts || [];
  if (alerts.length) text += `. Alert raised: ${alerts.map(describeAlertValues).join("; ")}`;
  line.textContent = text;
  line.classList.toggle("alerting", alerts.length > 0);
  line.hidden = false;
}

function describeRegions(b) {
  const size = `${b.width} × ${b.height} px photo`;
  if (!b.region_count) {
    const where = b.peak
      ? `; the map the regions are cut from is highest at x ${b.peak.x}, y ${b.peak.y} (${formatNumber(b.peak.value)}, ` +
        `regions start above ${formatNumber(b.pixel_threshold)})`
      : "";
    return `No defect region predicted on the ${size}${where}`;
  }
  const shown = b.regions.slice(0, 3).map((g) =>
    `${g.area_px} px at x ${g.box[0]}–${g.box[2]}, y ${g.box[1]}–${g.box[3]}`).join("; ");
  const more = b.region_count > 3 ? `; ${b.region_count - 3} more` : "";
  const noun = b.region_count === 1 ? "region" : "regions";
  return `${b.region_count} predicted defect ${noun}, ${b.defect_px} px in all ` +
    `(${formatPercentValue(b.defect_fraction)} % of the ${size}): ${shown}${more}`;
}

function addFiles(files) {
  const part = $("part-input").value.trim(); // the part given when the photos were chosen
  for (const file of files) state.queue = state.queue.then(() => score(file, part));
}

// ---- history ------------------------------------------------------------------------------------

function formatTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
}

function percent(fraction) {
  return typeof fraction === "number" ? `${formatPercentValue(fraction)} %` : "—";
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.append(td);
  return td;
}

function historyError(answer, what) {
  if (answer.status === 401) $("key-panel").hidden = false;
  $("history-status").textContent = `Could not load ${what}. ${plainError(answer.status, answer.detail)}`;
}

// Called whenever GET /model has answered: the History view exists only when the service records.
function setupHistory() {
  const h = state.model.history;
  $("part-row").hidden = !h;
  $("history-toggle").hidden = !h;
  if (!h) {
    $("history-status").textContent = "This service keeps no history: start it with --db to record every inspection.";
    $("history-body").hidden = true;
    $("alert-badge").hidden = true;
    return;
  }
  state.history.note = h.writable ? "" : `The history database ${h.database} is read-only: new inspections are not recorded.`;
  $("history-status").textContent = state.history.note;
  $("history-source").textContent = `Recorded in ${h.database}, model ${h.model_id.slice(0, 12)}, ` +
    `threshold version ${h.threshold_version}. Alert rule: ${h.rule || "none (alerts are off)"}.`;
  refreshHistory();
}

function toggleHistory() {
  const history = state.history;
  history.open = !history.open;
  $("history-body").hidden = !history.open;
  $("history-toggle").setAttribute("aria-expanded", String(history.open));
  $("history-toggle").textContent = history.open ? "Hide history" : "Show history";
  if (history.open) refreshHistory();
}

// The parts (which also count the open alerts for the badge) always; the rest when shown.
function refreshHistory() {
  const loads = [loadParts()];
  if (state.history.open) {
    loads.push(loadInspections());
    if (state.history.part !== null) loads.push(loadTrend(state.history.part));
  }
  return Promise.all(loads);
}

async function loadInspections() {
  const history = state.history;
  const mine = ++history.loads.inspections;
  const query = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(history.offset) });
  if (history.decision) query.set("decision", history.decision);
  const answer = await call(`/inspections?${query}`);
  if (mine !== history.loads.inspections) return;
  if (!answer.ok) {
    historyError(answer, "the inspections");
    return;
  }
  const page = answer.body;
  if (page.items.length === 0 && page.total > 0 && history.offset > 0) { // the page emptied: go back
    history.offset = Math.max(0, Math.floor((page.total - 1) / PAGE_SIZE) * PAGE_SIZE);
    loadInspections();
    return;
  }
  renderInspections(page);
}

function renderInspections(page) {
  const body = $("inspections-table").querySelector("tbody");
  body.replaceChildren();
  for (const item of page.items) {
    const tr = document.createElement("tr");
    tr.dataset.id = String(item.id);
    cell(tr, String(item.id), "num");
    const when = cell(tr, formatTime(item.captured_at || item.recorded_at));
    when.title = item.captured_at ? `captured ${item.captured_at}` : `recorded ${item.recorded_at} (capture time unknown)`;
    cell(tr, item.part || "—");
    cell(tr, item.name || "—", "name");
    cell(tr, formatNumber(item.score), "num");
    cell(tr, formatNumber(item.image_threshold), "num");
    cell(tr, item.is_defective ? "DEFECT" : "OK", item.is_defective ? "defect" : "ok");
    cell(tr, formatPercentValue(item.defect_fraction), "num");
    body.append(tr);
  }
  const { offset, total } = page;
  const filtered = state.history.decision ? " matching the filter" : "";
  $("page-text").textContent = total
    ? `${offset + 1}–${offset + page.items.length} of ${total}${filtered}`
    : `No inspections${filtered} recorded yet.`;
  $("page-prev").disabled = offset === 0;
  $("page-next").disabled = offset + page.items.length >= total;
}

async function loadParts() {
  const history = state.history;
  const mine = ++history.loads.parts;
  const answer = await call("/parts");
  if (mine !== history.loads.parts) return;
  if (!answer.ok) {
    historyError(answer, "the parts");
    return;
  }
  $("history-status").textContent = state.history.note;
  renderParts(answer.body.parts);
}

function renderParts(parts) {
  const open = parts.reduce((n, p) => n + p.open_alerts, 0);
  const badge = $("alert-badge");
  badge.textContent = `${open} open alert${open === 1 ? "" : "s"}`;
  badge.title = "alerts not acknowledged yet";
  badge.hidden = open === 0;

  const body = $("parts-table").querySelector("tbody");
  body.replaceChildren();
  $("parts-empty").hidden = parts.length > 0;
  for (const p of parts) {
    const tr = document.createElement("tr");
    tr.dataset.part = p.part;
    const chosen = p.part === state.history.part;
    tr.classList.toggle("selected", chosen);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link-button";
    button.textContent = p.part;
    button.setAttribute("aria-pressed", String(chosen));
    button.addEventListener("click", () => choosePart(p.part));
    const first = document.createElement("td");
    first.append(button);
    tr.append(first);
    cell(tr, String(p.inspections), "num");
    cell(tr, formatTime(p.last));
    cell(tr, String(p.open_alerts), p.open_alerts ? "num alerting" : "num");
    body.append(tr);
  }
}

function choosePart(part) {
  state.history.part = part;
  for (const tr of $("parts-table").querySelectorAll("tbody tr")) {
    const chosen = tr.dataset.part === part;
    tr.classList.toggle("selected", chosen);
    tr.querySelector("button").setAttribute("aria-pressed", String(chosen));
  }
  $("trend-status").textContent = "";
  loadTrend(part);
}

async function loadTrend(part) {
  const history = state.history;
  const mine = ++history.loads.trend;
  const answer = await call(`/parts/${encodeURIComponent(part)}/trend`);
  if (mine !== history.loads.trend || history.part !== part) return;
  if (!answer.ok) {
    historyError(answer, `the trend of part ${part}`);
    return;
  }
  renderTrend(answer.body);
}

function renderTrend(trend) {
  $("trend").hidden = false;
  const n = trend.points.length;
  $("trend-title").textContent = `Part ${trend.part}: ${n} inspection${n === 1 ? "" : "s"}`;
  $("trend-rule").textContent = trend.rule ? `Alert rule: ${trend.rule.text}.` : "No alert rule: alerts are off.";
  drawTrend(trend);
  renderAlerts(trend.alerts);
}

// ---- trend chart (inline SVG, built with DOM calls) ----------------------------------------------

// The chart's <svg> is in index.html; its namespace is read from it, so that no URL is written here.
const SVG_NS = $("trend-svg").namespaceURI;

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  if (parent) parent.append(el);
  return el;
}

function svgText(parent, x, y, text, cls, anchor) {
  const el = svg("text", { x, y, class: cls, "text-anchor": anchor || "start" }, parent);
  el.textContent = text;
  return el;
}

// Round axis ticks covering lo..hi: {lo, hi, ticks} with about `count` steps of 1, 2, 2.5 or 5 x 10^k.
function niceTicks(lo, hi, count = 4) {
  if (!(hi > lo)) {
    const pad = Math.abs(hi) * 0.1 || 1;
    lo -= pad;
    hi += pad;
  }
  const raw = (hi - lo) / count;
  const unit = 10 ** Math.floor(Math.log10(raw));
  const step = unit * [1, 2, 2.5, 5, 10].find((m) => m * unit >= raw);
  const first = Math.floor(lo / step) * step;
  const last = Math.ceil(hi / step) * step;
  const ticks = [];
  for (let v = first; v <= last + step / 2; v += step) ticks.push(Number(v.toPrecision(12)));
  return { lo: first, hi: last, ticks };
}

// One panel of the chart: frame, grid, y ticks and title; returns y(value) for that panel.
function chartPanel(root, box, scale, title, unit) {
  const y = (v) => box.bottom - ((v - scale.lo) / (scale.hi - scale.lo)) * (box.bottom - box.top);
  svg("rect", { x: box.left, y: box.top, width: box.right - box.left, height: box.bottom - box.top, class: "frame" }, root);
  for (const t of scale.ticks) {
    svg("line", { x1: box.left, x2: box.right, y1: y(t), y2: y(t), class: "grid" }, root);
    svgText(root, box.left - 6, y(t) + 4, `${formatNumber(t)}${unit}`, "tick", "end");
  }
  svgText(root, box.left, box.top - 6, title, "panel-title");
  return y;
}

function drawTrend(trend) {
  const W = 760, H = 430, L = 70, R = 24; // the viewBox of #trend-svg and its left and right margins
  const areaBox = { left: L, right: W - R, top: 24, bottom: 184 };
  const scoreBox = { left: L, right: W - R, top: 226, bottom: 386 };
  const points = trend.points.map((p) => ({
    ...p,
    t: new Date(p.time).getTime(),
    area: 100 * p.defect_fraction,
    watched: typeof p.watched_fraction === "number" ? 100 * p.watched_fraction : null,
  }));
  const smooth = trend.rule && trend.rule.smooth_images > 1 && points.every((p) => p.watched !== null) ? trend.rule.smooth_images : 0;
  const root = $("trend-svg");
  root.replaceChildren();
  const title = svg("title", { id: "trend-svg-title" }, root);
  if (!points.length) {
    title.textContent = `No inspections of part ${trend.part} in this range.`;
    svgText(root, W / 2, H / 2, title.textContent, "tick", "middle");
    return;
  }

  // x: capture time; a single time is drawn in the middle
  const t0 = Math.min(...points.map((p) => p.t));
  const t1 = Math.max(...points.map((p) => p.t));
  const x = (t) => (t1 > t0 ? L + ((t - t0) / (t1 - t0)) * (W - R - L) : (L + W - R) / 2);

  // top panel: predicted area % and the rule's area limit
  const limit = trend.rule && typeof trend.rule.area_fraction_above === "number" ? 100 * trend.rule.area_fraction_above : null;
  const areaTop = Math.max(...points.map((p) => Math.max(p.area, p.watched || 0)), limit === null ? 0 : limit);
  const yArea = chartPanel(root, areaBox, niceTicks(0, areaTop > 0 ? areaTop : 1), "Predicted area, % of the photo", " %");
  // bottom panel: score and the image threshold in force at each inspection
  const values = points.flatMap((p) => [p.score, p.image_threshold]);
  const yScore = chartPanel(root, scoreBox, niceTicks(Math.min(...values), Math.max(...values)), "Score", "");

  if (limit !== null) {
    svg("line", { x1: L, x2: W - R, y1: yArea(limit), y2: yArea(limit), class: "limit-line" }, root);
    svgText(root, W - R - 4, yArea(limit) - 4, `alert limit ${formatNumber(limit)} %`, "line-label", "end");
  }
  let step = `M ${L} ${yScore(points[0].image_threshold)}`; // the threshold changes at the inspection that used a new one
  for (const p of points) step += ` H ${x(p.t)} V ${yScore(p.image_threshold)}`;
  svg("path", { d: `${step} H ${W - R}`, class: "threshold-line" }, root);
  svgText(root, W - R - 4, yScore(points[points.length - 1].image_threshold) - 4, "image threshold", "line-label", "end");

  svg("polyline", { points: points.map((p) => `${x(p.t)},${yArea(p.area)}`).join(" "), class: "series area" }, root);
  if (smooth) {
    // the area the alert rule watches: the median of each inspection's area and the smooth - 1 before it
    svg("polyline", { points: points.map((p) => `${x(p.t)},${yArea(p.watched)}`).join(" "), class: "series watched" }, root);
    svgText(root, L + 6, areaBox.top + 14, `thick line: median of the last ${smooth} inspections (what the rule watches)`, "line-label");
  }
  svg("polyline", { points: points.map((p) => `${x(p.t)},${yScore(p.score)}`).join(" "), class: "series score" }, root);

  // x ticks: up to 5 times, shared by both panels
  const ticks = t1 > t0 ? [0, 0.25, 0.5, 0.75, 1].map((f) => t0 + f * (t1 - t0)) : [t0];
  for (const t of ticks) {
    svg("line", { x1: x(t), x2: x(t), y1: scoreBox.bottom, y2: scoreBox.bottom + 4, class: "grid" }, root);
    const anchor = ticks.length > 1 && t === t0 ? "start" : ticks.length > 1 && t === t1 ? "end" : "middle";
    svgText(root, x(t), scoreBox.bottom + 18, formatTime(new Date(t).toISOString()), "tick", anchor);
  }
  svgText(root, (L + W - R) / 2, H - 6, "capture time (else recorded time)", "tick", "middle");

  // one group per inspection: its area point, its score point, and a ring where it raised an alert
  const alerted = new Map();
  for (const a of trend.alerts) {
    if (a.inspection_id === null || a.inspection_id === undefined) continue;
    alerted.set(a.inspection_id, [...(alerted.get(a.inspection_id) || []), a]);
  }
  for (const p of points) {
    const g = svg("g", { class: `inspection-point${p.is_defective ? " defective" : ""}`, "data-id": p.id }, root);
    const raised = alerted.get(p.id) || [];
    const tip = svg("title", {}, g);
    tip.textContent = `#${p.id}, ${formatTime(p.time)}${p.name ? `, ${p.name}` : ""}: area ${formatNumber(p.area)} %, ` +
      `score ${formatNumber(p.score)} (threshold ${formatNumber(p.image_threshold)}), ${p.is_defective ? "DEFECT" : "OK"}` +
      (raised.length ? `; raised ${raised.map((a) => `${a.rule} alert #${a.id}`).join(", ")}` : "");
    if (raised.length) {
      const open = raised.some((a) => !a.acknowledged_at);
      svg("circle", { cx: x(p.t), cy: yArea(p.area), r: 9, class: `alert-mark${open ? "" : " acknowledged"}` }, g);
    }
    svg("circle", { cx: x(p.t), cy: yArea(p.area), r: 4, class: "pt-area" }, g);
    svg("circle", { cx: x(p.t), cy: yScore(p.score), r: 4, class: "pt-score" }, g);
  }
  const areas = points.map((p) => p.area);
  title.textContent = `Trend of part ${trend.part}: ${points.length} inspections from ${formatTime(points[0].time)} ` +
    `to ${formatTime(points[points.length - 1].time)}; predicted area from ${formatNumber(Math.min(...areas))} % ` +
    `to ${formatNumber(Math.max(...areas))} %; ${points.filter((p) => p.is_defective).length} judged DEFECT; ` +
    `${alerted.size} raised an alert.`;
}

// ---- alerts ------------------------------------------------------------------------------------

function describeAlertValues(a) {
  const v = a.values || {};
  if (a.rule === "area" && typeof v.watched_fraction === "number") {
    return `the median of the last ${v.smooth_images} predicted areas, ${percent(v.watched_fraction)}, is above the limit of ${percent(v.limit)}`;
  }
  if (a.rule === "area") return `predicted area ${percent(v.defect_fraction)} is above the limit of ${percent(v.limit)}`;
  if (a.rule === "growth") {
    const growth = typeof v.growth_per_day === "number" ? `${formatNumber(100 * v.growth_per_day)} percentage points a day` : "—";
    const what = v.smooth_images > 1 ? `the median of the last ${v.smooth_images} areas` : "area";
    return `${what} grew ${growth} over ${formatNumber(v.window_days)} day(s) (${v.points} inspections), ` +
      `above the limit of ${formatNumber(100 * v.limit)}`;
  }
  return `${a.rule}: ${JSON.stringify(v)}`;
}

function renderAlerts(alerts) {
  const list = $("trend-alerts");
  list.replaceChildren();
  if (!alerts.length) {
    const li = document.createElement("li");
    li.textContent = "No alerts for this part.";
    list.append(li);
    return;
  }
  for (const a of alerts) {
    const li = document.createElement("li");
    li.dataset.id = String(a.id);
    li.className = a.acknowledged_at ? "acknowledged" : "open";
    const head = document.createElement("p");
    head.className = "alert-head";
    head.textContent = `${a.rule === "area" ? "Area" : a.rule === "growth" ? "Growth" : a.rule} alert #${a.id}, ` +
      `raised ${formatTime(a.raised_at)}${a.inspection_id ? ` at inspection #${a.inspection_id}` : ""}`;
    const values = document.createElement("p");
    values.textContent = describeAlertValues(a);
    const status = document.createElement("p");
    status.className = "alert-state";
    if (a.acknowledged_at) {
      status.textContent = `Acknowledged ${formatTime(a.acknowledged_at)} by ${a.acknowledged_by || "—"}`;
    } else if (a.cleared_at) {
      status.textContent = `The condition no longer holds since ${formatTime(a.cleared_at)}; not acknowledged yet.`;
    } else {
      status.textContent = "Open: not acknowledged yet.";
    }
    li.append(head, values, status);
    if (!a.acknowledged_at) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "ack";
      button.textContent = "Acknowledge";
      button.setAttribute("aria-label", `Acknowledge alert #${a.id}`);
      button.addEventListener("click", () => acknowledge(a, button));
      li.append(button);
    }
    list.append(li);
  }
}

async function acknowledge(alert, button) {
  button.disabled = true;
  const by = $("ack-by").value.trim();
  const query = by ? `?${new URLSearchParams({ by })}` : "";
  const answer = await call(`/alerts/${encodeURIComponent(alert.id)}/ack${query}`, { method: "POST" });
  if (!answer.ok) {
    button.disabled = false;
    if (answer.status === 401) $("key-panel").hidden = false;
    $("trend-status").textContent = `Alert #${alert.id} not acknowledged. ${plainError(answer.status, answer.detail)}`;
    return;
  }
  $("trend-status").textContent = `Alert #${alert.id} acknowledged.`;
  await refreshHistory();
}

// ---- wiring -------------------------------------------------------------------------------------

function wire() {
  const input = $("file-input");
  input.addEventListener("change", () => {
    addFiles(Array.from(input.files));
    input.value = "";
  });
  const zone = $("drop-zone");
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    addFiles(Array.from(event.dataTransfer.files));
  });
  // Dropping a photo anywhere else must not navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  $("threshold-slider").addEventListener("input", (event) => applyThreshold(Number(event.target.value)));
  $("threshold-number").addEventListener("change", (event) => {
    const value = Number(event.target.value);
    if (event.target.value === "" || !Number.isFinite(value)) {
      event.target.value = formatNumber(state.threshold);
      return;
    }
    applyThreshold(value);
    updateSliderRange();
  });
  $("threshold-reset").addEventListener("click", () => {
    applyThreshold(state.model.threshold);
    updateSliderRange();
  });
  $("threshold-save").addEventListener("click", saveThreshold);

  for (const radio of document.querySelectorAll('input[name="view-all"]')) {
    radio.addEventListener("change", () => {
      for (const r of state.results) if (r.score !== null) showView(r, radio.value);
    });
  }

  $("history-toggle").addEventListener("click", toggleHistory);
  $("history-refresh").addEventListener("click", refreshHistory);
  $("decision-filter").addEventListener("change", (event) => {
    state.history.decision = event.target.value;
    state.history.offset = 0;
    loadInspections();
  });
  $("page-prev").addEventListener("click", () => {
    state.history.offset = Math.max(0, state.history.offset - PAGE_SIZE);
    loadInspections();
  });
  $("page-next").addEventListener("click", () => {
    state.history.offset += PAGE_SIZE;
    loadInspections();
  });

  $("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    state.apiKey = $("api-key").value.trim();
    sessionStorage.setItem(KEY_STORAGE, state.apiKey);
    if (await loadModel()) $("key-panel").hidden = true;
  });
}

wire();
loadModel();
