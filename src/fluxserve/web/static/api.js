// The server's API as the page uses it: the key, requests, errors in words, event streams.

const KEY_STORAGE = "fluxserve.apiKey";

/** The API key kept in this browser (never put in a URL). */
export function getKey() {
  try { return localStorage.getItem(KEY_STORAGE) || ""; } catch { return ""; }
}

export function setKey(key) {
  try {
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
  } catch { /* storage disabled: the key lives only in this page */ }
}

/** An error from the server (or the network), with a message meant for people. */
export class ApiError extends Error {
  constructor(message, status = 0, body = null) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

/** fetch() on this server with the key in a header (x-key works on every route). */
export async function request(path, { method = "GET", json, headers = {}, signal } = {}) {
  const h = { ...headers };
  const key = getKey();
  if (key) h["x-key"] = key;
  let body;
  if (json !== undefined) {
    h["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let response;
  try {
    response = await fetch(path, { method, headers: h, body, signal, cache: "no-store" });
  } catch (exc) {
    if (exc.name === "AbortError") throw exc;
    throw new ApiError("The server cannot be reached: is it still running?");
  }
  return response;
}

/** The JSON answer of a request, or an ApiError that says what went wrong. */
export async function requestJSON(path, options = {}) {
  const response = await request(path, options);
  let body = null;
  const text = await response.text();
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  if (!response.ok) throw new ApiError(describeError(response, body), response.status, body);
  return body;
}

const FIELD_NAMES = {
  prompt: "Prompt", model: "Model", seed: "Seed", steps: "Steps", guidance: "Guidance",
  aspect_ratio: "Aspect ratio", width: "Width", height: "Height", size: "Size", n: "Images",
  output_format: "Output format", safety_tolerance: "Safety tolerance",
  prompt_upsampling: "Prompt upsampling", input_image: "Input image", input_image_2: "Second input image",
  input_image_3: "Third input image", input_image_4: "Fourth input image", loras: "LoRAs",
  "Idempotency-Key": "Idempotency key", limit: "Page size", before: "Page",
};

function fieldName(loc) {
  const parts = (loc || []).filter((p) => !["body", "query", "header", "path"].includes(p));
  if (!parts.length) return "";
  const first = String(parts[0]);
  const name = FIELD_NAMES[first] || first.replace(/_/g, " ");
  return parts.length > 1 ? `${name} (${parts.slice(1).join(".")})` : name;
}

function sentence(text) {
  const t = String(text).trim();
  return t ? t[0].toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? "" : ".") : t;
}

/** A server's error answer (BFL {"detail"} or OpenAI {"error"}) in words. */
export function describeError(response, body) {
  const status = response.status;
  let message = "";
  if (body && typeof body === "object") {
    if (body.error && body.error.message) message = sentence(body.error.message);
    else if (typeof body.detail === "string") message = sentence(body.detail);
    else if (Array.isArray(body.detail)) {
      message = body.detail
        .map((d) => {
          const where = fieldName(d.loc);
          const msg = String(d.msg || "is not valid").replace(/^Value error, /, "");
          return where ? `${where}: ${sentence(msg)}` : sentence(msg);
        })
        .join(" ");
    }
  } else if (typeof body === "string" && body.length < 300) {
    message = body;
  }
  if (status === 401) return `This server needs a valid API key. ${message}`.trim();
  if (status === 429) {
    const retry = response.headers.get("Retry-After");
    return `${message || "The server is busy."}${retry ? ` Try again in ${retry} s.` : ""}`;
  }
  if (status === 413) return message || "The request is too large: use smaller input images.";
  if (status >= 500) return `The server failed (${status}). ${message}`.trim();
  return message || `The server refused the request (${status}).`;
}

const CATEGORY_WORDS = {
  sexual_explicit: "explicit sexual content", sexual_suggestive: "sexually suggestive content",
  minors: "content involving minors", violence_gore: "violence or gore", hate: "hateful content",
  self_harm: "self-harm", profanity: "profanity",
};

/** Why a job did not give an image, in words (from get_result's status and details). */
export function describeFailure(status, details) {
  const mod = details && details.moderation;
  const what = mod ? CATEGORY_WORDS[mod.category] || String(mod.category || "").replace(/_/g, " ") : "";
  const tol = mod && mod.tolerance !== undefined ? ` at safety tolerance ${mod.tolerance}` : "";
  if (status === "Request Moderated") {
    const source = mod && mod.source === "input_image" ? "An input image" :
      mod && mod.source === "upsampled_prompt" ? "The upsampled prompt" : "The prompt";
    return `${source} was blocked by moderation: it looks like ${what || "content this server refuses"}${tol}. ` +
      "Rephrase it, or raise the safety tolerance (Advanced) if that is appropriate.";
  }
  if (status === "Content Moderated") {
    return `The generated image was withheld by moderation: it looked like ${what || "refused content"}${tol}. ` +
      "Try another seed or prompt.";
  }
  if (details && details.error === "cancelled") {
    const done = details.steps_done ? ` after ${details.steps_done} steps` : " before it started";
    return `Cancelled${done}.`;
  }
  if (details && details.error) return `The job failed: ${sentence(details.error)}`;
  if (status === "Task not found") return "The job is gone (deleted after its retention time, or made with another key).";
  return `The job ended with status ${status}.`;
}

/** Server-sent events of a fetch() response: {event, data, id} objects, data parsed as JSON. */
export async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      let event = "message", data = "", id = null;
      for (const line of block.split(/\r?\n/)) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") event = val;
        else if (field === "data") data += (data ? "\n" : "") + val;
        else if (field === "id") id = val;
      }
      if (!data) continue;
      let parsed = data;
      try { parsed = JSON.parse(data); } catch { /* plain text */ }
      yield { event, data: parsed, id };
    }
  }
}
