/* The Flow page in the browser: its charts, and keeping them up with the board.
 *
 * Each chart's figure is built server-side with plotly (boards/flow_charts.py)
 * and sent as JSON in <script type="application/json" id="flow-data-<name>">;
 * the element whose data-chart names that script is drawn with Plotly.react
 * (the reader's zoom survives a redraw: uirevision).
 *
 * Live: the page follows the board's websocket (the one transport, through
 * live-socket.js). The board's pushes are HTML for the board page, not for this
 * one: they are not swapped here. Each says the board changed, and the page
 * re-reads #flow-body (boards.views_flow, the flow-body partial) at most once
 * every REFRESH_MS: charts need not redraw more often, and a busy line pushes
 * many times a second. The filter form sits outside #flow-body, so what a person
 * types in it is never replaced.
 */
(function () {
  "use strict";

  if (!window.htmx || !window.KaizenSocket || window.kaizenFlow) return;
  window.kaizenFlow = true;

  const REFRESH_MS = 3000;

  function root() {
    return document.getElementById("flow");
  }

  const drawnFrom = new WeakMap();

  function plotOf(chart) {
    // A child made here: htmx's settle step restores a swapped element's own
    // attributes, which would take away the classes Plotly sets on it.
    let plot = chart.querySelector(":scope > .flow-plot");
    if (!plot) {
      plot = document.createElement("div");
      plot.className = "flow-plot";
      chart.appendChild(plot);
    }
    return plot;
  }

  function drawCharts() {
    if (!window.Plotly) return;
    document.querySelectorAll(".flow-chart[data-chart]").forEach(function (chart) {
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
      chart.dataset.drawn = "true";
    });
  }

  // --- live -------------------------------------------------------------------------

  let lastRefresh = 0;
  let timer = null;
  let inFlight = null;

  function refresh() {
    const page = root();
    if (!page) return Promise.resolve();
    if (inFlight) return inFlight;
    lastRefresh = Date.now();
    inFlight = htmx
      .ajax("GET", page.dataset.liveUrl, { source: page, target: "#flow-body", swap: "innerHTML" })
      .finally(function () {
        inFlight = null;
        drawCharts();
        page.dataset.refreshed = String((Number(page.dataset.refreshed) || 0) + 1);
      });
    return inFlight;
  }

  function scheduleRefresh() {
    if (timer) return;
    const wait = Math.max(0, lastRefresh + REFRESH_MS - Date.now());
    timer = window.setTimeout(function () {
      timer = null;
      refresh();
    }, wait);
  }

  KaizenSocket.follow({
    root: root,
    url: function () {
      return root().dataset.liveUrl;
    },
    catchUp: refresh,
  });

  document.addEventListener("htmx:wsBeforeMessage", function (event) {
    if (!root()) return;
    // The board's fragments have no place on this page: the change is read from the server.
    event.preventDefault();
    scheduleRefresh();
  });

  document.addEventListener("htmx:afterSettle", drawCharts);
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawCharts);
  } else {
    drawCharts();
  }
  // plotly.min.js is large and deferred before this file: draw once it is there.
  window.addEventListener("load", drawCharts);
})();
