// The playground page: generate, edit, follow jobs live, browse this key's gallery.
import { ApiError, describeError, describeFailure, getKey, readEvents, request, requestJSON, setKey } from "./api.js";
import { curl, pythonBFL, pythonOpenAI, ratioOf } from "./codegen.js";

const $ = (id) => document.getElementById(id);
const MAX_SAFE_SEED = Number.MAX_SAFE_INTEGER;
const PAGE = 24;
const QUEUE_REFRESH_MS = 2500;

const state = {
  config: null,
  models: [], // model entries (config details) in /v1/models order
  loras: [],
  tab: "generate",
  inputs: [], // {blob, url, width, height, label}
  runs: [], // the jobs of the current submission
  busy: false,
  galleryBefore: null,
  galleryStale: true,
  picking: false,
  aspect: "1:1",
  customRatio: null, // [ratio, width, height] from "reuse settings"
};

/** What tests (and curious people) can read: every live event the page handled, in order. */
const trace = { events: [] };
window.fluxservePlayground = trace;
function note(type, job, extra = {}) {
  trace.events.push({ type, job, t: performance.now(), ...extra });
}

// ------------------------------------------------------------------ small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const money = (usd) => `$${usd.toFixed(usd > 0 && usd < 0.01 ? 4 : usd % 0.01 ? 3 : 2)}`;
const secs = (s) => (s === null || s === undefined ? "–" : `${Number(s).toFixed(2)} s`);

function randomSeed() {
  const a = new Uint32Array(1);
  crypto.getRandomValues(a);
  return a[0];
}

function showError(message) {
  const box = $("form-error");
  box.textContent = message;
  box.hidden = !message;
}

function showNotice(message, withKeyButton = false) {
  const box = $("notice");
  box.replaceChildren(message);
  if (withKeyButton) {
    box.append(" ", el("button", { type: "button", class: "small", text: "Enter the API key", onclick: () => openKeyDialog() }));
  }
  box.hidden = !message;
}

/** Whether the model's route takes a request field. */
const takes = (m, field) => Boolean(m && m.fields.includes(field));
const sizeMode = (m) => (takes(m, "aspect_ratio") ? "aspect" : takes(m, "width") ? "wh" : "none");
const maxInputs = (m) => (m.bfl_route ? m.fields.filter((f) => /^input_image(_\d+)?$/.test(f)).length : 4);

function currentModel() {
  return state.models.find((m) => m.id === $("model").value) || state.models[0];
}

function blobToDataURL(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// ------------------------------------------------------------------ theme and key

function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
  const dark = theme ? theme === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
  $("theme-toggle").setAttribute("aria-pressed", String(dark));
  $("theme-toggle").textContent = dark ? "Light" : "Dark";
  $("theme-toggle").title = dark ? "Switch to the light theme" : "Switch to the dark theme";
}

function toggleTheme() {
  const dark = $("theme-toggle").getAttribute("aria-pressed") === "true";
  const next = dark ? "light" : "dark";
  try { localStorage.setItem("fluxserve.theme", next); } catch { /* ignore */ }
  applyTheme(next);
}

function openKeyDialog(reason = "") {
  $("key-reason").textContent = reason;
  $("key-input").value = getKey();
  $("key-dialog").showModal();
  $("key-input").focus();
}

function setupKeyDialog() {
  $("key-button").addEventListener("click", () => openKeyDialog());
  $("key-form").addEventListener("submit", (ev) => {
    if (ev.submitter && ev.submitter.value === "save") {
      setKey($("key-input").value.trim());
      loadServer();
    }
  });
  $("key-clear").addEventListener("click", () => {
    setKey("");
    $("key-input").value = "";
    $("key-dialog").close();
    loadServer();
  });
}

// ------------------------------------------------------------------ the server's models

async function loadServer() {
  showNotice("");
  let config, listed;
  try {
    [config, listed] = await Promise.all([requestJSON("/playground/config"), requestJSON("/v1/models")]);
  } catch (exc) {
    if (exc instanceof ApiError && exc.status === 401) {
      showNotice(exc.message, true);
      if (!$("key-dialog").open) openKeyDialog(exc.message);
    } else {
      showNotice(exc.message || String(exc));
    }
    document.body.dataset.ready = "false";
    return;
  }
  state.config = config;
  const details = new Map(config.models.map((m) => [m.id, m]));
  state.models = listed.data.map((m) => details.get(m.id)).filter(Boolean);
  state.loras = [];
  try {
    const loras = await requestJSON("/v1/loras");
    const list = Array.isArray(loras) ? loras : loras && loras.data;
    if (Array.isArray(list)) state.loras = list.filter((l) => l && l.name);
  } catch { /* no LoRA route on this server, or none: no picker */ }
  $("steps").min = config.min_steps; $("steps").max = config.max_steps;
  $("guidance").min = config.min_guidance; $("guidance").max = config.max_guidance;
  $("n").max = Math.min(config.max_images, 10);
  renderLoras();
  renderModels();
  state.galleryStale = true;
  if (state.tab === "gallery") loadGallery(true);
  document.body.dataset.ready = "true";
}

