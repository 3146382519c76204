// Generate (and edit): the form as a request, sent on the BFL or the OpenAI API, and cancel.
import { ApiError, describeError, readEvents, request, requestJSON } from "./api.js";
import { composing, inputPayload } from "./edit.js";
import { currentModel, imageCount, maxInputs, sizeMode, takes } from "./form.js";
import { Run } from "./run.js";
import { $, note, randomSeed, showError, state } from "./state.js";

const MAX_SAFE_SEED = Number.MAX_SAFE_INTEGER;

/** A header value as the server wrote it: fetch() reads header bytes as Latin-1, the server sends UTF-8. */
function utf8Header(value) {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.from(value, (c) => c.charCodeAt(0)));
  } catch {
    return value;
  }
}

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

export async function submit(ev) {
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
    // Set by a server whose embedded model can only approximate this prompt (all n images).
    const approximation = utf8Header(response.headers.get("X-Fluxserve-Approximation") || "").trim();
    let k = 0;
    for await (const ev of readEvents(response)) {
      note(ev.event, null);
      if (ev.event.endsWith("partial_image")) {
        runs.forEach((r) => r.setPreview({ image: ev.data.b64_json, mime: `image/${ev.data.output_format}` }));
      } else if (ev.event.endsWith("completed") && runs[k]) {
        runs[k++].finishImage(`data:image/${ev.data.output_format};base64,${ev.data.b64_json}`, req.fields.seed, null, approximation);
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

/** Wire the form's submit (button and Ctrl+Enter) and cancel. */
export function setupGenerate() {
  $("gen-form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancelAll);
  $("prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); submit(); }
  });
}
