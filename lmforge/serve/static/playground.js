// The playground over the OpenAI-compatible API of `lmforge serve` (same origin: served by it, or proxied
// by `lmforge dashboard --api-base URL`): chat with streamed replies (fetch + ReadableStream over SSE),
// sampling controls, and a classification box with per-class probabilities.
import { getJSON, h, probabilityBars } from "./util.js";

const conversation = []; // {role, content}, kept while the page is open

function isClassifier(model) {
  return model.kind === "classifier" || model.task === "classify" || model.type === "classifier"
    || Array.isArray(model.labels);
}

function slider(id, label, min, max, step, value) {
  const range = h("input", { type: "range", min, max, step, value, id: `${id}-range` });
  const number = h("input", { type: "number", min, max, step, value, id, class: "num" });
  range.addEventListener("input", () => { number.value = range.value; });
  number.addEventListener("input", () => { range.value = number.value; });
  return [number, h("label", { class: "control" }, h("span", {}, label), range, number)];
}

export async function playgroundView(main) {
  main.append(h("h1", {}, "Playground"));
  let models = [];
  let problem = null;
  try {
    models = (await getJSON("v1/models")).data || [];
  } catch (err) {
    problem = err.message;
  }
  if (!models.length) {
    main.append(h("div", { class: "card no-model", id: "no-model" },
      h("p", {}, "No model is served here."),
      h("p", { class: "muted" }, "Start one with ", h("code", {}, "lmforge serve MODEL"),
        " (it serves this page too), or run ", h("code", {}, "lmforge dashboard --api-base http://HOST:PORT"),
        " to talk to a running server.", problem ? ` (${problem})` : "")));
    return {};
  }
  const generators = models.filter((m) => !isClassifier(m));
  const classifiers = models.filter(isClassifier);
  if (generators.length) main.append(chatPanel(generators));
  if (classifiers.length) main.append(classifyPanel(classifiers));
  return {};
}

// -- chat ------------------------------------------------------------------------------------------------

