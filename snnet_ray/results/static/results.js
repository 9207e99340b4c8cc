// snnet-ray results page: optional enhancements (the page is complete without them).
// Hovering a point highlights its table row and back; headers sort the table; the budget slider
// shows the most accurate config within a GMACs budget and dims the configs over it.
(function () {
  "use strict";
  const points = document.querySelectorAll("svg.chart .pt");
  const rows = document.querySelectorAll("table#configs tbody tr");
  const rowFor = new Map(), pointFor = new Map();
  rows.forEach((r) => rowFor.set(r.dataset.config, r));
  points.forEach((p) => pointFor.set(p.dataset.config, p));

  function highlight(id, on) {
    const p = pointFor.get(id), r = rowFor.get(id);
    if (p) p.classList.toggle("hl", on);
    if (r) r.classList.toggle("hl", on);
  }
  points.forEach((p) => {
    p.addEventListener("mouseenter", () => highlight(p.dataset.config, true));
    p.addEventListener("mouseleave", () => highlight(p.dataset.config, false));
    p.addEventListener("click", () => {
      const r = rowFor.get(p.dataset.config);
      if (r) r.scrollIntoView({ behavior: "smooth", block: "center" });
    });
  });
  rows.forEach((r) => {
    r.addEventListener("mouseenter", () => highlight(r.dataset.config, true));
    r.addEventListener("mouseleave", () => highlight(r.dataset.config, false));
  });

  // Sortable tables: numbers compare as numbers, "—" sorts last.
  document.querySelectorAll("table.sortable").forEach((table) => {
    const heads = table.querySelectorAll("thead th");
    heads.forEach((th, col) => {
      th.addEventListener("click", () => {
        const asc = !th.classList.contains("asc");
        heads.forEach((h) => h.classList.remove("asc", "desc"));
        th.classList.add(asc ? "asc" : "desc");
        const body = table.tBodies[0];
        const key = (tr) => {
          const text = tr.children[col].textContent.trim().replace(/[%,◆★+ ]/g, "");
          const num = parseFloat(text);
          return text === "" || text === "—" ? null : (isNaN(num) ? text : num);
        };
        const sorted = Array.from(body.rows).sort((a, b) => {
          const x = key(a), y = key(b);
          if (x === null) return 1;
          if (y === null) return -1;
          const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
          return asc ? c : -c;
        });
        sorted.forEach((tr) => body.appendChild(tr));
      });
    });
  });

  // Budget slider.
  const budget = document.getElementById("budget");
  const data = document.getElementById("points");
  if (budget && data) {
    const configs = JSON.parse(data.textContent).filter((c) => c.gmacs !== null && c.top1 !== null);
    const out = document.getElementById("budget-out");
    // As many decimals as tell configs apart (tiny models cost a few MMACs).
    const largest = Math.max(...configs.map((c) => c.gmacs), 1e-9);
    const d = largest >= 1 ? 2 : largest >= 0.1 ? 3 : 4;
    const update = () => {
      const limit = parseFloat(budget.value);
      let best = null;
      configs.forEach((c) => {
        const fits = c.gmacs <= limit + 1e-9;
        const p = pointFor.get(String(c.id));
        if (p) p.classList.toggle("dim", !fits);
        if (fits && (best === null || c.top1 > best.top1)) best = c;
      });
      out.textContent = best
        ? `≤ ${limit.toFixed(d)} GMACs: best is ${best.name} at ${best.top1.toFixed(2)}% (${best.gmacs.toFixed(d)} GMACs)`
        : `≤ ${limit.toFixed(d)} GMACs: nothing fits`;
    };
    budget.addEventListener("input", update);
    budget.parentElement.hidden = false;
    update();
  }
})();
