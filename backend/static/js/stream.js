// Reading a UI message stream: Server-Sent Events from a fetch body, one JSON chunk per event.

/** The body ended before `data: [DONE]`: the connection dropped; resume after the last cursor. */
export class StreamCut extends Error {}

/**
 * Yields {id, chunk} for each event of an SSE response body until `data: [DONE]`; throws StreamCut if the body
 * ends before it. `id` is the event's cursor (resume after it with `?after=`); comments (heartbeats) are skipped.
 */
export async function* readChunks(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new StreamCut("the stream ended before [DONE]");
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        if (event.data === null) continue;
        if (event.data === "[DONE]") return;
        yield { id: event.id, chunk: JSON.parse(event.data) };
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseEvent(text) {
  let id = null;
  const data = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  return { id, data: data.length ? data.join("\n") : null };
}
