// A small SVG line chart: several series, nice ticks, a legend and a hover read-out. No dependencies.
// Each series is drawn as <polyline class="series" data-run=… data-metric=… data-points=N>, so tests (and
// people with the inspector) can see what is plotted.

const SVG = "http://www.w3.org/2000/svg";
export const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#db2777",
  "#65a30d", "#4b5563", "#ca8a04"];
const MAX_POINTS = 2000; // more are thinned (the last point always kept)

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

export function fmtNum(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (typeof v !== "number") return String(v);
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(a >= 1e5 ? 0 : 1) + "k";
  if (Number.isInteger(v)) return String(v);
  if (a < 1e-3) return v.toExponential(1);
  return v.toPrecision(4).replace(/\.?0+$/, "");
}

function niceTicks(lo, hi, count = 5) {
  const span = hi - lo;
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= count) || 10 * mag;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

function thin(points) {
  if (points.length <= MAX_POINTS) return points;
  const k = Math.ceil(points.length / MAX_POINTS);
  const out = points.filter((_, i) => i % k === 0);
  if (out[out.length - 1] !== points[points.length - 1]) out.push(points[points.length - 1]);
  return out;
}

// series: [{label, color, points: [[x, y], ...], dashed, markers, run, metric}]
export function lineChart(container, { title, series, xLabel = "step", logY = false, width = 560, height = 230 }) {
  const m = { left: 58, right: 14, top: 28, bottom: 34 };
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title });
  svg.append(el("text", { x: m.left, y: 16, class: "chart-title" }, title));
  const clean = series.map((s) => ({
    ...s,
    points: thin(s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!logY || y > 0))),
  }));
  const all = clean.flatMap((s) => s.points);
  container.replaceChildren(svg);
  if (!all.length) {
    svg.append(el("text", { x: width / 2, y: height / 2, class: "chart-empty", "text-anchor": "middle" }, "no data yet"));
    return svg;
  }
  const ty = (y) => (logY ? Math.log10(y) : y);
  let [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => ty(p[1]))), Math.max(...all.map((p) => ty(p[1])))];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  if (y0 === y1) [y0, y1] = [y0 - Math.abs(y0 || 1) * 0.1, y1 + Math.abs(y1 || 1) * 0.1];
  const pad = (y1 - y0) * 0.06;
  [y0, y1] = [y0 - pad, y1 + pad];
  const W = width - m.left - m.right;
  const H = height - m.top - m.bottom;
  const px = (x) => m.left + ((x - x0) / (x1 - x0)) * W;
  const py = (y) => m.top + (1 - (ty(y) - y0) / (y1 - y0)) * H;

  const grid = el("g", { class: "grid" });
  for (const t of niceTicks(y0, y1)) {
    const y = m.top + (1 - (t - y0) / (y1 - y0)) * H;
    grid.append(el("line", { x1: m.left, x2: m.left + W, y1: y, y2: y }));
    grid.append(el("text", { x: m.left - 6, y: y + 4, "text-anchor": "end" }, fmtNum(logY ? 10 ** t : t)));
  }
  for (const t of niceTicks(x0, x1, 6)) {
    const x = px(t);
    grid.append(el("line", { x1: x, x2: x, y1: m.top, y2: m.top + H }));
    grid.append(el("text", { x, y: m.top + H + 16, "text-anchor": "middle" }, fmtNum(t)));
  }
  grid.append(el("text", { x: m.left + W, y: height - 3, "text-anchor": "end", class: "axis-label" }, xLabel));
  svg.append(grid);

  clean.forEach((s, i) => {
    const color = s.color || PALETTE[i % PALETTE.length];
    const attrs = {
      class: "series", points: s.points.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" "),
      stroke: color, fill: "none", "stroke-width": s.markers ? 1.8 : 1.4,
      "data-run": s.run || "", "data-metric": s.metric || "", "data-points": s.points.length,
    };
    if (s.dashed) attrs["stroke-dasharray"] = "5 3";
    svg.append(el("polyline", attrs));
    if (s.markers && s.points.length <= 200) {
      for (const [x, y] of s.points) svg.append(el("circle", { cx: px(x), cy: py(y), r: 2.6, fill: color }));
    }
  });

  // Legend, top right, one entry per series.
  const legend = el("g", { class: "legend" });
  let lx = width - m.right;
  [...clean].reverse().forEach((s, ri) => {
    const i = clean.length - 1 - ri;
    const color = s.color || PALETTE[i % PALETTE.length];
    const label = s.label.length > 28 ? s.label.slice(0, 27) + "…" : s.label;
    const w = 6.2 * label.length + 18;
    lx -= w;
    legend.append(el("line", { x1: lx, x2: lx + 12, y1: 12, y2: 12, stroke: color, "stroke-width": 2,
      ...(s.dashed ? { "stroke-dasharray": "4 2" } : {}) }));
    legend.append(el("text", { x: lx + 15, y: 16 }, label));
  });
  if (lx > m.left + 6.5 * title.length + 10) svg.append(legend);

  // Hover: a vertical rule and each series' nearest value.
  const rule = el("line", { class: "hover-rule", y1: m.top, y2: m.top + H, visibility: "hidden" });
  const readout = el("text", { class: "hover-text", y: m.top + 12, visibility: "hidden" });
  svg.append(rule, readout);
  const area = el("rect", { x: m.left, y: m.top, width: W, height: H, fill: "transparent" });
  area.addEventListener("mousemove", (ev) => {
    const box = svg.getBoundingClientRect();
    const x = x0 + ((ev.clientX - box.left) * (width / box.width) - m.left) / W * (x1 - x0);
    const parts = clean.map((s) => {
      if (!s.points.length) return null;
      const near = s.points.reduce((a, b) => (Math.abs(b[0] - x) < Math.abs(a[0] - x) ? b : a));
      return `${s.label}: ${fmtNum(near[1])} @${fmtNum(near[0])}`;
    }).filter(Boolean);
    const X = px(Math.min(x1, Math.max(x0, x)));
    rule.setAttribute("x1", X); rule.setAttribute("x2", X);
    readout.textContent = parts.join("   ");
    readout.setAttribute("x", m.left + 4);
    rule.setAttribute("visibility", "visible"); readout.setAttribute("visibility", "visible");
  });
  area.addEventListener("mouseleave", () => {
    rule.setAttribute("visibility", "hidden"); readout.setAttribute("visibility", "hidden");
  });
  svg.append(area);
  return svg;
}
