// Drives the real `ai` client's `Chat` (AbstractChat + DefaultChatTransport: useChat without React) against a live
// service, through a human-in-the-loop round trip, and prints where the chat ended up as JSON on stdout.
// The first argument names the package (`ai` = v6, `ai5`, `ai7`: npm aliases in package.json). The plan is JSON
// on stdin:
//
//   api          the stream route, `<base>/api/chat/sessions/<id>/stream` (real fetch, no stub)
//   headers      sent with every request (the Authorization header)
//   body         the transport's `body` option, e.g. {tools: [...]}: frontend tools declared per request
//   messages     the chat's initial messages (a page reloaded from `GET .../ui-messages`); default none
//   text         the user's message; null sends none (a reloaded page answering what its history waits for)
//   historyOutputs {toolName: output}: answers, with `addToolOutput`, to the `input-available` parts of the initial
//                messages (a question the user answers after a reload)
//   outputs      {toolName: output}: frontend tools `onToolCall` runs; it answers with `addToolOutput`
//                (`addToolResult` in ai 5) and `sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithToolCalls`
//                posts the answer back
//   errors       {toolName: errorText}: frontend tools that fail (`state: 'output-error'`)
//   approval     {approved, reason?} | null: the answer to every `approval-requested` part, given with
//                `addToolApprovalResponse` and `sendAutomaticallyWhen: lastAssistantMessageIsCompleteWithApprovalResponses`
//                (ai 6 and 7); null leaves the call waiting
//   restApproval {approved, reason?} | null: the answer to every call waiting for approval (ai 5, which has no
//                approval state: its `data-tool-approval-request` parts; ai 6 and 7: its `approval-requested` parts,
//                as another tab or app would answer), posted to the REST approval endpoint; the continuation it
//                starts (`GET /api/chat/tasks/<task>/stream`) is then read into the chat's last assistant message
//                with `readUIMessageStream({message, stream})`, the package's own way to continue a message
//                (`Chat.resumeStream` would start a new message from the stream: a continuation only holds what
//                came after the answer, so the client refuses its `tool-output-*` for a call it does not know;
//                `followWith: "resumeStream"` does that instead, to show it)
//
// Output: {status, error, messages, requests: [{method, url, body}], finishes: [{finishReason, isError}],
//          data: [data parts as onData saw them], approvals: [REST answers], followErrors: [errors of that read]}.

const ai = await import(process.argv[2] ?? 'ai');
const { AbstractChat, DefaultChatTransport } = ai;

const describe = error => (error == null ? null : { name: error.name ?? typeof error, message: error.message ?? String(error) });

async function readStdin() {
  const parts = [];
  for await (const part of process.stdin) parts.push(part);
  return JSON.parse(Buffer.concat(parts).toString('utf8'));
}

class MemoryChatState {
  status = 'ready';
  error = undefined;
  constructor(messages = []) {
    this.messages = messages;
  }
  snapshot = value => structuredClone(value);
  pushMessage = message => {
    this.messages = [...this.messages, this.snapshot(message)];
  };
  popMessage = () => {
    this.messages = this.messages.slice(0, -1);
  };
  replaceMessage = (index, message) => {
    this.messages = this.messages.map((m, i) => (i === index ? this.snapshot(message) : m));
  };
}

class MemoryChat extends AbstractChat {
  constructor({ messages, ...init }) {
    super({ ...init, state: new MemoryChatState(messages) });
  }
}

const plan = await readStdin();
const base = new URL(plan.api).origin;
const requests = [];
const finishes = [];
const data = [];
const approvals = [];
const followErrors = [];
let taskId = null;
let finished = () => {};

const recordingFetch = async (url, init) => {
  requests.push({
    method: init?.method ?? 'GET',
    url: String(url),
    body: init?.body == null ? null : JSON.parse(init.body),
  });
  const response = await fetch(url, init);
  taskId = response.headers.get('x-copilot-task-id') ?? taskId;
  return response;
};

// ai 5 names it `addToolResult`; ai 6 and 7 `addToolOutput` (ai 6 keeps `addToolResult` as a deprecated alias).
const answerTool = chat => (process.argv[2] === 'ai5' ? chat.addToolResult : chat.addToolOutput).bind(chat);
const approvalsAsked = plan.approval != null;

