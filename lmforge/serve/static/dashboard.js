// The dashboard: the runs list, a run's page (live curves, figures, report, lineage, config), run
// comparison; the playground and the explain view live in their own modules.
import { PALETTE, fmtNum, lineChart } from "./chart.js";
import { explainView, renderExplain } from "./explain.js";
import { playgroundView } from "./playground.js";
import { enc, fmtSeconds, getJSON, h, statusBadge } from "./util.js";

const POLL_MS = 1500;
const state = {
  runs: [],
  runsDir: "",
  selected: new Set(JSON.parse(localStorage.getItem("lmforge.compare") || "[]")),
  metrics: new Map(), // run name -> RunMetrics
  listSignature: "",
};
let current = { tick: null };
let ticking = false;

// ---------------------------------------------------------------------------------------------------------
// metrics.jsonl, followed by byte offset
// ---------------------------------------------------------------------------------------------------------

class RunMetrics {
  constructor(name) {
    this.name = name;
    this.offset = 0;
    this.file = null;
    this.records = [];
    this.version = 0; // bumped whenever records change
  }

  async poll() {
    for (;;) {
      const file = this.file ? `&file=${enc(this.file)}` : "";
      const r = await getJSON(`api/metrics?name=${enc(this.name)}&offset=${this.offset}${file}`);
      if (r.reset) this.records = [];
      if (r.reset || r.records.length) this.version++;
      this.records.push(...r.records);
      this.offset = r.offset;
      this.file = r.file;
      if (!r.more) return;
    }
  }

  series(event, key) {
    return this.records.filter((r) => r.event === event && typeof r[key] === "number").map((r) => [r.step, r[key]]);
  }

  evalKeys() {
    const keys = new Set();
    for (const r of this.records) {
      if (r.event !== "eval") continue;
      for (const [k, v] of Object.entries(r)) {
        if (typeof v === "number" && !["step", "val_loss", "val_ppl", "best_val"].includes(k)) keys.add(k);
      }
    }
    return [...keys];
  }
}

function metricsFor(name) {
  if (!state.metrics.has(name)) state.metrics.set(name, new RunMetrics(name));
  return state.metrics.get(name);
}

// ---------------------------------------------------------------------------------------------------------
// The runs list (sidebar) and the home table
// ---------------------------------------------------------------------------------------------------------

const KEY_FIGURES = ["val_loss", "loss", "accuracy", "macro_f1"];

function keyFigures(run, n = 3) {
  const figures = run.figures || {};
  const keys = KEY_FIGURES.filter((k) => k in figures);
  for (const k of Object.keys(figures)) if (k.includes(".") && !keys.includes(k)) keys.push(k);
  return keys.slice(0, n).map((k) => [k, figures[k]]);
}

async function refreshRuns() {
  const data = await getJSON("api/runs");
  state.runs = data.runs;
  if (state.runsDir !== data.runs_dir) {
    state.runsDir = data.runs_dir;
    document.getElementById("runs-dir").textContent = data.runs_dir;
  }
  const signature = JSON.stringify(data.runs.map((r) => [r.name, r.status, keyFigures(r)]));
  if (signature !== state.listSignature) {
    state.listSignature = signature;
    renderRunList();
  }
}

