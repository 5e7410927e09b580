// The panel's message model, built either from stream chunks (a reply as it arrives) or from stored messages.
//
// A view message is {key, role: "user" | "assistant", parts, error, stopped, notice}; parts are
// {type: "text", text, streaming}, {type: "reasoning", text, streaming} (shown collapsed) and
// {type: "tool", toolCallId, toolName, input, output, errorText, state} with state "running" | "pending" | "done" |
// "error" | "waiting" | "answered" | "denied" ("pending": a long-running operation not finished yet; "waiting": for a
// person, "answered": by them, see human.js). `earlier` holds what a continuation's stream said of calls made in the
// message's earlier stream (the answered calls of human in the loop), by tool call id: {state, output?, errorText?}.

const INTERRUPTED = "[interrupted]";
const OPERATION_TYPES = new Set(["operation_started", "operation_in_progress", "operation_pending"]);

/** The task id of a long-running operation's output, if `output` is one that has not finished yet. */
export function pendingTask(output) {
  if (output && typeof output === "object" && OPERATION_TYPES.has(output.type) && output.task_id) {
    return output.task_id;
  }
  return null;
}

export function emptyReply(key) {
  return { key, role: "assistant", parts: [], error: null, stopped: false, notice: null, finished: false, earlier: {} };
}

/**
 * Apply one AI SDK UI message chunk to `message` (mutated). A `start` chunk clears what was built so far: a
 * replay from the beginning rebuilds the reply instead of appending to it.
 */
export function applyChunk(message, chunk) {
  const parts = message.parts;
  const tool = (id) => parts.find((p) => p.type === "tool" && p.toolCallId === id);
  const text = (id, type = "text") => parts.find((p) => p.type === type && p.id === id && p.streaming);
  switch (chunk.type) {
    case "start":
      Object.assign(message, emptyReply(message.key), { messageId: chunk.messageId || null });
      break;
    case "text-start":
      parts.push({ type: "text", id: chunk.id, text: "", streaming: true });
      break;
    case "text-delta": {
      const part = text(chunk.id);
      if (part) part.text += chunk.delta;
      break;
    }
    case "text-end": {
      const part = text(chunk.id);
      if (part) part.streaming = false;
      break;
    }
    case "reasoning-start":
      parts.push({ type: "reasoning", id: chunk.id, text: "", streaming: true });
      break;
    case "reasoning-delta": {
      const part = text(chunk.id, "reasoning");
      if (part) part.text += chunk.delta;
      break;
    }
    case "reasoning-end": {
      const part = text(chunk.id, "reasoning");
      if (part) part.streaming = false;
      break;
    }
    case "tool-input-start":
      parts.push(toolPart(chunk.toolCallId, chunk.toolName));
      break;
    case "tool-input-delta": {
      const part = tool(chunk.toolCallId);
      if (part) part.inputText = (part.inputText || "") + chunk.inputTextDelta;
      break;
    }
    case "tool-input-available":
    case "tool-input-error": {
      let part = tool(chunk.toolCallId);
      if (!part) parts.push((part = toolPart(chunk.toolCallId, chunk.toolName)));
      part.input = chunk.input;
      if (chunk.type === "tool-input-error") Object.assign(part, { state: "error", errorText: chunk.errorText });
      break;
    }
    case "tool-output-available": {
      const outcome = { output: chunk.output, state: pendingTask(chunk.output) ? "pending" : "done" };
      Object.assign(tool(chunk.toolCallId) || earlier(message, chunk), outcome);
      break;
    }
    case "tool-output-error":
      Object.assign(tool(chunk.toolCallId) || earlier(message, chunk), { errorText: chunk.errorText, state: "error" });
      break;
    case "tool-output-denied":
      Object.assign(tool(chunk.toolCallId) || earlier(message, chunk), { state: "denied" });
      break;
    case "tool-approval-request": {
      const part = tool(chunk.toolCallId);
      if (part) part.state = "waiting";
      break;
    }
    case "error":
      message.error = chunk.errorText;
      break;
    case "abort":
      message.stopped = true;
      break;
    case "finish":
      message.finished = true;
      message.notice = null;
      for (const part of parts) if (part.type === "text" || part.type === "reasoning") part.streaming = false;
      break;
    default:
      if (chunk.type.startsWith("data-") && chunk.transient) message.notice = noticeOf(chunk);
  }
  return message;
}

/** The outcome of a call of the message's earlier stream (a continuation starts with those of the answered calls). */
function earlier(message, chunk) {
  return (message.earlier[chunk.toolCallId] = {});
}

function toolPart(toolCallId, toolName) {
  return { type: "tool", toolCallId, toolName, input: undefined, output: undefined, errorText: null, state: "running" };
}

function noticeOf(chunk) {
  const data = chunk.data;
  if (data && typeof data === "object" && typeof data.message === "string") return data.message;
  return chunk.type === "data-compaction" ? "Condensing the conversation…" : null;
}

/**
 * Stored messages (OpenAI-shaped, oldest first) → view messages. The assistant messages and tool results
 * between two user messages form one reply, as a streamed reply does.
 */
export function fromStored(stored) {
  const views = [];
  let reply = null;
  for (const m of stored) {
    if (m.role === "user") {
      views.push({ key: `s${m.sequence}`, role: "user", text: m.content || "", clientMessageId: m.client_message_id });
      reply = null;
      continue;
    }
    if (m.role !== "assistant" && m.role !== "tool") continue;
    if (!reply) views.push((reply = { ...emptyReply(`s${m.sequence}`), finished: true }));
    if (m.role === "assistant") addAssistant(reply, m);
    else addToolResult(reply, m);
  }
  return views;
}

function addAssistant(reply, m) {
  let content = m.content || m.refusal || "";
  if (content.endsWith(INTERRUPTED)) {
    content = content.slice(0, -INTERRUPTED.length).trimEnd();
    reply.stopped = true;
  }
  if (m.reasoning) reply.parts.push({ type: "reasoning", id: `r${m.sequence}`, text: m.reasoning, streaming: false });
  if (content) reply.parts.push({ type: "text", id: `s${m.sequence}`, text: content, streaming: false });
  for (const call of m.tool_calls || []) {
    const fn = call.function || {};
    const part = toolPart(call.id, fn.name || "tool");
    part.input = parseJson(fn.arguments || "{}");
    reply.parts.push(part);
  }
}

function addToolResult(reply, m) {
  const part = reply.parts.find((p) => p.type === "tool" && p.toolCallId === m.tool_call_id);
  if (!part) return;
  const output = parseJson(m.content || "");
  const error = output && typeof output === "object" && output.error;
  if (error && typeof error === "object" && error.type === "denied") {
    Object.assign(part, { state: "denied", errorText: error.message || "denied", output });
  } else if (error && typeof error === "object") {
    Object.assign(part, { state: "error", errorText: error.message || "tool failed", output });
  } else {
    Object.assign(part, { state: pendingTask(output) ? "pending" : "done", output });
  }
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}
