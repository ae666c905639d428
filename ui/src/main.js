// The review page: wiring of the controls to the service's API and the viewports. The page holds no secret and
// no state on the server: the API key lives in memory only, the image stays a File object sent with each call.
import { Problem, base64Bytes, getBlob, getJson, imageForm, postAsync, setApiKey } from "./api.js";
import { SharedView, Viewport, attachInteraction } from "./viewer.js";
import { boxesOnSlice, contentBox, heatSlice, heatVolume } from "./volume.js";

const $ = (id) => document.getElementById(id);

const CT_PRESETS = [["Soft tissue", 40, 400], ["Lung", -600, 1500], ["Bone", 400, 1800], ["Brain", 40, 80],
  ["Liver", 60, 160]];

const style = { opacity: 0.5, colormap: "jet", layers: { image: true, heatmap: true, boxes: true } };
const view = new SharedView();
const viewports = [
  new Viewport($("canvas-1"), $("caption-1"), view, style),
  new Viewport($("canvas-2"), $("caption-2"), view, style),
];

const state = {
  models: [],
  methods: new Map(), // name → MethodInfo
  model: null, // ModelInfo
  file: null, // a File, or an array of Files (the slices of a DICOM series)
  frame: 0, // 0-based frame of a multi-frame file, sent with every call
  frames: 1,
  grey: null, // { values: Float32Array, width, height, range, windows, invert } for grey DICOM (a volume: its slice)
  volume: null, // { values, depth, height, width, spacing, source: {depth, height, width, spacing}, format }
  slice: 0, // 0-based axial slice of the volume's display grid
  window: null, // { center, width }
  base: null, // canvas of the image as shown
  predictions: [],
  selected: [], // keys (class index, or detection id for detectors) ticked in Classes, in tick order
  results: new Map(), // method → { maps: Map key → heat, boxes: Map key → [box], labels: Map key → text }
  lastMethodParams: {},
  job: null, // AbortController of the running explanation
  generation: 0, // bumps on every new image/model so late answers of an old one are dropped
};

// ---- messages ---------------------------------------------------------------------------------------------------

function showError(err) {
  if (err && err.name === "AbortError") return;
  const box = $("message");
  box.textContent = err instanceof Problem ? err.describe() : `Unexpected error: ${err && err.message}`;
  box.hidden = false;
  if (err instanceof Problem && err.status === 401) $("api-key").focus();
}

function clearError() {
  $("message").hidden = true;
  $("message").textContent = "";
}

function status(text) {
  $("status").textContent = text;
}

// ---- models and methods ----------------------------------------------------------------------------------------

async function loadCatalogue() {
  try {
    const [models, methods] = await Promise.all([getJson("/models"), getJson("/methods")]);
    state.models = models.models;
    state.methods = new Map(methods.methods.map((m) => [m.name, m]));
    const select = $("model-select");
    const previous = select.value;
    select.replaceChildren(...state.models.map((m) => new Option(`${m.name} (${m.task})`, m.name)));
    const chosen = state.models.find((m) => m.name === previous) || state.models.find((m) => m.default)
      || state.models[0];
    if (chosen) select.value = chosen.name;
    clearError();
    await selectModel();
  } catch (err) {
    showError(err);
    return;
  }
  if (pacsConfigured) await loadStudies();
}

// ---- PACS picker (QIDO-RS through the service; only when the service has XAAS_DICOMWEB_URL) ----------------------

const pacsConfigured = document.querySelector('meta[name="xaas-pacs"]')?.content === "on";
const uidPath = (uid) => encodeURIComponent(uid);

function fillSelect(select, items, text) {
  select.replaceChildren(...items.map((item) => new Option(text(item), item.uid)));
  if (!items.length) select.append(new Option("(none)", ""));
}

const dicomDate = (d) => (d && d.length === 8 ? `${d.slice(0, 4)}-${d.slice(4, 6)}-${d.slice(6)}` : d || "no date");

async function loadStudies() {
  $("pacs").hidden = false;
  try {
    const { studies } = await getJson("/dicomweb/studies?limit=200");
    fillSelect($("pacs-study"), studies.map((s) => ({ ...s, uid: s.study })), (s) =>
      `${dicomDate(s.date)} ${s.modalities.join("/")} ${s.description || ""} (${s.instance_count ?? "?"} images)`
        .replace(/\s+/g, " "));
    await loadSeries();
  } catch (err) {
    showError(err);
  }
}

