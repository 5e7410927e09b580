// DOM for the panel: the transcript (kept in place and updated as replies stream), tool cards, the session list.
// Every piece of model, tool or user text goes in through textContent or renderMarkdown, never as HTML.

import { updateHumanControls } from "./human_view.js";
import { renderMarkdown } from "./markdown.js";

const STATE_LABELS = {
  running: "running",
  pending: "pending",
  done: "done",
  error: "error",
  waiting: "waiting",
  answered: "answered",
  denied: "denied",
};

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(label, className, onClick, title) {
  const node = el("button", className, label);
  node.type = "button";
  if (title) node.title = title;
  node.addEventListener("click", onClick);
  return node;
}

/**
 * Make `container`'s children the given view messages, in order, reusing the element of each key so a streaming
 * reply is updated in place (open tool cards stay open). `extra` nodes (notes, errors) follow the messages.
 */
export function renderTranscript(container, views, extra = []) {
  const existing = new Map();
  for (const child of [...container.children]) {
    if (child.dataset.key) existing.set(child.dataset.key, child);
    else child.remove();
  }
  for (const view of views) {
    let node = existing.get(view.key);
    existing.delete(view.key);
    if (!node || node.dataset.role !== view.role) node = createMessage(view);
    updateMessage(node, view);
    container.append(node);
  }
  for (const stale of existing.values()) stale.remove();
  container.append(...extra);
}

function createMessage(view) {
  const node = el("article", `message ${view.role}`);
  node.dataset.key = view.key;
  node.dataset.role = view.role;
  node.append(el("div", "body"));
  return node;
}

function updateMessage(node, view) {
  const body = node.querySelector(".body");
  if (view.role === "user") {
    if (body.textContent !== view.text) body.textContent = view.text;
    node.classList.toggle("sending", Boolean(view.sending));
    return;
  }
  const parts = view.parts;
  const nodes = [...body.children];
  parts.forEach((part, i) => {
    let child = nodes[i];
    if (!child || child.dataset.kind !== part.type) {
      const fresh = createPart(part.type);
      fresh.dataset.kind = part.type;
      if (child) child.replaceWith(fresh);
      else body.append(fresh);
      child = fresh;
      nodes[i] = fresh;
    }
    if (part.type === "text") updateText(child, part);
    else if (part.type === "reasoning") updateReasoning(child, part);
    else updateToolCard(child, part);
  });
  for (const extra of nodes.slice(parts.length)) extra.remove();
  const streaming = !view.finished;
  node.classList.toggle("streaming", streaming);
  node.setAttribute("aria-busy", String(streaming));
  setFooter(node, view);
}

function updateText(node, part) {
  if (node.dataset.source !== part.text) {
    node.replaceChildren(renderMarkdown(part.text));
    node.dataset.source = part.text;
  }
  node.classList.toggle("streaming", part.streaming);
}

function createPart(type) {
  if (type === "text") return el("div", "text");
  return type === "reasoning" ? createReasoning() : createToolCard();
}

// Reasoning is shown collapsed: a "Thinking…" summary the user may open; its text is plain, never markdown.
function createReasoning() {
  const box = el("details", "reasoning");
  box.append(el("summary", null, "Thinking…"), el("pre"));
  return box;
}

function updateReasoning(box, part) {
  setPre(box.querySelector("pre"), part.text);
  box.querySelector("summary").textContent = part.streaming ? "Thinking…" : "Thought";
  box.classList.toggle("streaming", part.streaming);
}

function setFooter(node, view) {
  const notes = [];
  if (view.notice && !view.finished) notes.push(el("div", "notice", view.notice));
  if (view.parts.length === 0 && !view.finished && !view.notice) notes.push(el("div", "notice typing", "Thinking…"));
  if (view.stopped) notes.push(el("div", "stopped", "Stopped"));
  let footer = node.querySelector(":scope > .footer");
  if (!notes.length) {
    footer?.remove();
    return;
  }
  if (!footer) node.append((footer = el("div", "footer")));
  footer.replaceChildren(...notes);
}

