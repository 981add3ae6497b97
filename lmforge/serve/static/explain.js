// The explain view: pick a model run, give a text, see attention maps, the logit lens and token
// attributions (computed by lmforge.eval.explain on the server). renderExplain also shows the
// explain.json of an `lmforge explain` run on its run page.
import { fmtNum } from "./chart.js";
import { getJSON, h, probabilityBars } from "./util.js";

const METHODS = [["attention", "attention maps"], ["logit_lens", "logit lens"], ["attribution", "token attributions"]];
const MAX_LENS_POSITIONS = 40;

const visible = (text) => text.replace(/\n/g, "⏎").replace(/\t/g, "⇥").replace(/ /g, "␣");

export async function explainView(main) {
  main.append(h("h1", {}, "Explain"));
  let data;
  try {
    data = await getJSON("api/explain/models");
  } catch (err) {
    main.append(h("p", { class: "error" }, err.message));
    return {};
  }
  if (!data.enabled) {
    main.append(h("p", { class: "muted" }, "The explain view is switched off here (dashboard.explain=false)."));
    return {};
  }
  if (!data.models.length) {
    main.append(h("p", { class: "muted" }, "No run in the runs directory holds a model checkpoint yet."));
    return {};
  }
  const select = h("select", { id: "explain-model" }, data.models.map((m) =>
    h("option", { value: m.name, dataset: { kind: m.kind } }, `${m.name} (${m.kind})`)));
  const text = h("textarea", { id: "explain-text", rows: 3, placeholder: "a text to explain" });
  const target = h("input", { id: "explain-target", placeholder: "target (default: the prediction)" });
  const boxes = METHODS.map(([key, label]) => {
    const box = h("input", { type: "checkbox", value: key, class: "explain-method" });
    box.checked = true;
    return [key, box, h("label", {}, box, ` ${label}`)];
  });
  const syncMethods = () => {
    const kind = select.selectedOptions[0].dataset.kind;
    for (const [key, box] of boxes) {
      const applies = !(kind === "classifier" && key === "logit_lens");
      if (box.disabled === applies) box.checked = applies; // switched off for a classifier, back on for an LM
      box.disabled = !applies;
    }
  };
  select.addEventListener("change", syncMethods);
  syncMethods();
  const button = h("button", { type: "submit", id: "explain-button" }, "Explain");
  const status = h("span", { class: "muted", id: "explain-status" });
  const result = h("div", { id: "explain-result" });
  const form = h("form", { class: "card explain-form" },
    h("div", { class: "row" }, h("label", {}, "model ", select), target),
    text, h("div", { class: "row" }, boxes.map((b) => b[2]), button, status));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const methods = boxes.filter(([, box]) => box.checked).map(([key]) => key);
    button.disabled = true;
    status.textContent = "computing…";
    try {
      const body = { name: select.value, text: text.value, methods, target: target.value.trim() || null };
      const answer = await getJSON("api/explain", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      renderExplain(result, answer);
      status.textContent = "";
    } catch (err) {
      result.replaceChildren(h("p", { class: "error" }, err.message));
      status.textContent = "";
    } finally {
      button.disabled = false;
    }
  });
  main.append(form, result);
  return {};
}

export function renderExplain(container, result) {
  const parts = [h("p", { class: "muted" }, `${result.model.kind} ${result.model.path}: ${result.tokens.length} tokens`,
    result.truncated ? ` (${result.truncated} more did not fit and were left out)` : "")];
  const prediction = result.prediction || {};
  if (prediction.probabilities) {
    parts.push(h("div", { class: "prediction" }, h("h3", {}, `Prediction: ${prediction.predicted}`),
      probabilityBars(prediction.labels, prediction.probabilities)));
  } else if (prediction.next) {
    parts.push(h("div", { class: "prediction" }, h("h3", {}, "Next token"),
      probabilityBars(prediction.next.map((n) => JSON.stringify(n.token)), prediction.next.map((n) => n.prob))));
  }
  if (result.attribution) parts.push(attributionBlock(result));
  if (result.attention) parts.push(attentionBlock(result));
  if (result.logit_lens) parts.push(logitLensBlock(result));
  container.replaceChildren(...parts);
}

// -- attributions: the text, each token shaded by its score ------------------------------------------------

function attributionBlock(result) {
  const a = result.attribution;
  const rows = [["integrated_gradients", "integrated gradients"], ["occlusion", "occlusion"]].map(([key, label]) => {
    const scores = a[key].scores;
    const peak = Math.max(1e-12, ...scores.filter((_, i) => !result.tokens[i].special).map(Math.abs));
    const spans = result.tokens.map((t, i) => {
      const w = t.special ? 0 : scores[i] / peak;
      const background = w >= 0 ? `rgba(22, 163, 74, ${w.toFixed(3)})` : `rgba(220, 38, 38, ${(-w).toFixed(3)})`;
      return h("span", { class: "tok" + (t.special ? " special" : ""), style: { background },
        title: `${JSON.stringify(t.text)}: ${scores[i] >= 0 ? "+" : ""}${scores[i].toPrecision(4)}`,
        dataset: { score: scores[i], index: i } }, t.text);
    });
    const extra = key === "integrated_gradients"
      ? h("span", { class: "muted" }, ` sum ${fmtNum(scores.reduce((x, y) => x + y, 0))}, error ${fmtNum(a[key].delta)}`)
      : null;
    return h("div", { class: "attr-row" }, h("div", { class: "attr-name" }, label, extra),
      h("div", { class: "attr", dataset: { method: key } }, spans));
  });
  return h("section", { class: "card explain-attribution" }, h("h3", {}, "Token attributions"),
    h("p", { class: "muted" }, `target ${JSON.stringify(a.target)}: p = ${a.p_text.toFixed(4)} for the text, `
      + `${a.p_baseline.toFixed(4)} with every token replaced by ${JSON.stringify(a.baseline)}. `
      + "Green pushes toward the target, red away from it."), rows);
}

