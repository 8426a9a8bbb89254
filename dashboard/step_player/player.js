/*
  The attnlens step player: the one implementation of the player, in plain JS (no build step), used by
  * the dashboard's Compare and Metrics views (index.html beside this file, a Streamlit custom component), and
  * the notebook (attnlens.notebook.StepPlayer, an anywidget: this file's text followed by an ES-module adapter).

  attnlensStepPlayer(root, opts) builds the player inside the element ``root`` and returns
  {render(args), step(), reports(), theme({font, textColor, primaryColor})}. ``opts``: ``onStep(step, seq)``, called
  250 ms after the last slider move (debounced) with the step on view and the number of reports so far;
  ``onResize()``, called after each render; ``stepTarget``, the element whose data-step attribute names the step
  on view (default ``root``); ``ids``, give the slider and its label the ids "step" and "label" (one player per
  document only: the dashboard's frame).

  args (JSON, built by dashboard/ui.py's _player_args and attnlens/notebook/player.py): {frames_id, step, ack,
  steps, tokens, ncols, phase, it, columns: [null | {label, under, frames, t} | {label, tables, t}]}: per column the
  map images of every step (one list of RGBA PNG data URIs per step, null where the run has no maps at that step,
  null for a map with no mass), the grey image the maps are drawn over, and the timesteps; or, in the Metrics view,
  one leakage matrix per step ({rows, cols, z, own}), drawn as a coloured table. Moving the slider swaps the images
  (or redraws the tables) at once, in the browser.

  A new frames_id means new maps (rebuild); the same one is a plain rerun of the page, where ``ack`` (the last
  report the page processed) tells a stale echo of an older report from a step change made by the page itself.
*/
function attnlensStepPlayer(root, opts) {
  "use strict";
  opts = opts || {};
  var DEBOUNCE_MS = 250;
  var stepTarget = opts.stepTarget || root;

  function el(tag, cls, parent) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (parent) { parent.appendChild(e); }
    return e;
  }

  root.classList.add("attnlens-player");
  root.textContent = "";
  var bar = el("div", "bar", root);
  var label = el("label", "", bar);
  label.textContent = "Step";
  var lo = el("span", "ends", bar);
  var slider = el("input", "", bar);
  slider.type = "range";
  slider.min = "0";
  slider.max = "0";
  slider.step = "1";
  slider.value = "0";
  slider.setAttribute("aria-label", "Step");
  var hi = el("span", "ends", bar);
  var grid = el("div", "grid", root);
  if (opts.ids) {
    slider.id = "step";
    label.id = "label";
    label.htmlFor = "step";
  }

  var P = null;          // the current args (payload)
  var framesId = null;   // its frames_id: a new one means new maps (rebuild), the same one means a plain rerun
  var idx = 0;           // index into P.steps of the step on view
  var seq = 0;           // steps reported so far (the page echoes the last one it processed as args.ack)
  var timer = null;      // the pending (debounced) report
  var known = null;      // the step the page knows about (its args.step, or the last step reported)
  var cols = [];         // per column: null (no maps: an error card is shown above) or {c, items, cap}
  var preload = [];      // decoded copies of every frame, so that a step change only swaps decoded images

  // the reversed Magma scale of the dashboard's heat maps: 0 light, 1 dark
  var MAGMA = [[0, [252, 253, 191]], [0.25, [252, 137, 97]], [0.5, [183, 55, 121]], [0.75, [81, 18, 124]],
               [1, [0, 0, 4]]];
  function shade(v) {
    v = Math.max(0, Math.min(1, v));
    for (var i = 1; i < MAGMA.length; i++) {
      if (v <= MAGMA[i][0]) {
        var a = MAGMA[i - 1], b = MAGMA[i], f = (v - a[0]) / (b[0] - a[0]);
        return "rgb(" + [0, 1, 2].map(function (k) { return Math.round(a[1][k] + f * (b[1][k] - a[1][k])); })
          .join(",") + ")";
      }
    }
    return "rgb(0,0,4)";
  }

  function drawTable(box, t) {
    box.textContent = "";
    if (!t) { return; }
    var tb = el("table", "leak", box);
    var head = el("tr", "", tb);
    el("th", "", head);
    t.cols.forEach(function (c) { el("th", "", head).textContent = c; });
    t.rows.forEach(function (r, i) {
      var tr = el("tr", "", tb);
      var th = el("th", "row", tr);
      th.textContent = r;
      t.cols.forEach(function (c, j) {
        var v = t.z[i][j];
        var td = el("td", "", tr);
        if (v === null || v === undefined) { td.textContent = "–"; return; }
        td.textContent = v.toFixed(2) + (t.own[r] === c ? " ✓" : "");
        td.style.background = shade(v);
        td.style.color = v > 0.45 ? "#fff" : "#31333f";
        td.title = r + " → " + c + ": " + v.toFixed(3);
      });
    });
  }

  function build(args) {
    grid.textContent = "";
    cols = [];
    preload = [];
    grid.style.gridTemplateColumns = "repeat(" + Math.max(1, args.ncols || 1) + ", minmax(0, 1fr))";
    (args.columns || []).forEach(function (c) {
      var col = el("div", "col", grid);
      if (!c) { cols.push(null); return; }
      col.setAttribute("data-column", c.label || "");
      if (c.tables) {
        el("div", "lab", col).textContent = c.label || "";
        cols.push({c: c, items: [], box: el("div", "attnlens-table", col), cap: el("div", "cap", col)});
        return;
      }
      if (args.column_labels) { el("div", "lab", col).textContent = c.label || ""; }
      var items = (args.tokens || []).map(function (name) {
        var cell = el("div", "attnlens-cell", col);
        var lab = el("div", "lab", cell);
        lab.textContent = name;
        var sq = el("div", "sq", cell);
        if (c.under) { sq.style.backgroundImage = "url(" + c.under + ")"; }
        var img = el("img", "map", sq);
        img.alt = name;
        img.decoding = "sync";
        var dim = el("div", "dim", sq);
        return {img: img, dim: dim, lab: lab, name: name};
      });
      var cap = el("div", "cap", col);
      cols.push({c: c, items: items, cap: cap});
      (c.frames || []).forEach(function (f) {
        (f || []).forEach(function (uri) {
          if (!uri) { return; }
          var im = new Image();
          im.src = uri;
          if (im.decode) { im.decode().catch(function () {}); }
          preload.push(im);
        });
      });
    });
    var steps = args.steps || [];
    slider.min = 0;
    slider.max = Math.max(0, steps.length - 1);
    lo.textContent = steps.length ? String(steps[0]) : "";
    hi.textContent = steps.length ? String(steps[steps.length - 1]) : "";
    bar.classList.toggle("single", steps.length <= 1);
  }

  function show(i) {
    var steps = P.steps || [];
    if (!steps.length) { return; }
    idx = Math.max(0, Math.min(steps.length - 1, i));
    var s = steps[idx];
    slider.value = String(idx);
    label.textContent = "Step " + s + (steps.length <= 1 ? " (the only recorded step)" : "");
    cols.forEach(function (cc) {
      if (!cc) { return; }
      if (cc.box) {
        var tab = cc.c.tables[idx];
        drawTable(cc.box, tab);
        var tt = cc.c.t ? cc.c.t[idx] : null;
        cc.cap.textContent = tab ? "step " + s + (tt === null || tt === undefined ? "" : " · t=" + tt)
          : "no '" + P.phase + "' maps at step " + s + (P.it ? ", iteration " + P.it : "");
        return;
      }
      var f = cc.c.frames ? cc.c.frames[idx] : null;
      cc.items.forEach(function (it, k) {
        var uri = f ? f[k] : null;
        if (uri) {
          if (it.img.getAttribute("src") !== uri) { it.img.src = uri; }
          it.img.style.display = "";
          it.dim.style.display = "none";
        } else {
          it.img.removeAttribute("src");
          it.img.style.display = "none";
          it.dim.style.display = "block";
        }
        it.lab.textContent = (f && !uri) ? it.name + " (no mass)" : it.name;
      });
      var t = cc.c.t ? cc.c.t[idx] : null;
      cc.cap.textContent = f ? "step " + s + (t === null || t === undefined ? "" : " · t=" + t)
        : "no '" + P.phase + "' maps at step " + s + (P.it ? ", iteration " + P.it : "");
    });
    stepTarget.setAttribute("data-step", String(s));
  }

  function report() {
    timer = null;
    var s = P.steps[idx];
    if (s === known) { return; }
    known = s;
    seq += 1;
    if (opts.onStep) { opts.onStep(s, seq); }
  }

  slider.addEventListener("input", function () {
    if (!P) { return; }
    show(parseInt(slider.value, 10));
    if (timer !== null) { clearTimeout(timer); }
    timer = setTimeout(report, DEBOUNCE_MS);
  });

  function render(args) {
    if (!args || !args.steps) { return; }
    var ack = args.ack || 0;
    if (P === null) { seq = Math.max(seq, ack); }  // a fresh frame goes on numbering where the last one stopped
    if (args.frames_id !== framesId) {
      // new maps: rebuild; a step the user is still moving to survives if it is recorded in the new selection
      var moving = (timer !== null && P) ? P.steps[idx] : null;
      P = args;
      framesId = args.frames_id;
      build(args);
      known = args.step;
      var target = args.step;
      if (moving !== null && args.steps.indexOf(moving) >= 0) {
        target = moving;
      } else if (timer !== null) {
        clearTimeout(timer);
        timer = null;
      }
      var j = args.steps.indexOf(target);
      show(j >= 0 ? j : args.steps.length - 1);
    } else {
      // the same maps (a rerun of the page): nothing is redrawn, unless the page moved the step itself; an echo of
      // a report older than the last one sent, or a rerun while the user is moving, changes nothing
      P.ack = ack;
      if (ack >= seq) {
        known = args.step;
        if (timer === null && args.step !== P.steps[idx]) {
          var k = P.steps.indexOf(args.step);
          if (k >= 0) { show(k); }
        }
      }
    }
    if (opts.onResize) { opts.onResize(); }
  }

  function theme(t) {
    if (!t) { return; }
    if (t.font) { root.style.fontFamily = t.font; }
    if (t.textColor) { root.style.color = t.textColor; }
    if (t.primaryColor) { slider.style.accentColor = t.primaryColor; }
  }

  return {
    render: render,
    theme: theme,
    step: function () { return P ? P.steps[idx] : null; },  // the step on view (for probes: tests, benchmarks)
    reports: function () { return seq; }                     // the steps reported so far
  };
}
