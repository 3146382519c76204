// The gallery: this key's jobs, newest first, to download, reuse, use as input or copy as code.
import { describeFailure, getKey, requestJSON } from "./api.js";
import { curl, pythonBFL, pythonOpenAI, ratioOf } from "./codegen.js";
import { addImages } from "./edit.js";
import { currentModel, modelChanged, sizeMode, updateCost } from "./form.js";
import { submit } from "./generate.js";
import { approximationNote, approximationOf } from "./run.js";
import { $, el, money, randomSeed, secs, showError, state } from "./state.js";
import { selectTab } from "./tabs.js";

const PAGE = 24;

export async function loadGallery(reset) {
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
  // Overflow models: where the job ran (here, or at an upstream while the GPU was busy), and why.
  const routing = job.details && job.details.routing;
  if (routing && routing.served_by) rows.push(["Served by", `${routing.served_by}: ${routing.reason || ""}`]);
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
    ready && approximationOf(job.details) ? approximationNote(approximationOf(job.details)) : null,
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

/** Wire the gallery's buttons and the code dialog. */
export function setupGallery() {
  $("gallery-refresh").addEventListener("click", () => loadGallery(true));
  $("gallery-more").addEventListener("click", () => loadGallery(false));
  $("code-copy").addEventListener("click", copyCode);
  $("code-close").addEventListener("click", () => $("code-dialog").close());
}