function renderRunList() {
  const filter = document.getElementById("filter").value.trim().toLowerCase();
  const list = document.getElementById("run-list");
  const active = decodeURIComponent((location.hash.match(/^#\/run\/(.*)$/) || [])[1] || "");
  list.replaceChildren(...state.runs.filter((r) => !filter || r.name.toLowerCase().includes(filter)).map((run) => {
    const box = h("input", { type: "checkbox", class: "compare-box", title: "compare", dataset: { name: run.name } });
    box.checked = state.selected.has(run.name);
    box.addEventListener("change", () => {
      if (box.checked) state.selected.add(run.name);
      else state.selected.delete(run.name);
      saveSelection();
    });
    return h("li", { class: "run-item" + (run.name === active ? " active" : ""), dataset: { name: run.name, status: run.status } },
      box,
      h("a", { href: `#/run/${enc(run.name)}`, class: "run-link" }, run.name),
      h("div", { class: "run-meta" }, statusBadge(run.status), h("span", { class: "stage" }, run.stage),
        keyFigures(run, 1).map(([k, v]) => h("span", { class: "figure" }, `${k} ${fmtNum(v)}`))));
  }));
  updateCompareButton();
}

function saveSelection() {
  localStorage.setItem("lmforge.compare", JSON.stringify([...state.selected]));
  updateCompareButton();
}

function updateCompareButton() {
  const names = [...state.selected].filter((n) => state.runs.some((r) => r.name === n));
  const button = document.getElementById("compare-button");
  button.textContent = `Compare selected (${names.length})`;
  button.disabled = names.length < 2;
}

function homeView(main) {
  const body = h("tbody");
  const draw = () => body.replaceChildren(...state.runs.map((run) => h("tr", { dataset: { name: run.name } },
    h("td", {}, h("a", { href: `#/run/${enc(run.name)}` }, run.name)),
    h("td", {}, run.stage),
    h("td", {}, statusBadge(run.status)),
    h("td", {}, run.started || "–"),
    h("td", {}, run.seconds !== null && run.seconds !== undefined ? fmtSeconds(run.seconds) : "–"),
    h("td", {}, keyFigures(run).map(([k, v]) => h("span", { class: "figure" }, `${k} ${fmtNum(v)}`))),
    h("td", {}, run.parents.map((p) => h("a", { href: `#/run/${enc(p)}`, class: "lineage-link" }, p))))));
  draw();
  main.append(h("h1", {}, "Runs"),
    h("p", { class: "muted", hidden: state.runs.length > 0 }, `No runs in ${state.runsDir} yet.`),
    h("table", { class: "table runs-table" },
      h("thead", {}, h("tr", {}, ["run", "stage", "status", "started", "took", "figures", "from"].map((t) => h("th", {}, t)))),
      body));
  let signature = state.listSignature;
  return { tick: () => { if (signature !== state.listSignature) { signature = state.listSignature; draw(); } } };
}

// ---------------------------------------------------------------------------------------------------------
// Curves
// ---------------------------------------------------------------------------------------------------------

function chartBox(key) {
  return h("div", { class: "chart-box", dataset: { chart: key } });
}

function drawRunCharts(container, name, metrics) {
  const boxes = {};
  const wanted = [["loss", "loss"], ["lr", "learning rate"], ["tok_per_s", "tokens / s"]];
  const evalKeys = metrics.evalKeys();
  if (evalKeys.length) wanted.push(["eval", "validation metrics"]);
  if (container.childElementCount !== wanted.length) {
    container.replaceChildren(...wanted.map(([key]) => (boxes[key] = chartBox(key))));
  } else {
    for (const box of container.children) boxes[box.dataset.chart] = box;
  }
  lineChart(boxes.loss, { title: "loss", series: [
    { label: "train loss", points: metrics.series("train", "loss"), run: name, metric: "loss", color: PALETTE[0] },
    { label: "val loss", points: metrics.series("eval", "val_loss"), run: name, metric: "val_loss", color: PALETTE[1], markers: true },
  ] });
  lineChart(boxes.lr, { title: "learning rate", series: [
    { label: "lr", points: metrics.series("train", "lr"), run: name, metric: "lr", color: PALETTE[2] }] });
  lineChart(boxes.tok_per_s, { title: "tokens / s", series: [
    { label: "tokens/s", points: metrics.series("train", "tok_per_s"), run: name, metric: "tok_per_s", color: PALETTE[3] }] });
  if (boxes.eval) {
    lineChart(boxes.eval, { title: "validation metrics", series: evalKeys.map((k, i) => (
      { label: k, points: metrics.series("eval", k), run: name, metric: k, color: PALETTE[(i + 4) % PALETTE.length], markers: true })) });
  }
}

// ---------------------------------------------------------------------------------------------------------
// One run
// ---------------------------------------------------------------------------------------------------------

function figuresTable(figures) {
  const entries = Object.entries(figures || {});
  if (!entries.length) return h("p", { class: "muted" }, "No figures yet.");
  return h("table", { class: "table figures" }, h("tbody", {}, entries.map(([k, v]) =>
    h("tr", { dataset: { key: k } }, h("th", {}, k), h("td", {}, fmtNum(v))))));
}

function section(title, ...content) {
  return h("section", { class: "card" }, h("h2", {}, title), ...content);
}

function fileTable(entries) {
  return h("table", { class: "table files" }, h("thead", {}, h("tr", {}, h("th", {}, "path"), h("th", {}, "sha256"), h("th", {}, "bytes"))),
    h("tbody", {}, entries.map((e) => h("tr", {}, h("td", { class: "path" }, e.path),
      h("td", { class: "sha", title: e.sha256 }, (e.sha256 || "").slice(0, 12)), h("td", {}, fmtNum(e.bytes))))));
}

export function renderReport(report) {
  const tasks = Object.entries(report.tasks || {});
  return h("div", { class: "report" }, tasks.map(([name, result]) => {
    const details = result.details || {};
    const parts = [h("h3", {}, name, h("small", {}, ` ${result.kind}, ${fmtNum(result.n)} examples`)),
      h("table", { class: "table metrics" }, h("tbody", {}, Object.entries(result.metrics || {}).map(([k, v]) =>
        h("tr", {}, h("th", {}, k), h("td", {}, fmtNum(v))))))];
    for (const note of result.notes || []) parts.push(h("p", { class: "note" }, note));
    if (details.confusion_matrix) parts.push(confusionMatrix(details.labels, details.confusion_matrix), perClass(details));
    if ((result.worst || []).length) {
      const keys = Object.keys(result.worst[0]);
      const cell = (v) => h("td", {}, typeof v === "number" ? fmtNum(v) : String(v ?? ""));
      const rows = result.worst.map((w) => h("tr", {}, keys.map((k) => cell(w[k]))));
      parts.push(h("h4", {}, `Worst examples (${result.worst.length})`),
        h("table", { class: "table worst" }, h("thead", {}, h("tr", {}, keys.map((k) => h("th", {}, k)))), h("tbody", {}, rows)));
    }
    return h("div", { class: "task", dataset: { task: name } }, parts);
  }));
}

function confusionMatrix(labels, matrix) {
  const peak = Math.max(1, ...matrix.flat());
  return h("div", {}, h("h4", {}, "Confusion matrix (rows: true, columns: predicted)"),
    h("table", { class: "confusion" },
      h("thead", {}, h("tr", {}, h("th", {}, "true \\ predicted"), labels.map((l) => h("th", {}, l)))),
      h("tbody", {}, matrix.map((row, i) => h("tr", {}, h("th", {}, labels[i]), row.map((count, j) => h("td", {
        class: i === j ? "diagonal" : "",
        style: { background: `rgba(37, 99, 235, ${(0.08 + 0.8 * count / peak).toFixed(3)})`, color: count / peak > 0.55 ? "#fff" : "" },
        dataset: { count },
      }, String(count))))))));
}

function perClass(details) {
  const rows = details.labels.map((label) => {
    const c = details.per_class[label] || {};
    return h("tr", {}, h("th", {}, label), ["precision", "recall", "f1", "support"].map((k) => h("td", {}, fmtNum(c[k]))));
  });
  return h("table", { class: "table per-class" },
    h("thead", {}, h("tr", {}, ["class", "precision", "recall", "f1", "support"].map((k) => h("th", {}, k)))), h("tbody", {}, rows));
}

async function runView(main, name) {
  let detail;
  try {
    detail = await getJSON(`api/run?name=${enc(name)}`);
  } catch (err) {
    main.append(h("h1", {}, name), h("p", { class: "error" }, err.message));
    return {};
  }
  const statusSlot = h("span", { class: "status-slot" }, statusBadge(detail.status));
  const figuresSlot = h("div", {}, figuresTable(detail.figures));
  const manifest = detail.manifest || {};
  main.append(h("div", { class: "run-header" },
    h("h1", {}, detail.name), statusSlot, h("span", { class: "stage" }, detail.stage),
    h("label", { class: "compare-toggle" }, (() => {
      const box = h("input", { type: "checkbox" });
      box.checked = state.selected.has(name);
      box.addEventListener("change", () => {
        if (box.checked) state.selected.add(name); else state.selected.delete(name);
        saveSelection(); renderRunList();
      });
      return box;
    })(), " compare")),
  h("p", { class: "muted" }, manifest.command ? h("code", {}, manifest.command.join(" ")) : null,
    manifest.started ? ` started ${manifest.started}` : null,
    manifest.seconds !== undefined ? `, took ${fmtSeconds(manifest.seconds)}` : null));

  const metrics = metricsFor(name);
  const charts = h("div", { class: "charts", dataset: { run: name } });
  if (detail.has_metrics) {
    main.append(section("Training curves", charts));
    await metrics.poll();
    drawRunCharts(charts, name, metrics);
  }
  if (Object.keys(detail.figures).length || detail.status === "running") main.append(section("Figures", figuresSlot));
  if (detail.samples && detail.samples.length) {
    main.append(section("Samples", detail.samples.map((s) => h("div", { class: "sample" },
      h("span", { class: "muted" }, `step ${s.step}`), h("pre", {}, s.text)))));
  }
  if (detail.report) main.append(section("Evaluation report", renderReport(detail.report)));
  if (detail.explain) {
    const box = h("div", {});
    main.append(section("Explanation", box));
    renderExplain(box, detail.explain);
  }
  main.append(section("Lineage",
    h("p", {}, "from: ", detail.parents.length ? detail.parents.map((p) => h("a", { href: `#/run/${enc(p)}`, class: "lineage-link" }, p)) : "–"),
    h("p", {}, "used by: ", detail.children.length ? detail.children.map((c) => h("a", { href: `#/run/${enc(c)}`, class: "lineage-link" }, c)) : "–"),
    manifest.inputs && manifest.inputs.length ? h("details", {}, h("summary", {}, `inputs (${manifest.inputs.length})`), fileTable(manifest.inputs)) : null,
    manifest.outputs && manifest.outputs.length ? h("details", {}, h("summary", {}, `outputs (${manifest.outputs.length})`), fileTable(manifest.outputs)) : null,
    manifest.versions ? h("details", {}, h("summary", {}, "versions"), h("pre", {}, JSON.stringify(manifest.versions, null, 2))) : null));
  const images = detail.files.filter((f) => f.endsWith(".png"));
  const others = detail.files.filter((f) => !f.endsWith(".png"));
  if (images.length || others.length) {
    main.append(section("Files",
      h("div", { class: "thumbs" }, images.map((f) => h("a", { href: `api/file?name=${enc(name)}&path=${enc(f)}`, target: "_blank" },
        h("figure", {}, h("img", { src: `api/file?name=${enc(name)}&path=${enc(f)}`, alt: f, loading: "lazy" }), h("figcaption", {}, f))))),
      h("p", {}, others.map((f) => h("a", { href: `api/file?name=${enc(name)}&path=${enc(f)}`, target: "_blank", class: "file-link" }, f)))));
  }
  if (detail.config) main.append(section("Config", h("details", {}, h("summary", {}, "config.yaml"), h("pre", { class: "config" }, detail.config))));

  let version = metrics.version;
  return {
    tick: async () => {
      const summary = state.runs.find((r) => r.name === name);
      if (summary) {
        statusSlot.replaceChildren(statusBadge(summary.status));
        figuresSlot.replaceChildren(figuresTable(summary.figures));
      }
      if (!detail.has_metrics && summary && summary.has_metrics) {
        detail.has_metrics = true;
        main.insertBefore(section("Training curves", charts), main.children[2]);
      }
      if (!detail.has_metrics) return;
      await metrics.poll();
      if (metrics.version !== version) {
        version = metrics.version;
        drawRunCharts(charts, name, metrics);
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// Comparison: two or more runs overlaid
// ---------------------------------------------------------------------------------------------------------

const COMPARED = [["loss", "train", "train loss"], ["val_loss", "eval", "val loss"], ["lr", "train", "learning rate"],
  ["tok_per_s", "train", "tokens / s"]];

async function compareView(main) {
  const names = [...state.selected].filter((n) => state.runs.some((r) => r.name === n));
  main.append(h("h1", {}, "Compare runs"));
  if (names.length < 2) {
    main.append(h("p", { class: "muted" }, "Tick two or more runs in the list on the left, then Compare."));
    return {};
  }
  const legend = h("p", { class: "compare-legend" }, names.map((n, i) => h("span", { class: "legend-item" },
    h("span", { class: "swatch", style: { background: PALETTE[i % PALETTE.length] } }), h("a", { href: `#/run/${enc(n)}` }, n))));
  const charts = h("div", { class: "charts compare" }, COMPARED.map(([key]) => chartBox(key)));
  const table = h("div", {});
  main.append(legend, section("Curves", charts), section("Figures", table));
  const all = names.map(metricsFor);
  const draw = () => {
    for (const box of charts.children) {
      const [key, event, title] = COMPARED.find((c) => c[0] === box.dataset.chart);
      lineChart(box, { title, series: all.map((m, i) => ({
        label: m.name, run: m.name, metric: key, points: m.series(event, key), color: PALETTE[i % PALETTE.length], markers: event === "eval",
      })) });
    }
    const runs = names.map((n) => state.runs.find((r) => r.name === n) || { figures: {} });
    const keys = [...new Set(runs.flatMap((r) => Object.keys(r.figures || {})))];
    table.replaceChildren(h("table", { class: "table compare-figures" },
      h("thead", {}, h("tr", {}, h("th", {}, ""), names.map((n) => h("th", {}, n)))),
      h("tbody", {}, keys.map((k) => h("tr", {}, h("th", {}, k), runs.map((r) => h("td", {}, fmtNum((r.figures || {})[k]))))))));
  };
  await Promise.all(all.map((m) => m.poll()));
  draw();
  let versions = all.map((m) => m.version).join();
  return {
    tick: async () => {
      await Promise.all(all.map((m) => m.poll()));
      const now = all.map((m) => m.version).join();
      if (now !== versions) { versions = now; draw(); }
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// Routing and the poll loop
// ---------------------------------------------------------------------------------------------------------

const VIEWS = { runs: homeView, run: runView, compare: compareView, playground: playgroundView, explain: explainView };

async function route() {
  const hash = location.hash || "#/runs";
  const [, view = "runs", ...rest] = hash.split("/");
  const arg = decodeURIComponent(rest.join("/"));
  const render = VIEWS[view] || homeView;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === view);
  const main = document.getElementById("main");
  main.replaceChildren();
  main.dataset.view = view;
  current = { tick: null };
  renderRunList();
  const made = await render(main, arg);
  current = made || {};
  main.dataset.ready = "1";
}

async function tick() {
  if (ticking) return;
  ticking = true;
  try {
    await refreshRuns();
    if (current.tick) await current.tick();
  } catch (err) {
    console.warn("refresh failed:", err);
  } finally {
    ticking = false;
  }
}

async function start() {
  document.getElementById("filter").addEventListener("input", renderRunList);
  document.getElementById("compare-button").addEventListener("click", () => {
    if (location.hash === "#/compare") route(); else location.hash = "#/compare";
  });
  window.addEventListener("hashchange", route);
  try {
    await refreshRuns();
  } catch (err) {
    document.getElementById("main").append(h("p", { class: "error" }, `cannot read the runs: ${err.message}`));
  }
  await route();
  setInterval(tick, POLL_MS);
}

start();
