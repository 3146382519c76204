// One job, live: its card, following its events (or polling), and how it ended.
import { describeFailure, readEvents, request, requestJSON } from "./api.js";
import { $, el, money, note, secs, sleep } from "./state.js";

const QUEUE_REFRESH_MS = 2500;

/**
 * The sentence saying the embedded model drew only an approximation of the prompt (one outside
 * what it can draw): a result's `details.approximation`, or the OpenAI API's
 * X-Fluxserve-Approximation header. "" when the image is what was asked for.
 */
export function approximationOf(details) {
  const text = details && details.approximation;
  return typeof text === "string" ? text.trim() : "";
}

/** The note shown with such an image: visible, calm, in the page's note style. */
export function approximationNote(text) {
  return el("p", { class: "approximation", role: "note", text });
}

export class Run {
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
    this.approximation = approximationNote("");
    this.approximation.hidden = true;
    this.revised = el("p", { class: "revised", hidden: true });
    this.meta = el("dl", { class: "meta" });
    this.actions = el("div", { class: "actions" });
    this.card.append(stage, this.approximation, this.progress, this.status, this.revised, this.meta, this.actions);
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
      this.finishImage(r.sample, r.seed, r, approximationOf(result.details));
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

  finishImage(src, seed, r = null, approximation = "") {
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
    this.approximation.textContent = approximation;
    this.approximation.hidden = !approximation;
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