async function loadSeries() {
  const study = $("pacs-study").value;
  fillSelect($("pacs-series"), [], () => "");
  fillSelect($("pacs-instance"), [], () => "");
  $("pacs-open").disabled = true;
  if (!study) return;
  const { series } = await getJson(`/dicomweb/studies/${uidPath(study)}/series`);
  series.sort((a, b) => (a.number ?? 0) - (b.number ?? 0));
  fillSelect($("pacs-series"), series.map((s) => ({ ...s, uid: s.series })), (s) =>
    `#${s.number ?? "?"} ${s.modality || ""} ${s.description || ""} (${s.instance_count ?? "?"})`.replace(/\s+/g, " "));
  await loadInstances();
}

async function loadInstances() {
  const study = $("pacs-study").value;
  const series = $("pacs-series").value;
  fillSelect($("pacs-instance"), [], () => "");
  $("pacs-open").disabled = true;
  if (!study || !series) return;
  const { instances } = await getJson(`/dicomweb/studies/${uidPath(study)}/series/${uidPath(series)}/instances`);
  instances.sort((a, b) => (a.number ?? 0) - (b.number ?? 0));
  fillSelect($("pacs-instance"), instances.map((i) => ({ ...i, uid: i.instance })), (i) =>
    `#${i.number ?? "?"} ${i.columns ?? "?"} × ${i.rows ?? "?"}${i.frames > 1 ? `, ${i.frames} frames` : ""}`);
  $("pacs-open").disabled = !instances.length;
}

async function openFromPacs() {
  const [study, series, sop] = ["pacs-study", "pacs-series", "pacs-instance"].map((id) => $(id).value);
  if (!sop) return;
  status("Fetching the instance from the PACS…");
  try {
    const blob = await getBlob(`/dicomweb/studies/${uidPath(study)}/series/${uidPath(series)}/instances/${uidPath(sop)}`);
    await openFile(new File([blob], `${sop}.dcm`, { type: "application/dicom" }));
  } catch (err) {
    status("");
    showError(err);
  }
}

const isVolumeModel = (m) => Boolean(m && m.spatial_dims === 3);

async function selectModel() {
  const before = state.model;
  state.model = state.models.find((m) => m.name === $("model-select").value) || null;
  const usable = state.model ? state.model.methods.filter((n) => state.methods.has(n)) : [];
  for (const id of ["method-select", "method2-select"]) {
    const select = $(id);
    const previous = select.value;
    select.replaceChildren(...usable.map((n) => new Option(n, n)));
    if (usable.includes(previous)) select.value = previous;
    else if (id === "method-select" && usable.includes("gradcam")) select.value = "gradcam";
    else if (id === "method2-select") select.value = usable.find((n) => n !== $("method-select").value) || "";
  }
  describeMethod();
  resetResults();
  // one multi-frame DICOM file is frames for a 2-D model and a volume for a 3-D one: open it again as such
  const frames = state.file && !Array.isArray(state.file)
    && (state.volume ? state.volume.format === "dicom-multiframe" : state.frames > 1);
  if (frames && isVolumeModel(before) !== isVolumeModel(state.model)) await openFile(state.file);
  else if (state.file) await predict();
}

function describeMethod() {
  const info = state.methods.get($("method-select").value);
  $("method-description").textContent = info ? info.description : "";
  const sanity = $("method-sanity");
  const warnings = info ? [info.sanity && `Sanity check: ${info.sanity}`, ...(info.caveats || [])].filter(Boolean) : [];
  sanity.textContent = warnings.join("\n");
  sanity.hidden = warnings.length === 0;
  const params = $("method-params");
  params.replaceChildren();
  for (const [name, p] of Object.entries((info && info.params) || {})) params.append(paramField(name, p));
}

function paramField(name, p) {
  const wrap = document.createElement("div");
  const id = `param-${name}`;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = name.replace(/_/g, " ");
  let input;
  if (p.choices && p.choices.length) {
    input = document.createElement("select");
    for (const c of p.choices) input.append(new Option(String(c), String(c)));
  } else if (p.type === "boolean") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = Boolean(p.default);
  } else {
    input = document.createElement("input");
    input.type = p.type === "integer" || p.type === "number" ? "number" : "text";
    if (p.type === "integer") input.step = "1";
    if (p.type === "number") input.step = "any";
    if (p.minimum !== null && p.minimum !== undefined) input.min = String(p.minimum);
    if (p.maximum !== null && p.maximum !== undefined) input.max = String(p.maximum);
  }
  input.id = id;
  input.dataset.param = name;
  input.dataset.default = p.default === null || p.default === undefined ? "" : String(p.default);
  if (input.type !== "checkbox") input.value = input.dataset.default;
  if (p.description) {
    const hint = document.createElement("span");
    hint.className = "hint";
    hint.id = `${id}-hint`;
    hint.textContent = p.description;
    input.setAttribute("aria-describedby", hint.id);
    wrap.append(label, input, hint);
  } else {
    wrap.append(label, input);
  }
  return wrap;
}

