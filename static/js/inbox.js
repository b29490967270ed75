/* The andon inbox in the browser: keyboard review (J/K, A, E, R, U, C), decisions
 * that wait a few seconds before they are sent (so they can be undone), the
 * aria-live announcements, the count in the page title, and keeping up with the
 * websocket without taking away what the reviewer is using.
 *
 * The server owns the inbox: every action is the row's own form, submitted
 * through htmx; the answer replaces the row (or removes it, once decided) and
 * carries the message for the live region. Markup comes only from the server's
 * partials (andon/inbox.html); this file adds behaviour and text, never HTML.
 * A row is a group of identical escalations: its forms post every member.
 *
 * Three rules, each in its own section below:
 *
 * - Undo. A decision (approve, edit and approve, reject) is held for
 *   #inbox[data-undo-ms] (6 s) with "Approved · Undo" in its row, as mail
 *   clients hold a sent message, and only then sent; U or the Undo button takes
 *   it back. Nothing reaches the server meanwhile, so an undone decision leaves
 *   no trace, and other reviewers see the escalation open until it is sent. A
 *   page left meanwhile (pagehide: a link, a reload, the tab closed) sends what
 *   it holds at once, with a keepalive fetch that outlives the page; so does a
 *   change of filters. Held client-side rather than undone server-side: a
 *   rejected task goes back to Ready and an agent may pull it within
 *   milliseconds, and an approved answer may be reused, so "take it back" could
 *   not be promised once it was sent. Claims are not decisions: sent at once.
 *
 * - Reading. A row is read once the reviewer has selected it (J/K, a click,
 *   Tab) or opened one of its forms. J and K move one row, never more. When
 *   the selected row leaves (its decision sent, or decided elsewhere), the
 *   selection moves to the next row not yet read, never past one; rows above
 *   are looked at only when none is left below.
 *
 * - Live updates never take away what a person is using (liveMerge and the
 *   functions around it): a pushed row is merged into the one on the page,
 *   replacing only elements that changed and are not in use (focused, an open
 *   <details> form or menu, a field with typed text, a held decision); in-use
 *   elements are updated in place, and what cannot be applied yet is applied
 *   once they are left. A row decided elsewhere while in use stays, marked, until
 *   it is left. The re-fetch after a reconnect merges the same way.
 */
