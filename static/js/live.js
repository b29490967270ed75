/* Live updates that never take away what a person is using.
 *
 * Pages swap server-rendered fragments in by id (hx-swap-oob), from the
 * websocket or from htmx answers. Before each out-of-band swap that replaces
 * an element (hx-swap-oob="outerHTML", or "true"), this module:
 *
 *  - skips it when the fragment is the one swapped in last time for that id:
 *    pushes resend whole fragments, and an unchanged one should move nothing;
 *  - defers it while the element holds something a person is in the middle
 *    of: a focused text field or select, an open <dialog>, an open <details>
 *    with a form field in it, a form with unsaved input, or anything marked
 *    data-live-hold (or held with KaizenLive.hold). The latest version is
 *    applied as soon as they are done: focus leaves, the dialog or details
 *    closes, the form is sent or reset;
 *  - otherwise swaps it, then puts back the focus (by id, or by position
 *    inside the nearest element with an id), the open state of each
 *    <details id>, and the scroll position of each [id][data-live-scroll].
 *
 * Other swap styles (innerHTML, beforeend...) pass through untouched.
 *
 * API, for pages that load this file before their own script:
 *   KaizenLive.isBusy(element)   would a swap of element be deferred now?
 *   KaizenLive.hold(element)     defer swaps of whatever fragment contains element...
 *   KaizenLive.release(element)  ...until released (then the latest version is applied)
 *   KaizenLive.flush()           apply deferred swaps whose elements are free now
 *   KaizenLive.pending()         ids whose swap is deferred
 * Events, bubbling from the element: "kaizen:live-deferred" and
 * "kaizen:live-applied" (detail: {id}).
 */
