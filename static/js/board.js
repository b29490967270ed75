/* The live board in the browser: drag and drop (SortableJS), keyboard moves,
 * relative ages, and keeping up with the websocket.
 *
 * The server owns the board: every move is a POST whose answer re-renders the
 * columns it touched (out of band), so a refused drop puts the card back where
 * the server has it. Markup comes only from the server's partials; this file
 * adds behaviour, never HTML of its own beyond text.
 */
(function () {
  "use strict";

  const board = document.getElementById("board");
  if (!board || !window.htmx || !window.KaizenSocket) return;

  const body = document.getElementById("board-body");
  const statusRegion = document.getElementById("board-status");
  const dialog = document.getElementById("block-dialog");
  const blockNote = document.getElementById("block-note");
  const csrfToken = JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRFToken"];

  // --- talking to the server -----------------------------------------------------

  let chain = Promise.resolve();
  let inFlight = 0;

  // Card actions run one after another, so quick key presses apply in order
  // (htmx would otherwise drop all but the last request queued on an element).
  // A card's actions are its task page's URL and a word (boards/urls.py): the
  // card carries the URL once (data-url), not once an action, as every live
  // update sends every card of the columns it carries.
  function actionUrl(card, word) {
    return card.dataset.url + word + "/";
  }

  function post(url, values) {
    inFlight += 1;
    const run = function () {
      return htmx.ajax("POST", url, {
        source: board,
        target: statusRegion,
        swap: "innerHTML",
        values: values,
        headers: { "X-CSRFToken": csrfToken },
      });
    };
    chain = chain
      .then(run, run)
      .catch(function () {
        announce("The server could not be reached; the board will catch up when it is back.", "error");
      })
      .finally(function () {
        inFlight -= 1;
        catchUpIfMissed();
      });
    return chain;
  }

  // Re-read the whole live part of the board: after a reconnect, and after
  // live updates were held back during a drag.
  function refetchBody() {
    return htmx.ajax("GET", board.dataset.bodyUrl, { source: body, target: body, swap: "innerHTML" });
  }

  function announce(text, level) {
    const p = document.createElement("p");
    p.className = "flash flash--" + (level || "info");
    p.textContent = text;
    statusRegion.replaceChildren(p);
  }

  // Refusals (409) and bad input (400, 422) come back as messages to show; any
  // other failure (a lost session, an expired CSRF token) needs a reload.
  document.body.addEventListener("htmx:responseError", function (event) {
    const status = event.detail.xhr.status;
    const hint = status === 403 ? "your session may have ended: reload the page." : "reload the page.";
    announce("That did not work (HTTP " + status + "): " + hint, "error");
  });

  // --- live updates ----------------------------------------------------------------

  let dragging = false;
  let missed = false;

  // A swap in the middle of a drag would pull the list out from under Sortable:
  // hold live updates back while a card is in the air or its move is in flight,
  // and catch up with one re-fetch afterwards.
  board.addEventListener("htmx:wsBeforeMessage", function (event) {
    if (dragging || inFlight > 0) {
      event.preventDefault();
      missed = true;
    }
  });

  function catchUpIfMissed() {
    if (missed && !dragging && inFlight === 0) {
      missed = false;
      refetchBody();
    }
  }

  // The status badge, the catch-up after every (re)connect and leaving a page
  // whose session has ended: static/js/live-socket.js. The catch-up is not
  // waited for: the board says "Live" at once, and pushes go on being swapped
  // in while the body is re-read (a drag holds them back on its own, above).
  KaizenSocket.follow({
    root: function () {
      return board;
    },
    url: function () {
      return board.dataset.bodyUrl;
    },
    catchUp: function () {
      refetchBody();
    },
  });

  // Swapping a column replaces the focused card's element; live.js puts the
  // focus back on the card (by its stable id), wherever it now is, skips
  // fragments that did not change, and holds back a swap where someone types.

  // --- the flow status, said aloud when the line stalls or flows again ----------------

  const flowAnnounce = document.getElementById("flow-announce");
  let flowState = null;

  function noteFlow(section) {
    const state = section.dataset.state;
    if (flowState !== null && state !== flowState) {
      if (state === "stalled") flowAnnounce.textContent = section.dataset.headline;
      else if (flowState === "stalled") flowAnnounce.textContent = "Agents are pulling again.";
    }
    flowState = state;
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
    const now = Date.now();
    root.querySelectorAll("time[data-age]").forEach(function (time) {
      const then = Date.parse(time.dateTime);
      if (isNaN(then)) return;
      time.textContent = formatAge(now - then) + (time.hasAttribute("data-ago") ? " ago" : "");
      // A card in flight turns amber past the 70th percentile of the board's
      // cycle times and red past the 85th (the SLE) as it ages between pushes.
      const age = time.closest("[data-sle-p85]");
      if (!age) return;
      const seconds = (now - then) / 1000;
      const level =
        seconds > Number(age.dataset.sleP85) ? "red" : seconds > Number(age.dataset.sleP70) ? "amber" : "ok";
      if (!age.classList.contains("card-age--" + level)) {
        age.classList.remove("card-age--ok", "card-age--amber", "card-age--red");
        age.classList.add("card-age--" + level);
        const flag = age.querySelector("[data-flag]");
        if (flag) flag.textContent = level === "red" ? " past SLE" : level === "amber" ? " past 70th" : "";
      }
    });
  }

  setInterval(function () {
    updateAges(board);
  }, 5000);

  // --- drag and drop -----------------------------------------------------------------

  function cardAfter(item) {
    let next = item.nextElementSibling;
    while (next && !next.classList.contains("card")) next = next.nextElementSibling;
    return next;
  }

  function onDrop(event) {
    dragging = false;
    board.classList.remove("is-dragging");
    const item = event.item;
    const to = event.to;
    if (to === event.from && event.oldIndex === event.newIndex) {
      catchUpIfMissed();
      return;
    }
    const values = { column: to.dataset.columnId };
    // Only Ready is ordered by hand (the queue agents pull from); the other
    // columns keep their own order, so there the drop position means nothing.
    if (to.dataset.role === "ready") {
      const next = cardAfter(item);
      if (next) values.before = next.dataset.taskId;
    }
    const id = item.id;
    post(actionUrl(item, "move"), values).then(function () {
      const card = document.getElementById(id);
      if (card) card.focus({ preventScroll: true });
    });
  }

  function initSortable(list) {
    if (!window.Sortable || Sortable.get(list)) return;
    Sortable.create(list, {
      group: "board",
      draggable: ".card",
      filter: ".card-action",
      preventOnFilter: false,
      sort: list.dataset.role === "ready",
      animation: 150,
      // Mouse events rather than native HTML5 drag: the same look in every
      // browser, and scriptable by the browser tests.
      forceFallback: true,
      fallbackTolerance: 4,
      delay: 150,
      delayOnTouchOnly: true,
      ghostClass: "card--ghost",
      chosenClass: "card--chosen",
      dragClass: "card--drag",
      onStart: function () {
        dragging = true;
        board.classList.add("is-dragging");
      },
      onEnd: onDrop,
    });
  }

  // Runs for the page and for every swapped-in fragment (columns pushed by the
  // websocket, the re-fetched body): new lists need Sortable, new times an age.
  htmx.onLoad(function (element) {
    if (!(element instanceof Element)) return;
    if (element.matches(".cards")) initSortable(element);
    element.querySelectorAll(".cards").forEach(initSortable);
    updateAges(element);
    const flow = element.id === "flow-status" ? element : element.querySelector("#flow-status");
    if (flow) noteFlow(flow);
    const agents = element.id === "board-agents" ? element : element.querySelector("#board-agents");
    if (agents) syncAgentsToggle();
  });

  // --- what folds: the task form, the keyboard help, the agent strip -------------------

  const narrow = window.matchMedia("(max-width: 700px)");

  function stored(key) {
    try {
      return window.localStorage.getItem("kaizen." + key);
    } catch (error) {
      return null;
    }
  }

  function store(key, value) {
    try {
      window.localStorage.setItem("kaizen." + key, value);
    } catch (error) {
      // Private browsing: the choice lasts for this page only.
    }
  }

  // The task form and the keyboard help fold behind buttons in the header:
  // the form open on a wide screen and folded on a phone, unless the person
  // chose before (remembered); the help folded until asked for.
  function setFold(toggle, open) {
    const panel = document.getElementById(toggle.getAttribute("aria-controls"));
    panel.hidden = !open;
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
  }

  document.querySelectorAll(".fold-toggle").forEach(function (toggle) {
    const key = toggle.dataset.remember;
    const choice = key ? stored(key) : null;
    setFold(toggle, key ? (choice === null ? !narrow.matches : choice === "open") : false);
    toggle.hidden = false;
    toggle.addEventListener("click", function () {
      const open = toggle.getAttribute("aria-expanded") !== "true";
      setFold(toggle, open);
      if (key) store(key, open ? "open" : "closed");
      if (open && toggle.id === "task-form-toggle") document.getElementById("id_title").focus();
    });
  });

  // The agent strip is pushed, so its unfolded state lives on the board itself.
  function syncAgentsToggle() {
    const open = board.classList.contains("agents-open");
    const toggle = document.querySelector("#board-agents .agents-toggle");
    if (!toggle) return;
    toggle.setAttribute("aria-expanded", open ? "true" : "false");
    toggle.textContent = open ? "Hide agents" : "Show agents";
  }

  board.classList.toggle("agents-open", stored("agents") === "open");
  syncAgentsToggle();
  board.addEventListener("click", function (event) {
    const toggle = event.target.closest && event.target.closest(".agents-toggle");
    if (!toggle) return;
    board.classList.toggle("agents-open");
    store("agents", board.classList.contains("agents-open") ? "open" : "closed");
    syncAgentsToggle();
  });

  const keyboardToggle = document.getElementById("keyboard-toggle");

  function typing(element) {
    return element && element.closest && element.closest("input, textarea, select, [contenteditable]");
  }

  document.addEventListener("keydown", function (event) {
    if (event.key === "?" && !event.ctrlKey && !event.metaKey && !event.altKey && !typing(event.target)) {
      event.preventDefault();
      keyboardToggle.click();
    } else if (event.key === "Escape") {
      // Escape folds an open cord, back to its button.
      const open = event.target.closest && event.target.closest("details.cord[open]");
      if (open) {
        open.open = false;
        open.querySelector("summary").focus();
      }
    }
  });

  // --- the andon cord (reviewers only) ----------------------------------------------

  const cord = document.getElementById("cord");
  if (cord) {
    const cordForm = document.getElementById("cord-form");
    cord.addEventListener("toggle", function () {
      if (cord.open) document.getElementById("cord-reason").focus();
    });
    cordForm.addEventListener("htmx:afterRequest", function (event) {
      // Stopped: fold the cord (the banner arrives through the websocket).
      // Refused: keep it open, with what was typed, beside the message.
      // (A refusal is 422, which htmx treats as a success to swap its message.)
      if (event.detail.xhr && event.detail.xhr.status === 200) {
        cordForm.reset();
        cord.open = false;
        cord.querySelector("summary").focus();
      }
    });
  }

  // --- keyboard ------------------------------------------------------------------------

  function columnOf(card) {
    return card.closest(".column");
  }

  function cardsIn(column) {
    return Array.from(column.querySelectorAll(".card"));
  }

  function focusCard(card) {
    if (card) {
      card.focus();
      card.scrollIntoView({ block: "nearest", inline: "nearest" });
    }
  }

  function neighbourColumnCard(card, step) {
    const columns = Array.from(board.querySelectorAll(".column"));
    const here = columnOf(card);
    const index = cardsIn(here).indexOf(card);
    for (let i = columns.indexOf(here) + step; i >= 0 && i < columns.length; i += step) {
      const cards = cardsIn(columns[i]);
      if (cards.length) return cards[Math.min(index, cards.length - 1)];
    }
    return null;
  }

  function stepCard(card, direction) {
    const id = card.id;
    post(actionUrl(card, "step"), { direction: direction }).then(function () {
      focusCard(document.getElementById(id));
    });
  }

  function unblock(card) {
    if (!card.hasAttribute("data-blocked")) {
      announce("“" + card.dataset.title + "” is not blocked.", "info");
      return;
    }
    const id = card.id;
    post(actionUrl(card, "unblock"), {}).then(function () {
      focusCard(document.getElementById(id));
    });
  }

  let blockCardId = null;

  function openBlockDialog(card) {
    if (card.hasAttribute("data-blocked")) {
      announce("“" + card.dataset.title + "” is already blocked: press U to unblock it.", "info");
      return;
    }
    if (!card.hasAttribute("data-blockable")) {
      announce("A task that is " + card.dataset.status + " cannot be blocked.", "info");
      return;
    }
    blockCardId = card.id;
    dialog.querySelector("[data-block-title]").textContent = "“" + card.dataset.title + "”";
    dialog.returnValue = "";
    blockNote.value = "";
    dialog.showModal();
    blockNote.focus();
  }

  dialog.addEventListener("close", function () {
    const card = blockCardId && document.getElementById(blockCardId);
    const id = blockCardId;
    blockCardId = null;
    if (!card) return;
    if (dialog.returnValue === "block") {
      post(actionUrl(card, "block"), { note: blockNote.value }).then(function () {
        focusCard(document.getElementById(id));
      });
    } else {
      focusCard(card);
    }
  });

  board.addEventListener("keydown", function (event) {
    const card = event.target.closest && event.target.closest(".card");
    if (!card || !board.contains(card) || event.ctrlKey || event.metaKey) return;
    const onCard = event.target === card;
    const key = event.key;

    if (event.altKey) {
      const direction = { ArrowUp: "up", ArrowDown: "down", ArrowLeft: "left", ArrowRight: "right" }[key];
      if (!direction) return;
      // Also keeps Alt+←/→ from going back and forward in history.
      event.preventDefault();
      if ((direction === "up" || direction === "down") && columnOf(card).dataset.role !== "ready") {
        announce(
          "Only the Ready queue is ordered by hand; " + columnOf(card).dataset.name + " keeps its own order.",
          "info",
        );
        return;
      }
      stepCard(card, direction);
      return;
    }
    if (event.shiftKey) return;

    if (key === "ArrowUp" || key === "ArrowDown") {
      event.preventDefault();
      const cards = cardsIn(columnOf(card));
      focusCard(cards[cards.indexOf(card) + (key === "ArrowUp" ? -1 : 1)]);
    } else if (key === "ArrowLeft" || key === "ArrowRight") {
      event.preventDefault();
      focusCard(neighbourColumnCard(card, key === "ArrowLeft" ? -1 : 1));
    } else if (onCard && (key === "b" || key === "B")) {
      event.preventDefault();
      openBlockDialog(card);
    } else if (onCard && (key === "u" || key === "U")) {
      event.preventDefault();
      unblock(card);
    } else if (onCard && key === "Enter") {
      event.preventDefault();
      card.querySelector(".card-title").click();
    }
  });

  // The card's Block…/Unblock links lead to the task page without JavaScript;
  // here they act in place.
  board.addEventListener("click", function (event) {
    const action = event.target.closest && event.target.closest(".card-action[data-action]");
    if (!action) return;
    const card = action.closest(".card");
    event.preventDefault();
    if (action.dataset.action === "block") openBlockDialog(card);
    else unblock(card);
  });
})();
