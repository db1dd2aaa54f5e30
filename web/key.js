// The caller's API key: a small form in the layer panel to enter it or sign out. The key is
// kept in this browser tab's sessionStorage (never localStorage, never a URL) and sent with
// every request to the server (`api.js`); the server answers with only what it may see, so the
// map is rebuilt from the server whenever the key changes. A key the server refuses (401, when
// entered or later: expired, revoked) is forgotten, said so, and the map falls back to the
// public view.

import { getKey, onKeyRejected, setKey, url } from "./api.js";
import { t } from "./i18n.js";

const INFO_MS = 8000; // how long "key applied" or "signed out" is shown

export class KeyControl {
  constructor({ button, state, form, input, forget, message }, onChange) {
    // `onChange()`: the caller changed (a key applied, forgotten or refused): rebuild the map.
    Object.assign(this, { button, state, form, input, forget, message, onChange });
    button.addEventListener("click", () => this.toggle());
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.apply(input.value.trim());
    });
    forget.addEventListener("click", () => this.signOut());
    form.addEventListener("keydown", (e) => {
      if (e.key === "Escape") {
        e.stopPropagation();
        this.close();
        button.focus();
      }
    });
    onKeyRejected(() => this.refused());
    this.showState();
  }

  get open() {
    return !this.form.hidden;
  }

  toggle() {
    if (this.open) this.close();
    else this.show();
  }

  show() {
    this.form.hidden = false;
    this.button.setAttribute("aria-expanded", "true");
    this.forget.hidden = !getKey();
    this.input.focus();
  }

  close() {
    this.form.hidden = true;
    this.button.setAttribute("aria-expanded", "false");
  }

  say(word, kind = "info") {
    // The message under the panel's title, kept translatable (`data-t`) for a language
    // switch; news goes after a while, a refusal stays until the next message.
    clearTimeout(this.timer);
    if (kind === "info" && word) this.timer = setTimeout(() => this.say(null), INFO_MS);
    if (!word) {
      delete this.message.dataset.t;
      this.message.textContent = "";
      this.message.hidden = true;
      return;
    }
    this.message.dataset.t = word;
    this.message.dataset.kind = kind;
    this.message.textContent = t(word);
    this.message.hidden = false;
  }

  showState() {
    const keyed = Boolean(getKey());
    this.state.dataset.t = keyed ? "keyInUse" : "keyPublic";
    this.state.textContent = t(this.state.dataset.t);
    this.button.classList.toggle("keyed", keyed);
    document.body.dataset.caller = keyed ? "key" : "anonymous";
    this.forget.hidden = !keyed;
  }

  async apply(key) {
    if (!key) return this.say("keyEmpty", "error");
    this.input.disabled = true;
    let status;
    try {
      // Asked with this key alone (not the one in use): a refusal here is this key's.
      const r = await fetch(url("collections"), {
        headers: { Accept: "application/json", Authorization: `Bearer ${key}` },
        cache: "no-store",
      });
      status = r.status;
    } catch (e) {
      status = 0;
    } finally {
      this.input.disabled = false;
    }
    this.input.value = "";
    if (status === 401) return this.refused();
    if (status < 200 || status >= 300) return this.say("keyFailed", "error");
    setKey(key);
    this.showState();
    this.say("keyApplied");
    this.close();
    this.onChange();
  }

  signOut() {
    const had = Boolean(getKey());
    setKey(null);
    this.showState();
    this.say("keyForgotten");
    this.close();
    if (had) this.onChange();
  }

  refused() {
    // Said and shown whether a key was in use or not; the view falls back only if one was.
    const had = Boolean(getKey());
    setKey(null);
    this.showState();
    this.say("keyRejected", "error");
    this.show();
    if (had) this.onChange();
  }
}
