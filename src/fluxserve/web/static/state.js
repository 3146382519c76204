// What the page knows (one shared state object), the trace tests read, and small DOM helpers.

export const $ = (id) => document.getElementById(id);

export const state = {
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
export function note(type, job, extra = {}) {
  trace.events.push({ type, job, t: performance.now(), ...extra });
}

export function el(tag, attrs = {}, ...children) {
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

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const money = (usd) => `$${usd.toFixed(usd > 0 && usd < 0.01 ? 4 : usd % 0.01 ? 3 : 2)}`;
export const secs = (s) => (s === null || s === undefined ? "–" : `${Number(s).toFixed(2)} s`);

export function randomSeed() {
  const a = new Uint32Array(1);
  crypto.getRandomValues(a);
  return a[0];
}

export function showError(message) {
  const box = $("form-error");
  box.textContent = message;
  box.hidden = !message;
}

export function blobToDataURL(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

