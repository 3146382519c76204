// The playground page: generate, edit, follow jobs live, browse this key's gallery.
// This module starts it: it loads the server's models and wires each part of the page.
import { ApiError, requestJSON } from "./api.js";
import { setupInputs } from "./edit.js";
import { renderLoras, renderModels, setupForm } from "./form.js";
import { loadGallery, setupGallery } from "./gallery.js";
import { setupGenerate } from "./generate.js";
import { openKeyDialog, setupKeyDialog } from "./keydialog.js";
import { $, el, state } from "./state.js";
import { setupTabs } from "./tabs.js";
import { setupTheme } from "./theme.js";

function showNotice(message, withKeyButton = false) {
  const box = $("notice");
  box.replaceChildren(message);
  if (withKeyButton) {
    box.append(" ", el("button", { type: "button", class: "small", text: "Enter the API key", onclick: () => openKeyDialog() }));
  }
  box.hidden = !message;
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

// ------------------------------------------------------------------ start

function start() {
  setupTheme();
  setupKeyDialog(loadServer);
  setupTabs();
  setupInputs();
  setupGenerate();
  setupForm();
  setupGallery();
  loadServer();
}

start();
