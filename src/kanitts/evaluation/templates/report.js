// Sorting, "show only differing settings", and picks kept in localStorage.
// Plain script, no libraries: the report must open from disk with no network.
(function () {
  "use strict";

  function cellValue(row, index) {
    var raw = row.cells[index].getAttribute("data-value");
    var number = parseFloat(raw);
    return raw !== "" && !isNaN(number) && isFinite(raw) ? number : raw;
  }

  function sortBy(table, index, header) {
    var ascending = !header.classList.contains("asc");
    table.querySelectorAll("th[data-sort]").forEach(function (th) { th.classList.remove("asc", "desc"); });
    header.classList.add(ascending ? "asc" : "desc");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, index), y = cellValue(b, index);
      if (x === y) { return 0; }
      if (x === "") { return 1; }
      if (y === "") { return -1; }
      var order = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th[data-sort]").forEach(function (th) {
      th.addEventListener("click", function () { sortBy(table, Number(th.getAttribute("data-sort")), th); });
    });
  });

  var onlyDiff = document.getElementById("only-diff");
  if (onlyDiff) {
    onlyDiff.addEventListener("change", function () {
      document.querySelectorAll("table.settings").forEach(function (t) { t.classList.toggle("only-diff", onlyDiff.checked); });
    });
  }

  var storageKey = "kanitts-picks:" + document.title + ":" + location.pathname;

  function loadPicks() {
    try { return JSON.parse(window.localStorage.getItem(storageKey) || "{}"); } catch (e) { return {}; }
  }

  function savePicks(picks) {
    try { window.localStorage.setItem(storageKey, JSON.stringify(picks)); } catch (e) { /* storage disabled */ }
  }

  function showSummary(picks) {
    var counts = {};
    Object.keys(picks).forEach(function (sentence) {
      var model = picks[sentence].split("#")[0];
      counts[model] = (counts[model] || 0) + 1;
    });
    var parts = Object.keys(counts).sort(function (a, b) { return counts[b] - counts[a]; })
      .map(function (model) { return model + ": " + counts[model]; });
    document.getElementById("pick-summary").textContent = parts.length ? parts.join(", ") : "none yet";
  }

  var picks = loadPicks();
  document.querySelectorAll(".pick input[type=radio]").forEach(function (input) {
    var sentence = input.name.slice("pick-".length);
    if (picks[sentence] === input.value) { input.checked = true; }
    input.addEventListener("change", function () {
      picks[sentence] = input.value;
      savePicks(picks);
      showSummary(picks);
    });
  });
  showSummary(picks);

  document.getElementById("clear-picks").addEventListener("click", function () {
    picks = {};
    savePicks(picks);
    document.querySelectorAll(".pick input[type=radio]").forEach(function (input) { input.checked = false; });
    showSummary(picks);
  });

  document.getElementById("download-picks").addEventListener("click", function () {
    var blob = new Blob([JSON.stringify(picks, null, 2)], { type: "application/json" });
    var link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "picks.json";
    document.body.appendChild(link);
    link.click();
    link.remove();
  });
})();
