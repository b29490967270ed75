/* A board's Muda page in the browser: draw each waste's trend chart, and keep
 * the page current while its window runs to now.
 *
 * Charts: each chart element names (data-chart) a <script type="application/json">
 * holding its Plotly figure, built server-side (andon/muda_charts.py); it is
 * drawn with Plotly.react, and drawn again when a refresh brings new data.
 *
 * Live: the page follows the board's websocket (the messages the board itself
 * gets). It does not swap them in: a message only says the board changed, and
 * the page re-fetches its body (#muda-body, rendered by the server) at most
 * once every data-refresh-ms. Markup comes only from the server.
 */
(function () {
  "use strict";

  if (window.kaizenMuda) return;
  window.kaizenMuda = true;

  function root() {
    return document.getElementById("muda");
  }

  const drawnFrom = new WeakMap();

  function plotOf(chart) {
    // A child without an id, so htmx's settle step leaves Plotly's classes alone.
    let plot = chart.querySelector(":scope > .muda-plot");
    if (!plot) {
      plot = document.createElement("div");
      plot.className = "muda-plot";
      chart.appendChild(plot);
    }
    return plot;
  }

  function drawCharts() {
    if (!window.Plotly) return;
    document.querySelectorAll(".muda-chart[data-chart]").forEach(function (chart) {
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

  // --- live ----------------------------------------------------------------------

  let lastRefresh = 0;
  let timer = null;

  function interval() {
    const page = root();
    return page ? Number(page.dataset.refreshMs) || 5000 : 5000;
  }

  function refresh() {
    const page = root();
    if (!page || !window.htmx) return Promise.resolve();
    lastRefresh = Date.now();
    return window.htmx.ajax("GET", page.dataset.refreshUrl, { target: "#muda-body", swap: "outerHTML" });
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
    // The board's own fragments are not for this page: the change is the news.
    event.preventDefault();
    if (window.KaizenSocket && socket && socket.catchingUp()) return;
    scheduleRefresh();
  });

  document.addEventListener("htmx:afterSettle", drawCharts);

  let socket = null;
  function start() {
    drawCharts();
    // plotly.js loads deferred too: draw once it is there.
    window.addEventListener("load", drawCharts);
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
})();