// -- attention: one layer and head (or the heads' mean) as a heat map -------------------------------------

function attentionBlock(result) {
  const weights = result.attention.weights; // [layer][head][query][key]
  const layer = h("select", { class: "attention-layer" }, weights.map((_, i) => h("option", { value: i }, `layer ${i + 1}`)));
  const head = h("select", { class: "attention-head" }, h("option", { value: "mean" }, "mean of heads"),
    weights[0].map((_, i) => h("option", { value: i }, `head ${i + 1}`)));
  const canvas = h("canvas", { class: "attention-map" });
  const readout = h("div", { class: "muted attention-readout" }, "hover a cell: which token attends to which");
  const labels = result.tokens.map((t) => visible(t.text).slice(0, 10));
  const matrix = () => {
    const L = weights[+layer.value];
    if (head.value !== "mean") return L[+head.value];
    return L[0].map((row, q) => row.map((_, k) => L.reduce((s, hd) => s + hd[q][k], 0) / L.length));
  };
  const geometry = { cell: 0, left: 0, top: 0 };
  const draw = () => {
    const m = matrix();
    const T = m.length;
    const cell = Math.max(6, Math.min(22, Math.floor(520 / T)));
    const left = T <= 64 ? 80 : 8;
    const top = T <= 64 ? 70 : 8;
    Object.assign(geometry, { cell, left, top });
    const ratio = window.devicePixelRatio || 1;
    canvas.width = (left + cell * T + 8) * ratio;
    canvas.height = (top + cell * T + 8) * ratio;
    canvas.style.width = `${left + cell * T + 8}px`;
    canvas.style.height = `${top + cell * T + 8}px`;
    canvas.dataset.layer = layer.value;
    canvas.dataset.head = head.value;
    canvas.dataset.tokens = T;
    const ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    for (let q = 0; q < T; q++) {
      for (let k = 0; k < T; k++) {
        const w = m[q][k];
        ctx.fillStyle = `rgba(37, 99, 235, ${Math.min(1, w).toFixed(3)})`;
        ctx.fillRect(left + k * cell, top + q * cell, cell - (cell > 8 ? 1 : 0), cell - (cell > 8 ? 1 : 0));
      }
    }
    if (T <= 64) {
      ctx.fillStyle = "#374151";
      ctx.font = `${Math.min(12, cell - 2)}px ui-monospace, monospace`;
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      labels.forEach((l, i) => ctx.fillText(l, left - 4, top + i * cell + cell / 2));
      ctx.save();
      ctx.textAlign = "left";
      labels.forEach((l, i) => {
        ctx.save();
        ctx.translate(left + i * cell + cell / 2, top - 4);
        ctx.rotate(-Math.PI / 2);
        ctx.fillText(l, 0, 0);
        ctx.restore();
      });
      ctx.restore();
    }
  };
  canvas.addEventListener("mousemove", (ev) => {
    const box = canvas.getBoundingClientRect();
    const k = Math.floor((ev.clientX - box.left - geometry.left) / geometry.cell);
    const q = Math.floor((ev.clientY - box.top - geometry.top) / geometry.cell);
    const m = matrix();
    if (q >= 0 && k >= 0 && q < m.length && k < m.length) {
      readout.textContent = `${JSON.stringify(result.tokens[q].text)} attends to ${JSON.stringify(result.tokens[k].text)}: ${m[q][k].toFixed(4)}`;
    }
  });
  layer.addEventListener("change", draw);
  head.addEventListener("change", draw);
  draw();
  return h("section", { class: "card explain-attention" }, h("h3", {}, "Attention"),
    h("div", { class: "row" }, layer, head, h("span", { class: "muted" }, "rows attend to columns")), canvas, readout);
}

// -- logit lens: the top next-token prediction after each layer --------------------------------------------

function logitLensBlock(result) {
  const lens = result.logit_lens;
  const start = Math.max(0, result.tokens.length - MAX_LENS_POSITIONS);
  const tokens = result.tokens.slice(start);
  const head = h("tr", {}, h("th", {}, "layer \\ input"), tokens.map((t) => h("th", { class: "tok-head" }, visible(t.text))));
  const rows = lens.top.map((positions, li) => h("tr", { dataset: { layer: lens.layers[li] } }, h("th", {}, lens.layers[li]),
    positions.slice(start).map((top) => h("td", {
      style: { background: `rgba(37, 99, 235, ${(0.85 * top[0].prob).toFixed(3)})`, color: top[0].prob > 0.55 ? "#fff" : "" },
      title: top.map((p) => `${JSON.stringify(p.token)} ${p.prob.toFixed(4)}`).join("\n"),
      dataset: { token: top[0].token, prob: top[0].prob },
    }, visible(top[0].token)))));
  return h("section", { class: "card explain-lens" }, h("h3", {}, "Logit lens"),
    h("p", { class: "muted" }, "The final norm and LM head applied after each layer: the top prediction for the token after "
      + "each input token (hover for the top "
      + `${lens.top[0][0].length}). The last row is the model's own prediction.`),
    start ? h("p", { class: "muted" }, `the last ${MAX_LENS_POSITIONS} positions of ${result.tokens.length}`) : null,
    h("div", { class: "scroll" }, h("table", { class: "lens" }, h("thead", {}, head), h("tbody", {}, rows))));
}