function renderModels() {
  const select = $("model");
  const keep = select.value;
  const usable = state.models.filter((m) => m.available && (state.tab !== "edit" || (m.takes_images && m.bfl_route)));
  select.replaceChildren(...usable.map((m) => el("option", { value: m.id, text: m.bfl_route ? m.id : `${m.id} (OpenAI API)` })));
  if (usable.some((m) => m.id === keep)) select.value = keep;
  modelChanged();
}

function renderLoras() {
  const box = $("loras-box");
  box.hidden = state.loras.length === 0;
  $("lora-list").replaceChildren(
    ...state.loras.map((l, i) =>
      el("li", {},
        el("label", { class: "inline" }, el("input", { type: "checkbox", id: `lora-${i}`, dataset: { name: l.name } }), l.name),
        el("label", { class: "inline" }, "scale",
          el("input", { type: "number", id: `lora-scale-${i}`, value: "1", min: "-2", max: "2", step: "0.05", "aria-label": `Scale of ${l.name}` })),
      )),
  );
}

function modelChanged() {
  const m = currentModel();
  if (!m) return;
  const mode = sizeMode(m);
  $("aspect-box").hidden = mode !== "aspect";
  $("wh-box").hidden = mode !== "wh";
  // BFL's pro routes take multiples of 32 up to 1440; FLUX.2 multiples of 16 up to 4 MP.
  const pro = m.family === "pro";
  for (const id of ["width", "height"]) {
    const input = $(id);
    input.step = pro ? 32 : 16;
    input.min = pro ? 256 : 64;
    input.max = pro ? 1440 : 2048;
    input.placeholder = state.tab === "edit" && !pro ? "as the input" : "";
  }
  $("steps").closest("label").hidden = !takes(m, "steps");
  $("guidance").closest("label").hidden = !takes(m, "guidance");
  $("guidance").max = m.family === "flux2" ? 10 : state.config.max_guidance;
  $("tolerance").max = m.max_safety_tolerance;
  if (Number($("tolerance").value) > m.max_safety_tolerance) $("tolerance").value = m.max_safety_tolerance;
  $("tolerance-out").textContent = $("tolerance").value;
  $("tolerance-hint").textContent = `0 is the strictest, ${m.max_safety_tolerance} the least strict.`;
  $("loras-box").hidden = state.loras.length === 0 || !takes(m, "loras");
  $("steps").placeholder = `${m.steps} (default)`;
  $("guidance").placeholder = `${m.guidance} (default)`;
  $("output-format").options[0].textContent = `default (${m.default_output_format.toUpperCase()})`;
  renderAspects();
  updateCost();
}

function renderAspects() {
  const m = currentModel();
  if (!m) return;
  const chips = [];
  const edit = state.tab === "edit";
  const choices = [];
  if (edit) choices.push(["", "Match input", "size of the input"]);
  for (const [ratio, [w, h]] of Object.entries(m.sizes)) choices.push([ratio, ratio, `${w}×${h}`]);
  if (state.customRatio) {
    const [ratio, w, h] = state.customRatio;
    if (!m.sizes[ratio]) choices.push([ratio, ratio, `${w}×${h}`]);
  }
  if (!choices.some(([v]) => v === state.aspect)) state.aspect = edit ? "" : "1:1";
  for (const [value, label, size] of choices) {
    const input = el("input", { type: "radio", name: "aspect", value, checked: value === state.aspect });
    input.addEventListener("change", () => { state.aspect = value; updateSize(); });
    chips.push(el("label", { title: size }, input, label, el("small", { text: size })));
  }
  $("aspect-list").replaceChildren(...chips);
  updateSize();
}

function outputSize() {
  const m = currentModel();
  if (!m) return null;
  if (sizeMode(m) === "wh") {
    const w = Number($("width").value), h = Number($("height").value);
    return w && h ? [w, h] : null;
  }
  if (!state.aspect) return null;
  if (m.sizes[state.aspect]) return m.sizes[state.aspect];
  if (state.customRatio && state.customRatio[0] === state.aspect) return state.customRatio.slice(1);
  return null;
}

function updateSize() {
  const size = outputSize();
  $("size-out").textContent = size
    ? `Output: ${size[0]} × ${size[1]} px`
    : "Output: the shape of the (first) input image, at about one megapixel.";
}

