// The pitscope inspection page: upload photos to POST /predict?map=embed, show the verdicts,
// re-judge them live against a threshold slider, save a new threshold with PUT /threshold.
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
};

const $ = (id) => document.getElementById(id);

function formatNumber(x) {
  if (typeof x !== "number" || !Number.isFinite(x)) return String(x);
  if (Number.isInteger(x)) return String(x);
  const abs = Math.abs(x);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return x.toExponential(3);
  return String(Number(x.toPrecision(4)));
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
  add("Image size", `${m.image_size} × ${m.image_size} px network input (any photo size is accepted)`);
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
  slider.min = "0";
  slider.max = String(max);
  slider.step = String(max / 1000);
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

async function score(file) {
  const r = newCard(file);
  renderSummary();
  const limit = state.model && state.model.limits.max_upload_bytes;
  if (limit && file.size > limit) {
    failResult(r, plainError(413, "", file.name), `${formatBytes(file.size)} is over the limit`);
    return;
  }
  const form = new FormData();
  form.append("file", file, file.name);
  const answer = await call("/predict?map=embed", { method: "POST", body: form });
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
}

function describeRegions(b) {
  const size = `${b.width} × ${b.height} px photo`;
  if (!b.region_count) return `No defect region predicted on the ${size}`;
  const shown = b.regions.slice(0, 3).map((g) =>
    `${g.area_px} px at x ${g.box[0]}–${g.box[2]}, y ${g.box[1]}–${g.box[3]}`).join("; ");
  const more = b.region_count > 3 ? `; ${b.region_count - 3} more` : "";
  const noun = b.region_count === 1 ? "region" : "regions";
  return `${b.region_count} predicted defect ${noun}, ${b.defect_px} px in all ` +
    `(${formatNumber(100 * b.defect_fraction)} % of the ${size}): ${shown}${more}`;
}

function addFiles(files) {
  for (const file of files) state.queue = state.queue.then(() => score(file));
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

  $("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    state.apiKey = $("api-key").value.trim();
    sessionStorage.setItem(KEY_STORAGE, state.apiKey);
    if (await loadModel()) $("key-panel").hidden = true;
  });
}

wire();
loadModel();