(function () {
  "use strict";

  if (window.KaizenLive || !window.htmx) return;

  const FIELD =
    "input:not([type=hidden]):not([type=button]):not([type=submit]):not([type=reset])" +
    ":not([type=checkbox]):not([type=radio]):not([type=image]), textarea, select, [contenteditable=''], [contenteditable=true]";
  const FOCUSABLE = "a[href], button, input, select, textarea, summary, [tabindex], [contenteditable]";

  // id -> the HTML last swapped in for it (compared with what arrives next).
  const last = new Map();
  // id -> the latest HTML held back while its element is busy.
  const deferred = new Map();
  const held = new Set();
  // What to put back after the swaps of one message (run in a microtask, once
  // every fragment of the message is in place: a card may move between columns).
  let restoring = null;

  function outerHtml(fragment) {
    const box = document.createElement("div");
    box.appendChild(fragment.cloneNode(true));
    return box.innerHTML;
  }

  function isDirty(form) {
    for (const field of form.elements) {
      if (field.disabled || field.type === "hidden") continue;
      if (field.type === "checkbox" || field.type === "radio") {
        if (field.checked !== field.defaultChecked) return true;
      } else if (field.tagName === "SELECT") {
        for (const option of field.options) {
          if (option.selected !== option.defaultSelected) return true;
        }
      } else if ("defaultValue" in field && field.value !== field.defaultValue) {
        return true;
      }
    }
    return false;
  }

  function within(root, selector) {
    const found = Array.from(root.querySelectorAll(selector));
    if (root.matches(selector)) found.unshift(root);
    return found;
  }

  function isBusy(element) {
    if (!element) return false;
    const active = document.activeElement;
    if (active && active !== document.body && element.contains(active) && active.matches(FIELD)) return true;
    if (within(element, "[data-live-hold]").length) return true;
    for (const node of held) {
      if (element.contains(node)) return true;
    }
    if (within(element, "dialog[open]").length) return true;
    if (within(element, "details[open]").some((details) => details.querySelector(FIELD))) return true;
    return within(element, "form").some(isDirty);
  }

  function focusKey(target) {
    const active = document.activeElement;
    if (!active || active === document.body || !target.contains(active)) return null;
    if (active.id) return { id: active.id };
    const anchor = active.parentElement && active.parentElement.closest("[id]");
    if (!anchor || !target.contains(anchor)) return null;
    return { anchor: anchor.id, index: Array.from(anchor.querySelectorAll(FOCUSABLE)).indexOf(active) };
  }

  function remember(target) {
    if (!restoring) {
      restoring = { focus: null, open: new Map(), scroll: new Map() };
      queueMicrotask(restore);
    }
    restoring.focus = restoring.focus || focusKey(target);
    within(target, "details[id]").forEach((details) => restoring.open.set(details.id, details.open));
    within(target, "[id][data-live-scroll]").forEach((box) => {
      if (box.scrollTop || box.scrollLeft) restoring.scroll.set(box.id, [box.scrollTop, box.scrollLeft]);
    });
  }

  function restore() {
    const saved = restoring;
    restoring = null;
    saved.open.forEach((open, id) => {
      const details = document.getElementById(id);
      if (details && details.open !== open) details.open = open;
    });
    saved.scroll.forEach(([top, left], id) => {
      const box = document.getElementById(id);
      if (box) {
        box.scrollTop = top;
        box.scrollLeft = left;
      }
    });
    const key = saved.focus;
    const active = document.activeElement;
    // Only when the swap took the focus away: never pull it from where the person went since.
    if (!key || (active && active !== document.body)) return;
    let element = key.id ? document.getElementById(key.id) : null;
    if (!element && key.anchor) {
      const anchor = document.getElementById(key.anchor);
      if (anchor && key.index >= 0) element = anchor.querySelectorAll(FOCUSABLE)[key.index] || null;
    }
    if (element) element.focus({ preventScroll: true });
  }

  function announce(target, name) {
    target.dispatchEvent(new CustomEvent(name, { bubbles: true, detail: { id: target.id } }));
  }

  document.addEventListener("htmx:oobBeforeSwap", function (event) {
    const detail = event.detail;
    const target = detail.target;
    const fragment = detail.fragment;
    // An outerHTML swap hands over a fragment holding the new element itself.
    if (!target || !target.id || !(fragment instanceof DocumentFragment)) return;
    const html = outerHtml(fragment);
    if (last.get(target.id) === html) {
      detail.shouldSwap = false;
      deferred.delete(target.id);
      return;
    }
    if (isBusy(target)) {
      detail.shouldSwap = false;
      deferred.set(target.id, html);
      announce(target, "kaizen:live-deferred");
      return;
    }
    deferred.delete(target.id);
    last.set(target.id, html);
    remember(target);
  });

  document.addEventListener("htmx:oobAfterSwap", function (event) {
    // htmx fires this for a message's earlier swaps too, and for skipped ones:
    // only the element just swapped in, once.
    const detail = event.detail || {};
    const element = detail.target;
    if (!detail.shouldSwap || !element || !element.id || detail.liveAnnounced) return;
    detail.liveAnnounced = true;
    const swapped = document.getElementById(element.id);
    if (swapped) announce(swapped, "kaizen:live-applied");
  });

  // A request's own swap (a re-fetched body, say) put newer content in place:
  // forget what was swapped or held back inside it.
  document.addEventListener("htmx:afterSwap", function (event) {
    const target = event.detail && event.detail.target;
    if (!target || !(target instanceof Element)) return;
    for (const map of [last, deferred]) {
      for (const id of Array.from(map.keys())) {
        const element = document.getElementById(id);
        if (!element || (target !== element && target.contains(element))) map.delete(id);
      }
    }
  });

  function apply(html) {
    const template = document.createElement("template");
    template.innerHTML = html;
    const element = template.content.firstElementChild;
    if (!element) return;
    element.setAttribute("hx-swap-oob", "outerHTML");
    // Through htmx's own out-of-band path (and this guard): hx- attributes are
    // processed and htmx.onLoad handlers run, as for a pushed fragment.
    htmx.swap(document.body, element.outerHTML, { swapStyle: "none" });
  }

  function flush() {
    for (const [id, html] of Array.from(deferred)) {
      const target = document.getElementById(id);
      if (!target) {
        deferred.delete(id);
      } else if (!isBusy(target)) {
        deferred.delete(id);
        apply(html);
      }
    }
  }

  let flushQueued = false;
  function flushSoon() {
    if (flushQueued || !deferred.size) return;
    flushQueued = true;
    // After the event's own handlers (a form reset after its request, focus
    // settling on its next element).
    setTimeout(function () {
      flushQueued = false;
      flush();
    }, 0);
  }

  ["focusout", "toggle", "close", "reset", "input", "change", "submit"].forEach(function (name) {
    // Capture: toggle and close do not bubble.
    document.addEventListener(name, flushSoon, true);
  });
  document.addEventListener("htmx:afterRequest", flushSoon);
  // A safety net for what no event tells (an element removed while focused).
  setInterval(flushSoon, 1000);

  window.KaizenLive = {
    isBusy: isBusy,
    hold: function (element) {
      held.add(element);
    },
    release: function (element) {
      held.delete(element);
      flushSoon();
    },
    flush: flush,
    pending: function () {
      return Array.from(deferred.keys());
    },
  };
})();