function imageCount() {
  const n = Math.floor(Number($("n").value));
  return Number.isFinite(n) && n >= 1 ? n : 1;
}

function updateCost() {
  const m = currentModel();
  if (!m) return;
  const n = imageCount();
  const total = m.price * n;
  $("cost").textContent = m.price > 0
    ? `Estimated cost: ${money(total)} (${n} image${n > 1 ? "s" : ""} × ${money(m.price)})`
    : `Estimated cost: free on this server (${n} image${n > 1 ? "s" : ""})`;
}

// ------------------------------------------------------------------ tabs

function selectTab(tab, focus = false) {
  const previous = state.tab;
  state.tab = tab;
  for (const b of document.querySelectorAll("#tabs [role=tab]")) {
    const on = b.dataset.tab === tab;
    b.setAttribute("aria-selected", String(on));
    b.tabIndex = on ? 0 : -1;
    if (on && focus) b.focus();
  }
  const gallery = tab === "gallery";
  $("panel-gallery").hidden = !gallery;
  $("panel-studio").hidden = gallery;
  if (!gallery) {
    const edit = tab === "edit";
    $("panel-studio").setAttribute("aria-labelledby", edit ? "tab-edit" : "tab-generate");
    $("edit-inputs").hidden = !edit;
    $("prompt-label").textContent = edit ? "Instruction" : "Prompt";
    $("prompt").placeholder = edit ? "make the circle green" : "a red circle in the center, on a blue background";
    $("submit").textContent = edit ? "Edit" : "Generate";
    if (previous !== tab && previous !== "gallery") state.aspect = edit ? "" : "1:1";
    renderModels();
  } else {
    if (previous !== "gallery" && state.picking === false) $("gallery-note").textContent = "";
    if (state.galleryStale) loadGallery(true);
  }
  if (tab !== "gallery" && state.picking) {
    state.picking = false;
    $("gallery-note").textContent = "";
  }
}

function setupTabs() {
  const tabs = [...document.querySelectorAll("#tabs [role=tab]")];
  for (const b of tabs) {
    b.addEventListener("click", () => selectTab(b.dataset.tab));
    b.addEventListener("keydown", (ev) => {
      const i = tabs.indexOf(b);
      const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[ev.key];
      if (to === undefined) return;
      ev.preventDefault();
      selectTab(tabs[(to + tabs.length) % tabs.length].dataset.tab, true);
    });
  }
}

// ------------------------------------------------------------------ input images (edit)

async function addImages(blobs) {
  const most = state.config ? state.config.max_input_images : 4;
  const room = most - state.inputs.length;
  const accepted = [...blobs].filter((b) => /^image\/(png|jpeg|webp)$/.test(b.type));
  if (!accepted.length) {
    showError("Only PNG, JPEG and WebP images can be used as input.");
    return;
  }
  if (accepted.length > room) showError(`At most ${most} input images: the rest were left out.`);
  else showError("");
  for (const blob of accepted.slice(0, Math.max(0, room))) {
    let bitmap;
    try { bitmap = await createImageBitmap(blob); } catch {
      showError(`${blob.name || "That image"} could not be read as an image.`);
      continue;
    }
    state.inputs.push({ blob, bitmap, url: URL.createObjectURL(blob), width: bitmap.width, height: bitmap.height, label: blob.name || "pasted image" });
  }
  renderInputs();
}

function renderInputs() {
  const list = $("input-list");
  list.replaceChildren(
    ...state.inputs.map((input, i) =>
      el("li", {},
        el("img", { src: input.url, alt: `Input image ${i + 1}: ${input.label}` }),
        el("span", { class: "slot", text: `${i + 1}: ${input.width}×${input.height}` }),
        el("button", { type: "button", class: "small secondary", "aria-label": `Remove input image ${i + 1}`, text: "×", onclick: () => removeInput(i) }),
      )),
  );
  $("compose-box").hidden = state.inputs.length !== 2;
  drawComposition();
}

function removeInput(i) {
  const [gone] = state.inputs.splice(i, 1);
  if (gone) URL.revokeObjectURL(gone.url);
  renderInputs();
}

function composing() {
  return state.inputs.length === 2 && document.querySelector("input[name=combine]:checked").value === "compose";
}

/** Left | right at the taller one's height, aspect ratios kept (the SDK's compose()). */
function drawComposition() {
  const figure = $("compose-figure");
  figure.hidden = !composing();
  if (!composing()) return;
  const [a, b] = state.inputs;
  const gap = Math.max(0, Math.min(64, Math.floor(Number($("compose-gap").value) || 0)));
  const h = Math.max(a.height, b.height);
  const wa = Math.max(1, Math.round((a.width * h) / a.height));
  const wb = Math.max(1, Math.round((b.width * h) / b.height));
  const canvas = $("compose-preview");
  canvas.width = wa + gap + wb;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(a.bitmap, 0, 0, wa, h);
  ctx.drawImage(b.bitmap, wa + gap, 0, wb, h);
  $("compose-size").textContent = `Stitched input: ${canvas.width} × ${canvas.height} px (left | right)`;
}

