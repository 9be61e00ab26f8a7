// reformer-retrieval dedup review page: renders the clusters (JSON chunks parsed on demand), the pairs near
// the threshold, inline diffs, and the reviewer's marks (kept in localStorage, exported as JSON Lines / CSV).
(function () {
  "use strict";
  var meta = JSON.parse(document.getElementById("rr-meta").textContent);
  var chunkNodes = document.querySelectorAll("script.rr-chunk");
  var chunkCache = [];
  var PAGE = 50;
  var total = meta.shown_clusters;
  var page = 0;
  var idIndex = null;
  var nearData = null;
  var marks = new Map();
  var storeKey = "rr-marks:" + meta.key;

  function chunk(i) {
    if (!chunkCache[i]) chunkCache[i] = JSON.parse(chunkNodes[i].textContent);
    return chunkCache[i];
  }
  function cluster(i) { return chunk(Math.floor(i / meta.chunk_clusters))[i % meta.chunk_clusters]; }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function fmt(v) { return v === null || v === undefined ? "–" : v.toFixed(4); }
  function pairKey(a, b) { return JSON.stringify([a, b]); }

  // ------------------------------------------------------------------ diffs
  function renderDiff(ops) {
    var box = el("div", "diff");
    if (!ops) { box.textContent = "no texts: run `report` with --corpus"; return box; }
    ops.forEach(function (op) {
      var tag = op[0];
      if (tag === "=") box.appendChild(document.createTextNode(op[1]));
      else if (tag === "+") box.appendChild(el("ins", null, op[1]));
      else if (tag === "-") box.appendChild(el("del", null, op[1]));
      else if (tag === "~") box.appendChild(el("span", "fold", "… " + op[1].toLocaleString("en-US") + " equal words …"));
      else if (tag === "...") box.appendChild(el("div", "fold", "diff cut here: " + op[1].toLocaleString("en-US") + " more words"));
    });
    return box;
  }

  // ------------------------------------------------------------------ marks
  function loadMarks() {
    try {
      var raw = window.localStorage.getItem(storeKey);
      if (raw) JSON.parse(raw).forEach(function (m) { marks.set(pairKey(m.id_a, m.id_b), m); });
    } catch (e) { /* storage unavailable (private mode, file:// policy): marks live in the page only */ }
  }
  function saveMarks() {
    try { window.localStorage.setItem(storeKey, JSON.stringify(Array.from(marks.values()))); } catch (e) { /* see loadMarks */ }
    document.getElementById("marks-count").textContent = marks.size + (marks.size === 1 ? " pair marked" : " pairs marked");
  }
  function paintButtons(row, key) {
    var m = marks.get(key);
    row.querySelector(".mark-dup").classList.toggle("on-dup", !!m && m.mark === "duplicate");
    row.querySelector(".mark-not").classList.toggle("on-not", !!m && m.mark === "not_duplicate");
  }
  function markRow(row, rec, value) {
    var key = pairKey(rec.id_a, rec.id_b);
    var cur = marks.get(key);
    if (cur && cur.mark === value) marks.delete(key);
    else marks.set(key, Object.assign({}, rec, { mark: value }));
    paintButtons(row, key);
    saveMarks();
  }
  function exportText(format) {
    var rows = Array.from(marks.values());
    if (format === "jsonl") return rows.map(function (m) { return JSON.stringify(m); }).join("\n") + (rows.length ? "\n" : "");
    var cols = ["id_a", "id_b", "mark", "merged", "score", "cosine", "jaccard"];
    var q = function (v) {
      if (v === null || v === undefined) return "";
      var s = String(v);
      return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
    };
    return cols.join(",") + "\n" + rows.map(function (m) { return cols.map(function (c) { return q(m[c]); }).join(","); }).join("\n") + (rows.length ? "\n" : "");
  }
  function download(format) {
    var blob = new Blob([exportText(format)], { type: format === "jsonl" ? "application/x-ndjson" : "text/csv" });
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "marks." + format;
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  // ------------------------------------------------------------------ one pair (member vs representative, or a near pair)
  function pairRow(rec, label, changed, ops, openDiff) {
    var row = el("div", "pair");
    row.dataset.idA = JSON.stringify(rec.id_a);
    row.dataset.idB = JSON.stringify(rec.id_b);
    var head = el("div", "pair-head");
    head.appendChild(el("span", "doc-id", label));
    var sc = [];
    if (rec.cosine !== null && rec.cosine !== undefined) sc.push("cosine " + fmt(rec.cosine));
    if (rec.jaccard !== null && rec.jaccard !== undefined) sc.push("Jaccard " + fmt(rec.jaccard));
    head.appendChild(el("span", "scores", sc.length ? sc.join(" · ") : "score " + fmt(rec.score)));
    if (changed !== null && changed !== undefined) head.appendChild(el("span", "muted", changed.toLocaleString("en-US") + " words changed"));
    var toggle = el("button", "show-diff", "diff");
    var dup = el("button", "mark-dup", "duplicate");
    var not = el("button", "mark-not", "not duplicate");
    head.appendChild(toggle); head.appendChild(dup); head.appendChild(not);
    row.appendChild(head);
    var shown = null;
    function flip() {
      if (shown) { shown.remove(); shown = null; } else { shown = renderDiff(ops); row.appendChild(shown); }
    }
    toggle.addEventListener("click", flip);
    dup.addEventListener("click", function () { markRow(row, rec, "duplicate"); });
    not.addEventListener("click", function () { markRow(row, rec, "not_duplicate"); });
    paintButtons(row, pairKey(rec.id_a, rec.id_b));
    if (openDiff) flip();
    return row;
  }
  function primary(cos, jac) { return cos !== null && cos !== undefined ? cos : jac; }

  // ------------------------------------------------------------------ clusters
  function clusterBody(c, body, hitId) {
    var rep = c[2];
    var repLine = el("div", "pair-head");
    repLine.appendChild(el("strong", null, "representative"));
    repLine.appendChild(el("span", "doc-id", String(rep)));
    body.appendChild(repLine);
    if (c[3]) body.appendChild(el("div", "preview", c[3] + (c[3].length >= 200 ? "…" : "")));
    c[4].forEach(function (m, j) {
      var rec = { id_a: rep, id_b: m[0], merged: true, score: primary(m[1], m[2]), cosine: m[1], jaccard: m[2] };
      var row = pairRow(rec, String(m[0]), m[3], m[4], j === 0 || m[0] === hitId);
      row.classList.add("member");
      if (m[0] === hitId) row.classList.add("hit");
      body.appendChild(row);
    });
    if (c[5] > 0) body.appendChild(el("div", "note", "+" + c[5].toLocaleString("en-US") + " more members (raise --max-members)"));
  }
  function clusterNode(i, open, hitId) {
    var c = cluster(i);
    var d = el("details", "cluster");
    d.dataset.clusterId = c[0];
    d.dataset.size = c[1];
    var s = el("summary");
    s.appendChild(el("span", "size", "[" + c[1].toLocaleString("en-US") + "]"));
    s.appendChild(el("span", "doc-id", String(c[2])));
    s.appendChild(el("span", "cid", "  cluster " + c[0]));
    d.appendChild(s);
    var body = el("div", "cluster-body");
    d.appendChild(body);
    var filled = false;
    d.addEventListener("toggle", function () { if (d.open && !filled) { filled = true; clusterBody(c, body, hitId); } });
    if (open) { filled = true; clusterBody(c, body, hitId); d.open = true; }
    return d;
  }
  function showPage(p) {
    page = Math.max(0, Math.min(p, Math.max(0, Math.ceil(total / PAGE) - 1)));
    var list = document.getElementById("cluster-list");
    list.textContent = "";
    var end = Math.min(total, (page + 1) * PAGE);
    for (var i = page * PAGE; i < end; i++) list.appendChild(clusterNode(i, i === 0, null));
    document.getElementById("page-info").textContent = total ? ("clusters " + (page * PAGE + 1).toLocaleString("en-US") + "–" +
      end.toLocaleString("en-US") + " of " + total.toLocaleString("en-US")) : "no duplicate clusters";
  }
  function buildIndex() {
    if (idIndex) return idIndex;
    idIndex = { doc: new Map(), cluster: new Map() };
    for (var i = 0; i < total; i++) {
      var c = cluster(i);
      idIndex.cluster.set(String(c[0]), i);
      idIndex.doc.set(String(c[2]), i);
      c[4].forEach(function (m) { idIndex.doc.set(String(m[0]), i); });
    }
    return idIndex;
  }
  function search(q) {
    q = q.trim();
    if (!q) { showPage(0); return; }
    var ix = buildIndex();
    var list = document.getElementById("cluster-list");
    list.textContent = "";
    var hits = [];
    if (ix.doc.has(q)) hits.push([ix.doc.get(q), q]);
    var cid = q.replace(/^#/, "");
    if (ix.cluster.has(cid) && hits.every(function (h) { return h[0] !== ix.cluster.get(cid); })) hits.push([ix.cluster.get(cid), null]);
    if (!hits.length) {
      var lower = q.toLowerCase();
      ix.doc.forEach(function (i, id) { if (hits.length < 20 && id.toLowerCase().indexOf(lower) >= 0) hits.push([i, id]); });
    }
    var seen = new Set();
    hits.forEach(function (h) {
      if (seen.has(h[0])) return;
      seen.add(h[0]);
      var c = cluster(h[0]);
      var hitId = null;
      if (h[1] !== null) { c[4].forEach(function (m) { if (String(m[0]) === h[1]) hitId = m[0]; }); }
      list.appendChild(clusterNode(h[0], true, hitId));
    });
    document.getElementById("page-info").textContent = seen.size ? (seen.size + " matching cluster" + (seen.size > 1 ? "s" : "")) : "no cluster holds " + q;
  }

  // ------------------------------------------------------------------ pairs near the threshold
  function showNear(kind, side) {
    var box = document.getElementById("near-" + kind);
    box.textContent = "";
    if (!nearData) nearData = JSON.parse(document.getElementById("rr-near").textContent);
    var rows = (nearData[kind] || {})[side] || [];
    var t = meta.thresholds[kind];
    box.appendChild(el("div", "note", rows.length ? (rows.length + " pairs just " + side + " the " + kind + " threshold " + t +
      (side === "below" ? " (from sampled documents)" : " (the run's weakest pairs)")) : "no pairs " + side + " the threshold"));
    rows.forEach(function (p) {
      var rec = { id_a: p[0], id_b: p[1], merged: p[5], score: p[2], cosine: p[3], jaccard: p[4] };
      var row = pairRow(rec, String(p[0]) + "  vs  " + String(p[1]) + (p[5] ? "  (same cluster)" : "  (apart)"), p[6], p[7], false);
      row.classList.add("near-pair");
      box.appendChild(row);
    });
  }

  document.querySelectorAll("button.near-btn").forEach(function (b) {
    b.addEventListener("click", function () { showNear(b.dataset.kind, b.dataset.side); });
  });
  document.getElementById("cluster-search").addEventListener("keydown", function (e) { if (e.key === "Enter") search(e.target.value); });
  document.getElementById("search-btn").addEventListener("click", function () { search(document.getElementById("cluster-search").value); });
  document.getElementById("prev-page").addEventListener("click", function () { showPage(page - 1); });
  document.getElementById("next-page").addEventListener("click", function () { showPage(page + 1); });
  document.getElementById("export-jsonl").addEventListener("click", function () { download("jsonl"); });
  document.getElementById("export-csv").addEventListener("click", function () { download("csv"); });
  document.getElementById("clear-marks").addEventListener("click", function () {
    marks.clear(); saveMarks();
    document.querySelectorAll(".pair").forEach(function (r) { paintButtons(r, pairKey(JSON.parse(r.dataset.idA), JSON.parse(r.dataset.idB))); });
  });
  loadMarks();
  saveMarks();
  showPage(0);
  window.rrReport = { exportText: exportText, marks: marks, search: search, showPage: showPage, showNear: showNear };
  document.body.dataset.ready = "1";
})();
