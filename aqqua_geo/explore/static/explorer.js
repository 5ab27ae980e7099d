/* aqqua explorer: a 2-D map of the embedding space of plankton images.
 *
 * Points are rasterised straight into an ImageData buffer (no per-point DOM or SVG element),
 * which keeps 100k+ points interactive on any machine, with or without a GPU. Picking uses a
 * uniform grid index over the layout coordinates. Data come from /api/... in server mode and
 * from window.AQQUA_DATA (data.js next to the page) in static mode, so the page also works
 * from file://. window.aqquaExplorer exposes state and actions for tests and scripting.
 */
(function () {
  "use strict";

  const MODE = window.AQQUA_MODE || "server";
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
    "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5"];
  const VIRIDIS = ["#440154", "#482475", "#414487", "#355f8d", "#2a788e", "#21918c", "#22a884", "#44bf70",
    "#7ad151", "#bddf26", "#fde725"];
  const OTHER = "#b0b0b0", MISSING = "#e0e0e0";
  const BG = 0xffffffff;
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- colours -------------------
  function hexRgb(h) { const v = parseInt(h.slice(1), 16); return [(v >> 16) & 255, (v >> 8) & 255, v & 255]; }
  function packRgb(r, g, b) { return ((255 << 24) | (b << 16) | (g << 8) | r) >>> 0; } // ImageData is RGBA LE
  function packHex(h) { const [r, g, b] = hexRgb(h); return packRgb(r, g, b); }
  function fade(c, keep) { // blend towards white
    const r = c & 255, g = (c >> 8) & 255, b = (c >> 16) & 255;
    return packRgb(Math.round(255 - (255 - r) * keep), Math.round(255 - (255 - g) * keep), Math.round(255 - (255 - b) * keep));
  }
  const VIRIDIS_LUT = (function () {
    const lut = new Uint32Array(256), stops = VIRIDIS.map(hexRgb);
    for (let i = 0; i < 256; i++) {
      const t = (i / 255) * (stops.length - 1), k = Math.min(Math.floor(t), stops.length - 2), f = t - k;
      const c = [0, 1, 2].map((j) => Math.round(stops[k][j] * (1 - f) + stops[k + 1][j] * f));
      lut[i] = packRgb(c[0], c[1], c[2]);
    }
    return lut;
  })();
  function cssOf(c) { return `rgb(${c & 255},${(c >> 8) & 255},${(c >> 16) & 255})`; }

  // ---------------------------------------------------------------- data ----------------------
  function base64ToBuffer(s) {
    const bin = atob(s), n = bin.length, out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }
  const TYPED = { u8: Uint8Array, u16: Uint16Array, u32: Uint32Array, f32: Float32Array, f64: Float64Array };
  function decodePoints(buf) {
    const magic = new TextDecoder().decode(new Uint8Array(buf, 0, 4));
    if (magic !== "AQXP") throw new Error("bad point payload (magic " + magic + ")");
    const nHead = new DataView(buf).getUint32(4, true);
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 8, nHead)));
    const base = 8 + nHead, cols = {};
    for (const spec of header.columns) cols[spec.name] = { spec, data: new TYPED[spec.dtype](buf, base + spec.offset, header.n) };
    return { header, cols };
  }
  async function loadData() {
    if (MODE === "static") {
      if (!window.AQQUA_DATA) throw new Error("data.js did not load (it must sit next to index.html)");
      return { points: base64ToBuffer(window.AQQUA_DATA.points), coast: window.AQQUA_DATA.coastlines };
    }
    const [p, c] = await Promise.all([fetch("/api/points"), fetch("/api/coastlines")]);
    if (!p.ok) throw new Error("GET /api/points: " + p.status);
    return { points: await p.arrayBuffer(), coast: c.ok ? await c.json() : { rings: [] } };
  }

  // ---------------------------------------------------------------- state ---------------------
  const S = {
    n: 0, ids: [], x: null, y: null, cols: {}, header: null, coast: null,
    colorBy: null, color: null, faded: null, legend: [], scale: null,
    visible: null, selected: null, nVisible: 0, nSelected: 0,
    view: { cx: 0, cy: 0, scale: 1 }, pointSize: 3, mode: "pan",
    focus: -1, hover: -1, details: { id: null, imageLoaded: false, scaleBarUm: null, source: null },
    staticImages: null, lastExport: null, renderMs: [], ready: false, error: null,
  };

  function value(name, i) { // display value of column *name* at row i (null if missing)
    const c = S.cols[name]; if (!c) return null;
    const v = c.data[i];
    if (c.spec.kind === "category") return v < c.spec.categories.length ? c.spec.categories[v] : null;
    if (!Number.isFinite(v)) return null;
    if (c.spec.kind === "datetime") return new Date(v).toISOString().replace(".000Z", "Z");
    return v;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "number") return Math.abs(v) >= 1e5 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : String(+v.toPrecision(5));
    return String(v);
  }

  // ---------------------------------------------------------------- colouring -----------------
  function percentile(sorted, q) { return sorted[Math.min(sorted.length - 1, Math.max(0, Math.round(q * (sorted.length - 1))))]; }
  function setColorBy(name) {
    const c = S.cols[name];
    if (!c) throw new Error("unknown column " + name);
    S.colorBy = name;
    const n = S.n, col = new Uint32Array(n), d = c.data;
    if (c.spec.kind === "category") {
      const cats = c.spec.categories, counts = new Uint32Array(cats.length + 1);
      for (let i = 0; i < n; i++) counts[d[i]]++;
      const order = cats.map((_, k) => k).filter((k) => counts[k] > 0).sort((a, b) => counts[b] - counts[a] || a - b);
      const lut = new Uint32Array(cats.length + 1).fill(packHex(OTHER));
      lut[cats.length] = packHex(MISSING);
      S.legend = [];
      order.forEach((k, r) => {
        if (r < PALETTE.length) { lut[k] = packHex(PALETTE[r]); S.legend.push({ label: cats[k], color: PALETTE[r], n: counts[k] }); }
      });
      if (order.length > PALETTE.length) S.legend.push({ label: `other (${order.length - PALETTE.length} classes)`, color: OTHER,
        n: order.slice(PALETTE.length).reduce((s, k) => s + counts[k], 0) });
      if (counts[cats.length]) S.legend.push({ label: "missing", color: MISSING, n: counts[cats.length] });
      for (let i = 0; i < n; i++) col[i] = lut[d[i]];
      S.scale = null;
    } else {
      const finite = Float64Array.from(d).filter(Number.isFinite).sort();
      let lo = 0, hi = 1;
      if (finite.length) {
        // robust range for numbers (novelty, carbon are long-tailed); full range for dates
        const robust = c.spec.kind === "number" && finite.length > 50;
        lo = robust ? percentile(finite, 0.01) : finite[0];
        hi = robust ? percentile(finite, 0.99) : finite[finite.length - 1];
      }
      const span = hi > lo ? hi - lo : 1, miss = packHex(MISSING);
      for (let i = 0; i < n; i++) {
        const v = d[i];
        col[i] = Number.isFinite(v) ? VIRIDIS_LUT[Math.max(0, Math.min(255, Math.round(((v - lo) / span) * 255)))] : miss;
      }
      S.scale = { lo, hi, kind: c.spec.kind, robust: c.spec.kind === "number" && finite.length > 50, missing: S.n - finite.length };
      S.legend = [];
    }
    S.color = col;
    S.faded = col.map((c2) => fade(c2, 0.25));
    $("color-by").value = name;
    drawLegend();
    render();
  }
  function fmtScale(v, kind) { return kind === "datetime" ? new Date(v).toISOString().slice(0, 10) : fmt(v); }
  function drawLegend() {
    const el = $("legend"); el.textContent = "";
    if (S.scale) {
      const cv = document.createElement("canvas"); cv.width = 256; cv.height = 1;
      const ctx = cv.getContext("2d"), img = ctx.createImageData(256, 1);
      new Uint32Array(img.data.buffer).set(VIRIDIS_LUT); ctx.putImageData(img, 0, 0);
      const range = document.createElement("div"); range.className = "range";
      range.innerHTML = `<span></span><span></span>`;
      range.children[0].textContent = fmtScale(S.scale.lo, S.scale.kind);
      range.children[1].textContent = fmtScale(S.scale.hi, S.scale.kind);
      const note = document.createElement("div"); note.className = "hint";
      note.textContent = (S.scale.robust ? "1st–99th percentile" : "full range") + (S.scale.missing ? `; ${S.scale.missing} missing (light grey)` : "");
      el.append(cv, range, note);
      return;
    }
    for (const item of S.legend) {
      const row = document.createElement("div"); row.className = "item";
      const sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = item.color;
      const lab = document.createElement("span"); lab.textContent = item.label;
      const n = document.createElement("span"); n.className = "n"; n.textContent = item.n;
      row.append(sw, lab, n); el.append(row);
    }
  }

  // ---------------------------------------------------------------- scatter rendering ---------
  const canvas = $("scatter"), overlay = $("overlay");
  let ctx = null, octx = null, image = null, pixels = null, W = 0, H = 0, dpr = 1, framePending = false;

  function resize() {
    dpr = window.devicePixelRatio || 1;
    const r = canvas.getBoundingClientRect();
    W = Math.max(1, Math.round(r.width * dpr)); H = Math.max(1, Math.round(r.height * dpr));
    for (const c of [canvas, overlay]) { c.width = W; c.height = H; }
    ctx = canvas.getContext("2d"); octx = overlay.getContext("2d");
    image = ctx.createImageData(W, H); pixels = new Uint32Array(image.data.buffer);
  }
  function fitView() {
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < S.n; i++) {
      const x = S.x[i], y = S.y[i];
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
    S.view.cx = (x0 + x1) / 2; S.view.cy = (y0 + y1) / 2;
    S.view.scale = 0.92 * Math.min(W / Math.max(x1 - x0, 1e-9), H / Math.max(y1 - y0, 1e-9));
  }
  // data <-> device pixel transforms
  function toPx(x) { return (x - S.view.cx) * S.view.scale + W / 2; }
  function toPy(y) { return H / 2 - (y - S.view.cy) * S.view.scale; }
  function fromPx(px) { return (px - W / 2) / S.view.scale + S.view.cx; }
  function fromPy(py) { return (H / 2 - py) / S.view.scale + S.view.cy; }

  function drawPass(selectedPass) {
    const s = Math.max(1, Math.round(S.pointSize * dpr)), h = s >> 1;
    const { x, y, visible, selected } = S, sc = S.view.scale, ox = W / 2 - S.view.cx * sc, oy = H / 2 + S.view.cy * sc;
    const colors = S.nSelected && !selectedPass ? S.faded : S.color;
    for (let i = 0; i < S.n; i++) {
      if (!visible[i] || (S.nSelected && (selected[i] === 1) !== selectedPass)) continue;
      const px = Math.round(x[i] * sc + ox) - h, py = Math.round(oy - y[i] * sc) - h;
      if (px + s <= 0 || py + s <= 0 || px >= W || py >= H) continue;
      const c = colors[i], xa = Math.max(px, 0), xb = Math.min(px + s, W), ya = Math.max(py, 0), yb = Math.min(py + s, H);
      for (let yy = ya; yy < yb; yy++) { const row = yy * W; for (let xx = xa; xx < xb; xx++) pixels[row + xx] = c; }
    }
  }
  function render() {
    if (!S.ready && !S.color) return;
    const t0 = performance.now();
    pixels.fill(BG);
    drawPass(false);
    if (S.nSelected) drawPass(true);
    ctx.putImageData(image, 0, 0);
    drawOverlay();
    S.renderMs.push(performance.now() - t0);
    if (S.renderMs.length > 50) S.renderMs.shift();
    if (mapDirty) drawMap();
  }
  function requestRender() {
    if (framePending) return;
    framePending = true;
    requestAnimationFrame(() => { framePending = false; render(); });
  }
  let dragShape = null; // {kind: "box"|"lasso", pts: [[px,py],...]}
  function drawOverlay() {
    octx.clearRect(0, 0, W, H);
    for (const [i, color, r] of [[S.hover, "#555", 5], [S.focus, "#e00", 7]]) {
      if (i < 0 || !S.visible[i]) continue;
      octx.beginPath(); octx.arc(toPx(S.x[i]), toPy(S.y[i]), r * dpr, 0, 2 * Math.PI);
      octx.lineWidth = 2 * dpr; octx.strokeStyle = color; octx.stroke();
    }
    if (dragShape && dragShape.pts.length > 1) {
      octx.beginPath();
      dragShape.pts.forEach(([px, py], k) => (k ? octx.lineTo(px, py) : octx.moveTo(px, py)));
      octx.closePath(); octx.fillStyle = "rgba(42,111,219,.12)"; octx.fill();
      octx.lineWidth = 1.5 * dpr; octx.strokeStyle = "#2a6fdb"; octx.stroke();
    }
  }

  // ---------------------------------------------------------------- picking (grid index) ------
  const grid = { g: 0, x0: 0, y0: 0, cw: 1, ch: 1, start: null, items: null };
  function buildGrid() {
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let i = 0; i < S.n; i++) { x0 = Math.min(x0, S.x[i]); x1 = Math.max(x1, S.x[i]); y0 = Math.min(y0, S.y[i]); y1 = Math.max(y1, S.y[i]); }
    const g = Math.max(1, Math.min(1024, Math.ceil(Math.sqrt(S.n / 8))));
    grid.g = g; grid.x0 = x0; grid.y0 = y0; grid.cw = Math.max(x1 - x0, 1e-9) / g; grid.ch = Math.max(y1 - y0, 1e-9) / g;
    const cell = new Uint32Array(S.n), start = new Uint32Array(g * g + 1);
    for (let i = 0; i < S.n; i++) {
      const cx = Math.min(g - 1, Math.floor((S.x[i] - x0) / grid.cw)), cy = Math.min(g - 1, Math.floor((S.y[i] - y0) / grid.ch));
      cell[i] = cy * g + cx; start[cell[i] + 1]++;
    }
    for (let k = 0; k < g * g; k++) start[k + 1] += start[k];
    const fill = start.slice(0, g * g), items = new Uint32Array(S.n);
    for (let i = 0; i < S.n; i++) items[fill[cell[i]]++] = i;
    grid.start = start; grid.items = items;
  }
  function pick(px, py, radiusPx) { // nearest visible point within radiusPx device pixels of (px, py)
    const r = radiusPx / S.view.scale, x = fromPx(px), y = fromPy(py), g = grid.g;
    const ca = Math.max(0, Math.floor((x - r - grid.x0) / grid.cw)), cb = Math.min(g - 1, Math.floor((x + r - grid.x0) / grid.cw));
    const ra = Math.max(0, Math.floor((y - r - grid.y0) / grid.ch)), rb = Math.min(g - 1, Math.floor((y + r - grid.y0) / grid.ch));
    let best = -1, bestD = r * r;
    for (let cy = ra; cy <= rb; cy++) for (let cx = ca; cx <= cb; cx++) {
      const k = cy * g + cx;
      for (let j = grid.start[k]; j < grid.start[k + 1]; j++) {
        const i = grid.items[j];
        if (!S.visible[i]) continue;
        const dx = S.x[i] - x, dy = S.y[i] - y, d = dx * dx + dy * dy;
        if (d <= bestD) { bestD = d; best = i; }
      }
    }
    return best;
  }

  // ---------------------------------------------------------------- filters -------------------
  const F = { instrument: null, classCol: null, classes: null, from: NaN, to: NaN, bbox: null };
  function applyFilters() {
    const n = S.n, vis = S.visible, inst = S.cols.instrument, cls = F.classCol && S.cols[F.classCol];
    const dt = S.cols.datetime, lat = S.cols.lat, lon = S.cols.lon, b = F.bbox;
    const instOk = F.instrument && inst ? new Uint8Array(inst.spec.categories.length + 1) : null;
    if (instOk) F.instrument.forEach((name) => { const k = inst.spec.categories.indexOf(name); if (k >= 0) instOk[k] = 1; });
    const clsOk = F.classes && cls ? new Uint8Array(cls.spec.categories.length + 1) : null;
    if (clsOk) F.classes.forEach((name) => { const k = cls.spec.categories.indexOf(name); if (k >= 0) clsOk[k] = 1; });
    const useFrom = Number.isFinite(F.from) && dt, useTo = Number.isFinite(F.to) && dt;
    let nv = 0, ns = 0;
    for (let i = 0; i < n; i++) {
      let ok = 1;
      if (instOk && !instOk[inst.data[i]]) ok = 0;
      else if (clsOk && !clsOk[cls.data[i]]) ok = 0;
      else if (useFrom && !(dt.data[i] >= F.from)) ok = 0;
      else if (useTo && !(dt.data[i] < F.to)) ok = 0;
      else if (b && lat && lon) {
        const la = lat.data[i], lo = lon.data[i];
        ok = la >= b[1] && la <= b[3] && (b[0] <= b[2] ? lo >= b[0] && lo <= b[2] : lo >= b[0] || lo <= b[2]) ? 1 : 0; // antimeridian
      }
      vis[i] = ok; nv += ok;
      if (!ok) S.selected[i] = 0; // a hidden point cannot stay selected
      ns += S.selected[i];
    }
    S.nVisible = nv; S.nSelected = ns; mapDirty = true;
    if (S.focus >= 0 && !vis[S.focus]) S.focus = -1;
    updateCounts(); requestRender();
  }
  function readFilterInputs() {
    const box = $("filter-instrument").querySelectorAll("input[type=checkbox]");
    const on = [...box].filter((c) => c.checked).map((c) => c.value);
    F.instrument = box.length && on.length < box.length ? on : null;
    const sel = [...$("filter-class").selectedOptions].map((o) => o.value);
    F.classes = sel.length ? sel : null;
    const d0 = $("filter-date-from").value, d1 = $("filter-date-to").value;
    F.from = d0 ? Date.parse(d0 + "T00:00:00Z") : NaN;
    F.to = d1 ? Date.parse(d1 + "T00:00:00Z") + 86400000 : NaN; // inclusive end day
    const bb = ["bbox-lon-min", "bbox-lat-min", "bbox-lon-max", "bbox-lat-max"].map((id) => parseFloat($(id).value));
    F.bbox = bb.every(Number.isFinite) ? bb : null;
    applyFilters();
  }
  function setupFilters() {
    const inst = S.cols.instrument, fs = $("filter-instrument");
    if (inst) inst.spec.categories.forEach((name) => {
      const lab = document.createElement("label"), cb = document.createElement("input");
      cb.type = "checkbox"; cb.checked = true; cb.value = name; cb.addEventListener("change", readFilterInputs);
      lab.append(cb, " " + name); fs.append(lab);
    });
    else fs.hidden = true;
    F.classCol = ["pred_label", "label"].find(useful) || null;
    const sel = $("filter-class");
    if (F.classCol) {
      $("filter-class-name").textContent = F.classCol === "pred_label" ? "predicted class" : "label";
      S.cols[F.classCol].spec.categories.forEach((name) => { const o = document.createElement("option"); o.value = o.textContent = name; sel.append(o); });
    }
    sel.addEventListener("change", readFilterInputs);
    for (const id of ["filter-date-from", "filter-date-to", "bbox-lon-min", "bbox-lat-min", "bbox-lon-max", "bbox-lat-max"])
      $(id).addEventListener("change", readFilterInputs);
    $("reset-filters").addEventListener("click", () => {
      fs.querySelectorAll("input").forEach((c) => (c.checked = true));
      [...sel.options].forEach((o) => (o.selected = false));
      document.querySelectorAll("#left input[type=date], #filter-bbox input").forEach((e) => (e.value = ""));
      readFilterInputs();
    });
  }
  function setBboxInputs(b) {
    ["bbox-lon-min", "bbox-lat-min", "bbox-lon-max", "bbox-lat-max"].forEach((id, k) => ($(id).value = b ? (+b[k].toFixed(2)) : ""));
    readFilterInputs();
  }

  // ---------------------------------------------------------------- selection -----------------
  function updateCounts() {
    $("counts").textContent = `${S.n} points · ${S.nVisible} shown · ${S.nSelected} selected`;
    $("export-selection").disabled = S.nSelected === 0;
    $("map-caption").textContent = S.nSelected ? `(${S.nSelected} selected)` : "(all shown)";
  }
  function insidePolygon(poly, x, y) {
    let inside = false;
    for (let a = 0, b = poly.length - 1; a < poly.length; b = a++) {
      const [xa, ya] = poly[a], [xb, yb] = poly[b];
      if ((ya > y) !== (yb > y) && x < ((xb - xa) * (y - ya)) / (yb - ya) + xa) inside = !inside;
    }
    return inside;
  }
  function selectPolygon(polyData, add) { // polygon in data coordinates
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const [x, y] of polyData) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
    if (!add) S.selected.fill(0);
    for (let i = 0; i < S.n; i++) {
      if (!S.visible[i]) continue;
      const x = S.x[i], y = S.y[i];
      if (x >= x0 && x <= x1 && y >= y0 && y <= y1 && insidePolygon(polyData, x, y)) S.selected[i] = 1;
    }
    recount();
  }
  function recount() {
    let ns = 0; for (let i = 0; i < S.n; i++) ns += S.selected[i];
    S.nSelected = ns; mapDirty = true; updateCounts(); requestRender();
  }
  function selectedIds() { const out = []; for (let i = 0; i < S.n; i++) if (S.selected[i]) out.push(S.ids[i]); return out; }

  // ---------------------------------------------------------------- export --------------------
  function csvCell(v) { const s = v === null ? "" : String(v); return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s; }
  function selectionCsv() {
    const cols = ["object_id", ...S.header.export_columns], lines = [cols.join(",")];
    for (let i = 0; i < S.n; i++) if (S.selected[i])
      lines.push([S.ids[i], ...S.header.export_columns.map((c) => value(c, i))].map(csvCell).join(","));
    return lines.join("\n") + "\n";
  }
  async function exportSelection() {
    if (!S.nSelected) return null;
    const name = `selection-${S.nSelected}.csv`, blob = new Blob([selectionCsv()], { type: "text/csv" });
    const a = document.createElement("a"); a.href = URL.createObjectURL(blob); a.download = name;
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    const result = { download: name, n: S.nSelected, server: null };
    if (MODE === "server") {
      $("export-status").textContent = `exporting ${S.nSelected} objects (CSV + EcoTaxa)…`;
      const r = await fetch("/api/export", { method: "POST",
        headers: { "Content-Type": "application/json", "X-Aqqua-Token": window.AQQUA_TOKEN || "" },
        body: JSON.stringify({ object_ids: selectedIds() }) });
      result.server = await r.json();
      if (!r.ok) result.error = result.server.error;
    }
    S.lastExport = result;
    $("export-status").textContent = result.error ? "export failed: " + result.error
      : result.server ? `wrote ${result.server.csv}` + (result.server.ecotaxa ? ` and ${result.server.ecotaxa}` : "")
      : `downloaded ${name}`;
    return result;
  }

  // ---------------------------------------------------------------- details panel -------------
  function imageUrl(i) {
    if (MODE === "server") return "/api/image?id=" + encodeURIComponent(S.ids[i]);
    return S.staticImages.has(i) ? `images/${i}.png` : null;
  }
  function niceLength(um) { // 1, 2 or 5 × 10^k not above um
    const p = Math.pow(10, Math.floor(Math.log10(um))), m = um / p;
    return (m >= 5 ? 5 : m >= 2 ? 2 : 1) * p;
  }
  function fitImage() { // enlarge small vignettes (pixelated, at most 8×) or shrink large ones to the box
    const img = $("details-image"), box = $("image-box");
    if (!img.naturalWidth) return;
    const f = Math.min(box.clientWidth / img.naturalWidth, box.clientHeight / img.naturalHeight, 8);
    img.style.width = `${img.naturalWidth * f}px`; img.style.height = `${img.naturalHeight * f}px`;
  }
  function updateScaleBar() {
    fitImage();
    const img = $("details-image"), i = S.focus, line = $("scale-bar-line"), label = $("scale-bar-label");
    const pxUm = value("pixel_size_um", i), nativeW = value("width", i) || img.naturalWidth;
    if (!img.complete || !img.naturalWidth || !pxUm || i < 0) { line.style.width = "0"; label.textContent = ""; S.details.scaleBarUm = null; return; }
    const umPerCss = (pxUm * nativeW) / img.clientWidth, len = niceLength(umPerCss * img.clientWidth * 0.35);
    line.style.width = `${len / umPerCss}px`;
    label.textContent = len >= 1000 ? `${len / 1000} mm` : `${len} µm`;
    S.details.scaleBarUm = len;
  }
  function detailsRows(rec) {
    const table = $("details-table"); table.textContent = "";
    for (const [k, v] of Object.entries(rec)) {
      if (k === "x" || k === "y") continue;
      const tr = table.insertRow(); tr.insertCell().textContent = k; tr.insertCell().textContent = fmt(v);
    }
  }
  function localRecord(i) {
    const rec = { object_id: S.ids[i] };
    for (const name of Object.keys(S.cols)) rec[name] = value(name, i);
    return rec;
  }
  async function showDetails(i) {
    S.focus = i; mapDirty = true; requestRender();
    const id = S.ids[i];
    S.details = { id, imageLoaded: false, scaleBarUm: null, source: null };
    $("details-empty").hidden = true; $("details-figure").hidden = false;
    $("details-caption").textContent = `${id} · ${fmt(value(F.classCol || "instrument", i))}`;
    const img = $("details-image"), url = imageUrl(i);
    if (url) {
      img.onload = () => { if (S.details.id === id) { S.details.imageLoaded = true; updateScaleBar(); } };
      img.onerror = () => { if (S.details.id === id) S.details.imageError = true; };
      img.src = url; img.hidden = false;
    } else {
      img.removeAttribute("src"); img.hidden = true; updateScaleBar();
      $("details-caption").textContent += ` · image not exported (static page keeps ${S.header.max_images} images)`;
    }
    let rec = localRecord(i), source = "page";
    if (MODE === "server") {
      try {
        const r = await fetch("/api/object?id=" + encodeURIComponent(id));
        if (r.ok) { rec = await r.json(); source = "server"; }
      } catch (err) { console.warn("object record", err); }
    }
    if (S.details.id !== id) return; // a newer click won
    detailsRows(rec); S.details.source = source; S.details.record = rec;
  }

  // ---------------------------------------------------------------- world map -----------------
  const map = $("worldmap");
  let mapDrag = null, mapDirty = true, mapSeen = null; // redraw only when filter/selection/focus change
  function mapSize() { const r = map.getBoundingClientRect(), d = window.devicePixelRatio || 1; return [Math.round(r.width * d), Math.round(r.height * d), d]; }
  function drawMap() {
    if (!S.coast) return;
    mapDirty = false;
    const [mw, mh, d] = mapSize();
    if (map.width !== mw || map.height !== mh) { map.width = mw; map.height = mh; }
    const m = map.getContext("2d"), X = (lon) => ((lon + 180) / 360) * mw, Y = (lat) => ((90 - lat) / 180) * mh;
    m.fillStyle = "#dfeaf5"; m.fillRect(0, 0, mw, mh);
    m.beginPath();
    for (const ring of S.coast.rings) {
      m.moveTo(X(ring[0]), Y(ring[1]));
      for (let k = 2; k < ring.length; k += 2) m.lineTo(X(ring[k]), Y(ring[k + 1]));
      m.closePath();
    }
    m.fillStyle = "#c9c9c0"; m.fill("evenodd"); m.strokeStyle = "#9a9a90"; m.lineWidth = 0.5 * d; m.stroke();
    const lat = S.cols.lat, lon = S.cols.lon;
    if (lat && lon) {
      const sel = S.nSelected > 0, r = 2 * d;
      if (!mapSeen || mapSeen.length !== mw * mh) mapSeen = new Uint8Array(mw * mh);
      mapSeen.fill(0);
      m.fillStyle = sel ? "#d62728" : "#1f3b73";
      for (let i = 0; i < S.n; i++) {
        if (!S.visible[i] || (sel && !S.selected[i])) continue;
        const la = lat.data[i], lo = lon.data[i];
        if (!Number.isFinite(la) || !Number.isFinite(lo)) continue;
        const px = Math.min(mw - 1, Math.round(X(lo))), py = Math.min(mh - 1, Math.round(Y(la))), key = py * mw + px;
        if (mapSeen[key]) continue; // one dot per map pixel, however many objects share it
        mapSeen[key] = 1; m.fillRect(px - r, py - r, 2 * r, 2 * r);
      }
      if (S.focus >= 0 && Number.isFinite(lat.data[S.focus])) {
        m.beginPath(); m.arc(X(lon.data[S.focus]), Y(lat.data[S.focus]), 5 * d, 0, 2 * Math.PI);
        m.strokeStyle = "#e00"; m.lineWidth = 2 * d; m.stroke();
      }
    }
    if (F.bbox) {
      const b = F.bbox; m.strokeStyle = "#2a6fdb"; m.lineWidth = 1.5 * d;
      m.strokeRect(X(b[0]), Y(b[3]), X(b[2]) - X(b[0]), Y(b[1]) - Y(b[3]));
    }
    if (mapDrag) {
      m.strokeStyle = "#2a6fdb"; m.setLineDash([4, 3]);
      m.strokeRect(mapDrag.x0, mapDrag.y0, mapDrag.x1 - mapDrag.x0, mapDrag.y1 - mapDrag.y0); m.setLineDash([]);
    }
  }
  function setupMap() {
    const pos = (e) => { const r = map.getBoundingClientRect(), [mw, mh] = mapSize(); return [((e.clientX - r.left) / r.width) * mw, ((e.clientY - r.top) / r.height) * mh]; };
    map.addEventListener("mousedown", (e) => { const [x, y] = pos(e); mapDrag = { x0: x, y0: y, x1: x, y1: y }; });
    map.addEventListener("mousemove", (e) => { if (mapDrag) { [mapDrag.x1, mapDrag.y1] = pos(e); drawMap(); } });
    window.addEventListener("mouseup", () => {
      if (!mapDrag) return;
      const [mw, mh] = mapSize(), d = mapDrag; mapDrag = null;
      if (Math.abs(d.x1 - d.x0) < 4 || Math.abs(d.y1 - d.y0) < 4) { setBboxInputs(null); return; } // a click clears
      const lon = (x) => (x / mw) * 360 - 180, lat = (y) => 90 - (y / mh) * 180;
      setBboxInputs([lon(Math.min(d.x0, d.x1)), lat(Math.max(d.y0, d.y1)), lon(Math.max(d.x0, d.x1)), lat(Math.min(d.y0, d.y1))]);
    });
  }

  // ---------------------------------------------------------------- interaction ---------------
  function eventPx(e) { const r = overlay.getBoundingClientRect(); return [(e.clientX - r.left) * dpr, (e.clientY - r.top) * dpr]; }
  function pickRadius() { return (S.pointSize / 2 + 4) * dpr; }
  function showTooltip(i, e) {
    const tip = $("tooltip");
    if (i < 0) { tip.hidden = true; return; }
    const r = overlay.getBoundingClientRect(), url = imageUrl(i);
    tip.textContent = "";
    if (url) { const im = document.createElement("img"); im.src = url; tip.append(im); }
    const line = document.createElement("div");
    line.textContent = `${S.ids[i]} · ${S.colorBy}: ${fmt(value(S.colorBy, i))}`;
    tip.append(line);
    tip.style.left = `${Math.min(e.clientX - r.left + 14, r.width - 230)}px`;
    tip.style.top = `${Math.min(e.clientY - r.top + 14, r.height - 170)}px`;
    tip.hidden = false;
  }
  function setupInteraction() {
    let drag = null;
    overlay.addEventListener("mousedown", (e) => {
      const [px, py] = eventPx(e);
      drag = { px, py, moved: false, add: e.shiftKey, view: { ...S.view } };
      if (S.mode !== "pan") dragShape = { kind: S.mode, pts: [[px, py]] };
    });
    window.addEventListener("mousemove", (e) => { // on window: a drag may leave the plot
      const [px, py] = eventPx(e);
      if (drag) {
        if (Math.hypot(px - drag.px, py - drag.py) > 3 * dpr) drag.moved = true;
        if (S.mode === "pan") {
          S.view.cx = drag.view.cx - (px - drag.px) / S.view.scale; S.view.cy = drag.view.cy + (py - drag.py) / S.view.scale;
          requestRender();
        } else if (S.mode === "box") {
          dragShape.pts = [[drag.px, drag.py], [px, drag.py], [px, py], [drag.px, py]]; drawOverlay();
        } else { dragShape.pts.push([px, py]); drawOverlay(); }
        return;
      }
      if (e.target !== overlay) return;
      const i = pick(px, py, pickRadius());
      if (i !== S.hover) { S.hover = i; drawOverlay(); }
      showTooltip(i, e);
    });
    window.addEventListener("mouseup", (e) => {
      if (!drag) return;
      const d = drag; drag = null;
      if (!d.moved) { // a click: focus the nearest point
        dragShape = null;
        const i = pick(d.px, d.py, pickRadius());
        if (i >= 0) showDetails(i); else drawOverlay();
        return;
      }
      if (dragShape && dragShape.pts.length > 2) selectPolygon(dragShape.pts.map(([px, py]) => [fromPx(px), fromPy(py)]), d.add || e.shiftKey);
      dragShape = null; drawOverlay();
    });
    overlay.addEventListener("mouseleave", () => { S.hover = -1; $("tooltip").hidden = true; drawOverlay(); });
    overlay.addEventListener("wheel", (e) => {
      e.preventDefault();
      const [px, py] = eventPx(e), x = fromPx(px), y = fromPy(py), f = Math.exp(-e.deltaY * 0.0015);
      S.view.scale *= f; S.view.cx = x - (px - W / 2) / S.view.scale; S.view.cy = y - (H / 2 - py) / S.view.scale;
      requestRender();
    }, { passive: false });
    overlay.addEventListener("dblclick", () => { fitView(); requestRender(); });
    document.querySelectorAll("button.mode").forEach((b) => b.addEventListener("click", () => setMode(b.dataset.mode)));
    $("clear-selection").addEventListener("click", () => { S.selected.fill(0); recount(); });
    $("export-selection").addEventListener("click", () => exportSelection().catch((err) => ($("export-status").textContent = "export failed: " + err)));
    $("point-size").addEventListener("input", (e) => { S.pointSize = +e.target.value; requestRender(); });
    $("color-by").addEventListener("change", (e) => setColorBy(e.target.value));
    $("details-image").addEventListener("load", updateScaleBar);
    window.addEventListener("resize", () => { resize(); mapDirty = true; requestRender(); updateScaleBar(); });
  }
  function setMode(mode) {
    S.mode = mode;
    document.querySelectorAll("button.mode").forEach((b) => b.classList.toggle("active", b.dataset.mode === mode));
    overlay.style.cursor = mode === "pan" ? "grab" : "crosshair";
  }
  function setupColorSelect() {
    const sel = $("color-by"), groups = { category: "categories", number: "numbers", datetime: "dates" };
    for (const [kind, label] of Object.entries(groups)) {
      const og = document.createElement("optgroup"); og.label = label;
      for (const spec of S.header.columns) if (spec.kind === kind && spec.name !== "x" && spec.name !== "y") {
        const o = document.createElement("option"); o.value = o.textContent = spec.name; og.append(o);
      }
      if (og.children.length) sel.append(og);
    }
  }
  // a column with values (without a classifier, predict_store writes an all-missing pred_label)
  function useful(c) { return S.cols[c] && (S.cols[c].spec.kind !== "category" || S.cols[c].spec.categories.length > 0); }
  function defaultColor() {
    return ["pred_label", "label", "instrument"].find(useful) || S.header.columns.find((c) => c.name !== "x" && c.name !== "y").name;
  }

  // ---------------------------------------------------------------- test/scripting hook -------
  window.aqquaExplorer = {
    get ready() { return S.ready; }, get error() { return S.error; }, get mode() { return MODE; },
    get nPoints() { return S.n; }, get nVisible() { return S.nVisible; }, get nSelected() { return S.nSelected; },
    get colorBy() { return S.colorBy; }, get legend() { return S.legend.slice(); }, get scale() { return S.scale; },
    get details() { return { ...S.details }; }, get lastExport() { return S.lastExport; },
    get renderMs() { return S.renderMs.slice(); }, get columns() { return S.header.columns.map((c) => c.name); },
    setColorBy, selectedIds, exportSelection, setMode, render,
    pixelColor(id) { const i = S.ids.indexOf(id); return i < 0 ? null : cssOf(S.color[i]); },
    /** Client (CSS px) position of a point, to click it for real. */
    screenPosition(id) {
      const i = S.ids.indexOf(id); if (i < 0) return null;
      const r = overlay.getBoundingClientRect();
      return { x: r.left + toPx(S.x[i]) / dpr, y: r.top + toPy(S.y[i]) / dpr };
    },
    /** Client (CSS px) coordinates of layout position (x, y). */
    layoutToClient(x, y) { const r = overlay.getBoundingClientRect(); return { x: r.left + toPx(x) / dpr, y: r.top + toPy(y) / dpr }; },
    layout(id) { const i = S.ids.indexOf(id); return i < 0 ? null : [S.x[i], S.y[i]]; },
    /** Show the details of object *id* (as a click on it does). */
    show(id) { const i = S.ids.indexOf(id); if (i < 0) throw new Error("unknown object_id " + id); return showDetails(i); },
    selectIds(ids) { S.selected.fill(0); const want = new Set(ids); for (let i = 0; i < S.n; i++) if (S.visible[i] && want.has(S.ids[i])) S.selected[i] = 1; recount(); },
    /** Time *reps* full renders; ms per render. */
    benchRender(reps = 10) { const t0 = performance.now(); for (let k = 0; k < reps; k++) render(); return (performance.now() - t0) / reps; },
    benchPick(reps = 1000) { const t0 = performance.now(); for (let k = 0; k < reps; k++) pick((k * 37) % W, (k * 91) % H, pickRadius()); return (performance.now() - t0) / reps; },
    benchColor(name) { const t0 = performance.now(); setColorBy(name); return performance.now() - t0; },
  };

  // ---------------------------------------------------------------- start ---------------------
  async function start() {
    const t0 = performance.now();
    const { points, coast } = await loadData();
    const { header, cols } = decodePoints(points);
    Object.assign(S, { header, cols, n: header.n, ids: header.object_ids, x: cols.x.data, y: cols.y.data, coast });
    S.pointSize = S.n < 5000 ? 5 : S.n < 50000 ? 3 : 2; $("point-size").value = S.pointSize;
    S.visible = new Uint8Array(S.n).fill(1); S.selected = new Uint8Array(S.n); S.nVisible = S.n;
    S.staticImages = new Set(header.static_images || []);
    if (header.title) { $("title").textContent = header.title; document.title = header.title; }
    resize(); fitView(); buildGrid();
    setupColorSelect(); setupFilters(); setupInteraction(); setupMap();
    setColorBy(defaultColor());
    updateCounts();
    S.ready = true; S.loadMs = performance.now() - t0;
    window.aqquaExplorer.loadMs = S.loadMs;
    render();
  }
  start().catch((err) => {
    S.error = String(err && err.message ? err.message : err);
    $("counts").textContent = "failed to load: " + S.error;
    console.error(err);
  });
})();