/** The images the request sends, as data URLs, and a URL to show as "before". */
async function inputPayload() {
  if (composing()) {
    const canvas = $("compose-preview");
    const blob = await new Promise((r) => canvas.toBlob(r, "image/png"));
    const data = await blobToDataURL(blob);
    return { images: [data], before: [data] };
  }
  const images = await Promise.all(state.inputs.map((i) => blobToDataURL(i.blob)));
  return { images, before: state.inputs.map((i) => i.url) };
}

function setupInputs() {
  const zone = $("drop-zone");
  const pick = () => $("file-input").click();
  zone.addEventListener("click", pick);
  zone.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); pick(); }
  });
  $("file-input").addEventListener("change", (ev) => { addImages(ev.target.files); ev.target.value = ""; });
  zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    zone.classList.remove("over");
    if (ev.dataTransfer && ev.dataTransfer.files.length) addImages(ev.dataTransfer.files);
  });
  document.addEventListener("paste", (ev) => {
    const files = [...(ev.clipboardData ? ev.clipboardData.files : [])].filter((f) => f.type.startsWith("image/"));
    if (!files.length || state.tab === "gallery") return;
    ev.preventDefault();
    if (state.tab !== "edit") selectTab("edit");
    addImages(files);
  });
  for (const r of document.querySelectorAll("input[name=combine]")) r.addEventListener("change", drawComposition);
  $("compose-gap").addEventListener("input", drawComposition);
  $("pick-gallery").addEventListener("click", () => {
    state.picking = true;
    selectTab("gallery");
    state.picking = true;
    $("gallery-note").textContent = "Choose an image with “Use as input”.";
  });
}

// ------------------------------------------------------------------ the request

function selectedLoras() {
  return state.loras
    .map((l, i) => ({ on: $(`lora-${i}`) && $(`lora-${i}`).checked, name: l.name, scale: Number($(`lora-scale-${i}`).value) }))
    .filter((l) => l.on)
    .map(({ name, scale }) => ({ name, scale: Number.isFinite(scale) ? scale : 1 }));
}

/** The form as request fields, or throws an Error whose message says what to fix. */
function collect() {
  const m = currentModel();
  if (!m) throw new Error("This server offers no model that can do this.");
  const prompt = $("prompt").value.trim();
  const edit = state.tab === "edit";
  if (!prompt) throw new Error(edit ? "Write the instruction first: what should change?" : "Write a prompt first.");
  if (edit && !state.inputs.length) throw new Error("Add an input image first: drop, paste, choose a file or pick one from the gallery.");
  let seedText = $("seed").value.trim();
  if (!$("seed-lock").checked || !seedText) {
    seedText = String(randomSeed());
    $("seed").value = seedText;
  }
  const seed = Number(seedText);
  if (!Number.isInteger(seed) || seed < 0) throw new Error("Seed: use a whole number, 0 or more.");
  if (seed > MAX_SAFE_SEED) throw new Error(`Seed: the page handles seeds up to ${MAX_SAFE_SEED}; use the API for larger ones.`);
  const fields = {
    prompt,
    seed,
    safety_tolerance: Number($("tolerance").value),
    prompt_upsampling: $("upsampling").checked,
  };
  const num = (id, label) => {
    const text = $(id).value.trim();
    if (!text) return undefined;
    const v = Number(text);
    if (!Number.isFinite(v)) throw new Error(`${label}: “${text}” is not a number.`);
    return v;
  };
  const steps = num("steps", "Steps");
  const guidance = num("guidance", "Guidance");
  if (steps !== undefined && takes(m, "steps")) fields.steps = steps;
  if (guidance !== undefined && takes(m, "guidance")) fields.guidance = guidance;
  if ($("output-format").value) fields.output_format = $("output-format").value;
  if (sizeMode(m) === "wh") {
    const width = num("width", "Width"), height = num("height", "Height");
    if (width !== undefined) fields.width = width;
    if (height !== undefined) fields.height = height;
  } else if (sizeMode(m) === "aspect" && state.aspect) {
    fields.aspect_ratio = state.aspect;
  }
  if (edit && state.inputs.length > maxInputs(m) && !composing()) {
    throw new Error(`${m.id} takes at most ${maxInputs(m)} input image${maxInputs(m) > 1 ? "s" : ""}.`);
  }
  const loras = selectedLoras();
  if (loras.length && takes(m, "loras")) fields.loras = loras;
  return { model: m, fields, n: imageCount(), edit };
}