function chatPanel(models) {
  const select = h("select", { id: "chat-model" }, models.map((m) => h("option", { value: m.id }, m.id)));
  const [temperature, tempControl] = slider("temperature", "temperature", 0, 2, 0.05, 0.8);
  const [topP, topPControl] = slider("top-p", "top-p", 0, 1, 0.01, 0.95);
  const maxTokens = h("input", { type: "number", id: "max-tokens", min: 1, max: 8192, value: 128, class: "num" });
  const system = h("textarea", { id: "system-prompt", rows: 2, placeholder: "system message (optional)" });
  const log = h("div", { id: "chat-log", class: "chat-log" });
  const input = h("textarea", { id: "chat-input", rows: 2, placeholder: "Say something (Enter sends, Shift+Enter: new line)" });
  const send = h("button", { id: "chat-send", type: "submit" }, "Send");
  const stop = h("button", { id: "chat-stop", type: "button", disabled: true }, "Stop");
  const clear = h("button", { id: "chat-clear", type: "button" }, "Clear");
  const stats = h("span", { class: "muted", id: "chat-stats" });
  let controller = null;

  const bubble = (role, text) => {
    const node = h("div", { class: `msg msg-${role}`, dataset: { role } }, h("div", { class: "role" }, role),
      h("div", { class: "content" }, text));
    log.append(node);
    log.scrollTop = log.scrollHeight;
    return node;
  };
  for (const m of conversation) bubble(m.role, m.content);

  const submit = async () => {
    const text = input.value.trim();
    if (!text || controller) return;
    input.value = "";
    conversation.push({ role: "user", content: text });
    bubble("user", text);
    const reply = bubble("assistant", "");
    const content = reply.querySelector(".content");
    reply.dataset.streaming = "1";
    let chunks = 0;
    const started = performance.now();
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    const messages = [...(system.value.trim() ? [{ role: "system", content: system.value.trim() }] : []), ...conversation];
    try {
      const response = await fetch("v1/chat/completions", {
        method: "POST", headers: { "Content-Type": "application/json" }, signal: controller.signal,
        body: JSON.stringify({ model: select.value, messages, stream: true, temperature: +temperature.value,
          top_p: +topP.value, max_tokens: +maxTokens.value }),
      });
      if (!response.ok) {
        let message = `${response.status} ${response.statusText}`;
        try {
          const body = await response.json();
          message = (body.error && body.error.message) || body.detail || message;
        } catch { /* not JSON */ }
        throw new Error(typeof message === "string" ? message : JSON.stringify(message));
      }
      await readEvents(response.body, (event) => {
        if (event.error) throw new Error(event.error.message || JSON.stringify(event.error));
        const delta = event.choices && event.choices[0] && event.choices[0].delta;
        if (delta && delta.content) {
          content.textContent += delta.content;
          chunks += 1;
          reply.dataset.chunks = chunks;
          log.scrollTop = log.scrollHeight;
        }
        const finish = event.choices && event.choices[0] && event.choices[0].finish_reason;
        if (finish) reply.dataset.finish = finish;
      });
      conversation.push({ role: "assistant", content: content.textContent });
    } catch (err) {
      if (err.name === "AbortError") {
        reply.dataset.finish = "stopped";
        conversation.push({ role: "assistant", content: content.textContent });
      } else {
        reply.append(h("div", { class: "error" }, err.message));
        conversation.pop(); // the user turn that failed is not part of the conversation
      }
    } finally {
      const seconds = (performance.now() - started) / 1000;
      stats.textContent = `${chunks} chunks in ${seconds.toFixed(2)} s`;
      delete reply.dataset.streaming;
      reply.dataset.done = "1";
      controller = null;
      send.disabled = false;
      stop.disabled = true;
    }
  };

  const form = h("form", { class: "chat-form" }, input, h("div", { class: "row" }, send, stop, clear, stats));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); submit(); });
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); submit(); }
  });
  stop.addEventListener("click", () => controller && controller.abort());
  clear.addEventListener("click", () => { conversation.length = 0; log.replaceChildren(); });
  return h("section", { class: "card chat" }, h("h2", {}, "Chat"),
    h("div", { class: "pg-grid" },
      h("div", {}, log, form),
      h("div", { class: "controls" }, h("label", { class: "control" }, h("span", {}, "model"), select),
        tempControl, topPControl, h("label", { class: "control" }, h("span", {}, "max tokens"), maxTokens), system)));
}

// Server-sent events from a fetch body: calls onEvent with each `data:` JSON object until [DONE].
async function readEvents(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      onEvent(JSON.parse(data));
    }
  }
}

// -- classification --------------------------------------------------------------------------------------

// The per-class probabilities of one answer, whatever of the usual shapes it takes.
export function classProbabilities(answer) {
  const item = (answer.data && answer.data[0]) || answer;
  const probs = item.probabilities || item.scores || item.probs;
  if (Array.isArray(probs) && probs.length && typeof probs[0] === "object") {
    return [probs.map((p) => p.label), probs.map((p) => p.probability ?? p.score ?? p.prob)];
  }
  if (Array.isArray(probs)) return [item.labels || answer.labels || probs.map((_, i) => String(i)), probs];
  if (probs && typeof probs === "object") return [Object.keys(probs), Object.values(probs)];
  throw new Error("the server's answer has no probabilities");
}

function classifyPanel(models) {
  const select = h("select", { id: "classify-model" }, models.map((m) => h("option", { value: m.id }, m.id)));
  const input = h("textarea", { id: "classify-input", rows: 3, placeholder: "a text to classify" });
  const button = h("button", { id: "classify-button", type: "submit" }, "Classify");
  const result = h("div", { id: "classify-result" });
  const form = h("form", {}, h("div", { class: "row" }, h("label", {}, "model ", select)), input, h("div", { class: "row" }, button), result);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    button.disabled = true;
    try {
      const answer = await getJSON("v1/classify", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model: select.value, input: input.value }),
      });
      const [labels, probabilities] = classProbabilities(answer);
      result.replaceChildren(probabilityBars(labels, probabilities));
    } catch (err) {
      result.replaceChildren(h("p", { class: "error" }, err.message));
    } finally {
      button.disabled = false;
    }
  });
  return h("section", { class: "card classify" }, h("h2", {}, "Classify"), form);
}