(function () {
  "use strict";

  // Loaded once per page, even if a swap brings the script tag again.
  if (!window.htmx || !window.KaizenSocket || window.kaizenInbox) return;
  window.kaizenInbox = true;

  const TITLE = "Andon inbox · Kaizen";
  const DECISIONS = {
    approve: { verb: "Approved", doing: "Approving", noun: "approval" },
    correct: { verb: "Approved with your correction", doing: "Approving the edited output of", noun: "correction" },
    reject: { verb: "Rejected", doing: "Rejecting", noun: "rejection" },
  };

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
    return !row.classList.contains("escalation--decided") && !row.classList.contains("is-gone");
  }

  function openRows() {
    return rows().filter(isOpen);
  }

  function titleOf(row) {
    const count = Number(row.dataset.count || 1);
    return "“" + (row.dataset.title || "this item") + "”" + (count > 1 ? " (" + count + " identical)" : "");
  }

  function undoMs() {
    const root = inbox();
    const ms = root ? Number(root.dataset.undoMs) : NaN;
    return isFinite(ms) && ms >= 0 ? ms : 6000;
  }

  function csrfToken() {
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || "";
    } catch (e) {
      return "";
    }
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

  // --- selection and reading -------------------------------------------------------

  let selectedId = null;
  let selectedTitle = "";
  // The rows after and before the selected one, as the list stood when last
  // looked at: where the selection goes if the selected row leaves.
  let after = [];
  let before = [];
  // Rows the reviewer has read (selected, or opened a form of), by id.
  const read = new Set();
  // Rows this page has sent a decision for: their leaving is announced by the
  // server's answer, not as a decision made elsewhere (the push can come first).
  const acting = new Set();

  function selected() {
    return selectedId ? document.getElementById(selectedId) : null;
  }

  function isRead(row) {
    return read.has(row.id);
  }

  function markRead(row) {
    read.add(row.id);
    row.classList.add("is-read");
  }

  function rememberPlace() {
    const row = selected();
    if (!row) return;
    const all = openRows();
    const index = all.indexOf(row);
    if (index === -1) return;
    after = all.slice(index + 1).map((r) => r.id);
    before = all
      .slice(0, index)
      .reverse()
      .map((r) => r.id);
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
      after = [];
      before = [];
      return;
    }
    selectedId = row.id;
    selectedTitle = titleOf(row);
    markRead(row);
    // aria-current, not aria-selected: a list item has no selected state in ARIA.
    row.setAttribute("aria-current", "true");
    row.classList.add("is-selected");
    row.tabIndex = 0;
    if (focus) {
      row.focus({ preventScroll: true });
      row.scrollIntoView({ block: "nearest" });
    }
    rememberPlace();
  }

  // J and K: one row, never more (held and read rows included: a held decision
  // can be gone back to and undone).
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

  // Where the selection goes when the selected row has left: the next row not
  // yet read after it (never past one), else before it; else the nearest row.
  function nextUnread() {
    const present = (id) => {
      const row = document.getElementById(id);
      return row && isOpen(row) ? row : null;
    };
    const below = after.map(present).filter(Boolean);
    const above = before.map(present).filter(Boolean);
    // Rows that arrived since (new ones go on top) count as above.
    const known = new Set(after.concat(before));
    const arrived = openRows().filter((r) => !known.has(r.id));
    return (
      below.find((r) => !isRead(r)) ||
      above.find((r) => !isRead(r)) ||
      arrived.find((r) => !isRead(r)) ||
      below[0] ||
      above[0] ||
      arrived[0] ||
      null
    );
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
    // Escalations, not rows: a row may stand for several identical ones.
    const n = openRows().reduce((sum, row) => sum + Number(row.dataset.count || 1), 0);
    document.title = "(" + n + ") " + TITLE;
    const count = document.getElementById("inbox-count");
    if (count) {
      count.textContent = String(n);
      // Red only while something waits: an empty inbox is no alarm.
      count.classList.toggle("inbox-count--none", n === 0);
    }
  }

  // Rows pushed to every reviewer say who claimed them; the reader's own are marked here.
  function markMine() {
    const root = inbox();
    const me = root ? root.dataset.username : "";
    rows().forEach(function (row) {
      row.classList.toggle("is-mine", Boolean(me) && row.dataset.claimedBy === me);
    });
  }

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
    rows().forEach(function (row) {
      row.classList.toggle("is-read", isRead(row));
    });
    if (selectedId) {
      const row = selected();
      if (!row || row.classList.contains("is-gone")) {
        // Left the list (decided here or elsewhere): on to the next unread row.
        const gone = selectedTitle;
        const wasActing = acting.has(selectedId);
        const refocus = focusLost();
        const next = nextUnread();
        if (row) {
          // Decided elsewhere while in use: it stays selected until left.
          rememberPlace();
        } else {
          select(next, refocus);
          if (!wasActing) {
            announce(
              gone + " left the inbox (decided elsewhere)." + (next ? " Selected " + titleOf(next) + "." : ""),
              "info",
            );
          }
        }
      } else if (!isOpen(row)) {
        // Shown as decided (a 409): leave it selected, so its message can be read.
        if (!row.classList.contains("is-selected")) select(row, focusLost());
      } else if (!row.classList.contains("is-selected")) {
        // Replaced by a newer render of itself (an error to show).
        select(row, focusLost());
      } else {
        rememberPlace();
      }
    }
    acting.forEach(function (id) {
      if (!document.getElementById(id)) acting.delete(id);
    });
    sweep();
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
        if (
          node instanceof Element &&
          (node.matches(".escalation, #escalation-list, #inbox") || node.querySelector(".escalation"))
        ) {
          scheduleAfterChange();
          return;
        }
      }
    }
  }).observe(document.body, { childList: true, subtree: true });

  // --- live updates never take away what a person is using ------------------------
  //
  // liveMerge(old, new) brings an element on the page up to a newer render of
  // it, keeping what the person is using. The board's live.js will hold the
  // shared version of this; it is kept to these few functions so the two can
  // be unified.

  // Row classes only the browser knows: never taken from a pushed render.
  const CLIENT_CLASSES = ["is-selected", "is-mine", "is-read", "is-pending", "is-sending", "is-gone"];
  // Rows whose newer render waits until they are no longer in use, by id.
  const deferred = new Map();

  function isField(el) {
    return el.matches("textarea, input:not([type]), input[type=text], input[type=search]");
  }

  function dirty(el) {
    if (isField(el) && el.value !== el.defaultValue) return true;
    return Array.from(el.querySelectorAll("textarea, input")).some((f) => isField(f) && f.value !== f.defaultValue);
  }

  // A row holding a decision (undo still possible) or sending it.
  const HOLDING = ".is-pending, .is-sending";

  // In use: focused (or holding the focus), an open <details> (a form or a
  // menu), a field with typed text, or a row holding a decision or sending it.
  function inUse(el) {
    if (!(el instanceof Element)) return false;
    if (el.matches(HOLDING)) return true;
    const active = document.activeElement;
    if (active && active !== document.body && (el === active || el.contains(active))) return true;
    if (el.matches("details[open]") || el.querySelector("details[open]")) return true;
    return dirty(el);
  }

  // A row to be removed is kept while it holds what the person is working on
  // (an open form, a focused field); the row itself being selected does not
  // count, nor text left in a form the person closed. A row whose decision is
  // being sent is kept until the answer comes: the push of that decision can
  // arrive first on a loaded machine, and htmx finds the answer's out-of-band
  // parts (the status line) only from a form still on the page.
  function rowInUse(row) {
    if (row.matches(HOLDING) || row.querySelector("details[open]")) return true;
    const active = document.activeElement;
    return Boolean(active && active !== row && row.contains(active) && active.matches("input, textarea, select, button, summary"));
  }

  function keyOf(el) {
    if (el.id) return "#" + el.id;
    return el.tagName + "." + (el.getAttribute("name") || "") + "." + (el.classList[0] || "");
  }

  function keepAttribute(el, name) {
    if (name === "open" && el.tagName === "DETAILS") return true;
    if (name === "value" && isField(el)) return true;
    return name === "style";
  }

  function syncAttributes(old, neu) {
    Array.from(neu.attributes).forEach(function (attr) {
      if (!keepAttribute(old, attr.name) && old.getAttribute(attr.name) !== attr.value) {
        old.setAttribute(attr.name, attr.value);
      }
    });
    Array.from(old.attributes).forEach(function (attr) {
      if (!neu.hasAttribute(attr.name) && !keepAttribute(old, attr.name)) old.removeAttribute(attr.name);
    });
  }

  function insertCopy(neu, parent, afterNode) {
    const copy = neu.cloneNode(true);
    if (afterNode) afterNode.after(copy);
    else parent.prepend(copy);
    htmx.process(copy);
    return copy;
  }

  // Returns whether all of ``neu`` could be applied (false: some of it waits
  // until an element in use is left).
  function liveMerge(old, neu) {
    if (old.hasAttribute("data-client")) return true;
    if (old.isEqualNode(neu)) return true;
    if (!inUse(old)) {
      const copy = neu.cloneNode(true);
      old.replaceWith(copy);
      htmx.process(copy);
      return true;
    }
    if (old.tagName !== neu.tagName) return false;
    syncAttributes(old, neu);
    if (!old.children.length && !neu.children.length) {
      // A leaf: its text (a textarea's text is its default value; what was
      // typed in it stays, and so does the default while it is used).
      if (old.tagName !== "TEXTAREA" && old.textContent !== neu.textContent) old.textContent = neu.textContent;
      return true;
    }
    return mergeChildren(old, neu);
  }

  // Children matched by id, else by tag, name and first class, in order; new
  // ones inserted where they belong, those no longer rendered removed, unless
  // in use. Nothing in use is moved (moving a node takes its focus away).
  function mergeChildren(old, neu) {
    let complete = true;
    const olds = Array.from(old.children);
    const used = new Set();
    let cursor = null;
    Array.from(neu.children).forEach(function (child) {
      const key = keyOf(child);
      const match = olds.find((o) => !used.has(o) && keyOf(o) === key);
      if (match) {
        used.add(match);
        const index = Array.from(old.children).indexOf(match);
        // liveMerge may replace it: find what stands in its place.
        complete = liveMerge(match, child) && complete;
        cursor = old.children[index] || cursor;
      } else {
        cursor = insertCopy(child, old, cursor);
      }
    });
    olds.forEach(function (o) {
      if (used.has(o) || !o.isConnected) return;
      if (inUse(o)) complete = false;
      else o.remove();
    });
    return complete;
  }

  function normaliseAges(el) {
    updateAges(el);
  }

  // A row's newer render, merged into the row on the page. A row holding a
  // decision, or decided elsewhere, keeps what it shows: its render waits.
  function mergeRow(old, neu) {
    if (old.matches(".is-pending, .is-gone")) {
      deferred.set(old.id, neu.cloneNode(true));
      return;
    }
    normaliseAges(neu);
    const classes = CLIENT_CLASSES.filter((c) => old.classList.contains(c));
    const keep = { tabindex: old.getAttribute("tabindex"), current: old.getAttribute("aria-current") };
    syncAttributes(old, neu);
    classes.forEach((c) => old.classList.add(c));
    if (keep.tabindex !== null) old.setAttribute("tabindex", keep.tabindex);
    if (keep.current !== null) old.setAttribute("aria-current", keep.current);
    if (mergeChildren(old, neu)) deferred.delete(old.id);
    else deferred.set(old.id, neu.cloneNode(true));
  }

  // A row that left the list (decided, or no longer matching): removed, unless
  // the person is using it; then marked and removed once left. A decision it
  // held is dropped: something else decided first, and sending it would only
  // be refused.
  function removeRow(row) {
    const entry = held.get(row.id);
    if (entry) {
      release(entry);
      announce(
        titleOf(row) + " was decided elsewhere before your " + DECISIONS[entry.action].noun + " was sent: nothing was sent.",
        "info",
      );
    }
    deferred.delete(row.id);
    if (rowInUse(row)) {
      row.classList.add("is-gone");
      const note = row.querySelector(".escalation-gone-note");
      // Not for a row sending its own decision: the push is that decision's.
      if (note && !row.matches(".is-sending")) note.hidden = false;
      return;
    }
    row.remove();
  }

  // Rows no longer in use: what waited for them is applied now.
  function sweep() {
    rows().forEach(function (row) {
      if (row.classList.contains("is-gone")) {
        if (!rowInUse(row)) row.remove();
      } else if (deferred.has(row.id) && !row.matches(".is-pending")) {
        mergeRow(row, deferred.get(row.id));
      }
    });
  }

  function sweepSoon() {
    // After the focus has settled where it is going.
    setTimeout(function () {
      if (inbox()) {
        sweep();
        afterChange();
      }
    }, 0);
  }

  document.addEventListener("focusout", sweepSoon);
  // toggle does not bubble: listen while it goes down.
  document.addEventListener("toggle", sweepSoon, true);

  // Every pushed fragment for the inbox goes through here (the socket's and
  // the out-of-band parts of the actions' answers): rows are merged, not
  // replaced; a row to delete is removed only if not in use; a row for the
  // top of the list that is already on the page is merged into it.
  document.addEventListener("htmx:oobBeforeSwap", function (event) {
    const target = event.detail.target;
    const fragment = event.detail.fragment;
    if (!target || !inbox() || !inbox().contains(target)) return;
    const incoming = fragment && fragment.querySelector ? fragment.querySelector(".escalation") : null;
    if (target.id === "escalation-list") {
      const existing = incoming && document.getElementById(incoming.id);
      if (existing) {
        event.detail.shouldSwap = false;
        mergeRow(existing, incoming);
        scheduleAfterChange();
      }
      return;
    }
    if (target.matches(".escalation")) {
      event.detail.shouldSwap = false;
      if (incoming) mergeRow(target, incoming);
      else removeRow(target);
      scheduleAfterChange();
      return;
    }
    if (["inbox-stats", "inbox-banner", "inbox-history"].includes(target.id)) {
      const neu = fragment && fragment.querySelector("#" + target.id);
      if (!neu) return;
      event.detail.shouldSwap = false;
      normaliseAges(neu);
      liveMerge(target, neu);
    }
  });

  // The list as the server has it now (the catch-up after a reconnect), merged
  // into the one on the page.
  function mergeList(incoming) {
    const current = list();
    if (!current) return;
    const fresh = Array.from(incoming.querySelectorAll(":scope > .escalation"));
    const keep = new Set(fresh.map((r) => r.id));
    let cursor = null;
    fresh.forEach(function (neu) {
      const old = document.getElementById(neu.id);
      if (old && old.parentElement === current) {
        mergeRow(old, neu);
        cursor = old;
      } else {
        cursor = insertCopy(neu, current, cursor);
      }
    });
    rows().forEach(function (row) {
      // A row shown as decided (a 409's answer) stays until the next look.
      if (!keep.has(row.id) && isOpen(row)) removeRow(row);
    });
  }

  // --- held decisions and undo ---------------------------------------------------------

  // Decisions waiting out their undo delay, by row id, in the order made.
  const held = new Map();

  function decisionOf(form) {
    if (form.matches(".action-approve")) return "approve";
    if (form.closest(".action-edit")) return "correct";
    if (form.closest(".action-reject")) return "reject";
    return null;
  }

  function seconds(ms) {
    return Math.max(0, Math.ceil(ms / 1000));
  }

  function showHeld(entry) {
    const bar = entry.row.querySelector(".escalation-pending");
    if (!bar) return;
    bar.hidden = false;
    const left = seconds(entry.until - Date.now());
    bar.querySelector(".pending-text").textContent =
      DECISIONS[entry.action].verb + " · sent in " + left + " s";
  }

  function hold(row, form, action, issue) {
    const ms = undoMs();
    const entry = { row, form, action, issue, until: Date.now() + ms, timer: null, ticker: null };
    held.set(row.id, entry);
    row.classList.add("is-pending");
    markRead(row);
    const active = document.activeElement;
    // The forms are hidden while held: the focus goes to the row.
    if (active && row.contains(active) && active !== row) row.focus({ preventScroll: true });
    if (selectedId !== row.id) select(row, false);
    showHeld(entry);
    entry.ticker = setInterval(() => showHeld(entry), 1000);
    entry.timer = setTimeout(() => send(entry), ms);
    announce(
      DECISIONS[entry.action].verb + ": " + titleOf(row) + ", sent in " + seconds(ms) + " seconds. Press U to undo.",
      "info",
    );
  }

  // Stop holding (the row shows its forms again).
  function release(entry) {
    clearTimeout(entry.timer);
    clearInterval(entry.ticker);
    held.delete(entry.row.id);
    entry.row.classList.remove("is-pending");
    const bar = entry.row.querySelector(".escalation-pending");
    if (bar) bar.hidden = true;
  }

  function send(entry) {
    release(entry);
    const row = entry.row;
    if (!row.isConnected || !entry.form.isConnected) return;
    acting.add(row.id);
    row.classList.add("is-sending");
    announce(DECISIONS[entry.action].doing + " " + titleOf(row) + "…", "info");
    entry.issue(true);
  }

  function undo(entry) {
    release(entry);
    const row = entry.row;
    announce("Undone: " + titleOf(row) + " still waits for a decision. Nothing was sent.", "success");
    sweep();
    // Back where the decision was made: the field for an edit or a reason.
    const field = entry.action === "approve" ? null : entry.form.querySelector("textarea, input[type=text]");
    if (field && field.closest("details") && field.closest("details").open) field.focus();
    else select(row, true);
  }

  function undoLatest() {
    const row = selected();
    const entry = (row && held.get(row.id)) || Array.from(held.values()).pop();
    if (!entry) {
      announce("Nothing to undo: a decision can be taken back only until it is sent.", "info");
      return;
    }
    undo(entry);
  }

  // Send at once, in a request that outlives the page (the page is going, or
  // the list is about to be replaced); the answer is not waited for: the
  // decision's push updates every inbox, this one included if it stays.
  function sendNow(entry) {
    release(entry);
    const body = new URLSearchParams(new FormData(entry.form));
    try {
      fetch(entry.form.action, {
        method: "POST",
        body: body,
        headers: { "X-CSRFToken": csrfToken() },
        credentials: "same-origin",
        keepalive: true,
        redirect: "manual",
      }).catch(function () {});
    } catch (e) {
      // Nothing more can be done for a page that is going away.
    }
  }

  function sendAllNow() {
    Array.from(held.values()).forEach(sendNow);
  }

  // A decision submitted in a row (by keyboard, button or Enter) is held, not sent.
  document.addEventListener("htmx:confirm", function (event) {
    const form = event.detail.elt;
    if (!form || form.tagName !== "FORM" || !list() || !list().contains(form)) return;
    const action = decisionOf(form);
    if (!action) return;
    const row = form.closest(".escalation");
    event.preventDefault();
    if (held.has(row.id)) return;
    hold(row, form, action, event.detail.issueRequest);
  });

  document.addEventListener("click", function (event) {
    const button = event.target.closest && event.target.closest(".undo-button");
    if (!button) return;
    const row = button.closest(".escalation");
    const entry = row && held.get(row.id);
    if (entry) undo(entry);
  });

  window.addEventListener("pagehide", sendAllNow);

  // A new filter replaces the whole list: what is held is sent first.
  document.addEventListener("htmx:beforeRequest", function (event) {
    const elt = event.detail.elt;
    if (elt && elt.closest && elt.closest(".inbox-filters") && held.size) {
      const n = held.size;
      sendAllNow();
      announce("Sent your " + (n === 1 ? "held decision" : n + " held decisions") + " before filtering.", "info");
    }
  });

  // --- this page's own requests ------------------------------------------------------

  // A new filter swaps the whole inbox: the selection starts afresh.
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (event.detail.target && event.detail.target.id === "inbox") {
      selectedId = null;
      after = [];
      before = [];
      deferred.clear();
    }
  });

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
    old.classList.remove("is-sending");
    // A removal pushed while the answer was awaited is applied now.
    sweepSoon();
    const row = document.getElementById(old.id);
    if (!row) return; // decided: afterChange moves the selection on
    row.classList.remove("is-sending");
    acting.delete(row.id);
    const invalid = row.querySelector("[aria-invalid='true']");
    if (invalid) {
      select(row, false);
      invalid.focus();
    }
  });

  // --- catching up -----------------------------------------------------------------
  //
  // The status badge, the catch-up after every (re)connect and leaving a page
  // whose session has ended: static/js/live-socket.js.

  const socket = KaizenSocket.follow({
    root: inbox,
    url: function () {
      return inbox().dataset.liveUrl;
    },
    catchUp: catchUp,
    refused: function () {
      socket.setStatus("down", "Not a reviewer");
      announce("You are no longer a reviewer, so the inbox stopped updating: reload the page.", "error");
    },
  });

  document.addEventListener("htmx:wsBeforeMessage", function () {
    // A message held back while catching up is not swapped in (live-socket.js).
    if (!socket.catchingUp()) rememberPlace();
  });

  document.addEventListener("htmx:wsAfterMessage", function () {
    afterChange();
  });

  // Whatever changed between rendering the page (or losing the socket) and now
  // was not pushed to us: re-read the list, the figures and the banner, and
  // merge them in.
  function catchUp() {
    const root = inbox();
    if (!root || !list()) return Promise.resolve();
    rememberPlace();
    return fetch(root.dataset.liveUrl, {
      headers: { "HX-Request": "true", "HX-Current-URL": window.location.href },
      credentials: "same-origin",
      redirect: "manual",
    }).then(function (response) {
      if (!response.ok) {
        socket.checkSession();
        return;
      }
      return response.text().then(function (html) {
        const template = document.createElement("template");
        template.innerHTML = html;
        const fresh = template.content.querySelector("#escalation-list");
        if (fresh) {
          normaliseAges(fresh);
          mergeList(fresh);
        }
        ["inbox-banner", "inbox-stats", "inbox-history"].forEach(function (id) {
          const neu = template.content.querySelector("#" + id);
          const old = document.getElementById(id);
          if (neu && old) {
            normaliseAges(neu);
            liveMerge(old, neu);
          }
        });
        afterChange();
      });
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

  function updateAges(root) {
    root = root || inbox();
    if (!root) return;
    const now = Date.now();
    root.querySelectorAll("time[data-age]").forEach(function (time) {
      const then = Date.parse(time.dateTime);
      if (isNaN(then)) return;
      const text = formatAge(now - then) + (time.hasAttribute("data-ago") ? " ago" : "");
      if (time.textContent !== text) time.textContent = text;
    });
  }

  setInterval(function () {
    updateAges();
  }, 5000);

  // --- actions -------------------------------------------------------------------------

  function submit(row, button, doing) {
    if (!button) return;
    if (doing) announce(doing + " " + titleOf(row) + "…", "info");
    button.form.requestSubmit(button);
  }

  function needRow() {
    const row = selected();
    if (!row) {
      announce("Select an item first: press J for the next one.", "info");
      return null;
    }
    const entry = held.get(row.id);
    if (entry) {
      announce(
        titleOf(row) + " is " + DECISIONS[entry.action].verb.toLowerCase() + ", sent in " +
          seconds(entry.until - Date.now()) + " s: press U to undo it, or J for the next item.",
        "info",
      );
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
    markRead(row);
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
    u: undoLatest,
    a: function () {
      const row = needRow();
      if (row) submit(row, row.querySelector(".action-approve button[type=submit]"), "");
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
        openField(
          row,
          "edit",
          "Editing " + titleOf(row) + ": Ctrl+Enter approves the edited output, Escape leaves the field.",
        );
    },
    r: function () {
      const row = needRow();
      if (row)
        openField(row, "reject", "Rejecting " + titleOf(row) + ": say what is wrong, Enter sends it, Escape leaves the field.");
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
        submit(row, field.form.querySelector("button[type=submit]"), "");
      } else if (event.key === "Escape") {
        event.preventDefault();
        const details = field.closest("details");
        if (details) details.open = false;
        select(row, true);
      }
      // Enter in the reject field submits its form (the browser's own), and is held.
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const action = !event.shiftKey && keys[event.key.toLowerCase()];
    if (!action) return;
    event.preventDefault();
    action();
  });

  // --- start -----------------------------------------------------------------------------

  // Rows not yet read are marked (kaizen.css) only where this script keeps count.
  document.body.classList.add("inbox-reads");
  markMine();
  updateCount();
  updateAges();
})();