/** The parameters the user changed (defaults are left to the service, so equal requests stay cache hits). */
function methodParams() {
  const out = {};
  for (const input of $("method-params").querySelectorAll("[data-param]")) {
    const value = input.type === "checkbox" ? String(input.checked) : input.value.trim();
    if (value !== "" && value !== input.dataset.default) out[input.dataset.param] = value;
  }
  return out;
}

// ---- opening an image -------------------------------------------------------------------------------------------

async function isDicom(file) {
  if (/\.(dcm|dicom)$/i.test(file.name) || file.type === "application/dicom") return true;
  const head = new Uint8Array(await file.slice(0, 132).arrayBuffer());
  return head.length === 132 && String.fromCharCode(...head.slice(128)) === "DICM";
}

function canvasOf(source, width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  canvas.getContext("2d").drawImage(source, 0, 0);
  return canvas;
}

/** What the browser cannot show itself and the service reads as a volume: several files, a zip, NIfTI. */
const volumeName = (name) => /\.(zip|nii|nii\.gz|gz)$/i.test(name);

async function openFile(picked) {
  let file = picked && picked.length !== undefined ? [...picked] : picked; // a FileList, an array or one File
  if (Array.isArray(file)) file = file.filter((f) => f.size > 0 && !/^\.|(^|\/)DICOMDIR$/i.test(f.name));
  if (Array.isArray(file) && file.length < 2) file = file[0];
  if (!file) return;
  const generation = ++state.generation;
  cancelJob();
  clearError();
  resetResults();
  state.file = null;
  state.grey = null;
  state.volume = null;
  state.slice = 0;
  state.frame = 0;
  state.frames = 1;
  $("frame-row").hidden = true;
  $("slice-row").hidden = true;
  state.predictions = [];
  state.selected = [];
  renderClasses();
  $("window-controls").hidden = true;
  const name = Array.isArray(file) ? `${file.length} files` : file.name;
  status(`Opening ${name}…`);
  try {
    let info;
    if (!Array.isArray(file) && !volumeName(file.name) && !(await isDicom(file))) {
      try {
        const bitmap = await createImageBitmap(file); // EXIF orientation applied, as the service does
        state.base = canvasOf(bitmap, bitmap.width, bitmap.height);
        info = `${file.name}: ${bitmap.width} × ${bitmap.height}`;
        bitmap.close();
      } catch {
        info = null; // a format this browser cannot show (TIFF, 16-bit…): let the service decode it
      }
    }
    if (!info) info = await openViaService(file);
    if (generation !== state.generation) return;
    state.file = file;
    $("image-info").textContent = info;
    view.fitted = true;
    showViews();
    view.fit();
    status("");
    await predict();
  } catch (err) {
    if (generation !== state.generation) return;
    state.base = null;
    $("image-info").textContent = "";
    showViews();
    status("");
    showError(err);
  }
}

async function openViaService(file, keepWindow = false) {
  let body = await getJson("/display", { method: "POST", body: imageForm(file, frameOption()) });
  if (body.kind === "grey" && body.frames > 1 && isVolumeModel(state.model) && !Array.isArray(file)) {
    try { // a 3-D model reads one enhanced multi-frame file as a volume: show it as one
      body = await getJson("/display", { method: "POST", body: imageForm(file, { volume: true }) });
    } catch (err) {
      if (!(err instanceof Problem) || err.status !== 422) throw err; // frames only: /predict will say why
    }
  }
  state.frames = body.frames;
  const { width, height } = body.image;
  const name = Array.isArray(file) ? `${file.length} files` : file.name;
  if (body.kind === "volume") return openVolume(body, name);
  if (body.kind === "grey") {
    const bytes = base64Bytes(body.values.data);
    const values = new Float32Array(bytes.buffer, bytes.byteOffset, width * height);
    state.grey = { values, width, height, range: body.range, windows: body.windows || [], invert: body.invert };
    state.base = document.createElement("canvas");
    state.base.width = width;
    state.base.height = height;
    setupWindowControls(keepWindow);
  } else {
    const blob = new Blob([base64Bytes(body.png)], { type: "image/png" });
    const bitmap = await createImageBitmap(blob);
    state.base = canvasOf(bitmap, width, height);
    bitmap.close();
  }
  $("frame-row").hidden = body.frames < 2;
  $("frame-input").max = String(body.frames);
  $("frame-count").textContent = `of ${body.frames}`;
  return `${name}: ${body.format} ${width} × ${height}${body.frames > 1 ? `, ${body.frames} frames` : ""}`;
}

