// DOM of a tool call that waits for a person, inside its tool card: Approve / Deny (with an optional reason), the
// form of an `ask_user` question (its choices as buttons, a text field), or a note that the host app runs the tool.
// The controls are built once per call and kept while it waits, so a render (one per streamed chunk) never loses
// what the user is typing; what was typed is also kept by the loop (`draft`), so controls built again (an answer the
// server did not take brings them back) show it. Question and choices are model text: they go in as textContent only.

const WAITING_LABELS = { approval: "needs approval", ask_user: "question", frontend: "waiting for the app" };

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(label, className, onClick) {
  const node = el("button", className, label);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

/** Show, keep or remove the controls of `part` (a decorated tool part, see human.js) in its `card`. */
export function updateHumanControls(card, part) {
  const human = part.state === "waiting" ? part.human : null;
  let box = card.querySelector(":scope > .human");
  const key = human ? `${part.toolCallId}:${human.kind}:${human.hostRuns}` : null;
  if (box && box.dataset.key !== key) {
    box.remove();
    box = null;
  }
  card.querySelector(":scope > .input").hidden = Boolean(human && human.kind === "ask_user");
  if (!human) return;
  card.querySelector(".tool-state").textContent = WAITING_LABELS[human.kind] || "waiting";
  if (box) return;
  box = controlsOf(human);
  box.dataset.key = key;
  card.querySelector(":scope > summary").after(box);
  card.open = true; // what waits for the user is shown without a click
}

function controlsOf(human) {
  const box = el("div", `human ${human.kind}`);
  const once = (action) => () => {
    for (const control of box.querySelectorAll("button, input")) control.disabled = true;
    action();
  };
  if (human.kind === "approval") {
    const reason = el("input", "deny-reason");
    reason.placeholder = "Reason (optional)";
    reason.maxLength = 1000;
    reason.setAttribute("aria-label", "Reason for denying");
    keepsDraft(reason, human);
    box.append(
      el("div", "human-prompt", "Run this tool?"),
      button("Approve", "approve", once(() => human.approve())),
      button("Deny", "deny", once(() => human.deny(reason.value.trim()))),
      reason,
    );
  } else if (human.kind === "ask_user") {
    box.append(el("div", "question", String(human.input.question ?? "")));
    const choices = Array.isArray(human.input.choices) ? human.input.choices : [];
    if (choices.length) {
      const row = el("div", "choices");
      for (const choice of choices.map(String)) row.append(button(choice, "choice", once(() => human.reply(choice))));
      box.append(row);
    }
    const form = el("form", "answer");
    const text = el("input", "answer-input");
    text.placeholder = "Your answer";
    text.setAttribute("aria-label", "Your answer");
    keepsDraft(text, human);
    const send = el("button", "answer-send", "Answer");
    send.type = "submit";
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (text.value.trim()) once(() => human.reply(text.value.trim()))();
    });
    form.append(text, send);
    box.append(form);
  } else {
    const note = human.hostRuns ? "The app is running this tool…" : "Waiting for the app to run this tool.";
    box.append(el("div", "human-prompt", note), button("Dismiss", "dismiss", once(() => human.dismiss())));
  }
  return box;
}

function keepsDraft(input, human) {
  input.value = human.draft;
  input.addEventListener("input", () => human.keepDraft(input.value));
}
