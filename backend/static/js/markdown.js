// A small Markdown renderer that builds DOM nodes: model and tool text only ever becomes text nodes (never HTML),
// and links keep only http(s) and mailto URLs.
//
// Blocks: paragraphs, # headings, fenced code, - / * / 1. lists, > quotes, --- rules. Inline: `code`, **bold**,
// *italic* / _italic_, [links](https://…) and bare https:// URLs.

const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);
const INLINE = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*([^*]+?)\*\*|__([^_]+?)__|\*([^*\s][^*]*?)\*|\b_([^_\s][^_]*?)_\b|\[([^\]]+)\]\(([^)\s]+)\)|(https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"])/;

/** Render `source` into a DocumentFragment. */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  const lines = source.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*(```+|~~~+)\s*([\w+-]*)\s*$/);
    if (fence) {
      const body = [];
      for (i += 1; i < lines.length && !lines[i].trim().startsWith(fence[1]); i += 1) body.push(lines[i]);
      i += 1; // the closing fence (absent while a reply still streams)
      fragment.append(codeBlock(body.join("\n"), fence[2]));
      continue;
    }
    const heading = line.match(/^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/);
    if (heading) {
      fragment.append(element(`h${Math.min(heading[1].length + 2, 6)}`, heading[2]));
      i += 1;
      continue;
    }
    if (/^\s{0,3}([-*_])(\s*\1){2,}\s*$/.test(line)) {
      fragment.append(document.createElement("hr"));
      i += 1;
      continue;
    }
    const item = listItem(line);
    if (item) {
      const list = document.createElement(item.ordered ? "ol" : "ul");
      if (item.ordered && item.start !== 1) list.start = item.start;
      for (let next = item; next && next.ordered === item.ordered; next = listItem(lines[i] ?? "")) {
        list.append(element("li", next.text));
        i += 1;
      }
      fragment.append(list);
      continue;
    }
    if (/^\s{0,3}>/.test(line)) {
      const quoted = [];
      for (; i < lines.length && /^\s{0,3}>/.test(lines[i]); i += 1) quoted.push(lines[i].replace(/^\s{0,3}>\s?/, ""));
      const quote = document.createElement("blockquote");
      quote.append(renderMarkdown(quoted.join("\n")));
      fragment.append(quote);
      continue;
    }
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const paragraph = [];
    for (; i < lines.length && isParagraphLine(lines[i]); i += 1) paragraph.push(lines[i]);
    const p = document.createElement("p");
    paragraph.forEach((text, n) => {
      if (n > 0) p.append(document.createElement("br"));
      appendInline(p, text.trim());
    });
    fragment.append(p);
  }
  return fragment;
}

function isParagraphLine(line) {
  return (
    line.trim() !== "" &&
    !listItem(line) &&
    !/^\s*(```|~~~)/.test(line) &&
    !/^\s{0,3}(#{1,6}\s|>)/.test(line) &&
    !/^\s{0,3}([-*_])(\s*\1){2,}\s*$/.test(line)
  );
}

function listItem(line) {
  const bullet = line.match(/^\s*[-*+]\s+(.*)$/);
  if (bullet) return { ordered: false, text: bullet[1] };
  const numbered = line.match(/^\s*(\d{1,9})[.)]\s+(.*)$/);
  if (numbered) return { ordered: true, start: Number(numbered[1]), text: numbered[2] };
  return null;
}

function codeBlock(text, language) {
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  if (language) code.dataset.language = language;
  code.textContent = text;
  pre.append(code);
  return pre;
}

function element(tag, inlineText) {
  const node = document.createElement(tag);
  appendInline(node, inlineText);
  return node;
}

/** Append the inline Markdown of `text` to `parent`, as text nodes and a few safe elements. */
export function appendInline(parent, text) {
  let rest = text;
  while (rest) {
    const m = rest.match(INLINE);
    if (!m) {
      parent.append(document.createTextNode(rest));
      return;
    }
    if (m.index > 0) parent.append(document.createTextNode(rest.slice(0, m.index)));
    parent.append(inlineNode(m));
    rest = rest.slice(m.index + m[0].length);
  }
}

function inlineNode(m) {
  if (m[1]) {
    const code = document.createElement("code");
    code.textContent = m[2].trim() ? m[2].replace(/^ (.*) $/, "$1") : m[2];
    return code;
  }
  if (m[3] || m[4]) return element("strong", m[3] || m[4]);
  if (m[5] || m[6]) return element("em", m[5] || m[6]);
  if (m[7]) return link(m[8], m[7]) || document.createTextNode(m[0]);
  return link(m[9], null) || document.createTextNode(m[0]);
}

function link(href, label) {
  let url;
  try {
    url = new URL(href);
  } catch {
    return null; // relative or malformed: shown as text
  }
  if (!SAFE_PROTOCOLS.has(url.protocol)) return null;
  const a = document.createElement("a");
  a.href = url.href;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  if (label === null) a.textContent = href;
  else appendInline(a, label);
  return a;
}
