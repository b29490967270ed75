/* A page of Plotly charts that follows its board: the Flow page and the Muda page.
 *
 * The page's root has data-chart-page and says, in data attributes, what to
 * re-read: data-refresh-url (the page itself, with its filters), data-body (the
 * id of the live part the server renders), data-swap (how htmx puts it back),
 * data-refresh-ms (at most one re-read this often; 3000 by default).
 *
 * Charts: each element with data-chart names a <script type="application/json">
 * holding its Plotly figure, built server-side (boards/flow_charts.py,
 * andon/muda_charts.py); it is drawn into a child made here with Plotly.react
 * (the reader's zoom survives a redraw: uirevision), and drawn again only when
 * a re-read brings other data. The chart says data-drawn="true" once drawn.
 *
 * Live: when the root has ws-connect, the page follows the board's websocket
 * (live-socket.js, the one transport). The board's pushes are HTML for the board
 * page, not for this one: they are not swapped here. Each says the board changed,
 * and the page re-reads its body at most once every data-refresh-ms: charts need
 * not redraw more often, and a busy line pushes many times a second. Forms sit
 * outside the body, so what a person types in them is never replaced. The root's
 * data-refreshed counts the re-reads (the browser tests wait on it).
 */
(function () {
  "use strict";

  if (window.kaizenChartPage) return;
  window.kaizenChartPage = true;

  function root() {
    return document.querySelector("[data-chart-page]");
  }

  const drawnFrom = new WeakMap();

  function plotOf(chart) {
    // A child made here: htmx's settle step restores a swapped element's own
    // attributes, which would take away the classes Plotly sets on it.
    let plot = chart.querySelector(":scope > .chart-plot");
    if (!plot) {
      plot = document.createElement("div");
      plot.className = "chart-plot";
      chart.appendChild(plot);
    }
    return plot;
  }

  function drawCharts() {
    const page = root();
    if (!window.Plotly || !page) return;
    page.querySelectorAll("[data-chart]").forEach(function (chart) {
      const script = document.getElementById(chart.dataset.chart);
      if (!script || drawnFrom.get(chart) === script.textContent) return;
      let figure;
      try {
        figure = JSON.parse(script.textContent);
      } catch (e) {
        return;
      }
      drawnFrom.set(chart, script.textContent);
      window.Plotly.react(plotOf(chart), figure.data, figure.layout, {
        responsive: true,
        displaylogo: false,
      }).then(function () {
        chart.dataset.drawn = "true";
      });
    });
  }

  // --- live -------------------------------------------------------------------------

  let lastRefresh = 0;
  let timer = null;
  let inFlight = null;
  let socket = null;

  function interval() {
    const page = root();
    return (page && Number(page.dataset.refreshMs)) || 3000;
  }

  function refresh() {
    const page = root();
    if (!page || !window.htmx) return Promise.resolve();
    if (inFlight) return inFlight;
    lastRefresh = Date.now();
    inFlight = window.htmx
      .ajax("GET", page.dataset.refreshUrl, {
        source: page,
        target: "#" + page.dataset.body,
        swap: page.dataset.swap || "innerHTML",
      })
      .finally(function () {
        inFlight = null;
        drawCharts();
        const now = root();
        if (now) now.dataset.refreshed = String((Number(now.dataset.refreshed) || 0) + 1);
      });
    return inFlight;
  }

  function scheduleRefresh() {
    if (timer !== null) return;
    const wait = Math.max(0, lastRefresh + interval() - Date.now());
    timer = window.setTimeout(function () {
      timer = null;
      refresh();
    }, wait);
  }

  document.addEventListener("htmx:wsBeforeMessage", function (event) {
    if (!root()) return;
    // The board's fragments have no place on this page: the change is read from the server.
    event.preventDefault();
    if (socket && socket.catchingUp && socket.catchingUp()) return;
    scheduleRefresh();
  });

  document.addEventListener("htmx:afterSettle", drawCharts);

  function start() {
    drawCharts();
    const page = root();
    if (page && page.hasAttribute("ws-connect") && window.KaizenSocket) {
      socket = window.KaizenSocket.follow({
        root: root,
        url: function () {
          return root() ? root().dataset.refreshUrl : window.location.href;
        },
        catchUp: refresh,
      });
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
  // plotly.min.js is large and deferred before this file: draw once it is there.
  window.addEventListener("load", drawCharts);
})();
