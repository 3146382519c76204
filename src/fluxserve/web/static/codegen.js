// "Copy as" code for one job: curl, Python with the openai client, Python with httpx (BFL).
// Each snippet makes exactly the job's request again (same model, size, seed, steps, ...),
// so on the same server it makes the same image.

function gcd(a, b) { while (b) [a, b] = [b, a % b]; return a; }

/** The reduced ratio "W:H" of a size. */
export function ratioOf(width, height) {
  const g = gcd(width, height);
  return `${width / g}:${height / g}`;
}

/** The server's aspect_to_size (fluxserve.spec): the size a ratio gives at about `area` pixels. */
export function aspectToSize(rw, rh, area, multiple = 16, tolerance = 0.05) {
  const target = rw / rh;
  const idealW = Math.sqrt(area * target);
  const lo = Math.max(multiple, Math.floor(Math.floor(idealW * 0.9) / multiple) * multiple);
  const hi = Math.floor(Math.floor(idealW * 1.1) / multiple) * multiple + multiple;
  let best = null;
  for (let w = lo; w <= hi; w += multiple) {
    const hs = new Set([
      Math.max(multiple, Math.floor(w / target / multiple) * multiple),
      Math.max(multiple, Math.ceil(w / target / multiple) * multiple),
    ]);
    for (const h of hs) {
      if (Math.abs(w * h - area) > tolerance * area) continue;
      const key = [Math.abs(Math.log(w / h / target)), Math.abs(w * h - area), w, h];
      if (!best || lexLess(key, best)) best = key;
    }
  }
  if (best) return [best[2], best[3]];
  const h = Math.max(multiple, Math.round(Math.sqrt(area / target) / multiple) * multiple);
  return [Math.max(multiple, Math.round((h * target) / multiple) * multiple), h];
}

function lexLess(a, b) {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] < b[i];
  return false;
}

/** The request fields of a job from GET /v1/jobs, as the page and the snippets use them. */
export function requestOf(job) {
  return {
    model: job.model,
    prompt: job.original_prompt ?? job.prompt,
    width: job.width,
    height: job.height,
    seed: job.seed,
    steps: job.steps,
    guidance: job.guidance,
    output_format: job.output_format,
    safety_tolerance: job.safety_tolerance,
    prompt_upsampling: job.prompt_upsampling,
    n: job.num_images || 1,
    inputs: job.input_images || 0,
    loras: job.loras || [],
  };
}

/** BFL size fields for a request: width/height (pro models) or an aspect ratio. */
function bflSize(req, model) {
  const fam = model ? model.family : "kontext";
  const ok32 = (v) => v % 32 === 0 && v >= 256 && v <= 1440;
  if (model && !model.fields.includes("aspect_ratio")) {
    if (fam !== "pro") return { fields: { width: req.width, height: req.height }, note: "" };
    if (ok32(req.width) && ok32(req.height)) return { fields: { width: req.width, height: req.height }, note: "" };
    return { fields: { width: req.width, height: req.height },
      note: `# This server's BFL route takes widths and heights that are multiples of 32 (256 to 1440); ${req.width}x${req.height} came by the OpenAI API.` };
  }
  // A ratio the page offers, where it gives this size; else the size's own reduced ratio.
  const named = model && Object.entries(model.sizes).find(([, [w, h]]) => w === req.width && h === req.height);
  if (named) return { fields: { aspect_ratio: named[0] }, note: "" };
  const ratio = ratioOf(req.width, req.height);
  const [rw, rh] = ratio.split(":").map(Number);
  const area = model ? model.area : 1024 * 1024;
  const got = aspectToSize(rw, rh, area);
  const note = got && (got[0] !== req.width || got[1] !== req.height)
    ? `# ${ratio} gives ${got[0]}x${got[1]} here; the original was ${req.width}x${req.height} (use the OpenAI snippet for that size).`
    : "";
  return { fields: { aspect_ratio: ratio }, note };
}

/** OpenAI size: "WxH" where the server's size rule allows it, else the aspect ratio. */
function openaiSize(req, model) {
  const named = model && Object.entries(model.sizes).find(([, [w, h]]) => w === req.width && h === req.height);
  if (named && model.family !== "pro") return { aspect_ratio: named[0] };
  const ok = (v) => v % 16 === 0 && v >= 256 && v <= 2048;
  if (ok(req.width) && ok(req.height) && req.width * req.height <= 4 * 1024 * 1024) {
    return { size: `${req.width}x${req.height}` };
  }
  return { aspect_ratio: ratioOf(req.width, req.height) };
}

function options(req, model = null) {
  const o = {
    seed: req.seed,
    steps: req.steps,
    guidance: req.guidance,
    output_format: req.output_format,
    safety_tolerance: req.safety_tolerance,
    prompt_upsampling: req.prompt_upsampling,
  };
  if (req.loras && req.loras.length) o.loras = req.loras.map((l) => ({ name: l.name, scale: l.scale }));
  // A BFL route takes only its own fields (FLUX.2's refuse others): leave the rest out.
  if (model && model.bfl_route) for (const k of Object.keys(o)) if (!model.fields.includes(k)) delete o[k];
  return o;
}