async function submit(ev) {
  if (ev) ev.preventDefault();
  if (state.busy) return;
  showError("");
  let req;
  try { req = collect(); } catch (exc) { showError(exc.message); return; }
  setBusy(true);
  $("runs").replaceChildren();
  $("output-empty").hidden = true;
  state.runs = [];
  try {
    const inputs = req.edit ? await inputPayload() : null;
    if (req.model.bfl_route) await submitBFL(req, inputs);
    else await submitOpenAI(req);
  } catch (exc) {
    if (exc.name !== "AbortError") showError(exc.message || String(exc));
  }
  await Promise.all(state.runs.map((r) => r.done));
  setBusy(false);
  state.galleryStale = true;
}

function setBusy(busy) {
  state.busy = busy;
  $("submit").disabled = busy;
  $("cancel").hidden = !busy;
  $("cancel").disabled = false;
  document.body.dataset.busy = String(busy);
}

/** One BFL job per image (BFL makes one image per request), seeds counting up. */
async function submitBFL(req, inputs) {
  const fieldNames = ["input_image", ...[2, 3, 4, 5, 6, 7, 8].map((i) => `input_image_${i}`)];
  for (let i = 0; i < req.n; i++) {
    const body = { ...req.fields, seed: req.fields.seed + i };
    if (inputs) inputs.images.forEach((data, k) => { body[fieldNames[k]] = data; });
    const job = await requestJSON(`/v1/${encodeURIComponent(req.model.id)}`, { method: "POST", json: body });
    note("submitted", job.id);
    const run = new Run(job.id, req, body, inputs ? inputs.before : null);
    state.runs.push(run);
    run.done = run.follow();
  }
}

/** Models served only on the OpenAI API: one streamed request with partial images. */
async function submitOpenAI(req) {
  const ctrl = new AbortController();
  const body = {
    model: req.model.id, n: req.n, ...req.fields, response_format: "b64_json", stream: true, partial_images: 2,
  };
  const runs = Array.from({ length: req.n }, () => new Run(null, req, body, null));
  state.runs.push(...runs);
  let settle;
  const done = new Promise((r) => { settle = r; });
  runs.forEach((r) => { r.done = done; r.abort = () => ctrl.abort(); r.setRunning(); });
  try {
    const response = await request("/v1/images/generations", { method: "POST", json: body, signal: ctrl.signal });
    if (!response.ok) {
      let b = null;
      try { b = await response.json(); } catch { /* not JSON */ }
      throw new ApiError(describeError(response, b), response.status, b);
    }
    let k = 0;
    for await (const ev of readEvents(response)) {
      note(ev.event, null);
      if (ev.event.endsWith("partial_image")) {
        runs.forEach((r) => r.setPreview({ image: ev.data.b64_json, mime: `image/${ev.data.output_format}` }));
      } else if (ev.event.endsWith("completed") && runs[k]) {
        runs[k++].finishImage(`data:image/${ev.data.output_format};base64,${ev.data.b64_json}`, req.fields.seed);
      } else if (ev.event === "error") {
        const message = ev.data.error ? ev.data.error.message : "The job failed.";
        runs.forEach((r) => r.fail(message, ev.data.error && ev.data.error.code === "moderation_blocked" ? "moderated" : "error"));
      }
    }
    runs.forEach((r) => { if (!r.ended) r.fail("The stream ended without an image."); });
  } catch (exc) {
    if (exc.name === "AbortError") runs.forEach((r) => r.fail("Cancelled.", "cancelled"));
    else runs.forEach((r) => r.fail(exc.message || String(exc)));
  } finally {
    settle();
  }
}

async function cancelAll() {
  $("cancel").disabled = true;
  await Promise.all(state.runs.filter((r) => !r.ended).map((r) => r.cancel()));
}

// ------------------------------------------------------------------ one job, live

class Run {
  constructor(id, req, body, before) {
    this.id = id;
    this.req = req;
    this.body = body;
    this.ended = false;
    this.card = el("article", { class: "run", dataset: { state: "submitted", jobId: id || "" }, "aria-label": "Job" });
    this.img = el("img", { alt: "The image, as it forms", hidden: true });
    this.frame = el("div", { class: "frame" }, this.img);
    this.caption = el("figcaption", { text: "Waiting for the first preview…" });
    const after = el("figure", { class: "after" }, this.frame, this.caption);
    const stage = el("div", { class: "stage" });
    if (before && before.length) {
      stage.classList.add("pair");
      const befores = before.map((src, i) => el("img", { src, alt: `Input image ${i + 1}` }));
      stage.append(el("figure", { class: "before" }, el("div", { class: "frame" }, ...befores), el("figcaption", { text: "Before" })));
    }
    stage.append(after);
    this.progress = el("progress", { max: "1", value: "0", "aria-label": "Progress" });
    this.status = el("p", { class: "status", text: "Submitted." });
    this.revised = el("p", { class: "revised", hidden: true });
    this.meta = el("dl", { class: "meta" });
    this.actions = el("div", { class: "actions" });
    this.card.append(stage, this.progress, this.status, this.revised, this.meta, this.actions);
    $("runs").append(this.card);
  }

