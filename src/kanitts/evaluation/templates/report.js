// The listening report, drawn from the JSON in #report-data. Plain script, no libraries: the
// page must open from disk (file://) with nothing fetched from the network.
(function () {
  "use strict";

  var DATA = JSON.parse(document.getElementById("report-data").textContent);
  var STORE = "kanitts-report:" + DATA.title + ":" + location.pathname;
  var SVG = "http://www.w3.org/2000/svg";
  var FORMAT = "kanitts-ratings";

  // --- small helpers ---------------------------------------------------------------------

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (attrs[k] === null || attrs[k] === undefined || attrs[k] === false) { return; }
      if (k === "text") { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k] === true ? "" : attrs[k]); }
    });
    (children || []).forEach(function (c) { node.append(c); });
    return node;
  }

  function svg(tag, attrs) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }

  function fmt(v) {
    if (v === null || v === undefined || (typeof v === "number" && !isFinite(v))) { return "-"; }
    if (typeof v === "boolean") { return v ? "yes" : "no"; }
    if (typeof v === "number") { return Math.abs(v) >= 1000 ? v.toFixed(0) : String(Number(v.toPrecision(3))); }
    return String(v);
  }

  function interval(mean, ci) {
    if (mean === null || mean === undefined) { return "-"; }
    return ci && ci[0] !== null && ci[0] !== undefined ? fmt(mean) + " [" + fmt(ci[0]) + ", " + fmt(ci[1]) + "]" : fmt(mean);
  }

  function pct(p) { return p === null || p === undefined ? "-" : Math.round(p * 100) + "%"; }

  function mean(values) {
    var numbers = values.filter(function (v) { return v !== null && v !== undefined; })
      .map(function (v) { return typeof v === "boolean" ? (v ? 1 : 0) : v; });
    return numbers.length ? numbers.reduce(function (a, b) { return a + b; }, 0) / numbers.length : null;
  }

  function load() {
    var saved = {};
    try { saved = JSON.parse(window.localStorage.getItem(STORE) || "{}") || {}; } catch (e) { saved = {}; }
    return {
      hidden: saved.hidden || {},
      sort: saved.sort || { key: "", dir: "asc" },
      blind: saved.blind || { on: false, seed: 0, revealed: false },
      ratings: saved.ratings || {},
      picks: saved.picks || {},
      listener: saved.listener || ""
    };
  }

  function save() {
    try { window.localStorage.setItem(STORE, JSON.stringify(state)); } catch (e) { /* storage disabled: this visit only */ }
  }

  // Sortable table: cells are {text, value, node, cls, title}; empty values sort last both ways.
  function table(headers, rows, cls) {
    var head = el("tr", {}, headers.map(function (h, i) {
      var th = el("th", { scope: "col", "data-sort": String(i), title: h.title, text: h.label || h });
      th.addEventListener("click", function () { sortTable(t, i, th); });
      return th;
    }));
    var body = el("tbody", {}, rows.map(function (cells) {
      return el("tr", { class: cells.rowClass }, cells.map(function (c) {
        var td = el("td", { class: c.cls, title: c.title }, c.node ? [c.node] : []);
        if (!c.node) { td.textContent = c.text; }
        td.sortValue = c.value === undefined ? c.text : c.value;
        return td;
      }));
    }));
    var t = el("table", { class: "sortable " + cls }, [el("thead", {}, [head]), body]);
    return t;
  }

  function sortTable(t, index, header) {
    var ascending = !header.classList.contains("asc");
    t.querySelectorAll("th[data-sort]").forEach(function (th) { th.classList.remove("asc", "desc"); });
    header.classList.add(ascending ? "asc" : "desc");
    var body = t.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[index].sortValue, y = b.cells[index].sortValue;
      var xe = x === null || x === undefined || x === "" || x === "-", ye = y === null || y === undefined || y === "" || y === "-";
      if (xe || ye) { return xe === ye ? 0 : (xe ? 1 : -1); }
      var order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  // Seeded shuffle (FNV-1a of the sentence id mixed with the session's seed, then mulberry32).
  function rng(seed, text) {
    var h = 2166136261 ^ seed;
    for (var i = 0; i < text.length; i++) { h = Math.imul(h ^ text.charCodeAt(i), 16777619); }
    return function () {
      h = (h + 0x6D2B79F5) | 0;
      var t = Math.imul(h ^ (h >>> 15), 1 | h);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  // Blind order: each (sentence, model) gets a seeded random key and the columns sort by it, so
  // the order stays the same while blind mode is on whatever is sorted, hidden or shown.
  function shuffled(list, seed, sentence) {
    var key = {};
    list.forEach(function (item) { key[item.id] = rng(seed, sentence + "\u0000" + item.id)(); });
    return list.slice().sort(function (a, b) { return key[a.id] - key[b.id]; });
  }

  // --- the data as columns -----------------------------------------------------------------

  var state = load();
  var labels = {};
  DATA.metrics.forEach(function (m) { labels[m.key] = m.key === "truncated" ? "truncation rate" : m.label; });
  var ranking = DATA.ranking;
  var ranked = {};
  ((ranking && ranking.models) || []).forEach(function (r) { ranked[r.model] = r; });

  var items = DATA.models.map(function (m, i) {
    return {
      id: m.id, label: m.id, index: i, ref: false, error: m.error,
      title: m.id + (m.description ? " — " + m.description : "") + (m.error ? "\nnot evaluated: " + m.error : "")
    };
  });
  DATA.reference_columns.forEach(function (c, i) {
    items.push({ id: c.id, label: c.label, index: items.length + i, ref: true, kind: c.kind, title: c.label + " (reference recording)" });
  });
  var byId = {};
  items.forEach(function (item) { byId[item.id] = item; });

  var cells = {};
  function cellKey(sentence, item) { return sentence + "\u0000" + item; }
  function addSample(sentence, item, sample) { (cells[cellKey(sentence, item)] = cells[cellKey(sentence, item)] || []).push(sample); }
  DATA.rows.forEach(function (r) {
    addSample(r.sentence, r.model, { key: r.model + "#" + r.take, item: r.model, take: r.take, audio: r.audio,
      values: r.values, problems: r.problems, transcript: r.transcript, voice: r.voice });
  });
  DATA.sentences.forEach(function (s) {
    Object.keys(s.anchors).forEach(function (column) {
      var ref = DATA.references[s.anchors[column]];
      addSample(s.id, column, { key: column + "#0", item: column, take: 0, audio: ref.audio, values: ref.values,
        problems: "", transcript: ref.transcript, reference: ref });
    });
  });

  function samplesOf(item) {
    if (item.ref) { return DATA.references.filter(function (r) { return r.kind === item.kind; }); }
    return DATA.rows.filter(function (r) { return r.model === item.id; });
  }

  var means = {};
  items.forEach(function (item) {
    var mine = samplesOf(item);
    means[item.id] = { n: mine.length };
    DATA.metrics.forEach(function (m) {
      means[item.id][m.key] = mean(mine.map(function (r) { return r.values[m.key]; }));
    });
  });

  function myRating(item) {
    var values = [];
    Object.keys(state.ratings).forEach(function (sentence) {
      Object.keys(state.ratings[sentence]).forEach(function (key) {
        if (key.split("#")[0] === item.id) { values.push(state.ratings[sentence][key]); }
      });
    });
    return mean(values);
  }

  var sortOptions = [{ key: "", label: "results order" }];
  DATA.metrics.forEach(function (m) { sortOptions.push({ key: "m:" + m.key, label: "mean " + labels[m.key] }); });
  if (ranking) {
    sortOptions.push({ key: "composite", label: "composite score" });
    sortOptions.push({ key: "p_best", label: "P(best)" });
  }
  sortOptions.push({ key: "rating", label: "my mean rating" });

  function sortValue(item, key) {
    if (key.indexOf("m:") === 0) { return means[item.id][key.slice(2)]; }
    if (key === "composite" || key === "p_best") { return ranked[item.id] ? ranked[item.id][key] : null; }
    if (key === "rating") { return myRating(item); }
    return item.index;
  }

  function orderedItems() {
    var key = state.sort.key, sign = state.sort.dir === "desc" ? -1 : 1;
    return items.slice().sort(function (a, b) {
      var x = sortValue(a, key), y = sortValue(b, key);
      var xe = x === null || x === undefined, ye = y === null || y === undefined;
      if (xe || ye) { return xe === ye ? a.index - b.index : (xe ? 1 : -1); }
      return (x - y) * sign || a.index - b.index;
    });
  }

  // --- the grid ------------------------------------------------------------------------------

  var playing = null;
  // One audio element per cell's sample, kept across re-renders (no reload on a re-sort); per
  // cell, not per file: one real-speaker clip can be the anchor of several sentences.
  var players = {};

  function player(sentence, sample) {
    var id = cellKey(sentence.id, sample.key);
    var audio = players[id];
    if (!audio) {
      // preload none: 50 models x 100 sentences must not open 5000 files before anyone listens.
      audio = players[id] = el("audio", { preload: "none", src: sample.audio });
      var reset = function () { if (audio.button) { audio.button.textContent = "▶"; audio.button.classList.remove("on"); } };
      audio.addEventListener("ended", reset);
      audio.addEventListener("pause", reset);
    }
    if (!audio.paused) { audio.pause(); }
    var button = el("button", { type: "button", class: "play", title: "play", "aria-label": "play", text: "▶" });
    audio.button = button;
    button.addEventListener("click", function () {
      if (!audio.paused) { audio.pause(); return; }
      if (playing && playing !== audio) { playing.pause(); }
      playing = audio;
      audio.button = button;
      audio.currentTime = 0;
      button.textContent = "❚❚";
      button.classList.add("on");
      audio.play().catch(function (e) {
        button.textContent = "▶"; button.classList.remove("on"); button.title = "cannot play: " + e.message;
      });
    });
    return [audio, button];
  }

  function metricsTitle(sample) {
    var parts = DATA.metrics.filter(function (m) { return sample.values[m.key] !== null && sample.values[m.key] !== undefined; })
      .map(function (m) { return m.label + ": " + fmt(sample.values[m.key]); });
    if (sample.transcript) { parts.push("heard: " + sample.transcript); }
    if (sample.voice) { parts.push("voice: " + sample.voice); }
    if (sample.problems) { parts.push(sample.problems); }
    return parts.join("\n");
  }

  function shortName(item, cut) { return item.ref || !cut ? item.label : "…" + item.label.slice(cut); }

  function sampleBox(sentence, sample, index, blind, cut) {
    var item = byId[sample.item];
    var box = el("div", { class: "sample", title: blind ? null : metricsTitle(sample), "data-key": sample.key });
    var top = el("div", { class: "row" });
    if (sample.audio) { player(sentence, sample).forEach(function (n) { top.append(n); }); }
    else { top.append(el("span", { class: "missing", title: sample.problems, text: "no audio" })); }
    var stored = (state.ratings[sentence.id] || {})[sample.key];
    var readout = el("span", { class: "rv", text: stored === undefined ? "–" : String(stored) });
    var pick = el("input", { type: "radio", name: "pick-" + index, value: sample.key, title: "best of this sentence",
      "aria-label": "best" });
    pick.checked = state.picks[sentence.id] === sample.key;
    pick.addEventListener("change", function () { state.picks[sentence.id] = sample.key; save(); showPicks(); renderMerged(); });
    top.append(el("label", { class: "pick", title: "best of this sentence" }, [pick]));
    var slider = el("input", { type: "range", min: "0", max: "100", step: "1", class: "rate" + (stored === undefined ? " unrated" : ""),
      "aria-label": "rating 0-100", title: "rating 0-100" });
    slider.value = stored === undefined ? "50" : String(stored);
    slider.addEventListener("input", function () {
      (state.ratings[sentence.id] = state.ratings[sentence.id] || {})[sample.key] = Number(slider.value);
      readout.textContent = slider.value;
      slider.classList.remove("unrated");
      save();
      renderMerged();
    });
    var meta = el("div", { class: "row meta" }, [readout]);
    if (!blind && sample.values.truncated) { meta.append(el("span", { class: "badge warn", title: sample.problems, text: "cut" })); }
    box.append(top, slider, meta);
    if (blind && state.blind.revealed) {
      box.append(el("span", { class: "who" + (item.ref ? " ref" : ""), title: item.label, text: (item.ref ? "★ " : "") + shortName(item, cut) }));
    }
    return box;
  }

  // With 20 columns a name shows a few characters: drop the prefix every shown model shares
  // (up to a separator), so the header shows what tells the models apart; the tooltip has it all.
  function sharedPrefix(names) {
    if (names.length < 2) { return 0; }
    var n = 0;
    while (names.every(function (x) { return x.length > n && x[n] === names[0][n]; })) { n++; }
    var cut = Math.max(names[0].lastIndexOf("-", n - 1), names[0].lastIndexOf("_", n - 1), names[0].lastIndexOf(".", n - 1));
    return cut > 0 ? cut + 1 : 0;
  }

  function renderGrid() {
    var wrap = document.getElementById("grid-wrap");
    var shown = orderedItems().filter(function (item) { return !state.hidden[item.id]; });
    var blind = state.blind.on;
    var cut = sharedPrefix(shown.filter(function (item) { return !item.ref; }).map(function (item) { return item.label; }));
    var head = [el("th", { scope: "col", class: "corner", text: "sentence" })].concat(shown.map(function (item, j) {
      if (blind) { return el("th", { scope: "col", class: "col", text: String(j + 1) }); }
      return el("th", { scope: "col", class: "col" + (item.ref ? " ref" : ""), title: item.title, "data-model": item.id },
        [el("span", { class: "name", text: shortName(item, cut) })].concat(item.error ? [el("span", { class: "failed", text: "not evaluated" })] : []));
    }));
    var body = DATA.sentences.map(function (sentence, index) {
      var order = blind ? shuffled(shown, state.blind.seed, sentence.id) : shown;
      var row = [el("th", { scope: "row", title: sentence.text }, [el("span", { class: "sid", text: sentence.id }),
        el("span", { class: "text", text: sentence.text })])];
      order.forEach(function (item) {
        var samples = cells[cellKey(sentence.id, item.id)] || [];
        var td = el("td", { class: item.ref && (!blind || state.blind.revealed) ? "ref" : null, "data-model": blind && !state.blind.revealed ? null : item.id });
        samples.forEach(function (s) { td.append(sampleBox(sentence, s, index, blind, cut)); });
        if (!samples.length) {
          td.append(el("span", { class: "missing", text: item.error ? "not evaluated" : (item.ref ? "no recording" : "no sample") }));
        }
        row.push(td);
      });
      return el("tr", { "data-sentence": sentence.id }, row);
    });
    var grid = el("table", { class: "grid" + (blind ? " blind" : "") }, [el("thead", {}, [el("tr", {}, head)]), el("tbody", {}, body)]);
    grid.style.minWidth = "calc(10rem + " + shown.length + " * 3rem)";
    wrap.replaceChildren(grid);
    document.getElementById("shown-count").textContent = shown.length + " of " + items.length + " shown";
    document.getElementById("reveal").disabled = !blind;
    document.getElementById("reveal").textContent = state.blind.revealed ? "hide names" : "reveal";
    showPicks();
  }

  function showPicks() {
    var counts = {};
    Object.keys(state.picks).forEach(function (sentence) {
      var id = state.picks[sentence].split("#")[0];
      counts[id] = (counts[id] || 0) + 1;
    });
    var total = Object.keys(state.picks).length;
    var text;
    if (!total) { text = "Best picks: none yet."; }
    else if (state.blind.on && !state.blind.revealed) { text = "Best picks: " + total + " sentence(s) (names hidden in blind mode)."; }
    else {
      text = "Best picks: " + Object.keys(counts).sort(function (a, b) { return counts[b] - counts[a]; })
        .map(function (id) { return (byId[id] ? byId[id].label : id) + ": " + counts[id]; }).join(", ") + ".";
    }
    document.getElementById("pick-summary").textContent = text;
  }

  function renderChooser() {
    var list = document.getElementById("model-list");
    list.replaceChildren.apply(list, items.map(function (item) {
      var box = el("input", { type: "checkbox", class: "model-toggle", "data-model": item.id });
      box.checked = !state.hidden[item.id];
      box.addEventListener("change", function () {
        if (box.checked) { delete state.hidden[item.id]; } else { state.hidden[item.id] = true; }
        save(); renderGrid();
      });
      return el("label", { title: item.title, class: item.ref ? "ref" : null }, [box, el("span", { text: item.label })]);
    }));
  }

  function selectAll(shown) {
    state.hidden = {};
    if (!shown) { items.forEach(function (item) { state.hidden[item.id] = true; }); }
    save(); renderChooser(); renderGrid();
  }

  function setupControls() {
    document.getElementById("select-all").addEventListener("click", function () { selectAll(true); });
    document.getElementById("select-none").addEventListener("click", function () { selectAll(false); });
    var metric = document.getElementById("sort-metric");
    sortOptions.forEach(function (o) { metric.append(el("option", { value: o.key, text: o.label })); });
    metric.value = state.sort.key;
    metric.addEventListener("change", function () { state.sort.key = metric.value; save(); renderGrid(); });
    var dir = document.getElementById("sort-dir");
    function showDir() { dir.textContent = state.sort.dir === "desc" ? "descending ▼" : "ascending ▲"; dir.setAttribute("data-dir", state.sort.dir); }
    showDir();
    dir.addEventListener("click", function () { state.sort.dir = state.sort.dir === "desc" ? "asc" : "desc"; showDir(); save(); renderGrid(); });
    var blind = document.getElementById("blind");
    blind.checked = state.blind.on;
    blind.addEventListener("change", function () {
      state.blind = { on: blind.checked, seed: blind.checked ? Math.floor(Math.random() * 4294967296) | 0 : 0, revealed: false };
      save(); renderGrid(); renderMerged();
    });
    document.getElementById("reveal").addEventListener("click", function () {
      state.blind.revealed = !state.blind.revealed; save(); renderGrid(); renderMerged();
    });
    var listener = document.getElementById("listener");
    listener.value = state.listener;
    listener.addEventListener("input", function () { state.listener = listener.value; save(); });
    document.getElementById("export-ratings").addEventListener("click", exportRatings);
    document.getElementById("clear-ratings").addEventListener("click", function () {
      if (!window.confirm("Forget every rating and pick made in this browser for this report?")) { return; }
      state.ratings = {}; state.picks = {}; save(); renderGrid(); renderMerged();
    });
    document.getElementById("merge-files").addEventListener("change", function (event) {
      var files = Array.prototype.slice.call(event.target.files);
      event.target.value = "";  // choosing the same files again reloads them
      mergeFiles(files);
    });
    var onlyDiff = document.getElementById("only-diff");
    if (onlyDiff) {
      onlyDiff.addEventListener("change", function () {
        document.querySelectorAll("table.settings").forEach(function (t) { t.classList.toggle("only-diff", onlyDiff.checked); });
      });
    }
  }

  // --- ratings: export, merge ------------------------------------------------------------------

  function myExport() {
    var ratings = [], picks = [];
    Object.keys(state.ratings).forEach(function (sentence) {
      Object.keys(state.ratings[sentence]).forEach(function (key) {
        var parts = key.split("#");
        ratings.push({ sentence: sentence, model: parts[0], take: Number(parts[1]), rating: state.ratings[sentence][key] });
      });
    });
    Object.keys(state.picks).forEach(function (sentence) {
      var parts = state.picks[sentence].split("#");
      picks.push({ sentence: sentence, model: parts[0], take: Number(parts[1]) });
    });
    return { format: FORMAT, version: 1, report: DATA.title, listener: state.listener || "anonymous",
      exported: new Date().toISOString(), blind: state.blind.on, ratings: ratings, picks: picks };
  }

  function exportRatings() {
    var data = myExport();
    var blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
    var link = el("a", { href: URL.createObjectURL(blob), download: "ratings-" + data.listener.replace(/[^A-Za-z0-9_.-]+/g, "_") + ".json" });
    document.body.appendChild(link);
    link.click();
    link.remove();
  }

  var loaded = [];

  function mergeFiles(files) {
    // Files are read in parallel but applied in the order they were chosen, so the merged table's
    // columns and the error list do not depend on which read finished first.
    var errors = document.getElementById("merge-errors");
    errors.replaceChildren();
    Promise.all(files.map(function (file) {
      return file.text().then(function (text) {
        var data;
        try { data = JSON.parse(text); } catch (e) { return { error: file.name + ": not JSON (" + e.message + ")" }; }
        if (!data || data.format !== FORMAT || !Array.isArray(data.ratings) || !Array.isArray(data.picks)) {
          return { error: file.name + ": not a ratings file exported by this report" };
        }
        return { data: data };
      }, function (e) { return { error: file.name + ": " + e.message }; });
    })).then(function (results) {
      results.forEach(function (result) {
        if (result.error) { errors.append(el("li", { text: result.error })); return; }
        loaded = loaded.filter(function (d) { return d.listener !== result.data.listener; });
        loaded.push(result.data);
      });
      renderMerged();
    });
  }

  function renderMerged() {
    var target = document.getElementById("merged");
    if (!loaded.length && state.blind.on && !state.blind.revealed) {
      target.replaceChildren(el("p", { text: "Your ratings per model are hidden in blind mode (reveal, or leave blind mode, to see them)." }));
      return;
    }
    var listeners = loaded.length ? loaded : [myExport()];
    var rows = {};
    function entry(id) {
      return (rows[id] = rows[id] || { id: id, per: listeners.map(function () { return []; }), picks: 0 });
    }
    listeners.forEach(function (l, i) {
      l.ratings.forEach(function (r) { entry(r.model).per[i].push(r.rating); });
      l.picks.forEach(function (p) { entry(p.model).picks += 1; });
    });
    var ids = Object.keys(rows);
    if (!ids.length) { target.replaceChildren(el("p", { text: "No ratings yet." })); return; }
    var headers = ["model"].concat(listeners.map(function (l) { return { label: l.listener, title: "mean rating (count)" }; }),
      ["mean rating", "ratings", "best picks"]);
    var body = ids.map(function (id) {
      var all = [].concat.apply([], rows[id].per);
      var m = mean(all);
      return [{ text: byId[id] ? byId[id].label : id, cls: byId[id] && byId[id].ref ? "ref" : null }]
        .concat(rows[id].per.map(function (values) {
          var v = mean(values);
          return { text: values.length ? fmt(v) + " (" + values.length + ")" : "-", value: v };
        }), [{ text: fmt(m), value: m }, { text: String(all.length), value: all.length }, { text: String(rows[id].picks), value: rows[id].picks }]);
    });
    var caption = loaded.length ? "Merged: " + loaded.length + " listener file(s)." : "Your ratings in this browser (load files to merge listeners).";
    target.replaceChildren(el("p", { class: "hint", text: caption }), table(headers, body, "merged"));
  }

  // --- ranking and tables --------------------------------------------------------------------

  function rankingTable(group) {
    var metrics = group.metrics;
    var headers = ["#", "model", "composite", "P(best)", "gap to leader"].concat(metrics.map(function (m) { return m.label; }));
    var body = group.models.map(function (r, i) {
      var row = [{ text: String(i + 1), value: i + 1 }, { text: r.model },
        { text: interval(r.composite, r.composite_ci), value: r.composite },
        { text: pct(r.p_best), value: r.p_best },
        { text: interval(r.gap_to_leader, r.gap_to_leader_ci), value: r.gap_to_leader }];
      metrics.forEach(function (m) {
        var s = r.metrics[m.name] || { not_measured: true };
        row.push(s.not_measured ? { text: "not measured", value: null } : { text: interval(s.mean, s.ci), value: s.mean });
      });
      if (group.winner === r.model) { row.rowClass = "winner"; } else if (group.tied.indexOf(r.model) >= 0) { row.rowClass = "tied"; }
      return row;
    });
    // The ceiling rows (the real speaker's recordings, and through the codec): means and
    // intervals over their own clips, shown beside the models without competing.
    (group.ceiling || []).forEach(function (c) {
      var row = [{ text: "", value: null }, { text: c.name, cls: "ref", title: c.n_clips + " clip(s)" }, { text: "-" }, { text: "-" }, { text: "-" }];
      metrics.forEach(function (m) {
        var s = c.metrics[m.name] || { not_measured: true };
        row.push(s.not_measured ? { text: "not measured", value: null } : { text: interval(s.mean, s.ci), value: s.mean });
      });
      row.rowClass = "ref";
      body.push(row);
    });
    return table(headers, body, "ranking");
  }

  function rankingBlock(group) {
    var labelsOf = {};
    group.metrics.forEach(function (m) { labelsOf[m.name] = m.label; });
    var level = Math.round(group.confidence_level * 100);
    var lines = [
      group.models.length + " models, " + group.n_sentences + " sentence(s), " + level + "% bootstrap intervals (" +
        group.n_resamples + " resamples, seed " + group.seed + ")."
    ];
    if (group.winner) { lines.push("Suggested winner: " + group.winner + " (best in " + pct(group.models[0].p_best) + " of resamples)."); }
    else if (group.tied.length) { lines.push("Tie: " + group.tied.join(", ") + " cannot be told apart (the " + level + "% interval of their composite difference includes 0)."); }
    else { lines.push("No metric separates the models."); }
    if (group.composite_metrics.length) {
      lines.push("Composite (higher is better) over: " + group.composite_metrics.map(function (n) { return labelsOf[n] || n; }).join(", ") + ".");
    }
    Object.keys(group.left_out_of_composite || {}).forEach(function (n) {
      lines.push("Left out of the composite: " + (labelsOf[n] || n) + " (" + group.left_out_of_composite[n] + ").");
    });
    return [el("div", { class: "verdict" }, lines.map(function (l) { return el("p", { text: l }); })),
      el("div", { class: "scroll" }, [rankingTable(group)])];
  }

  function renderRanking() {
    var target = document.getElementById("ranking-body");
    if (!ranking) { target.replaceChildren(el("p", { text: "Not computed (it needs two or more models with samples)." })); return; }
    var parts = rankingBlock(ranking);
    Object.keys(ranking.per_speaker || {}).forEach(function (speaker) {
      parts.push(el("h3", { text: "Speaker " + speaker }));
      parts = parts.concat(rankingBlock(ranking.per_speaker[speaker]));
    });
    target.replaceChildren.apply(target, parts);
  }

  function measuredAnywhere(key) {
    return DATA.rows.concat(DATA.references).some(function (r) { return r.values[key] !== null && r.values[key] !== undefined; });
  }

  function renderAverages() {
    var headers = ["model", "samples"].concat(DATA.metrics.map(function (m) { return "mean " + labels[m.key]; }));
    if (ranking) { headers.push("composite", "P(best)"); }
    var body = items.filter(function (item) { return means[item.id].n > 0; }).map(function (item) {
      var row = [{ text: item.label, cls: item.ref ? "ref" : null, title: item.title }, { text: String(means[item.id].n), value: means[item.id].n }];
      DATA.metrics.forEach(function (m) {
        var v = means[item.id][m.key];
        row.push({ text: v === null ? "not measured" : fmt(v), value: v });
      });
      if (ranking) {
        var r = ranked[item.id];
        row.push({ text: r ? interval(r.composite, r.composite_ci) : "-", value: r ? r.composite : null },
          { text: r ? pct(r.p_best) : "-", value: r ? r.p_best : null });
      }
      if (item.ref) { row.rowClass = "ref"; }
      return row;
    });
    document.getElementById("averages-body").replaceChildren(table(headers, body, "averages"));
  }

  function metricCells(values) {
    return DATA.metrics.map(function (m) { return { text: fmt(values[m.key]), value: values[m.key] }; });
  }

  function metricHeaders() {
    return DATA.metrics.map(function (m) {
      return measuredAnywhere(m.key) ? m.label : { label: m.label + " (not measured)", title: "no sample has this metric" };
    });
  }

  function renderSamples() {
    var headers = ["model", "sentence", "take"].concat(metricHeaders(), ["heard", "problems"]);
    var body = DATA.rows.map(function (r) {
      return [{ text: r.model }, { text: r.sentence }, { text: String(r.take), value: r.take }]
        .concat(metricCells(r.values), [{ text: r.transcript === null || r.transcript === undefined ? "-" : r.transcript }, { text: r.problems }]);
    });
    document.getElementById("samples-body").replaceChildren(table(headers, body, "samples"));
  }

  function renderReferences() {
    var target = document.getElementById("references-body");
    if (!DATA.references.length) {
      target.replaceChildren(el("p", { text: "No recordings of the real speaker in these results (not measured)." }));
      return;
    }
    var headers = ["kind", "speaker", "from", "listen", "text"].concat(metricHeaders(), ["heard"]);
    var origins = { "configured": "configured", "held-out": "held out of training (automatic)" };
    var body = DATA.references.map(function (r) {
      var origin = origins[r.origin] || "-";
      return [{ text: r.kind === "codec" ? "real speaker (codec)" : "real speaker" }, { text: fmt(r.speaker) },
        { text: origin, title: r.source || undefined },
        { node: el("audio", { controls: true, preload: "metadata", src: r.audio }), value: r.audio }, { text: fmt(r.text) }]
        .concat(metricCells(r.values), [{ text: fmt(r.transcript) }]);
    });
    target.replaceChildren(table(headers, body, "references"));
  }

  // --- loss curves -----------------------------------------------------------------------------

  var curveHidden = {};

  function ticks(lo, hi, count) {
    if (hi <= lo) { hi = lo + 1; }
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / count)));
    [1, 2, 5, 10].some(function (m) { if ((hi - lo) / (step * m) <= count) { step *= m; return true; } return false; });
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) { out.push(Number(v.toPrecision(12))); }
    return out;
  }

  function color(i) { return "hsl(" + Math.round((i * 137.508) % 360) + ", 65%, 42%)"; }

  function renderLoss() {
    var target = document.getElementById("loss-chart");
    var series = DATA.models.map(function (m, i) { return { id: m.id, color: color(i), train: m.loss, val: m.eval_loss }; })
      .filter(function (s) { return s.train.length || s.val.length; });
    if (!series.length) { target.replaceChildren(el("p", { text: "No training metrics found (metrics.json in the checkpoints)." })); return; }
    var W = 860, H = 340, L = 60, R = 14, T = 12, B = 40;
    var chart = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "loss", role: "img", "aria-label": "loss curves" });
    var tip = el("div", { class: "tip", hidden: true });
    var legend = el("div", { class: "legend" });
    var anyVal = series.some(function (s) { return s.val.length; });

    function draw() {
      chart.replaceChildren();
      var visible = series.filter(function (s) { return !curveHidden[s.id]; });
      var points = [].concat.apply([], (visible.length ? visible : series).map(function (s) { return s.train.concat(s.val); }));
      var xs = points.map(function (p) { return p[0]; }), ys = points.map(function (p) { return p[1]; });
      var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs), y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
      if (x1 === x0) { x1 = x0 + 1; }
      if (y1 === y0) { y1 = y0 + 1; }
      var pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
      function px(x) { return L + (x - x0) / (x1 - x0) * (W - L - R); }
      function py(y) { return T + (1 - (y - y0) / (y1 - y0)) * (H - T - B); }
      ticks(x0, x1, 8).forEach(function (t) {
        chart.append(svg("line", { x1: px(t), x2: px(t), y1: T, y2: H - B, class: "gridline" }));
        var label = svg("text", { x: px(t), y: H - B + 16, "text-anchor": "middle" }); label.textContent = fmt(t); chart.append(label);
      });
      ticks(y0, y1, 6).forEach(function (t) {
        chart.append(svg("line", { x1: L, x2: W - R, y1: py(t), y2: py(t), class: "gridline" }));
        var label = svg("text", { x: L - 6, y: py(t) + 4, "text-anchor": "end" }); label.textContent = fmt(t); chart.append(label);
      });
      var xl = svg("text", { x: (L + W - R) / 2, y: H - 6, "text-anchor": "middle" }); xl.textContent = "step"; chart.append(xl);
      var yl = svg("text", { x: 14, y: (T + H - B) / 2, transform: "rotate(-90 14 " + (T + H - B) / 2 + ")", "text-anchor": "middle" });
      yl.textContent = "loss"; chart.append(yl);
      chart.append(svg("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "frame" }));
      visible.forEach(function (s) {
        [[s.train, "train"], [s.val, "val"]].forEach(function (pair) {
          if (!pair[0].length) { return; }
          chart.append(svg("polyline", { points: pair[0].map(function (p) { return px(p[0]) + "," + py(p[1]); }).join(" "),
            stroke: s.color, class: "curve " + pair[1], "data-model": s.id }));
        });
      });
      var cursor = svg("line", { y1: T, y2: H - B, class: "cursor", visibility: "hidden" });
      chart.append(cursor);
      var overlay = svg("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "overlay" });
      chart.append(overlay);
      overlay.addEventListener("mousemove", function (event) {
        var box = chart.getBoundingClientRect();
        var sx = (event.clientX - box.left) / box.width * W;
        var step = x0 + (sx - L) / (W - L - R) * (x1 - x0);
        function nearest(list) {
          return list.reduce(function (best, p) { return !best || Math.abs(p[0] - step) < Math.abs(best[0] - step) ? p : best; }, null);
        }
        var sy = (event.clientY - box.top) / box.height * H;
        var level = y0 + (1 - (sy - T) / (H - T - B)) * (y1 - y0);
        // The curves nearest the pointer first (the nearest drawn bold): with 20 or more
        // models a full list would cover the chart.
        var near = visible.map(function (s) {
          var t = nearest(s.train), v = nearest(s.val);
          var d = Math.min(t ? Math.abs(t[1] - level) : Infinity, v ? Math.abs(v[1] - level) : Infinity);
          return { s: s, t: t, v: v, d: d };
        }).sort(function (a, b) { return a.d - b.d; });
        chart.querySelectorAll("polyline.near").forEach(function (p) { p.classList.remove("near"); });
        chart.querySelectorAll("polyline").forEach(function (p) { if (near.length && p.getAttribute("data-model") === near[0].s.id) { p.classList.add("near"); } });
        var lines = near.slice(0, 8).map(function (n) {
          return el("div", { class: "line" }, [el("span", { class: "swatch", style: "background:" + n.s.color }),
            el("span", { class: "who", text: n.s.id }),
            el("span", { class: "values", text: ": " + (n.t ? "train " + fmt(n.t[1]) + " @ " + fmt(n.t[0]) : "") +
              (n.v ? (n.t ? ", " : "") + "validation " + fmt(n.v[1]) + " @ " + fmt(n.v[0]) : "") })]);
        });
        if (near.length > 8) { lines.push(el("div", { class: "step", text: "+ " + (near.length - 8) + " more (untick models to see them)" })); }
        cursor.setAttribute("x1", sx); cursor.setAttribute("x2", sx); cursor.setAttribute("visibility", "visible");
        tip.replaceChildren.apply(tip, [el("div", { class: "step", text: "step " + fmt(step) + ", loss " + fmt(level) })].concat(lines));
        tip.hidden = !lines.length;
        tip.style.left = Math.max(0, Math.min(event.clientX - box.left + 14, box.width - 380)) + "px";
        tip.style.top = (event.clientY - box.top + 10) + "px";
      });
      overlay.addEventListener("mouseleave", function () {
        tip.hidden = true;
        cursor.setAttribute("visibility", "hidden");
        chart.querySelectorAll("polyline.near").forEach(function (p) { p.classList.remove("near"); });
      });
    }

    series.forEach(function (s) {
      var box = el("input", { type: "checkbox", class: "curve-toggle", "data-model": s.id });
      box.checked = !curveHidden[s.id];
      box.addEventListener("change", function () { if (box.checked) { delete curveHidden[s.id]; } else { curveHidden[s.id] = true; } draw(); });
      legend.append(el("label", { title: s.id }, [box, el("span", { class: "swatch", style: "background:" + s.color }), el("span", { text: s.id })]));
    });
    var note = el("p", { class: "hint", text: "Solid: training loss" + (anyVal ? "; dashed: validation loss" : "") +
      ". Hover the chart for values; untick a model to hide its curves." });
    target.replaceChildren(el("div", { class: "chart" }, [chart, tip]), note, legend);
    draw();
  }

  setupControls();
  renderChooser();
  renderGrid();
  renderMerged();
  renderRanking();
  renderAverages();
  renderLoss();
  renderReferences();
  renderSamples();
})();
