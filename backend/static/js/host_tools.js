// Frontend tools of the host app, over postMessage: the page that embeds the panel declares tools, runs the calls the
// model makes to them, and hands back their results.
//
//   host → panel   {type: "copilot:register-tools", tools: [{name, description, inputSchema}]}   (again to change them;
//                  `tools: []` withdraws them)
//   panel → host   {type: "copilot:tool-call", toolCallId, toolName, input}
//   host → panel   {type: "copilot:tool-result", toolCallId, output}  or  {..., error: "what went wrong"}
//
// Origins: the host is the panel's parent window, at the host origin: the `host_origin` query parameter of the
// panel's URL when given (`/?host_origin=https://app.example.com`), else the origin of `document.referrer` (the page
// that loaded the iframe; browsers send at least its origin unless the host's Referrer-Policy is `no-referrer`).
// Messages are read only when they come from the parent window and from that origin, and tool calls (which carry
// the user's data) are posted to that origin only, never to "*". With no host origin known, frontend tools are off.

export class HostTools {
  constructor(win = window) {
    this.win = win;
    this.origin = win.parent !== win ? hostOrigin(win) : null;
    this.tools = null; // the declarations the host registered (null: none yet), sent with every message
    this.onRegister = () => {};
    this.onResult = () => {};
    if (win.parent !== win && !this.origin) {
      console.warn("copilot panel: no host origin (set ?host_origin=); frontend tools of the host app are off");
    }
    if (this.origin) win.addEventListener("message", (event) => this.onMessage(event));
  }

  onMessage(event) {
    const data = event.data;
    if (event.source !== this.win.parent || event.origin !== this.origin || !data || typeof data !== "object") return;
    if (data.type === "copilot:register-tools" && Array.isArray(data.tools)) {
      this.tools = data.tools.filter((tool) => tool && typeof tool === "object" && typeof tool.name === "string");
      this.onRegister(this.tools);
    } else if (data.type === "copilot:tool-result" && typeof data.toolCallId === "string") {
      const result = data.error !== undefined && data.error !== null ? { error: data.error } : { output: data.output };
      this.onResult(data.toolCallId, result);
    }
  }

  /** Whether the host registered a tool of this name. */
  has(name) {
    return Boolean(this.tools && this.tools.some((tool) => tool.name === name));
  }

  /** Hand a waiting frontend call (a session's `awaiting` entry) to the host; false if the host cannot run it. */
  run(call) {
    if (!this.origin || !this.has(call.tool_name)) return false;
    const message = { type: "copilot:tool-call", toolCallId: call.tool_call_id, toolName: call.tool_name };
    this.win.parent.postMessage({ ...message, input: call.input }, this.origin);
    return true;
  }
}

function hostOrigin(win) {
  const configured = new URLSearchParams(win.location.search).get("host_origin");
  const candidate = configured || win.document.referrer;
  if (!candidate) return null;
  try {
    const origin = new URL(candidate).origin;
    return origin === "null" ? null : origin;
  } catch {
    return null;
  }
}
