// The form as the chosen model shapes it: models, LoRAs, aspect ratios or size, the cost.
import { $, el, money, randomSeed, state } from "./state.js";

/** Whether the model's route takes a request field. */
export const takes = (m, field) => Boolean(m && m.fields.includes(field));
export const sizeMode = (m) => (takes(m, "aspect_ratio") ? "aspect" : takes(m, "width") ? "wh" : "none");
export const maxInputs = (m) => (m.bfl_route ? m.fields.filter((f) => /^input_image(_\d+)?$/.test(f)).length : 4);

export function currentModel() {
  return state.models.find((m) => m.id === $("model").value) || state.models[0];
}

export function renderModels() {
  const select = $("model");
  const keep = select.value;
  const usable = state.models.filter((m) => m.available && (state.tab !== "edit" || (m.takes_images && m.bfl_route)));
  select.replaceChildren(...usable.map((m) => el("option", { value: m.id, text: m.bfl_route ? m.id : `${m.id} (OpenAI API)` })));
  if (usable.some((m) => m.id === keep)) select.value = keep;
  modelChanged();
}

export function renderLoras() {
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

export function modelChanged() {
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

export function updateSize() {
  const size = outputSize();
  $("size-out").textContent = size
    ? `Output: ${size[0]} × ${size[1]} px`
    : "Output: the shape of the (first) input image, at about one megapixel.";
}

export function imageCount() {
  const n = Math.floor(Number($("n").value));
  return Number.isFinite(n) && n >= 1 ? n : 1;
}

export function updateCost() {
  const m = currentModel();
  if (!m) return;
  const n = imageCount();
  const total = m.price * n;
  $("cost").textContent = m.price > 0
    ? `Estimated cost: ${money(total)} (${n} image${n > 1 ? "s" : ""} × ${money(m.price)})`
    : `Estimated cost: free on this server (${n} image${n > 1 ? "s" : ""})`;
}

/** Wire the controls whose changes reshape the form. */
export function setupForm() {
  $("model").addEventListener("change", modelChanged);
  $("n").addEventListener("input", updateCost);
  $("width").addEventListener("input", updateSize);
  $("height").addEventListener("input", updateSize);
  $("tolerance").addEventListener("input", () => { $("tolerance-out").textContent = $("tolerance").value; });
  $("seed-random").addEventListener("click", () => { $("seed").value = String(randomSeed()); $("seed-lock").checked = true; });
}
