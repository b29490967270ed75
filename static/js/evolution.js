/* The evolution review in the browser: the experiments' charts, keeping up with
 * the websocket, and what a pushed update must not take away.
 *
 * The server owns the page: every action is an item's own form, posted with
 * htmx (hx-swap="none"); the answer replaces the review's sections out of band
 * and carries the message for the live region. Pushes replace the same
 * sections, or one experiment's row. Markup comes only from the server's
 * partials (experiments/review.html); this file adds behaviour and text, never
 * HTML.
 *
 * Charts: each experiment's row carries its figure as JSON in
 * <script type="application/json" id="chart-data-<pk>">, built server-side with
 * plotly (experiments/charts.py); its chart is the element whose data-chart
 * names that script. When a swap brings a new script, the chart is redrawn in
 * place with Plotly.react (the reader's zoom survives: uirevision).
 */
(function () {
  "use strict";

  // Loaded once per page, even if a swap brings the script tag again.
  if (!window.htmx || window.kaizenEvolution) return;
  window.kaizenEvolution = true;

  function root() {
    return document.getElementById("evolution");
  }

  // --- charts --------------------------------------------------------------------

  // The data script each chart was last drawn from: a swap brings a new node.
  const drawnFrom = new WeakMap();
  let drawScheduled = false;

  // Plotly draws into a child of the chart element, made here: htmx's settle step
  // puts a swapped element's own attributes back (its class among them), which
  // took away the class Plotly's layout depends on when it drew into the element
  // itself. A child without an id is left alone.
  function plotOf(chart) {
    let plot = chart.querySelector(":scope > .evo-plot");
    if (!plot) {
      plot = document.createElement("div");
      plot.className = "evo-plot";
      chart.appendChild(plot);
    }
    return plot;
  }

  function drawCharts() {
    drawScheduled = false;
    if (!window.Plotly) return;
    document.querySelectorAll(".evo-chart[data-chart]").forEach(function (chart) {
      const script = document.getElementById(chart.dataset.chart);
      if (!script || drawnFrom.get(chart) === script) return;
      let figure;
      try {
        figure = JSON.parse(script.textContent);
      } catch (e) {
        return;
      }
      drawnFrom.set(chart, script);
      window.Plotly.react(plotOf(chart), figure.data, figure.layout, { responsive: true, displaylogo: false });
    });
  }

  function scheduleDraw() {
    if (drawScheduled) return;
    drawScheduled = true;
    window.requestAnimationFrame(drawCharts);
  }

  // The count of proposals waiting, in the page title, as the list changes.
  function updateTitle() {
    const count = document.getElementById("pending-count");
    if (!count) return;
    const n = Number(count.textContent) || 0;
    document.title = (n ? "(" + n + ") " : "") + "Evolution review · Kaizen";
  }

  function afterSwap() {
    scheduleDraw();
    updateTitle();
  }

  // New chart data arrives in oob swaps (pushes, action answers, the catch-up).
  document.addEventListener("htmx:oobAfterSwap", afterSwap);
  document.addEventListener("htmx:afterSwap", afterSwap);
  document.addEventListener("htmx:wsAfterMessage", afterSwap);

  // --- the live region -----------------------------------------------------------

  function announce(text, level) {
    const region = document.getElementById("review-status");
    if (!region) return;
    const p = document.createElement("p");
    p.className = "flash flash--" + (level || "info");
    p.textContent = text;
    region.replaceChildren(p);
  }

  // Refusals (409) and a missing note (422) come back as sections and messages
  // to show; any other failure (a lost session, a lost permission) needs a reload.
  document.addEventListener("htmx:responseError", function (event) {
    if (!root()) return;
    const status = event.detail.xhr.status;
    const hint =
      status === 403
        ? "you may no longer have the approve-change permission, or your session ended: reload the page."
        : "reload the page.";
    announce("That did not work (HTTP " + status + "): " + hint, "error");
  });

  document.addEventListener("htmx:sendError", function () {
    if (!root()) return;
    announce("The server could not be reached; nothing was done. Try again in a moment.", "error");
  });

  // --- what a swap must not take away -----------------------------------------------
  //
  // A pushed update (a look, every few minutes) re-renders an experiment's row,
  // and with it the note the reader is typing into its rollback form. Open
  // forms, typed notes and the caret are carried over to the new render, by id.
  // Not for the form this page just submitted: its answer says what became of it.

  const submitted = new Set();
  let kept = null;

  function capture(target) {
    if (!target || !target.querySelectorAll) return;
    kept = kept || { open: new Set(), values: {}, focus: null };
    target.querySelectorAll("details[open][id]").forEach(function (details) {
      if (!submitted.has(details.id)) kept.open.add(details.id);
    });
    target.querySelectorAll("textarea[id]").forEach(function (field) {
      const owner = field.closest("details[id]");
      if (owner && submitted.has(owner.id)) return;
      if (field.value !== field.defaultValue) kept.values[field.id] = field.value;
    });
    const active = document.activeElement;
    if (active && active.id && target.contains(active)) {
      kept.focus = { id: active.id, start: active.selectionStart, end: active.selectionEnd };
    }
    // Restored once every swap of this answer or message is done.
    setTimeout(restore, 0);
  }

  function restore() {
    const state = kept;
    kept = null;
    if (!state) return;
    state.open.forEach(function (id) {
      const details = document.getElementById(id);
      if (details) details.open = true;
    });
    Object.keys(state.values).forEach(function (id) {
      const field = document.getElementById(id);
      if (field && field.value === field.defaultValue) field.value = state.values[id];
    });
    const active = document.activeElement;
    if (state.focus && (!active || active === document.body)) {
      const field = document.getElementById(state.focus.id);
      if (field) {
        field.focus({ preventScroll: true });
        if (state.focus.start != null && field.setSelectionRange) {
          try {
            field.setSelectionRange(state.focus.start, state.focus.end);
          } catch (e) {
            // not a text field after all
          }
        }
      }
    }
  }

  document.addEventListener("htmx:oobBeforeSwap", function (event) {
    if (root()) capture(event.detail.target);
  });

  document.addEventListener("htmx:beforeRequest", function (event) {
    const form = event.detail.elt;
    const details = form && form.tagName === "FORM" ? form.closest("details[id]") : null;
    if (details) submitted.add(details.id);
  });

  // An answer that shows an error in its item focuses the note to write.
  document.addEventListener("htmx:afterRequest", function (event) {
    const form = event.detail.elt;
    const details = form && form.tagName === "FORM" ? form.closest("details[id]") : null;
    if (!details) return;
    submitted.delete(details.id);
    setTimeout(function () {
      const again = document.getElementById(details.id);
      const invalid = again && again.querySelector("[aria-invalid='true']");
      if (invalid) invalid.focus();
    }, 0);
  });

  // --- live status and catching up ----------------------------------------------------

  let catchingUp = false;
  let missed = false;

  function setLive(state, text) {
    const live = document.getElementById("live-status");
    if (!live) return;
    live.className = "live live--" + state;
    live.querySelector(".live-text").textContent = text;
  }

  // Whatever changed between rendering the page (or losing the socket) and now
  // was not pushed to us: re-read the live sections (all out of band).
  function catchUp() {
    const page = root();
    if (!page) return Promise.resolve();
    catchingUp = true;
    return htmx
      .ajax("GET", page.dataset.liveUrl, { source: page, target: page, swap: "none" })
      .catch(function () {})
      .finally(function () {
        catchingUp = false;
        scheduleDraw();
        if (missed) {
          missed = false;
          return catchUp();
        }
      });
  }

  document.addEventListener("htmx:wsBeforeMessage", function (event) {
    if (catchingUp) {
      // The re-fetch under way may be older than this message: hold it back and
      // re-fetch once more afterwards.
      event.preventDefault();
      missed = true;
    }
  });

  // A pushed row whose item is not on the page (an experiment that started
  // after the page was drawn, say): the sections are re-read, with it in them.
  document.addEventListener("htmx:oobErrorNoTarget", function () {
    if (root() && !catchingUp) catchUp();
  });

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

  // A socket whose session has ended (or whose user lost the permission) is
  // refused at every reconnect, and the ws extension would retry forever. Ask
  // the server the way htmx does: without a session it answers with HX-Redirect
  // to the login page, and the browser goes there; without the permission, 403.
  let checkingSession = false;

  function leaveIfLoggedOut() {
    const page = root();
    if (checkingSession || !page) return;
    checkingSession = true;
    fetch(page.dataset.liveUrl, {
      headers: { "HX-Request": "true", "HX-Current-URL": window.location.href },
      credentials: "same-origin",
      redirect: "manual",
    })
      .then(function (response) {
        const login = response.headers.get("HX-Redirect");
        if (login) window.location.assign(login);
        else if (response.type === "opaqueredirect") window.location.reload();
        else if (response.status === 403) {
          setLive("down", "No permission");
          announce("You no longer have the approve-change permission, so the page stopped updating: reload it.", "error");
        }
      })
      .catch(function () {})
      .finally(function () {
        checkingSession = false;
      });
  }

  // --- start ---------------------------------------------------------------------------

  // plotly.js is deferred before this file, so it is there by now.
  drawCharts();
})();
