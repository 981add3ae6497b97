// Small helpers shared by the dashboard's views.

// h("div", {class: "x", onclick: f}, child, "text", …): an element; children may be nodes, strings or arrays.
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "style" && typeof v === "object") Object.assign(node.style, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export async function getJSON(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const detail = body && (body.detail || (body.error && body.error.message));
    throw new Error(typeof detail === "string" ? detail : `${response.status} ${response.statusText}`);
  }
  return body;
}

export const enc = encodeURIComponent;

export function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}`, title: STATUS_HELP[status] || "" }, status);
}

const STATUS_HELP = {
  finished: "the stage ended and wrote its manifest",
  failed: "the stage raised an error (its manifest says failed)",
  running: "no manifest yet, and its metrics or log changed recently",
  interrupted: "no manifest, and nothing written for a while: killed or stopped",
};

// A probability bar row: label, bar, value.
export function probabilityBars(labels, probabilities) {
  const best = probabilities.indexOf(Math.max(...probabilities));
  return h("div", { class: "prob-bars" }, labels.map((label, i) => h("div", {
    class: "prob-row" + (i === best ? " best" : ""), dataset: { label, probability: probabilities[i] },
  }, h("span", { class: "prob-label" }, label),
  h("span", { class: "prob-track" }, h("span", { class: "prob-fill", style: { width: `${(100 * probabilities[i]).toFixed(1)}%` } })),
  h("span", { class: "prob-value" }, probabilities[i].toFixed(4)))));
}
