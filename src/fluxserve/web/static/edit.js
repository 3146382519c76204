// Input images of an edit: drop, paste, choose or pick from the gallery; two can be stitched.
import { $, blobToDataURL, el, showError, state } from "./state.js";
import { selectTab } from "./tabs.js";

export async function addImages(blobs) {
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

export function composing() {
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
export async function inputPayload() {
  if (composing()) {
    const canvas = $("compose-preview");
    const blob = await new Promise((r) => canvas.toBlob(r, "image/png"));
    const data = await blobToDataURL(blob);
    return { images: [data], before: [data] };
  }
  const images = await Promise.all(state.inputs.map((i) => blobToDataURL(i.blob)));
  return { images, before: state.inputs.map((i) => i.url) };
}

export function setupInputs() {
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

