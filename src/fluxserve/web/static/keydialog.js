// The API key dialog: enter, save or forget the key this browser sends.
import { getKey, setKey } from "./api.js";
import { $ } from "./state.js";

export function openKeyDialog(reason = "") {
  $("key-reason").textContent = reason;
  $("key-input").value = getKey();
  $("key-dialog").showModal();
  $("key-input").focus();
}

/** Wire the dialog; `keyChanged` runs after the key is saved or forgotten. */
export function setupKeyDialog(keyChanged) {
  $("key-button").addEventListener("click", () => openKeyDialog());
  $("key-form").addEventListener("submit", (ev) => {
    if (ev.submitter && ev.submitter.value === "save") {
      setKey($("key-input").value.trim());
      keyChanged();
    }
  });
  $("key-clear").addEventListener("click", () => {
    setKey("");
    $("key-input").value = "";
    $("key-dialog").close();
    keyChanged();
  });
}
