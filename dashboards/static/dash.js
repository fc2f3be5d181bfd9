/* hookscope dashboard: draws the charts described by the page's
 * <script type="application/json" id="charts"> block with uPlot.
 * No inline script anywhere, so the page's CSP can forbid it; chart labels
 * reach the DOM only through uPlot's textContent, never innerHTML. */
(function () {
  "use strict";
  var PALETTE = ["#5b8def", "#e5484d", "#30a46c", "#f5a524", "#8e4ec6", "#12a5b0", "#d6409f",
                 "#6e56cf", "#978365", "#0090ff", "#ff8b3e", "#46a758", "#e54666", "#3e63dd",
                 "#ad7f58", "#29a383"];
  var MARK = { xid: "#e5484d", ecc: "#f5a524" };

  function readSpecs() {
    var el = document.getElementById("charts");
    if (!el) return [];
    try { return JSON.parse(el.textContent || "[]"); } catch (e) { return []; }
  }

  function markersPlugin(markers) {
    return {
      hooks: {
        draw: [function (u) {
          if (!markers || !markers.length) return;
          var ctx = u.ctx, top = u.bbox.top, h = u.bbox.height;
          ctx.save();
          ctx.lineWidth = 1.5 * devicePixelRatio;
          ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
          markers.forEach(function (m) {
            var x = Math.round(u.valToPos(m.t, "x", true));
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
            ctx.strokeStyle = MARK[m.kind] || "#e5484d";
            ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + h); ctx.stroke();
          });
          ctx.restore();
        }]
      }
    };
  }

  function build(spec, fig) {
    var bars = spec.kind === "bars" && uPlot.paths && uPlot.paths.bars;
    var series = [{}];
    var data = [spec.x];
    spec.series.forEach(function (s, i) {
      var color = s.color || PALETTE[i % PALETTE.length];
      var def = { label: s.label, stroke: color, width: 1.5, spanGaps: false,
                  value: function (u, v) { return v == null ? "–" : (+v.toFixed(2)) + " " + spec.unit; } };
      if (bars) {
        def.paths = uPlot.paths.bars({ size: [0.8, 40], align: 0 });
        def.fill = color + "cc";
        def.points = { show: false };
      }
      series.push(def);
      data.push(s.values);
    });
    var width = Math.max(280, fig.clientWidth - 4);
    var xs = spec.x, pad = spec.step || 60;
    var xmin = spec.xmin != null ? spec.xmin : (xs.length ? xs[0] - (xs.length < 2 ? pad : 0) : 0);
    var xmax = spec.xmax != null ? spec.xmax : (xs.length ? xs[xs.length - 1] + (xs.length < 2 ? pad : 0) : 1);
    var scales = { x: { time: true, range: function () { return [xmin, xmax]; } } };
    if (bars) scales.y = { range: function (u, lo, hi) { return [0, Math.max(1, hi) * 1.1]; } };
    var opts = {
      width: width, height: +(fig.getAttribute("data-height") || 220),
      series: series,
      scales: scales,
      axes: [{}, { size: 56, values: function (u, vals) { return vals.map(function (v) { return +v.toFixed(2); }); } }],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
      plugins: [markersPlugin(spec.markers)]
    };
    var plot = new uPlot(opts, data, fig);
    fig.setAttribute("data-rendered", String(spec.series.length));
    return plot;
  }

  function main() {
    var plots = [];
    readSpecs().forEach(function (spec) {
      var fig = document.getElementById(spec.id);
      if (!fig || typeof uPlot === "undefined") return;
      try { plots.push([build(spec, fig), fig]); }
      catch (e) { fig.setAttribute("data-error", String(e)); }
    });
    var pending = null;
    window.addEventListener("resize", function () {
      clearTimeout(pending);
      pending = setTimeout(function () {
        plots.forEach(function (p) {
          p[0].setSize({ width: Math.max(280, p[1].clientWidth - 4), height: p[0].height });
        });
      }, 150);
    });
    document.documentElement.setAttribute("data-charts-ready", String(plots.length));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", main);
  else main();
})();