// ---- volumes: one display grid from /display, scrolled slice by slice with no request --------------------------

const mm = (list) => list.map((v) => Math.round(v * 100) / 100).join(" × ");

function openVolume(body, name) {
  const [depth, height, width] = body.values.shape;
  const bytes = base64Bytes(body.values.data);
  state.volume = { values: new Float32Array(bytes.buffer, bytes.byteOffset, depth * height * width), depth, height,
    width, spacing: body.spacing, format: body.format,
    source: { depth: body.image.depth, height: body.image.height, width: body.image.width, spacing: body.image.spacing } };
  state.slice = Math.floor(depth / 2);
  state.grey = { values: sliceValues(state.slice), width, height, range: body.range, windows: body.windows || [],
    invert: false };
  state.base = document.createElement("canvas");
  state.base.width = width;
  state.base.height = height;
  const input = $("slice-input");
  input.max = String(depth);
  input.value = String(state.slice + 1);
  $("slice-row").hidden = false;
  sliceText();
  setupWindowControls();
  const s = state.volume.source;
  return `${name}: ${body.format} ${s.width} × ${s.height} × ${s.depth} voxels of ${mm(s.spacing)} mm, shown on `
    + `${width} × ${height} × ${depth} of ${mm(body.spacing)} mm`;
}

function sliceValues(k) {
  const { values, height, width } = state.volume;
  return values.subarray(k * height * width, (k + 1) * height * width);
}

function sliceText() {
  const text = `${state.slice + 1} of ${state.volume.depth}`;
  $("slice-count").textContent = text;
  $("slice-input").setAttribute("aria-valuetext", `slice ${text}`);
}

/** Show slice `k` (0-based) of the open volume: values, window, heatmap and boxes are all here already. */
function showSlice(k) {
  if (!state.volume) return;
  k = Math.max(0, Math.min(state.volume.depth - 1, k));
  state.slice = k;
  $("slice-input").value = String(k + 1);
  sliceText();
  state.grey.values = sliceValues(k);
  applyWindow(state.window.center, state.window.width, false);
  showViews();
}

/** `frame` for multi-frame files (every call must look at the frame on screen). */
function frameOption() {
  return state.frame > 0 ? { frame: state.frame } : {};
}

async function selectFrame() {
  const wanted = Math.round(Number($("frame-input").value)) - 1;
  if (!state.file || !Number.isFinite(wanted) || wanted < 0 || wanted >= state.frames || wanted === state.frame) {
    $("frame-input").value = String(state.frame + 1);
    return;
  }
  const generation = ++state.generation;
  cancelJob();
  clearError();
  resetResults();
  state.frame = wanted;
  try {
    await openViaService(state.file, $("window-preset").value === "custom");
    if (generation !== state.generation) return;
    view.redraw();
    await predict();
  } catch (err) {
    showError(err);
  }
}

// ---- DICOM window -----------------------------------------------------------------------------------------------

function presets() {
  const g = state.grey;
  const [lo, hi] = g.range;
  const list = g.windows.map((w, i) => [`File window ${g.windows.length > 1 ? i + 1 : ""}`.trim(), w.center, w.width]);
  list.push(["Full range", (lo + hi) / 2, Math.max(1, hi - lo)]);
  if (lo < -500) list.push(...CT_PRESETS); // Hounsfield units: the usual CT windows apply
  return list;
}

function setupWindowControls(keepWindow = false) {
  const select = $("window-preset");
  const list = presets();
  select.replaceChildren(...list.map(([name, c, w], i) => new Option(`${name} (${c} / ${w})`, String(i))),
    new Option("Custom", "custom"));
  if (keepWindow && state.window) { // another frame of the same file: keep the user's own window
    applyWindow(state.window.center, state.window.width);
  } else {
    select.value = "0"; // the file's own window, else the full range: what the model saw
    applyWindow(list[0][1], list[0][2], false);
  }
  $("window-controls").hidden = false;
}