const chat = new MemoryChat({
  messages: plan.messages ?? [],
  id: new URL(plan.api).pathname.split('/').at(-2),
  transport: new DefaultChatTransport({
    api: plan.api,
    headers: plan.headers,
    body: plan.body,
    fetch: recordingFetch,
    prepareReconnectToStreamRequest: ({ headers }) => ({
      api: `${base}/api/chat/tasks/${taskId}/stream`,
      headers,
    }),
  }),
  onToolCall: ({ toolCall }) => {
    const { toolName, toolCallId } = toolCall;
    // Not awaited: the answer is queued behind the stream's own updates (awaiting it here would deadlock).
    if (toolName in (plan.errors ?? {})) {
      void answerTool(chat)({ tool: toolName, toolCallId, state: 'output-error', errorText: plan.errors[toolName] });
    } else if (toolName in (plan.outputs ?? {})) {
      void answerTool(chat)({ tool: toolName, toolCallId, output: plan.outputs[toolName] });
    }
  },
  onData: part => data.push(part),
  onFinish: ({ finishReason, isError }) => {
    finishes.push({ finishReason: finishReason ?? null, isError: isError ?? null });
    finished();
  },
  sendAutomaticallyWhen: approvalsAsked
    ? ai.lastAssistantMessageIsCompleteWithApprovalResponses
    : ai.lastAssistantMessageIsCompleteWithToolCalls,
});

const nextFinish = () =>
  new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no stream finished within 20 s')), 20_000);
    finished = () => {
      clearTimeout(timer);
      finished = () => {};
      resolve();
    };
  });

const isToolPart = part => part.type.startsWith('tool-') || part.type === 'dynamic-tool';

if (plan.text != null) await chat.sendMessage({ text: plan.text });

if (plan.historyOutputs != null) {
  const waiting = chat.messages
    .flatMap(m => m.parts)
    .filter(part => isToolPart(part) && part.state === 'input-available' && part.type.slice(5) in plan.historyOutputs);
  if (waiting.length > 0) {
    const continued = nextFinish();
    for (const part of waiting) {
      const tool = part.type.slice(5);
      await answerTool(chat)({ tool, toolCallId: part.toolCallId, output: plan.historyOutputs[tool] });
    }
    await continued; // the automatic request is not awaited by addToolOutput
  }
}

if (approvalsAsked) {
  const asked = chat.messages
    .flatMap(m => m.parts)
    .filter(part => isToolPart(part) && part.state === 'approval-requested');
  if (asked.length > 0) {
    const continued = nextFinish();
    for (const part of asked) {
      await chat.addToolApprovalResponse({ id: part.approval.id, ...plan.approval });
    }
    await continued; // the automatic request is not awaited by addToolApprovalResponse
    await new Promise(resolve => setTimeout(resolve, 0));
  }
}

// Continue the chat's last assistant message with the stream at `url`, as the package parses and assembles it.
async function follow(url) {
  const response = await recordingFetch(url, { headers: plan.headers });
  if (!response.ok) throw new Error(`GET ${url}: ${response.status} ${await response.text()}`);
  const chunks = ai.parseJsonEventStream({ stream: response.body, schema: ai.uiMessageChunkSchema }).pipeThrough(
    new TransformStream({
      transform(result, controller) {
        if (!result.success) throw result.error;
        controller.enqueue(result.value);
      },
    }),
  );
  let message = structuredClone(chat.lastMessage);
  for await (const snapshot of ai.readUIMessageStream({
    message,
    stream: chunks,
    onError: error => followErrors.push(describe(error)),
  })) {
    message = snapshot;
  }
  chat.messages = chat.messages.map(m => (m.id === message.id ? message : m));
}

if (plan.restApproval != null) {
  // ai 5: the data parts; ai 6 and 7: the parts in state `approval-requested` (answered here instead of useChat).
  const asked = [
    ...data.filter(part => part.type === 'data-tool-approval-request').map(part => part.data.toolCallId),
    ...chat.messages
      .flatMap(m => m.parts)
      .filter(part => isToolPart(part) && part.state === 'approval-requested')
      .map(part => part.toolCallId),
  ];
  const sid = new URL(plan.api).pathname.split('/').at(-2);
  for (const toolCallId of asked) {
    const response = await fetch(`${base}/api/chat/sessions/${sid}/tool-calls/${toolCallId}/approval`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...plan.headers },
      body: JSON.stringify(plan.restApproval),
    });
    const answer = await response.json();
    approvals.push({ status: response.status, ...answer });
    taskId = answer.task_id ?? taskId;
  }
  if (asked.length > 0 && taskId != null) {
    if (plan.followWith === 'resumeStream') await chat.resumeStream();
    else await follow(`${base}/api/chat/tasks/${taskId}/stream`);
  }
}

process.stdout.write(
  JSON.stringify({
    status: chat.status,
    error: describe(chat.error),
    messages: chat.messages,
    requests,
    finishes,
    data,
    approvals,
    followErrors,
  }),
);
