// Drive the service with the real AG-UI client (`@ag-ui/client`'s HttpAgent), as a CopilotKit runtime does.
//
// stdin: {client?, url, token, threadId, runId, messages, newMessage?, newMessages?, context?, tools?, resume?,
//         replay?: {url}, cancel?: {url}}
//   - `client`: the package to import (default `@ag-ui/client`, 1.0; `agui-client-0`: 0.0.59, the version the
//     current `@copilotkit/runtime` depends on, so what a CopilotKit runtime runs);
//   - `messages`: the agent's history before the run; `newMessage`: the user message the run adds (`newMessages`:
//     several, such as the tool messages answering a frontend tool's calls).
//   - `tools`, `resume`: the run's frontend tools and answers to interrupts, as `runAgent` takes them.
//   - `replay`: instead of running, follow a run's events with a GET (a fresh agent, as after a reload).
//   - `cancel`: POST this URL (the service's cancel) once the first text arrives.
// stdout: {events, messages, error, outcome, interrupts, result, runError, newMessages}
//   - `events`: every event type the agent applied (after the client's own event verification);
//   - `error`: what `runAgent` threw ({name, message}), null when the run passed verification and ended.
const input = JSON.parse(await new Promise((resolve) => {
  let data = "";
  process.stdin.on("data", (c) => (data += c));
  process.stdin.on("end", () => resolve(data));
}));
const { HttpAgent } = await import(input.client ?? "@ag-ui/client");

class ReplayAgent extends HttpAgent {
  // The replay route is a GET: same SSE body, same client pipeline (transform, verify, apply).
  requestInit() {
    return { method: "GET", headers: { ...this.headers, Accept: "text/event-stream" }, signal: this.abortController.signal };
  }
}

const headers = { Authorization: `Bearer ${input.token}` };
const Agent = input.replay ? ReplayAgent : HttpAgent;
const agent = new Agent({
  url: input.replay ? input.replay.url : input.url,
  headers,
  threadId: input.threadId,
  initialMessages: input.messages ?? [],
});
if (input.newMessage) agent.addMessage(input.newMessage);
for (const message of input.newMessages ?? []) agent.addMessage(message);

const events = [];
let outcome = null;
let interrupts = null;
let result = null;
let runError = null;
let cancelled = false;
const subscriber = {
  onEvent: ({ event }) => {
    events.push(event.type);
  },
  onTextMessageContentEvent: async () => {
    if (input.cancel && !cancelled) {
      cancelled = true;
      await fetch(input.cancel.url, { method: "POST", headers });
    }
  },
  onRunFinishedEvent: ({ event }) => {
    outcome = event.outcome?.type ?? "absent";
    interrupts = event.outcome?.interrupts ?? null;
    result = event.result ?? null;
  },
  onRunErrorEvent: ({ event }) => {
    runError = { message: event.message, code: event.code ?? null };
  },
};

let error = null;
let newMessages = [];
const originalError = console.error;
console.error = () => {}; // the agent logs the failure it also throws
try {
  const params = { runId: input.runId, context: input.context ?? [], tools: input.tools ?? [] };
  if (input.resume) params.resume = input.resume;
  const result = await agent.runAgent(params, subscriber);
  newMessages = result.newMessages;
} catch (e) {
  error = { name: e?.name ?? "Error", message: String(e?.message ?? e) };
} finally {
  console.error = originalError;
}
process.stdout.write(JSON.stringify({ events, messages: agent.messages, newMessages, error, outcome, interrupts, result, runError }));