/** A Python literal for a JSON value. */
export function py(value, indent = 0) {
  const pad = " ".repeat(indent);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : String(value);
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map((v) => py(v, indent)).join(", ")}]`;
  if (value instanceof PyExpr) return value.code;
  const items = Object.entries(value).map(([k, v]) => `${pad}    ${JSON.stringify(k)}: ${py(v, indent + 4)},`);
  return items.length ? `{\n${items.join("\n")}\n${pad}}` : "{}";
}

class PyExpr { constructor(code) { this.code = code; } }
const INPUT_FILES = ["input.png", ...[2, 3, 4, 5, 6, 7, 8].map((i) => `input_${i}.png`)];
const BFL_IMAGE_FIELDS = ["input_image", ...[2, 3, 4, 5, 6, 7, 8].map((i) => `input_image_${i}`)];

function bflBody(req, model) {
  const { fields, note } = bflSize(req, model);
  const body = { prompt: req.prompt, ...fields, ...options(req, model) };
  for (let i = 0; i < req.inputs; i++) {
    body[BFL_IMAGE_FIELDS[i]] = new PyExpr(`base64.b64encode(open(${JSON.stringify(INPUT_FILES[i])}, "rb").read()).decode()`);
  }
  return { body, note };
}

const inputsNote = (req) => req.inputs
  ? `# The input image${req.inputs > 1 ? "s" : ""} (${INPUT_FILES.slice(0, req.inputs).join(", ")}) are read from this folder.\n`
  : "";

/** Python with the official openai client: images.generate (or images.edit with inputs). */
export function pythonOpenAI(job, model, origin) {
  const req = requestOf(job);
  const extra = { ...openaiSize(req, model), ...options(req) };
  const size = extra.size; delete extra.size;
  const args = [
    `    model=${py(req.model)},`,
    `    prompt=${py(req.prompt)},`,
    `    n=${req.n},`,
    ...(size ? [`    size=${py(size)},`] : []),
    `    response_format="b64_json",`,
    `    extra_body=${py(extra, 4)},`,
  ];
  const call = req.inputs
    ? `client.images.edit(\n    image=[${INPUT_FILES.slice(0, req.inputs).map((f) => `open(${py(f)}, "rb")`).join(", ")}],\n${args.join("\n")}\n)`
    : `client.images.generate(\n${args.join("\n")}\n)`;
  return `${inputsNote(req)}import base64
import os

from openai import OpenAI

client = OpenAI(base_url=${py(origin + "/v1")}, api_key=os.environ.get("FLUXSERVE_API_KEY", "none"))
result = ${call}
for i, image in enumerate(result.data):
    path = f"flux-${req.seed}-{i}.${req.output_format}"
    with open(path, "wb") as f:
        f.write(base64.b64decode(image.b64_json))
    print(path)
`;
}

/** Python with httpx against the BFL API: submit, poll get_result, download the sample. */
export function pythonBFL(job, model, origin) {
  const req = requestOf(job);
  if (model && !model.bfl_route) {
    return `# ${req.model} is served only through the OpenAI API here: use the OpenAI snippet.\n`;
  }
  const { body, note } = bflBody(req, model);
  const many = req.n > 1 ? "# BFL makes one image per request: this makes the first of the job's images.\n" : "";
  return `${inputsNote(req)}${many}${note ? note + "\n" : ""}${req.inputs ? "import base64\n" : ""}import os
import time

import httpx

BASE_URL = ${py(origin)}
headers = {"x-key": os.environ["FLUXSERVE_API_KEY"]} if "FLUXSERVE_API_KEY" in os.environ else {}
body = ${py(body)}

submitted = httpx.post(f"{BASE_URL}/v1/${req.model}", json=body, headers=headers, timeout=60)
submitted.raise_for_status()
polling_url = submitted.json()["polling_url"]
while True:
    answer = httpx.get(polling_url, headers=headers, timeout=60)
    answer.raise_for_status()
    result = answer.json()
    if result["status"] != "Pending":
        break
    time.sleep(0.5)
if result["status"] != "Ready":
    raise SystemExit(f"{result['status']}: {result.get('details')}")
image = httpx.get(result["result"]["sample"], timeout=60)
image.raise_for_status()
path = "flux-${req.seed}.${req.output_format}"
with open(path, "wb") as f:
    f.write(image.content)
print(path)
`;
}

function shellQuote(text) { return `'${text.replace(/'/g, `'\\''`)}'`; }

/** curl: the submission (BFL, or OpenAI for OpenAI-only models), then how to fetch the result. */
export function curl(job, model, origin) {
  const req = requestOf(job);
  if (model && !model.bfl_route) {
    const body = { model: req.model, prompt: req.prompt, n: req.n, ...openaiSize(req, model), ...options(req), response_format: "url" };
    return `curl -sS ${shellQuote(origin + "/v1/images/generations")} \\
  -H "Authorization: Bearer $FLUXSERVE_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d ${shellQuote(JSON.stringify(body, null, 2))}
# data[0].url is the image (a signed URL).
`;
  }
  const { fields, note } = bflSize(req, model);
  const body = { prompt: req.prompt, ...fields, ...options(req, model) };
  // Input images go in as base64 of local files, spliced into the JSON by the shell.
  for (let i = 0; i < req.inputs; i++) body[BFL_IMAGE_FIELDS[i]] = `@@IMAGE${i}@@`;
  let data = shellQuote(JSON.stringify(body, null, 2));
  for (let i = 0; i < req.inputs; i++) data = data.replace(`@@IMAGE${i}@@`, `'"$(base64 -w0 ${INPUT_FILES[i]})"'`);
  return `${inputsNote(req)}${note ? note + "\n" : ""}curl -sS ${shellQuote(origin + "/v1/" + req.model)} \\
  -H "x-key: $FLUXSERVE_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d ${data}
# The answer's polling_url: GET it (same x-key header) until "status" is "Ready";
# then result.sample is the image's URL.
`;
}
