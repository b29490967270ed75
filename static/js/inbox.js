/* The andon inbox in the browser: keyboard review (J/K, A, E, R, C), the
 * aria-live announcements, the count in the page title, and keeping up with the
 * websocket.
 *
 * The server owns the inbox: every action is the row's own form, submitted
 * through htmx; the answer replaces the row (or removes it, once decided) and
 * carries the message for the live region. Markup comes only from the server's
 * partials (andon/inbox.html); this file adds behaviour and text, never HTML.
 *
 * The filter form swaps the whole #inbox (a boosted GET), so elements are looked
 * up when needed and listeners sit on the document.
 */
(function () {
  "use strict";

  // Loaded once per page, even if a swap brings the script tag again.
  if (!window.htmx || window.kaizenInbox) return;
  window.kaizenInbox = true;

  const TITLE = "Andon inbox · Kaizen";

  function inbox() {
    return document.getElementById("inbox");
  }

  function list() {
    return document.getElementById("escalation-list");
  }

  function rows() {
    const l = list();
    return l ? Array.from(l.querySelectorAll(":scope > .escalation")) : [];
  }

  function isOpen(row) {
    return !row.classList.contains("escalation--decided");
  }

  function openRows() {
    return rows().filter(isOpen);
  }

  function titleOf(row) {
    return "“" + (row.dataset.title || "this item") + "”";
  }

  // --- the live region -----------------------------------------------------------

  function announce(text, level) {
    const region = document.getElementById("inbox-status");
    if (!region) return;
    const p = document.createElement("p");
    p.className = "flash flash--" + (level || "info");
    p.textContent = text;
    region.replaceChildren(p);
  }

  // Refusals (409) and bad input (422) come back as rows and messages to show;
  // any other failure (a lost session, a lost permission) needs a reload.
  document.addEventListener("htmx:responseError", function (event) {
    if (!inbox()) return;
    const status = event.detail.xhr.status;
    const hint =
      status === 403
        ? "you may no longer be a reviewer, or your session ended: reload the page."
        : "reload the page.";
    announce("That did not work (HTTP " + status + "): " + hint, "error");
  });

  document.addEventListener("htmx:sendError", function () {
    if (!inbox()) return;
    announce("The server could not be reached; nothing was decided. Try again in a moment.", "error");
  });

  // --- selection -------------------------------------------------------------------

  let selectedId = null;
  let selectedTitle = "";
  // Where the selection goes if the selected row disappears: the row after it
  // (or before it, at the end), as the list stood when last looked at.
  let neighbourId = null;
  let selectedIndex = 0;
  // Rows this page is deciding: their disappearance is announced by the server.
  const acting = new Set();

  function selected() {
    return selectedId ? document.getElementById(selectedId) : null;
  }

  function rememberNeighbour() {
    const row = selected();
    if (!row) {
      neighbourId = null;
      return;
    }
    const all = rows();
    const index = all.indexOf(row);
    const next = all.slice(index + 1).find(isOpen) || all.slice(0, index).reverse().find(isOpen);
    neighbourId = next ? next.id : null;
    selectedIndex = Math.max(index, 0);
  }

  function select(row, focus) {
    rows().forEach(function (other) {
      if (other !== row) {
        other.removeAttribute("aria-current");
        other.classList.remove("is-selected");
        other.tabIndex = -1;
      }
    });
    if (!row) {
      selectedId = null;
      neighbourId = null;
      return;
    }
    selectedId = row.id;
    selectedTitle = titleOf(row);
    // aria-current, not aria-selected: a list item has no selected state in ARIA.
    row.setAttribute("aria-current", "true");
    row.classList.add("is-selected");
    row.tabIndex = 0;
    if (focus) {
      row.focus({ preventScroll: true });
      row.scrollIntoView({ block: "nearest" });
    }
    rememberNeighbour();
  }

  function step(delta) {
    const all = openRows();
    if (!all.length) {
      announce("Nothing waits for a decision.", "info");
      return;
    }
    const row = selected();
    const index = row ? all.indexOf(row) : -1;
    let next;
    if (index === -1) next = delta > 0 ? all[0] : all[all.length - 1];
    else next = all[Math.min(Math.max(index + delta, 0), all.length - 1)];
    select(next, true);
  }

  // A click or Tab into a row selects it (focus stays where the person put it).
  document.addEventListener("focusin", function (event) {
    const row = event.target.closest && event.target.closest("#escalation-list > .escalation");
    if (row && row.id !== selectedId) select(row, false);
  });

  // --- keeping the page in step with the list ------------------------------------

  function focusLost() {
    const active = document.activeElement;
    return !active || active === document.body;
  }

  function updateCount() {
    if (!inbox()) return;
    const n = openRows().length;
    document.title = "(" + n + ") " + TITLE;
    const count = document.getElementById("inbox-count");
    if (count) count.textContent = String(n);
  }

  // Rows pushed to every reviewer say who claimed them; the reader's own are marked here.
  function markMine() {
    const root = inbox();
    const me = root ? root.dataset.username : "";
    rows().forEach(function (row) {
      row.classList.toggle("is-mine", Boolean(me) && row.dataset.claimedBy === me);
    });
  }

  // A new row pushed while the page was being rendered (or re-fetched) may be
  // on the page already: the one there stays, with whatever the reader has
  // opened or typed in it (later changes to it come as replacements).
  document.addEventListener("htmx:oobBeforeSwap", function (event) {
    const target = event.detail.target;
    if (!target || target.id !== "escalation-list" || !event.detail.fragment) return;
    const row = event.detail.fragment.querySelector(".escalation");
    if (row && document.getElementById(row.id)) event.detail.shouldSwap = false;
  });

  // Should a row be there twice all the same, the one that was there first (the
  // later one: new rows go on top) stays.
  function dedupe() {
    const seen = new Set();
    rows()
      .reverse()
      .forEach(function (row) {
        if (seen.has(row.id)) row.remove();
        else seen.add(row.id);
      });
  }

  function afterChange() {
    if (!inbox()) return;
    dedupe();
    markMine();
    if (selectedId) {
      const row = selected();
      if (!row || !isOpen(row)) {
        // Decided here or elsewhere: the selection moves on to the next item.
        const gone = selectedTitle;
        const wasActing = acting.has(selectedId);
        const all = openRows();
        const next =
          (neighbourId && document.getElementById(neighbourId)) ||
          all[Math.min(selectedIndex, all.length - 1)] ||
          null;
        const refocus = focusLost();
        if (row && !isOpen(row)) {
          // Shown as decided (a 409): leave it selected, so its message can be read.
          select(row, refocus);
        } else {
          select(next, refocus);
          if (!wasActing) {
            announce(
              gone + " left the inbox (decided elsewhere)." + (next ? " Selected " + titleOf(next) + "." : ""),
              "info",
            );
          }
        }
      } else if (!row.classList.contains("is-selected")) {
        // Replaced by a newer render of itself (claimed, or an error to show).
        select(row, focusLost());
      } else {
        rememberNeighbour();
      }
    }
    acting.forEach(function (id) {
      if (!document.getElementById(id)) acting.delete(id);
    });
    updateCount();
    updateAges();
  }

  let scheduled = false;
  function scheduleAfterChange() {
    if (scheduled) return;
    scheduled = true;
    setTimeout(function () {
      scheduled = false;
      afterChange();
    }, 0);
  }

  // Rows come and go through the socket (oob swaps), the actions' answers and
  // the catch-up fetch: watching the DOM covers them all, whichever events fire.
  new MutationObserver(function (records) {
    for (const record of records) {
      for (const node of [...record.addedNodes, ...record.removedNodes]) {
        if (node instanceof Element && (node.matches(".escalation, #escalation-list, #inbox") || node.querySelector(".escalation"))) {
          scheduleAfterChange();
          return;
        }
      }
    }
  }).observe(document.body, { childList: true, subtree: true });

  // --- what a pushed row must not take away ---------------------------------------
  //
  // A row claimed by someone else, re-rendered and pushed, would close the reject
  // field the reader is typing in. Open fields, their text and the caret are
  // carried over to the new render of the same row.

  function captureRows() {
    const states = {};
    const active = document.activeElement;
    rows().forEach(function (row) {
      const state = { open: [], values: {}, focus: null };
      row.querySelectorAll("details[open]").forEach(function (details) {
        state.open.push(details.className);
      });
      row.querySelectorAll("textarea[name], input[type=text][name]").forEach(function (field) {
        if (field.value !== field.defaultValue) state.values[field.name] = field.value;
      });
      if (active && row.contains(active) && active.id) {
        state.focus = { id: active.id, start: active.selectionStart, end: active.selectionEnd };
      }
      if (state.open.length || Object.keys(state.values).length || state.focus) states[row.id] = state;
    });
    return states;
  }

  function restoreRows(states) {
    Object.keys(states).forEach(function (id) {
      const row = document.getElementById(id);
      if (!row || !isOpen(row)) return;
      const state = states[id];
      state.open.forEach(function (className) {
        const details = row.querySelector("details." + className.split(" ").join("."));
        if (details) details.open = true;
      });
      Object.keys(state.values).forEach(function (name) {
        const field = row.querySelector("[name='" + name + "']");
        if (field && field.value === field.defaultValue) field.value = state.values[name];
      });
      if (state.focus && focusLost()) {
        const field = document.getElementById(state.focus.id);
        if (field) {
          field.focus({ preventScroll: true });
          if (state.focus.start !== null && field.setSelectionRange) {
            try {
              field.setSelectionRange(state.focus.start, state.focus.end);
            } catch (e) {
              // not a text field after all
            }
          }
        }
      }
    });
  }

  let pushed = null;

  document.addEventListener("htmx:wsBeforeMessage", function (event) {
    if (catchingUp) {
      // The re-fetch under way may be older than this message: hold it back and
      // re-fetch once more afterwards.
      event.preventDefault();
      missed = true;
      return;
    }
    rememberNeighbour();
    pushed = captureRows();
  });

  document.addEventListener("htmx:wsAfterMessage", function () {
    if (pushed) restoreRows(pushed);
    pushed = null;
    afterChange();
  });

  // A new filter swaps the whole inbox: the selection starts afresh.
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (event.detail.target && event.detail.target.id === "inbox") {
      selectedId = null;
      neighbourId = null;
    }
  });

  // This page's own actions: their rows' disappearance is announced by the
  // server's answer, not as a decision made elsewhere (the push can come first).
  document.addEventListener("htmx:beforeRequest", function (event) {
    const form = event.detail.elt;
    const row = form && form.tagName === "FORM" && form.closest(".escalation");
    if (row) acting.add(row.id);
  });

  // An answer that shows an error in its row focuses the field to fix.
  document.addEventListener("htmx:afterRequest", function (event) {
    const form = event.detail.elt;
    const old = form && form.tagName === "FORM" ? form.closest(".escalation") : null;
    if (!old) return;
    const row = document.getElementById(old.id);
    if (!row) return; // decided: afterChange moves the selection on
    acting.delete(row.id);
    const invalid = row.querySelector("[aria-invalid='true']");
    if (invalid) {
      select(row, false);
      invalid.focus();
    }
  });

  // --- live status and catching up ----------------------------------------------

  let catchingUp = false;
  let missed = false;

  function setLive(state, text) {
    const live = document.getElementById("live-status");
    if (!live) return;
    live.className = "live live--" + state;
    live.querySelector(".live-text").textContent = text;
  }

  // Whatever changed between rendering the page (or losing the socket) and now
  // was not pushed to us: re-read the list, the figures and the banner.
  function catchUp() {
    const root = inbox();
    const target = list();
    if (!root || !target) return Promise.resolve();
    catchingUp = true;
    rememberNeighbour();
    const states = captureRows();
    return htmx
      .ajax("GET", root.dataset.liveUrl, { source: target, target: target, swap: "outerHTML" })
      .then(function () {
        restoreRows(states);
        afterChange();
      })
      .catch(function () {})
      .finally(function () {
        catchingUp = false;
        if (missed) {
          missed = false;
          return catchUp();
        }
      });
  }

  document.addEventListener("htmx:wsConnecting", function () {
    setLive("connecting", "Connecting…");
  });
  document.addEventListener("htmx:wsOpen", function () {
    // "Live" once caught up: from then on, every change arrives.
    catchUp().then(function () {
      setLive("up", "Live");
    });
  });
  document.addEventListener("htmx:wsClose", function () {
    setLive("down", "Reconnecting…");
    leaveIfLoggedOut();
  });

  // A socket whose session has ended (or whose user is no longer a reviewer) is
  // refused at every reconnect, and the ws extension would retry forever. Ask
  // the server the way htmx does: without a session it answers with HX-Redirect
  // to the login page, and the browser goes there; without the permission, 403.
  let checkingSession = false;

  function leaveIfLoggedOut() {
    const root = inbox();
    if (checkingSession || !root) return;
    checkingSession = true;
    fetch(root.dataset.liveUrl, {
      headers: { "HX-Request": "true", "HX-Current-URL": window.location.href },
      credentials: "same-origin",
      redirect: "manual",
    })
      .then(function (response) {
        const login = response.headers.get("HX-Redirect");
        if (login) window.location.assign(login);
        else if (response.type === "opaqueredirect") window.location.reload();
        else if (response.status === 403) {
          setLive("down", "Not a reviewer");
          announce("You are no longer a reviewer, so the inbox stopped updating: reload the page.", "error");
        }
      })
      .catch(function () {})
      .finally(function () {
        checkingSession = false;
      });
  }

  // --- ages --------------------------------------------------------------------------

  function formatAge(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + "m";
    const h = Math.floor(m / 60);
    if (h < 24) return h + "h " + (m % 60) + "m";
    const d = Math.floor(h / 24);
    return d + "d " + (h % 24) + "h";
  }

  function updateAges() {
    const root = inbox();
    if (!root) return;
    const now = Date.now();
    root.querySelectorAll("time[data-age]").forEach(function (time) {
      const then = Date.parse(time.dateTime);
      if (isNaN(then)) return;
      const text = formatAge(now - then) + (time.hasAttribute("data-ago") ? " ago" : "");
      if (time.textContent !== text) time.textContent = text;
    });
  }

  setInterval(updateAges, 5000);

  // --- actions -------------------------------------------------------------------------

  function submit(row, button, doing) {
    if (!button) return;
    announce(doing + " " + titleOf(row) + "…", "info");
    button.form.requestSubmit(button);
  }

  function needRow() {
    const row = selected();
    if (!row) {
      announce("Select an item first: press J for the next one.", "info");
      return null;
    }
    if (!isOpen(row)) {
      announce(titleOf(row) + " is already decided.", "info");
      return null;
    }
    return row;
  }

  function openField(row, which, hint) {
    const details = row.querySelector("details.action-" + which);
    if (!details) return;
    details.open = true;
    const field = details.querySelector("textarea, input[type=text]");
    if (!field) return;
    field.focus();
    const end = field.value.length;
    if (field.setSelectionRange) field.setSelectionRange(end, end);
    announce(hint, "info");
  }

  const keys = {
    j: function () {
      step(1);
    },
    k: function () {
      step(-1);
    },
    a: function () {
      const row = needRow();
      if (row) submit(row, row.querySelector(".action-approve button[type=submit]"), "Approving");
    },
    c: function () {
      const row = needRow();
      if (!row) return;
      const mine = row.classList.contains("is-mine");
      const button = row.querySelector(mine ? ".release-button" : ".claim-button");
      submit(row, button, mine ? "Releasing" : "Claiming");
    },
    e: function () {
      const row = needRow();
      if (row)
        openField(row, "edit", "Editing " + titleOf(row) + ": Ctrl+Enter approves the edited output, Escape leaves the field.");
    },
    r: function () {
      const row = needRow();
      if (row) openField(row, "reject", "Rejecting " + titleOf(row) + ": say what is wrong, Enter sends it, Escape leaves the field.");
    },
  };

  function typingIn(target) {
    return target.closest && target.closest("input, textarea, select, [contenteditable]:not([contenteditable='false'])");
  }

  document.addEventListener("keydown", function (event) {
    if (!inbox() || event.defaultPrevented || event.isComposing) return;
    const field = typingIn(event.target);
    if (field) {
      const row = field.closest(".escalation");
      if (!row) return;
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && field.matches("textarea[data-submit='ctrl-enter']")) {
        event.preventDefault();
        submit(row, field.form.querySelector("button[type=submit]"), "Approving the edited output of");
      } else if (event.key === "Enter" && field.matches("input[type=text]") && field.closest(".action-reject")) {
        // The browser submits the form (Enter in its one text field); say so.
        if (field.value.trim()) announce("Rejecting " + titleOf(row) + "…", "info");
      } else if (event.key === "Escape") {
        event.preventDefault();
        const details = field.closest("details");
        if (details) details.open = false;
        select(row, true);
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const action = !event.shiftKey && keys[event.key.toLowerCase()];
    if (!action) return;
    event.preventDefault();
    action();
  });

  // --- start -----------------------------------------------------------------------------

  markMine();
  updateCount();
  updateAges();
})();
