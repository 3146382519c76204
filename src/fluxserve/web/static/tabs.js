// The three tabs: Generate and Edit share the studio panel; Gallery has its own.
// (gallery.js imports selectTab back: a cycle of function declarations only, safe in ES modules.)
import { renderModels } from "./form.js";
import { loadGallery } from "./gallery.js";
import { $, state } from "./state.js";

export function selectTab(tab, focus = false) {
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

export function setupTabs() {
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