function createToolCard() {
  const card = el("details", "tool");
  const summary = el("summary");
  summary.append(el("span", "tool-name"), el("span", "tool-state"));
  const input = el("div", "tool-section input");
  input.append(el("div", "label", "Input"), el("pre"));
  const output = el("div", "tool-section output");
  output.append(el("div", "label", "Output"), el("pre"));
  card.append(summary, input, output);
  return card;
}

function updateToolCard(card, part) {
  card.dataset.toolCallId = part.toolCallId;
  card.dataset.state = part.state;
  card.className = `tool ${part.state}`;
  card.querySelector(".tool-name").textContent = part.toolName;
  card.querySelector(".tool-state").textContent = STATE_LABELS[part.state] || part.state;
  const input = part.input === undefined ? part.inputText || "" : pretty(part.input);
  setPre(card.querySelector(".input pre"), input);
  const output = part.state === "error" && part.output === undefined ? part.errorText : pretty(part.output);
  const outputSection = card.querySelector(".output");
  outputSection.hidden = output === "";
  setPre(outputSection.querySelector("pre"), output);
  updateHumanControls(card, part);
}

function setPre(pre, text) {
  if (pre.textContent !== text) pre.textContent = text;
}

function pretty(value) {
  if (value === undefined) return "";
  if (typeof value === "string") return value;
  return JSON.stringify(value, null, 2);
}

/** An inline error with a retry action. */
/** An error, with a Retry button if `onRetry`; with `retryAt` (ms) a countdown, and Retry stays off until then. */
export function errorBox(message, onRetry, retryAt = null) {
  const box = el("div", "error-box");
  box.setAttribute("role", "alert");
  box.append(el("span", "error-text", message));
  const retry = onRetry ? button("Retry", "retry", onRetry) : null;
  if (retryAt) box.append(countdown(retryAt, retry));
  if (retry) box.append(retry);
  return box;
}

function countdown(retryAt, retry) {
  const wait = el("span", "retry-wait");
  const tick = () => {
    const seconds = Math.ceil((retryAt - Date.now()) / 1000);
    wait.textContent = seconds > 0 ? `You can retry in ${waitText(seconds)}.` : "";
    if (retry) retry.disabled = seconds > 0;
    // A render replaces the box: the timer of a box no longer shown stops.
    if (seconds > 0) setTimeout(() => wait.isConnected && tick(), 1000);
  };
  tick();
  return wait;
}

function waitText(seconds) {
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.ceil(seconds / 60);
  if (minutes < 60) return `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  return minutes % 60 ? `${hours} h ${minutes % 60} min` : `${hours} h`;
}

export function emptyState() {
  const box = el("div", "empty");
  box.append(el("p", null, "Ask anything about this page, or what to do next."));
  return box;
}

/**
 * The session list. `actions`: select(id), rename(id, title), remove(id). Renaming happens in place (Enter saves,
 * Escape cancels); deleting asks for a second click.
 */
export function renderSessions(list, sessions, currentId, actions) {
  list.replaceChildren(
    ...sessions.map((session) => {
      const item = el("li", session.id === currentId ? "session current" : "session");
      item.dataset.id = session.id;
      const title = button(session.title || "New chat", "session-title", () => actions.select(session.id));
      title.title = session.title || "New chat";
      const rename = button("✎", "icon rename", () => startRename(item, session, actions), "Rename");
      const remove = button("✕", "icon delete", () => confirmDelete(remove, session, actions), "Delete");
      item.append(title, rename, remove);
      return item;
    }),
  );
}

function startRename(item, session, actions) {
  const input = el("input", "rename-input");
  input.value = session.title || "";
  input.maxLength = 200;
  input.setAttribute("aria-label", "Session title");
  let done = false;
  const finish = (save) => {
    if (done) return;
    done = true;
    input.remove(); // the list may be drawn again from here on
    if (save && input.value.trim() !== (session.title || "")) actions.rename(session.id, input.value.trim());
    else actions.refresh();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    if (event.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
  item.replaceChildren(input);
  input.focus();
  input.select();
}

function confirmDelete(control, session, actions) {
  if (control.classList.contains("confirm")) {
    control.classList.remove("confirm");
    actions.remove(session.id);
    return;
  }
  control.classList.add("confirm");
  control.textContent = "Delete?";
  setTimeout(() => {
    control.classList.remove("confirm");
    control.textContent = "✕";
  }, 4000);
}
