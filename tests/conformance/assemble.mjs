// Runs an SSE response body (stdin, exactly the bytes our server sends) through the real `ai` client
// code and prints what a browser would end up with, as JSON on stdout. The first argument names the
// package to use (`ai` = v6, `ai5`, `ai7`: npm aliases in package.json); default `ai`.
//
//   messages    [the assistant UIMessage assembled by readUIMessageStream]
//   errors      [{name, message}] every onError of readUIMessageStream (terminateOnError: false):
//               `error` chunks (name "Error") as well as protocol violations
//   violations  the errors that are NOT an `error` chunk: schema/JSON failures (AI_TypeValidationError,
//               AI_JSONParseError) and ordering errors (AI_UIMessageStreamError). Empty for a valid stream.
//   chat        the useChat path: AbstractChat + DefaultChatTransport (useChat without React) fed the
//               same body through a stubbed fetch: {status, error, finishReason, isError, message, data}
//               (`data`: the data parts onData heard, transient ones included)
//   chunks      the chunks as the client parsed them
//
// Both paths use the package's own parser: parseJsonEventStream + uiMessageChunkSchema, exactly as
// DefaultChatTransport.processResponseStream does (a failed parse throws).

const {
  AbstractChat,
  DefaultChatTransport,
  UI_MESSAGE_STREAM_HEADERS,
  parseJsonEventStream,
  readUIMessageStream,
  uiMessageChunkSchema,
} = await import(process.argv[2] ?? 'ai');

const describe = error => ({
  name: error?.name ?? typeof error,
  message: error?.message ?? String(error),
});

async function readStdin() {
  const parts = [];
  for await (const part of process.stdin) parts.push(part);
  return new Uint8Array(Buffer.concat(parts));
}

function parseChunks(body, seen) {
  return parseJsonEventStream({
    stream: new Response(body).body,
    schema: uiMessageChunkSchema,
  }).pipeThrough(
    new TransformStream({
      transform(result, controller) {
        if (!result.success) throw result.error;
        seen?.push(result.value);
        controller.enqueue(result.value);
      },
    }),
  );
}

async function readPath(body) {
  const chunks = [];
  const errors = [];
  let message = null;
  for await (const snapshot of readUIMessageStream({
    stream: parseChunks(body, chunks),
    terminateOnError: false,
    onError: error => errors.push(describe(error)),
  })) {
    message = snapshot;
  }
  const errorTexts = new Set(chunks.filter(c => c.type === 'error').map(c => c.errorText));
  const violations = errors.filter(e => !(e.name === 'Error' && errorTexts.has(e.message)));
  return { messages: message == null ? [] : [message], errors, violations, chunks };
}

class MemoryChatState {
  status = 'ready';
  error = undefined;
  messages = [];
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
  constructor(init) {
    super({ ...init, state: new MemoryChatState() });
  }
}

async function chatPath(body) {
  let finish = null;
  const data = [];
  const chat = new MemoryChat({
    onData: part => data.push(part),
    id: 'conformance',
    transport: new DefaultChatTransport({
      api: 'http://conformance.invalid/api/chat',
      fetch: async () => new Response(body, { status: 200, headers: UI_MESSAGE_STREAM_HEADERS }),
    }),
    onFinish: options => {
      finish = options;
    },
  });
  await chat.sendMessage({ text: 'hello' });
  const last = chat.messages.at(-1);
  return {
    status: chat.status,
    error: chat.error == null ? null : describe(chat.error),
    finishReason: finish?.finishReason ?? null,
    isError: finish?.isError ?? null,
    message: last?.role === 'assistant' ? last : null,
    data,
  };
}

const body = await readStdin();
const result = await readPath(body);
result.chat = await chatPath(body);
process.stdout.write(JSON.stringify(result));