function applyWindow(center, width, custom = true) {
  if (!state.grey) return;
  width = Math.max(1, width);
  state.window = { center, width };
  $("window-center").value = String(Math.round(center * 100) / 100);
  $("window-width").value = String(Math.round(width * 100) / 100);
  if (custom) $("window-preset").value = "custom";
  const { values, width: w, height: h, invert } = state.grey;
  const ctx = state.base.getContext("2d");
  const img = ctx.createImageData(w, h);
  const px = img.data;
  // DICOM PS3.3 C.11.2.1.2 linear window
  const low = center - 0.5 - (width - 1) / 2;
  const span = Math.max(width - 1, 1e-6);
  for (let i = 0, j = 0; i < values.length; i++, j += 4) {
    let y = ((values[i] - low) / span) * 255;
    y = y < 0 ? 0 : y > 255 ? 255 : y;
    if (invert) y = 255 - y;
    px[j] = px[j + 1] = px[j + 2] = y;
    px[j + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  view.redraw();
}

function windowDrag(dx, dy) {
  if (!state.grey || !state.window) return false;
  const [lo, hi] = state.grey.range;
  const k = Math.max(0.1, (hi - lo) / 400);
  applyWindow(state.window.center + dy * k, state.window.width + dx * k);
  return true;
}

// ---- predictions and targets ------------------------------------------------------------------------------------

const keyOf = (p) => (state.model && state.model.task === "detection" ? p.id : p.index);

async function predict() {
  const generation = state.generation;
  const model = state.model;
  if (!model || !state.file) return;
  status("Scoring the classes…");
  try {
    const topK = Math.min(model.num_classes || 10, 10);
    const body = await getJson("/predict", { method: "POST",
      body: imageForm(state.file, { model: model.name, top_k: topK, ...frameOption() }) });
    if (generation !== state.generation || model !== state.model) return;
    state.predictions = body.predictions;
    state.selected = state.predictions.length ? [keyOf(state.predictions[0])] : [];
    renderClasses();
    status("");
  } catch (err) {
    status("");
    if (generation === state.generation && model === state.model) { // no classes of another model stay tickable
      state.predictions = [];
      state.selected = [];
      renderClasses();
    }
    showError(err);
  }
}

function labelOf(key) {
  const p = state.predictions.find((q) => keyOf(q) === key);
  if (!p) return String(key);
  const id = state.model.task === "detection" ? ` #${p.id}` : "";
  return `${p.label}${id} (${p.score.toFixed(3)})`;
}

function renderClasses() {
  const list = $("classes");
  if (!state.predictions.length) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = state.file ? "no classes" : "open an image first";
    list.replaceChildren(li);
  } else {
    list.replaceChildren(...state.predictions.map((p) => {
      const key = keyOf(p);
      const li = document.createElement("li");
      const label = document.createElement("label");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = String(key);
      box.checked = state.selected.includes(key);
      box.addEventListener("change", () => {
        state.selected = box.checked ? [...state.selected, key] : state.selected.filter((k) => k !== key);
        renderTargetsChoice();
      });
      const name = document.createElement("span");
      name.textContent = state.model.task === "detection" ? `${p.label} #${p.id}` : p.label;
      label.append(box, name);
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = p.score.toFixed(3);
      score.setAttribute("aria-label", `score ${p.score.toFixed(3)}`);
      li.append(label, score);
      return li;
    }));
  }
  renderTargetsChoice();
}

function renderTargetsChoice() {
  const keys = state.selected.map(String);
  for (const id of ["shown-class", "shown-class2"]) {
    const select = $(id);
    const previous = select.value;
    select.replaceChildren(...state.selected.map((k) => new Option(labelOf(k), String(k))));
    // the second viewer defaults to a class the first one does not show
    const other = id === "shown-class2" ? keys.find((k) => k !== $("shown-class").value) : undefined;
    if (keys.includes(previous) && !(other !== undefined && previous === $("shown-class").value)) {
      select.value = previous;
    } else if (other !== undefined) {
      select.value = other;
    } else if (keys.length) {
      select.value = keys[0];
    }
  }
  $("explain-button").disabled = !(state.file && state.selected.length && $("method-select").value);
  showViews();
}

// ---- explanations -----------------------------------------------------------------------------------------------

function resetResults() {
  state.results = new Map();
  state.explainedMethods = null;
  $("download-png").disabled = true;
  $("download-dicom").disabled = true;
  showViews();
}

function cancelJob() {
  if (state.job) state.job.abort();
  state.job = null;
}

/** The raw map volume of /explain (at the model's grid) on the display grid, as 8-bit levels per voxel. */
function volumeMap(raw, volume, model) {
  if (!raw || raw.shape.length !== 3) {
    throw new Problem(422, { title: "Not a volume map", detail: "the service answered a 2-D map for a volume" });
  }
  const bytes = base64Bytes(raw.data);
  const values = new Float32Array(bytes.buffer, bytes.byteOffset, raw.shape.reduce((a, b) => a * b, 1));
  const s = volume.source;
  const padded = model.keep_aspect ? { inputSize: model.input_size,
    box: contentBox([s.depth, s.height, s.width], s.spacing, model.input_size) } : null;
  return heatVolume(raw, values, [volume.depth, volume.height, volume.width], padded);
}

/** DICOM results exist for grey DICOM images and DICOM series (multi-frame PM and SEG), not for NIfTI volumes
 * or enhanced multi-frame files (the service refuses those). */
function dicomResults() {
  return state.volume ? state.volume.format === "dicom-series" : Boolean(state.grey);
}

async function decodeHeatmap(b64) {
  const bitmap = await createImageBitmap(new Blob([base64Bytes(b64)], { type: "image/png" }));
  const canvas = canvasOf(bitmap, bitmap.width, bitmap.height);
  bitmap.close();
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  const levels = new Uint8Array(canvas.width * canvas.height);
  for (let i = 0; i < levels.length; i++) levels[i] = data[i * 4];
  return { levels, width: canvas.width, height: canvas.height };
}

/** Option sets for the selected targets: one request with every class, or one per detection for detectors. */
function targetOptions(keys) {
  if (state.model.task === "detection") return keys.map((k) => ({ detection: k }));
  return [{ target: keys }];
}

async function explain() {
  const method = $("method-select").value;
  const compare = $("compare-select").value;
  const methods = [method];
  if (compare === "method" && $("method2-select").value && $("method2-select").value !== method) {
    methods.push($("method2-select").value);
  }
  if (!state.file || !state.selected.length) return;
  cancelJob();
  clearError();
  const controller = new AbortController();
  state.job = controller;
  const generation = state.generation;
  const model = state.model;
  const keys = [...state.selected];
  const params = methodParams();
  state.lastMethodParams = params;
  $("explain-button").disabled = true;
  $("cancel-button").hidden = false;
  $("progress-row").hidden = false;
  const progress = $("progress");
  progress.removeAttribute("value"); // indeterminate until the job reports
  const results = new Map();
  try {
    for (const m of methods) {
      const own = m === method ? params : {};
      const result = { maps: new Map(), boxes: new Map() };
      const onProgress = (done, total, unit) => {
        if (total > 0) {
          progress.max = total;
          progress.value = done;
        }
        $("progress-text").textContent = `${m}: ${done}${total ? ` / ${total}` : ""} ${unit || ""}`;
      };
      for (const targets of targetOptions(keys)) {
        status(`Explaining with ${m}…`);
        const volume = state.volume;
        const options = { model: model.name, outputs: volume ? "raw" : "heatmap", ...frameOption(), ...targets,
          ...own };
        const body = await postAsync(`/explain/${encodeURIComponent(m)}`, imageForm(state.file, options),
          { onProgress, signal: controller.signal });
        for (const [i, e] of body.explanations.entries()) {
          const key = e.detection ? e.detection.id : (targets.detection ?? e.index ?? keys[i]);
          result.maps.set(key, volume ? volumeMap(e.raw, volume, model) : await decodeHeatmap(e.heatmap));
        }
        status(`Boxing with ${m}…`);
        try {
          const boxes = await postAsync("/localize", imageForm(state.file, { model: model.name, method: m,
            ...frameOption(), ...targets, ...own }), { onProgress, signal: controller.signal });
          for (const b of boxes.boxes) {
            const key = b.detection ? b.detection.id : (targets.detection ?? b.index);
            result.boxes.set(key, [...(result.boxes.get(key) || []), b]);
          }
        } catch (err) {
          if (err.name === "AbortError") throw err;
          showError(err); // the heatmap stands on its own: show why there are no boxes, keep going
        }
      }
      results.set(m, result);
    }
    if (generation !== state.generation || model !== state.model) return;
    state.results = results;
    state.explainedMethods = methods;
    $("download-png").disabled = false;
    $("download-dicom").disabled = !dicomResults();
    $("download-dicom").hidden = !dicomResults();
    status(`Explained ${keys.length} target${keys.length > 1 ? "s" : ""} with ${methods.join(" and ")}.`);
  } catch (err) {
    status(err.name === "AbortError" && generation === state.generation ? "Cancelled." : "");
    showError(err);
  } finally {
    if (state.job === controller) state.job = null;
    $("cancel-button").hidden = true;
    $("progress-row").hidden = true;
    $("progress-text").textContent = "";
    renderTargetsChoice();
  }
}

// ---- viewports --------------------------------------------------------------------------------------------------

function panes() {
  const compare = $("compare-select").value;
  const method = (state.explainedMethods && state.explainedMethods[0]) || $("method-select").value;
  const first = { method, key: $("shown-class").value };
  if (compare === "method") {
    return [first, { method: (state.explainedMethods && state.explainedMethods[1]) || $("method2-select").value,
      key: first.key }];
  }
  if (compare === "class") return [first, { method, key: $("shown-class2").value }];
  return [first];
}

function showViews() {
  const list = panes();
  $("viewport-2").hidden = list.length < 2;
  $("viewports").classList.toggle("split", list.length > 1);
  $("compare-method-row").hidden = $("compare-select").value !== "method";
  $("shown-class2-row").hidden = $("compare-select").value !== "class";
  for (const [i, v] of viewports.entries()) {
    const pane = list[i];
    if (!pane || !state.base) {
      v.setContent({ base: state.base, caption: state.base ? "" : "Open an image (or drop one here)" });
      continue;
    }
    const key = pane.key === "" ? undefined : Number(pane.key);
    const result = state.results.get(pane.method);
    let heat = result && key !== undefined ? result.maps.get(key) || null : null;
    let boxes = result && key !== undefined ? result.boxes.get(key) || [] : [];
    if (state.volume) {
      if (heat) heat = heatSlice(heat, state.slice);
      boxes = boxesOnSlice(boxes, state.slice, state.volume);
    }
    const where = state.volume ? ` · slice ${state.slice + 1}/${state.volume.depth}` : "";
    const caption = heat ? `${pane.method} · ${labelOf(key)}${boxes.length ? ` · ${boxes.length} box` : ""}${where}`
      : (result ? `${pane.method}: no map for this class (explain it)` : `Image${where}`);
    v.setContent({ base: state.base, heat, boxes, caption });
  }
}

async function downloadBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

const safe = (s) => String(s).replace(/[^A-Za-z0-9._-]+/g, "_").slice(0, 60);

async function downloadPng() {
  const [pane] = panes();
  const blob = await viewports[0].exportPng();
  const where = state.volume ? `-slice${state.slice + 1}` : "";
  if (blob) {
    await downloadBlob(blob, `xaas-${safe(pane.method)}-${safe(labelOf(Number(pane.key)).split(" ")[0])}${where}.png`);
  }
}

async function downloadDicom() {
  const [pane] = panes();
  const key = Number(pane.key);
  const [targets] = targetOptions([key]);
  const controller = new AbortController();
  state.job = controller;
  status("Building the DICOM results…");
  try {
    const outputs = state.volume ? "dicom-pm,dicom-seg" : "dicom-pm,dicom-seg,dicom-sc"; // no SC/SR of a volume
    const options = { model: state.model.name, outputs, ...frameOption(), ...targets,
      ...(pane.method === $("method-select").value ? state.lastMethodParams : {}) };
    const body = await postAsync(`/explain/${encodeURIComponent(pane.method)}`, imageForm(state.file, options),
      { signal: controller.signal });
    const objects = { ...((body.explanations[0] && body.explanations[0].dicom) || {}) };
    if (!state.volume) { // the SR of boxes is for 2-D images only
      try {
        const sr = await postAsync("/localize", imageForm(state.file, { model: state.model.name, method: pane.method,
          outputs: "dicom-sr", ...frameOption(), ...targets }), { signal: controller.signal });
        if (sr.dicom && sr.dicom.sr) objects.sr = sr.dicom.sr;
      } catch (err) {
        if (err.name === "AbortError") throw err;
        showError(err);
      }
    }
    for (const [kind, b64] of Object.entries(objects)) {
      await downloadBlob(new Blob([base64Bytes(b64)], { type: "application/dicom" }),
        `xaas-${safe(pane.method)}-${safe(labelOf(key).split(" ")[0])}-${kind}.dcm`);
    }
    status(`Saved ${Object.keys(objects).map((k) => k.toUpperCase()).join(", ")}.`);
  } catch (err) {
    status("");
    showError(err);
  } finally {
    if (state.job === controller) state.job = null;
  }
}

// ---- wiring -----------------------------------------------------------------------------------------------------

const tool = () => document.querySelector("input[name=tool]:checked").value;
for (const v of viewports) {
  attachInteraction(v, { tool, onWindow: windowDrag });
  v.canvas.addEventListener("keydown", (e) => { // scroll the slices of a volume from the viewer
    if (!state.volume) return;
    const steps = { PageDown: 1, PageUp: -1, End: Infinity, Home: -Infinity };
    if (!(e.key in steps)) return;
    const step = steps[e.key];
    showSlice(Number.isFinite(step) ? state.slice + step : (step > 0 ? state.volume.depth - 1 : 0));
    e.preventDefault();
  });
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  setApiKey($("api-key").value);
  loadCatalogue();
});
$("image-input").addEventListener("change", (e) => openFile(e.target.files));
$("folder-input").addEventListener("change", (e) => openFile(e.target.files));
$("slice-input").addEventListener("input", (e) => showSlice(Math.round(Number(e.target.value)) - 1));
$("model-select").addEventListener("change", selectModel);
$("frame-input").addEventListener("change", selectFrame);
$("pacs-study").addEventListener("change", () => loadSeries().catch(showError));
$("pacs-series").addEventListener("change", () => loadInstances().catch(showError));
$("pacs-open").addEventListener("click", openFromPacs);
$("pacs-refresh").addEventListener("click", loadStudies);
$("method-select").addEventListener("change", () => {
  describeMethod();
  renderTargetsChoice();
});
$("compare-select").addEventListener("change", showViews);
$("method2-select").addEventListener("change", showViews);
$("shown-class").addEventListener("change", showViews);
$("shown-class2").addEventListener("change", showViews);
$("explain-button").addEventListener("click", explain);
$("cancel-button").addEventListener("click", cancelJob); // the running call reports "Cancelled."
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && state.job) cancelJob();
});
$("opacity").addEventListener("input", (e) => {
  style.opacity = Number(e.target.value) / 100;
  e.target.setAttribute("aria-valuetext", `${e.target.value}%`);
  view.redraw(); // no request: the heatmap is already here, blending is a redraw
});
$("colormap").addEventListener("change", (e) => {
  style.colormap = e.target.value;
  view.redraw();
});
for (const layer of ["image", "heatmap", "boxes"]) {
  $(`layer-${layer}`).addEventListener("change", (e) => {
    style.layers[layer] = e.target.checked;
    view.redraw();
  });
}
$("window-preset").addEventListener("change", (e) => {
  if (e.target.value === "custom") return;
  const [, c, w] = presets()[Number(e.target.value)];
  applyWindow(c, w, false);
});
for (const id of ["window-center", "window-width"]) {
  $(id).addEventListener("change", () => {
    const c = Number($("window-center").value);
    const w = Number($("window-width").value);
    if (Number.isFinite(c) && Number.isFinite(w)) applyWindow(c, w);
  });
}
$("zoom-in").addEventListener("click", () => view.zoomAt(1.25, viewports[0].canvas.clientWidth / 2,
  viewports[0].canvas.clientHeight / 2));
$("zoom-out").addEventListener("click", () => view.zoomAt(0.8, viewports[0].canvas.clientWidth / 2,
  viewports[0].canvas.clientHeight / 2));
$("zoom-fit").addEventListener("click", () => view.fit());
$("download-png").addEventListener("click", downloadPng);
$("download-dicom").addEventListener("click", downloadDicom);

// drag and drop anywhere on the viewer
const stage = document.querySelector(".stage");
stage.addEventListener("dragover", (e) => {
  e.preventDefault();
  for (const f of document.querySelectorAll(".viewport")) f.classList.add("dragover");
});
stage.addEventListener("dragleave", () => {
  for (const f of document.querySelectorAll(".viewport")) f.classList.remove("dragover");
});
stage.addEventListener("drop", (e) => {
  e.preventDefault();
  for (const f of document.querySelectorAll(".viewport")) f.classList.remove("dragover");
  const files = e.dataTransfer && e.dataTransfer.files;
  if (files && files.length) openFile(files);
});

// for integrations and the browser tests: read-only views of what is drawn where
window.xaasReview = { state, view, viewports, style };

renderClasses();
showViews();
loadCatalogue();