  setState(s) { this.card.dataset.state = s; }

  setQueued(position) {
    this.setState("queued");
    this.status.textContent = position === null || position === undefined ? "Queued." :
      position === 0 ? "Queued: next in line." : `Queued: ${position} job${position > 1 ? "s" : ""} ahead.`;
  }

  setRunning() {
    this.setState("running");
    this.progress.removeAttribute("value");
    this.status.textContent = "Generating…";
  }

  setProgress({ step, steps, fraction }) {
    if (["submitted", "queued"].includes(this.card.dataset.state)) this.setState("running");
    this.progress.value = fraction;
    this.status.textContent = `Generating: step ${step} of ${steps}.`;
  }

  setPreview({ image, step, steps, mime = "image/jpeg" }) {
    this.setState("preview");
    this.img.src = `data:${mime};base64,${image}`;
    this.img.hidden = false;
    this.img.dataset.kind = "preview";
    this.caption.textContent = step ? `Preview at step ${step} of ${steps}` : "Preview";
  }

  /** Follow the job's events (fetch, so the key stays in a header); poll if the stream breaks. */
  async follow() {
    // A stream tells the queue position when it opens: while the job waits, open a fresh one
    // every few seconds, so the position shown stays current.
    for (let again = true; again;) {
      again = false;
      const ctrl = new AbortController();
      let timer = null;
      try {
        const response = await request(`/v1/jobs/${encodeURIComponent(this.id)}/events`, { signal: ctrl.signal });
        if (response.ok && response.status !== 204) {
          for await (const ev of readEvents(response)) {
            if (ev.event !== "result") note(ev.event, this.id, ev.event === "queued" ? { position: ev.data.position } : {});
            if (ev.event === "queued") {
              this.setQueued(ev.data.position);
              timer = setTimeout(() => {
                if (this.card.dataset.state === "queued") { again = true; ctrl.abort(); }
              }, QUEUE_REFRESH_MS);
            } else if (ev.event === "progress") this.setProgress(ev.data);
            else if (ev.event === "preview") this.setPreview(ev.data);
            else if (ev.event === "result") { this.finish(ev.data); return; }
          }
        }
      } catch (exc) {
        if (exc.name === "AbortError" && !again) return;
        if (exc.name !== "AbortError") again = false;
      } finally {
        clearTimeout(timer);
      }
    }
    for (;;) {
      try {
        const r = await requestJSON(`/v1/get_result?id=${encodeURIComponent(this.id)}`);
        if (r.status !== "Pending") { this.finish(r); return; }
      } catch (exc) {
        this.fail(exc.message);
        return;
      }
      await sleep(700);
    }
  }

  async cancel() {
    if (this.abort) { this.abort(); return; }
    if (!this.ended) this.status.textContent = "Cancelling…";
    try {
      await requestJSON(`/v1/jobs/${encodeURIComponent(this.id)}/cancel`, { method: "POST" });
    } catch (exc) {
      // 409: it ended meanwhile; its result event says how.
      if (exc.status !== 409 && !this.ended) this.status.textContent = exc.message;
    }
  }

  finish(result) {
    note("result", this.id, { status: result.status });
    if (result.status === "Ready" && result.result) {
      const r = result.result;
      this.finishImage(r.sample, r.seed, r);
      const asked = this.body.prompt;
      if (this.body.prompt_upsampling && r.prompt && r.prompt !== asked) {
        this.revised.replaceChildren(el("strong", { text: "Revised prompt: " }), r.prompt);
        this.revised.hidden = false;
      }
      return;
    }
    const kind = /Moderated/.test(result.status) ? "moderated" :
      result.details && result.details.error === "cancelled" ? "cancelled" : "error";
    this.fail(describeFailure(result.status, result.details), kind);
  }

