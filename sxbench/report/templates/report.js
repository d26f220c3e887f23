{% raw %}
// sxbench report: leaderboard filters, sample explorer and pair view. No network: the per-sample data are
// data/*.js files next to this page, loaded with <script> elements on first use (works from file:// too).
(function () {
  "use strict";
  var META = JSON.parse(document.getElementById("sx-meta").textContent);
  var CELLS = JSON.parse(document.getElementById("sx-cells").textContent);
  var K = 6;
  var loaded = {}, waiting = {};
  window.SX = {
    data: function (name, payload) {
      loaded[name] = payload;
      (waiting[name] || []).forEach(function (f) { f(); });
      delete waiting[name];
    }
  };
  var files = { pairs: "data/pairs.js" };
  META.methods.forEach(function (m) { files[m.name] = m.file; });

  function need(names, done, fail) {
    var left = names.filter(function (n) { return !(n in loaded); });
    if (!left.length) { done(); return; }
    var count = left.length;
    left.forEach(function (n) {
      (waiting[n] = waiting[n] || []).push(function () { if (--count === 0) { done(); } });
      if (!document.querySelector('script[data-sx="' + n + '"]')) {
        var s = document.createElement("script");
        s.src = files[n];
        s.dataset.sx = n;
        s.onerror = function () { fail(files[n]); };
        document.head.appendChild(s);
      }
    });
  }

  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") { e.textContent = attrs[k]; } else if (k === "html") { e.innerHTML = attrs[k]; } else { e.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) { if (c) { e.appendChild(c); } });
    return e;
  }
  function fmt(v) { return v === null || v === undefined ? "–" : (Math.abs(v) >= 1000 ? v.toFixed(0) : v.toFixed(3)); }
  function methodByLabel(label) { return META.methods.filter(function (m) { return m.label === label; })[0]; }
  function metricInfo(name) { return META.metric_info.filter(function (m) { return m.name === name; })[0]; }

  // ------------------------------------------------------------------------------------------- filters
  function filterState() {
    var level = document.getElementById("f-level"), split = document.getElementById("f-split");
    var methods = Array.prototype.slice.call(document.querySelectorAll(".f-method"))
      .filter(function (c) { return c.checked; }).map(function (c) { return c.value; });
    return { level: level ? level.value : "", split: split ? split.value : "", methods: methods };
  }
  function subsetKey(f) {
    if (f.level && f.split) { return "level=" + f.level + "&split=" + f.split; }
    if (f.level) { return "level=" + f.level; }
    if (f.split) { return "split=" + f.split; }
    return "all";
  }
  function applyFilters() {
    var f = filterState(), cells = CELLS[subsetKey(f)] || {};
    document.querySelectorAll("table.board tr[data-method]").forEach(function (tr) {
      var method = tr.dataset.method;
      tr.style.display = f.methods.indexOf(method) >= 0 ? "" : "none";
      tr.querySelectorAll("td[data-metric]").forEach(function (td) {
        var c = (cells[td.dataset.metric] || {})[method];
        td.textContent = c ? c[0] : "–";
        var n = el("span", { "class": "n", text: " (n=" + (c ? c[2] : 0) + ")" });
        td.appendChild(n);
        if (c && c[4] !== null && c[4] !== undefined && !tr.classList.contains("control")) {
          td.appendChild(document.createTextNode(" "));
          td.appendChild(el("span", { "class": "rank", title: "rank group", text: String(c[4]) }));
        }
        td.dataset.v = c && c[1] !== null ? c[1] : "";
        td.title = c ? c[5] : "no value in this subset";
        td.classList.toggle("best", !!(c && c[3]));
      });
    });
    document.querySelectorAll("table.grid tr[data-method]").forEach(function (tr) {
      tr.style.display = f.methods.indexOf(tr.dataset.method) >= 0 ? "" : "none";
    });
    var sub = document.getElementById("filter-subset");
    if (sub) { sub.textContent = subsetKey(f).replace("&", ", "); }
    if (/^#(explore|pair)=/.test(location.hash)) { route(); }
  }

  // ------------------------------------------------------------------------------------------ explorer
  function img(rel, what) {
    if (!rel) { return el("div", { "class": "muted", text: "—" }); }
    return el("a", { href: rel, target: "_blank" }, [el("img", { src: rel, alt: what, loading: "lazy" })]);
  }
  function fig(rel, what) { return el("figure", {}, [img(rel, what), el("figcaption", { text: what })]); }
  function pairOf(row) {
    var P = loaded.pairs, r = P.rows[row[0]], o = {};
    P.cols.forEach(function (c, i) { o[c] = r[i]; });
    return o;
  }
  function inSubset(p, f) { return (!f.level || p.level === f.level) && (!f.split || p.split === f.split); }
  function valueTable(row, chosen) {
    var t = el("table", {}, []);
    META.metrics.forEach(function (name, i) {
      var info = metricInfo(name) || { hib: true };
      var tr = el("tr", name === chosen ? { "class": "chosen" } : {}, [
        el("td", { text: name + " " + (info.hib ? "↑" : "↓"), title: info.description || "" }),
        el("td", { text: fmt(row[4 + i]) })]);
      t.appendChild(tr);
    });
    return t;
  }
  function card(row, method, chosen) {
    var p = pairOf(row);
    var head = el("div", {}, [
      el("b", { text: p.pair_id }), document.createTextNode(" seed " + row[1] + " "),
      el("span", { "class": "badge", text: p.split }), el("span", { "class": "badge", text: p.level }),
      el("span", { "class": "badge", text: p.family || "" }),
      el("a", { href: "#pair=" + encodeURIComponent(p.pair_id) + "&seed=" + row[1], "class": "pairlink", text: "every method on this pair" })]);
    var imgs = el("div", { "class": "imgs" }, [fig(p.content, "content"), fig(p.style, "style"), fig(p.target, "target"),
      row[3] ? el("div", { "class": "err", text: "failed: " + row[3] }) : fig(row[2], "output · " + method)]);
    return el("div", { "class": "xcard", "data-pair": p.pair_id, "data-seed": String(row[1]) }, [head, imgs, valueTable(row, chosen)]);
  }
  function explorerBox() { return document.getElementById("explorer"); }
  function controlsBar(method, metric) {
    var ms = el("select", { id: "x-method" }, META.methods.map(function (m) {
      var o = el("option", { value: m.label, text: m.label + (m.control ? " (control)" : "") });
      if (m.label === method) { o.selected = true; }
      return o;
    }));
    var mt = el("select", { id: "x-metric" }, META.metrics.map(function (m) {
      var info = metricInfo(m) || { hib: true };
      var o = el("option", { value: m, text: m + " " + (info.hib ? "↑" : "↓") });
      if (m === metric) { o.selected = true; }
      return o;
    }));
    function go() { location.hash = "explore=" + encodeURIComponent(ms.value) + "&metric=" + encodeURIComponent(mt.value); }
    ms.addEventListener("change", go); mt.addEventListener("change", go);
    return el("div", { "class": "controls-bar" }, [document.createTextNode("method "), ms, document.createTextNode(" metric "), mt,
      el("span", { "class": "muted", html: " subset: <span id=\"filter-subset\">" + subsetKey(filterState()).replace("&", ", ") + "</span> (the leaderboard's filters)" })]);
  }
  function showExplorer(method, metric) {
    var box = explorerBox(), m = methodByLabel(method);
    if (!m) { box.textContent = "unknown method: " + method; return; }
    metric = metric && META.metrics.indexOf(metric) >= 0 ? metric : META.metrics[0];
    box.textContent = "loading " + m.file + " …";
    need(["pairs", m.name], function () {
      var f = filterState(), col = META.metrics.indexOf(metric), info = metricInfo(metric) || { hib: true };
      var rows = loaded[m.name].rows.filter(function (r) { return inSubset(pairOf(r), f); });
      var scored = rows.filter(function (r) { return r[4 + col] !== null && r[4 + col] !== undefined; });
      scored.sort(function (a, b) { return (info.hib ? -1 : 1) * (a[4 + col] - b[4 + col]); });
      var failed = rows.filter(function (r) { return r[3]; });
      box.innerHTML = "";
      box.appendChild(controlsBar(method, metric));
      box.appendChild(el("p", { "class": "muted", text: scored.length + " of " + rows.length + " samples of " + method +
        " in this subset have a " + metric + " value" + (failed.length ? "; " + failed.length + " failed" : "") +
        ". Best and worst " + K + " by " + metric + " (" + (info.hib ? "higher" : "lower") + " is better)." }));
      var best = scored.slice(0, K), worst = scored.slice(Math.max(K, scored.length - K)).reverse();
      box.appendChild(el("h3", { text: "best " + best.length }));
      box.appendChild(el("div", { "class": "xcards", id: "x-best" }, best.map(function (r) { return card(r, method, metric); })));
      box.appendChild(el("h3", { text: "worst " + worst.length }));
      box.appendChild(el("div", { "class": "xcards", id: "x-worst" }, worst.map(function (r) { return card(r, method, metric); })));
      if (failed.length) {
        box.appendChild(el("h3", { text: "failed " + Math.min(K, failed.length) + " of " + failed.length }));
        box.appendChild(el("div", { "class": "xcards" }, failed.slice(0, K).map(function (r) { return card(r, method, metric); })));
      }
    }, function (file) { box.textContent = "could not load " + file + ": is the run folder complete?"; });
  }
  function showPair(pairId, seed) {
    var box = explorerBox(), names = ["pairs"].concat(META.methods.map(function (m) { return m.name; }));
    box.textContent = "loading every method's samples …";
    need(names, function () {
      var P = loaded.pairs, idx = -1;
      P.rows.forEach(function (r, i) { if (r[0] === pairId) { idx = i; } });
      box.innerHTML = "";
      if (idx < 0) { box.textContent = "no pair " + pairId + " in this run"; return; }
      var p = pairOf([idx]);
      box.appendChild(el("div", { "class": "controls-bar" }, [el("b", { text: "pair " + pairId + ", seed " + seed + " " }),
        el("span", { "class": "badge", text: p.split }), el("span", { "class": "badge", text: p.level }),
        el("span", { "class": "badge", text: p.family || "" })]));
      box.appendChild(el("div", { "class": "imgs xcards" }, [fig(p.content, "content"), fig(p.style, "style"), fig(p.target, "target")]));
      var head = el("tr", {}, [el("th", { "class": "nosort", text: "method" }), el("th", { "class": "nosort", text: "output" })]
        .concat(META.metrics.map(function (n) { var info = metricInfo(n) || { hib: true }; return el("th", { "class": "nosort", text: n + " " + (info.hib ? "↑" : "↓"), title: info.description || "" }); })));
      var body = el("tbody", {}, []);
      META.methods.forEach(function (m) {
        var row = loaded[m.name].rows.filter(function (r) { return r[0] === idx && String(r[1]) === String(seed); })[0];
        var tr = el("tr", { "data-method": m.label }, [
          el("td", {}, [el("a", { href: "#explore=" + encodeURIComponent(m.label), text: m.label + (m.control ? " (control)" : "") })]),
          el("td", {}, [!row ? el("span", { "class": "muted", text: "not run" }) : row[3] ? el("span", { "class": "err", text: "failed" }) : img(row[2], "output of " + m.label)])]);
        META.metrics.forEach(function (n, i) { tr.appendChild(el("td", { text: row ? fmt(row[4 + i]) : "–" })); });
        body.appendChild(tr);
      });
      box.appendChild(el("table", { "class": "pairview", id: "pairview" }, [el("thead", {}, [head]), body]));
    }, function (file) { box.textContent = "could not load " + file + ": is the run folder complete?"; });
  }
  function route() {
    var h = location.hash.replace(/^#/, ""), q = {};
    h.split("&").forEach(function (kv) { var i = kv.indexOf("="); if (i > 0) { q[kv.slice(0, i)] = decodeURIComponent(kv.slice(i + 1)); } });
    if ("explore" in q) { showExplorer(q.explore, q.metric); return true; }
    if ("pair" in q) { showPair(q.pair, q.seed || "0"); return true; }
    return false;
  }

  document.querySelectorAll("#f-level, #f-split, .f-method").forEach(function (c) { c.addEventListener("change", applyFilters); });
  document.querySelectorAll("table.board td.cellv").forEach(function (td) {
    td.addEventListener("click", function () {
      location.hash = "explore=" + encodeURIComponent(td.parentNode.dataset.method) + "&metric=" + encodeURIComponent(td.dataset.metric);
    });
  });
  window.addEventListener("hashchange", function () { if (route()) { explorerBox().scrollIntoView(); } });
  if (route()) { explorerBox().scrollIntoView(); }
})();
{% endraw %}
