// Light or dark: the system's choice until the toggle picks one (kept in local storage).
import { $ } from "./state.js";

function applyTheme(theme) {
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
  const dark = theme ? theme === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
  $("theme-toggle").setAttribute("aria-pressed", String(dark));
  $("theme-toggle").textContent = dark ? "Light" : "Dark";
  $("theme-toggle").title = dark ? "Switch to the light theme" : "Switch to the dark theme";
}

function toggleTheme() {
  const dark = $("theme-toggle").getAttribute("aria-pressed") === "true";
  const next = dark ? "light" : "dark";
  try { localStorage.setItem("fluxserve.theme", next); } catch { /* ignore */ }
  applyTheme(next);
}

/** Apply the kept theme and wire the toggle. */
export function setupTheme() {
  let theme = null;
  try { theme = localStorage.getItem("fluxserve.theme"); } catch { /* ignore */ }
  applyTheme(theme);
  $("theme-toggle").addEventListener("click", toggleTheme);
}