  finishImage(src, seed, r = null) {
    this.ended = true;
    this.progress.value = 1;
    this.img.hidden = false;
    this.img.dataset.kind = "final";
    this.img.alt = `Result: ${this.body.prompt}`;
    this.img.onload = () => {
      const w = this.img.naturalWidth, h = this.img.naturalHeight;
      this.img.dataset.width = String(w);
      this.img.dataset.height = String(h);
      this.caption.textContent = `Result: ${w} × ${h} px`;
      this.setState("ready");
      note("shown", this.id);
    };
    this.img.onerror = () => {
      this.setState("error");
      this.status.textContent = "The image could not be loaded: its URL may have expired (see the gallery).";
    };
    this.img.src = src;
    this.status.textContent = "Done.";
    const rows = [["Model", this.req.model.id], ["Seed", String(seed)]];
    if (r) {
      rows.push(["Time", `${secs(r.duration)} (queue ${secs(r.timings && r.timings.queue_s)}, engine ${secs(r.timings && r.timings.engine_s)}, encode ${secs(r.timings && r.timings.encode_s)})`]);
    }
    rows.push(["Cost", money(this.req.model.price)]);
    this.meta.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
    const ext = (this.body.output_format || this.req.model.default_output_format).replace("jpeg", "jpg");
    this.actions.replaceChildren(
      el("a", { class: "button small secondary", href: src, download: `flux-${seed}.${ext}`, text: "Download" }),
    );
  }

  fail(message, kind = "error") {
    if (this.ended) return;
    this.ended = true;
    this.setState(kind);
    this.progress.hidden = true;
    this.status.textContent = message;
    // No image came: drop the empty frame (a preview, if one came, stays in view).
    if (this.img.hidden) this.frame.closest("figure").hidden = true;
  }
}

// ------------------------------------------------------------------ gallery

async function loadGallery(reset) {
  const list = $("gallery-list");
  if (reset) { state.galleryBefore = null; list.replaceChildren(); }
  state.galleryStale = false;
  const params = new URLSearchParams({ limit: String(PAGE) });
  if (!reset && state.galleryBefore !== null) params.set("before", String(state.galleryBefore));
  let page;
  try {
    page = await requestJSON(`/v1/jobs?${params}`);
  } catch (exc) {
    $("gallery-note").textContent = exc.message;
    return;
  }
  if (reset && !page.data.length) {
    $("gallery-note").textContent = "No jobs yet with this key: generate something.";
  } else if (!state.picking) {
    $("gallery-note").textContent = "This key's jobs, newest first.";
  }
  list.append(...page.data.map(galleryCard));
  state.galleryBefore = page.next_before;
  $("gallery-more").hidden = page.next_before === null;
  document.body.dataset.galleryLoaded = String(Date.now());
}

function galleryCard(job) {
  const model = state.models.find((m) => m.id === job.model);
  const ready = job.status === "Ready" && job.result;
  const shownPrompt = job.original_prompt ?? job.prompt;
  const thumb = el("div", { class: "thumb" },
    ready ? el("img", { src: job.result.sample, alt: shownPrompt, loading: "lazy" })
      : job.status === "Pending" ? "Still running…" : describeFailure(job.status, job.details));
  const t = ready ? job.result.timings || {} : {};
  const rows = [
    ["Model", job.model],
    ["Seed", String(job.seed)],
    ["Size", `${job.width} × ${job.height} px`],
    ["Steps", `${job.steps} · guidance ${job.guidance}`],
  ];
  if (job.input_images) rows.push(["Inputs", `${job.input_images} image${job.input_images > 1 ? "s" : ""}`]);
  if (ready) rows.push(["Time", `${secs(job.result.duration)} (queue ${secs(t.queue_s)}, engine ${secs(t.engine_s)}, encode ${secs(t.encode_s)})`]);
  if (job.cost !== null) rows.push(["Cost", money(job.cost)]);
  rows.push(["Made", new Date(job.created_at * 1000).toLocaleString()]);
  const codeButton = (label, make) => el("button", {
    type: "button", class: "small secondary", text: label,
    onclick: () => showCode(`${label}: job ${job.id.slice(0, 8)}`, make(job, model, location.origin)),
  });
  const actions = el("div", { class: "card-actions" },
    state.picking && ready ? el("button", { type: "button", class: "small", text: "Use as input", onclick: () => useAsInput(job) }) : null,
    el("button", { type: "button", class: "small secondary", text: "Reuse settings", onclick: () => reuse(job) }),
    el("button", { type: "button", class: "small secondary", text: "Vary seed", onclick: () => reuse(job, true) }),
    ready ? el("a", { class: "button small secondary", href: job.result.sample, download: `flux-${job.seed}.${job.output_format.replace("jpeg", "jpg")}`, text: "Download" }) : null,
  );
  const code = el("div", { class: "card-actions", role: "group", "aria-label": "Copy as code" },
    el("span", { class: "hint", text: "Copy as:" }),
    codeButton("curl", curl), codeButton("Python (OpenAI)", pythonOpenAI), codeButton("Python (BFL)", pythonBFL),
  );
  const card = el("li", { class: "card", dataset: { status: job.status, jobId: job.id } },
    thumb,
    el("span", { class: "status-badge", text: job.status }),
    el("p", { class: "prompt", text: shownPrompt }),
    job.original_prompt && job.original_prompt !== job.prompt ? el("p", { class: "hint", text: `Revised: ${job.prompt}` }) : null,
    el("dl", { class: "meta" }, ...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])),
    actions, code,
  );
  return card;
}

