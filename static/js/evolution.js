/* The evolution review in the browser (the review, an experiment's, a
 * proposal's and a replay's pages): the experiments' charts, keeping up with
 * the websocket, and what a pushed update must not take away.
 *
 * The server owns the page: every action is an item's own form, posted with
 * htmx (hx-swap="none"); the answer carries the review's sections out of band
 * and the message for the live region. Pushes carry the same sections, or one
 * experiment's row. They are not swapped in whole: the page's elements are
 * brought in line with them, changing only what differs, so a note being
 * written survives them (see "swapping only what changed"). Markup comes only
 * from the server's partials (experiments/review.html); this file adds
 * behaviour and text, never HTML.
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
  if (!window.htmx || !window.KaizenSocket || window.kaizenEvolution) return;
  window.kaizenEvolution = true;

  function root() {
    return document.getElementById("evolution");
  }

  // --- charts --------------------------------------------------------------------

  // The data each chart was last drawn from (a swap changes the script's text).
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
      if (!script || drawnFrom.get(chart) === script.textContent) return;
      let figure;
      try {
        figure = JSON.parse(script.textContent);
      } catch (e) {
        return;
      }
      drawnFrom.set(chart, script.textContent);
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

  // --- swapping only what changed ------------------------------------------------
  //
  // Pushes (a look every few seconds in a demo) and action answers re-render
  // whole sections and rows. Replaced as they come, they would close the note
  // form a person is writing in, take its text and the focus, and make the page
  // jump. So an incoming section or row is not swapped in: the page's own
  // elements are brought in line with it, node by node (matched by id, else by
  // position), and only what differs changes. What a person is using stays as
  // it is: an open form keeps open, a typed note keeps its text, the focused
  // field keeps the focus and the caret. An element the new render no longer
  // has is removed, unless the person is using it: then it stays until they are
  // done.
  //
  // The one exception is the form this page has just submitted: its answer says
  // what became of it (closed, or open again with the error to fix).

  const submitted = new Set();
  // Elements the new render no longer has, kept while the person uses them.
  const kept = new Set();

  function typedIn(field) {
    return field.value !== field.defaultValue;
  }

  // The person is using this element: it holds the focus, an open action form,
  // or a note they typed.
  function submittedFrom(node) {
    const owner = node.closest("details[id]");
    return Boolean(owner && submitted.has(owner.id));
  }

  function inUse(element) {
    if (element.nodeType !== Node.ELEMENT_NODE) return false;
    const active = document.activeElement;
    if (active && active !== document.body && element.contains(active) && !submittedFrom(active)) return true;
    const forms = element.matches("details[open]") ? [element] : [];
    element.querySelectorAll("details[open]").forEach(function (details) {
      forms.push(details);
    });
    if (forms.some(function (details) { return !submitted.has(details.id); })) return true;
    return Array.prototype.some.call(element.querySelectorAll("textarea, input[type=text]"), function (field) {
      return typedIn(field) && !submittedFrom(field);
    });
  }

  function syncAttributes(from, to) {
    for (const attribute of Array.from(to.attributes)) {
      if (from.getAttribute(attribute.name) !== attribute.value) from.setAttribute(attribute.name, attribute.value);
    }
    for (const attribute of Array.from(from.attributes)) {
      if (to.hasAttribute(attribute.name)) continue;
      // An action form the person opened stays open (the server renders it closed).
      if (attribute.name === "open" && from.tagName === "DETAILS" && !submitted.has(from.id)) continue;
      from.removeAttribute(attribute.name);
    }
  }

  function syncField(from, to) {
    // A field the person typed in, or is in, keeps its text and caret.
    if (document.activeElement === from || typedIn(from)) return;
    if (from.tagName === "TEXTAREA") {
      if (from.defaultValue !== to.defaultValue) from.defaultValue = to.defaultValue;
      from.value = to.defaultValue;
    } else if (from.value !== to.value) {
      from.value = to.value;
    }
  }

  // Nodes without an id are matched to the next of their kind; a form's inputs
  // by name as well, so one input never turns into another.
  function sameKind(a, b) {
    if (a.nodeType !== b.nodeType || a.nodeName !== b.nodeName) return false;
    return a.nodeName !== "INPUT" || a.getAttribute("name") === b.getAttribute("name");
  }

  function morph(from, to) {
    if (from.nodeType !== Node.ELEMENT_NODE) {
      if (from.nodeValue !== to.nodeValue) from.nodeValue = to.nodeValue;
      return;
    }
    syncAttributes(from, to);
    // Plotly draws inside the chart: its data comes in the row's script.
    if (from.classList.contains("evo-chart")) return;
    if (from.tagName === "TEXTAREA" || from.tagName === "INPUT") {
      syncField(from, to);
      return;
    }
    if (from.tagName === "SCRIPT") {
      if (from.textContent !== to.textContent) from.textContent = to.textContent;
      return;
    }
    morphChildren(from, to);
  }

  function morphChildren(from, to) {
    const old = Array.from(from.childNodes);
    const byId = new Map();
    old.forEach(function (node) {
      if (node.nodeType === Node.ELEMENT_NODE && node.id) byId.set(node.id, node);
    });
    // Match each incoming node to one of the page's: by id, else the next of
    // its kind without an id.
    const used = new Set();
    let next = 0;
    const placed = Array.from(to.childNodes).map(function (incoming) {
      let match = null;
      if (incoming.nodeType === Node.ELEMENT_NODE && incoming.id) {
        match = byId.get(incoming.id) || null;
        if (match && (used.has(match) || !sameKind(match, incoming))) match = null;
      } else {
        for (let i = next; i < old.length; i++) {
          const candidate = old[i];
          if (used.has(candidate) || (candidate.nodeType === Node.ELEMENT_NODE && candidate.id)) continue;
          if (sameKind(candidate, incoming)) {
            match = candidate;
            next = i + 1;
            break;
          }
        }
      }
      if (!match) return document.importNode(incoming, true);
      used.add(match);
      kept.delete(match);
      morph(match, incoming);
      return match;
    });
    // What the new render no longer has goes first, so the rest need not move
    // (moving an element takes the focus out of it).
    old.forEach(function (node) {
      if (used.has(node)) return;
      // Pushes are rendered without a request, so without the CSRF token the
      // page put in its plain forms: keep it.
      if (node.nodeType === Node.ELEMENT_NODE && node.matches("input[name=csrfmiddlewaretoken]")) return;
      if (inUse(node)) {
        kept.add(node);
        return;
      }
      node.remove();
    });
    // In order, moving only what is out of place; a node kept above (a CSRF
    // token, a form in use) stays where it is, and the rest go around it.
    const placedSet = new Set(placed);
    let here = from.firstChild;
    placed.forEach(function (node) {
      while (here && here !== node && !placedSet.has(here)) here = here.nextSibling;
      if (node === here) {
        here = here.nextSibling;
      } else {
        from.insertBefore(node, here);
      }
    });
  }

  document.addEventListener("htmx:oobBeforeSwap", function (event) {
    if (!root()) return;
    const target = event.detail.target;
    const fragment = event.detail.fragment;
    const incoming = fragment && fragment.firstElementChild;
    // Whole elements replaced by id (sections, rows); the status line's
    // innerHTML swap goes as htmx does it.
    if (!incoming || fragment.childElementCount !== 1 || incoming.id !== target.id) return;
    event.detail.shouldSwap = false;
    morph(target, incoming);
    htmx.process(target);
    afterSwap();
  });

  // Kept for the person until they were done with it: gone now.
  function dropKept() {
    setTimeout(function () {
      kept.forEach(function (node) {
        if (node.isConnected && inUse(node)) return;
        node.remove();
        kept.delete(node);
      });
    }, 0);
  }

  document.addEventListener("focusout", dropKept);
  document.addEventListener("toggle", dropKept, true);

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

  // --- the CSRF token of plain forms ---------------------------------------------------
  //
  // Pushes are rendered without a request, so their forms carry no CSRF token.
  // The morph keeps the token of a form the page drew, but a form a push brings
  // (a gate's override form once it fails, a Promote form once the experiment
  // may be promoted) has none: it is given the page's (the body's hx-headers,
  // which htmx's posts send) as it is submitted.

  function csrfToken() {
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"] || "";
    } catch (e) {
      return "";
    }
  }

  document.addEventListener(
    "submit",
    function (event) {
      const form = event.target;
      if (!root() || !(form instanceof HTMLFormElement) || form.method.toLowerCase() !== "post") return;
      if (form.querySelector("input[name=csrfmiddlewaretoken]")) return;
      const token = csrfToken();
      if (!token) return;
      const input = document.createElement("input");
      input.type = "hidden";
      input.name = "csrfmiddlewaretoken";
      input.value = token;
      form.appendChild(input);
    },
    true,
  );

  // --- an answer whose form a push took away ------------------------------------------
  //
  // A push may redraw a section (the proposals list, when another approver's
  // action or the approval itself moved the proposal on) while one of its forms
  // is being answered. htmx then looks for the answer's out-of-band parts (the
  // message, the sections) inside the detached form, finds none, and the answer
  // is lost. They are swapped into the page instead.

  document.addEventListener("htmx:beforeRequest", function (event) {
    const elt = event.detail.elt;
    const xhr = event.detail.xhr;
    if (!root() || !xhr || !(elt instanceof HTMLFormElement)) return;
    xhr.addEventListener("loadend", function () {
      if (document.body.contains(elt) || !xhr.responseText) return;
      if (xhr.status < 200 || xhr.status >= 500) return;
      htmx.swap(document.body, xhr.responseText, { swapStyle: "none" });
    });
  });

  // --- catching up ----------------------------------------------------------------------
  //
  // The status badge, the catch-up after every (re)connect and leaving a page
  // whose session has ended: static/js/live-socket.js.

  const socket = KaizenSocket.follow({
    root: root,
    url: function () {
      return root().dataset.liveUrl;
    },
    // Whatever changed between rendering the page (or losing the socket) and now
    // was not pushed to us: re-read the live sections (all out of band).
    catchUp: function () {
      const page = root();
      if (!page) return Promise.resolve();
      return htmx
        .ajax("GET", page.dataset.liveUrl, { source: page, target: page, swap: "none" })
        .finally(scheduleDraw);
    },
    refused: function () {
      socket.setStatus("down", "No permission");
      announce("You no longer have the approve-change permission, so the page stopped updating: reload it.", "error");
    },
  });

  // A pushed row whose item is not on the page (an experiment that started
  // after the page was drawn, say): the sections are re-read, with it in them.
  document.addEventListener("htmx:oobErrorNoTarget", function () {
    if (root() && !socket.catchingUp()) socket.catchUp();
  });

  // --- start ---------------------------------------------------------------------------

  // plotly.js is deferred before this file, so it is there by now.
  drawCharts();
})();