async function useAsInput(job) {
  try {
    const response = await fetch(job.result.sample);
    if (!response.ok) throw new Error("The image could not be fetched (it may have expired): refresh the gallery.");
    const blob = await response.blob();
    const named = new File([blob], `job-${job.id.slice(0, 8)}.${job.output_format}`, { type: blob.type });
    state.picking = false;
    selectTab("edit");
    await addImages([named]);
  } catch (exc) {
    $("gallery-note").textContent = exc.message;
  }
}

/** Fill the form with a job's settings (and with a new seed, submit it at once). */
function reuse(job, varySeed = false) {
  const model = state.models.find((m) => m.id === job.model);
  selectTab(job.input_images ? "edit" : "generate");
  if (model && [...$("model").options].some((o) => o.value === model.id)) $("model").value = model.id;
  $("prompt").value = job.original_prompt ?? job.prompt;
  const m = currentModel();
  if (sizeMode(m) === "wh") {
    $("width").value = job.width;
    $("height").value = job.height;
  } else {
    const hit = Object.entries(m.sizes).find(([, [w, h]]) => w === job.width && h === job.height);
    if (hit) state.aspect = hit[0];
    else {
      state.customRatio = [ratioOf(job.width, job.height), job.width, job.height];
      state.aspect = state.customRatio[0];
    }
  }
  modelChanged();
  $("seed").value = varySeed ? String(randomSeed()) : String(job.seed);
  $("seed-lock").checked = true;
  $("steps").value = job.steps;
  $("guidance").value = job.guidance;
  $("output-format").value = job.output_format;
  $("tolerance").value = job.safety_tolerance;
  $("tolerance-out").textContent = String(job.safety_tolerance);
  $("upsampling").checked = job.prompt_upsampling;
  $("n").value = job.protocol === "openai" ? job.num_images : 1;
  state.loras.forEach((l, i) => {
    const used = (job.loras || []).find((x) => x.name === l.name);
    $(`lora-${i}`).checked = Boolean(used);
    if (used) $(`lora-scale-${i}`).value = used.scale;
  });
  updateCost();
  showError(job.input_images && !state.inputs.length
    ? `Settings of job ${job.id.slice(0, 8)} loaded: add its input image${job.input_images > 1 ? "s" : ""} again.` : "");
  if (varySeed && (!job.input_images || state.inputs.length)) submit();
  else $("prompt").focus();
}

// ------------------------------------------------------------------ code dialog

function showCode(title, code) {
  $("code-title").textContent = title;
  $("code-text").textContent = code;
  $("code-copied").textContent = "";
  $("code-note").textContent = getKey()
    ? "The key is read from the FLUXSERVE_API_KEY environment variable; it is never written into the code."
    : "Set FLUXSERVE_API_KEY in the environment if the server needs a key.";
  $("code-dialog").showModal();
  $("code-copy").focus();
}

async function copyCode() {
  const text = $("code-text").textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const range = document.createRange();
    range.selectNodeContents($("code-text"));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    document.execCommand("copy");
  }
  $("code-copied").textContent = "Copied.";
}

// ------------------------------------------------------------------ start

function start() {
  let theme = null;
  try { theme = localStorage.getItem("fluxserve.theme"); } catch { /* ignore */ }
  applyTheme(theme);
  $("theme-toggle").addEventListener("click", toggleTheme);
  setupKeyDialog();
  setupTabs();
  setupInputs();
  $("gen-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancelAll);
  $("model").addEventListener("change", modelChanged);
  $("n").addEventListener("input", updateCost);
  $("width").addEventListener("input", updateSize);
  $("height").addEventListener("input", updateSize);
  $("tolerance").addEventListener("input", () => { $("tolerance-out").textContent = $("tolerance").value; });
  $("seed-random").addEventListener("click", () => { $("seed").value = String(randomSeed()); $("seed-lock").checked = true; });
  $("prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); submit(); }
  });
  $("gallery-refresh").addEventListener("click", () => loadGallery(true));
  $("gallery-more").addEventListener("click", () => loadGallery(false));
  $("code-copy").addEventListener("click", copyCode);
  $("code-close").addEventListener("click", () => $("code-dialog").close());
  loadServer();
}

start();
