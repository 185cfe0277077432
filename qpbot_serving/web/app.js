const $ = (id) => document.getElementById(id);
let answerId = null;
let judgments = {};  // chunk_id -> "relevant" | "irrelevant", sent with the thumbs

async function ask(event) {
  event.preventDefault();
  const query = $("question").value.trim();
  if (!query) return;
  for (const id of ["answer", "answer-mode", "error", "evidence", "citations", "more-sources"]) $(id).replaceChildren();
  $("more").style.display = "none"; judgments = {};
  $("feedback").style.display = "none"; $("feedback-status").textContent = "";
  $("ask-button").disabled = true;
  $("answer").setAttribute("aria-busy", "true");
  try {
    const response = await fetch("/v1/answer", {
      method: "POST", headers: {"Content-Type": "application/json"},
      // More sources than the prompt holds: the rest are shown to be judged.
      body: JSON.stringify({query, k: 8, stream: true}),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error || (body.detail && JSON.stringify(body.detail)) || response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        handleEvent(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
      }
    }
  } catch (error) {
    $("error").textContent = error.message;
  } finally {
    $("answer").setAttribute("aria-busy", "false");
    $("ask-button").disabled = false;
  }
}

function handleEvent(block) {
  const name = block.match(/^event: (.*)$/m)[1];
  const data = JSON.parse(block.match(/^data: (.*)$/m)[1]);
  if (name === "sources") showSources(data.citations, "citations");
  else if (name === "token") $("answer").append(data);  // the draft, replaced at `done`
  else if (name === "error") $("error").textContent = data.error;
  else if (name === "done") {
    answerId = data.answer_id;
    // The checked answer may differ from the draft (sentences dropped, or the quote instead).
    showAnswer(data.answer || "", data.citations);
    showAnswerMode(data);
    if (data.answer_mode !== "declined") showEvidence(data.evidence);
    if (data.more_sources && data.more_sources.length) {
      showSources(data.more_sources, "more-sources");
      $("more").style.display = "block";
    }
    $("feedback").style.display = "flex";
  }
}

// The answer's text, each citation marker ("[2]", "[1, 3]") a link to its source.
function showAnswer(text, citations) {
  const numbers = new Set(citations.map((c) => c.number));
  const answer = $("answer");
  answer.replaceChildren();
  const markers = /\[(\d+(?:\s*,\s*\d+)*)\]/g;
  let last = 0;
  for (const match of text.matchAll(markers)) {
    const cited = match[1].split(",").map(Number);
    if (!cited.every((n) => numbers.has(n))) continue;  // not a marker: brackets in a quote
    answer.append(text.slice(last, match.index), "[");
    cited.forEach((n, i) => {
      if (i) answer.append(", ");
      const link = document.createElement("a");
      link.href = `#source-${n}`;
      link.className = "cite-marker";
      link.dataset.source = String(n);
      link.textContent = String(n);
      link.setAttribute("aria-label", `source ${n}`);
      link.addEventListener("click", (event) => { event.preventDefault(); showSource(n); });
      answer.append(link);
    });
    answer.append("]");
    last = match.index + match[0].length;
  }
  answer.append(text.slice(last));
}

function showSource(number) {
  const targets = [$(`source-${number}`), ...document.querySelectorAll(`#evidence [data-source="${number}"]`)];
  targets.filter(Boolean).forEach((target, i) => {
    if (i === 0) target.scrollIntoView({behavior: "smooth", block: "center"});
    target.classList.remove("flash");
    void target.offsetWidth;  // restarts the animation when the same source is clicked again
    target.classList.add("flash");
    setTimeout(() => target.classList.remove("flash"), 2000);
  });
}

function showAnswerMode(data) {
  const line = $("answer-mode");
  const badge = document.createElement("span");
  badge.className = "badge";
  if (data.answer_mode === "generative") {
    badge.textContent = data.grounded ? "Generated and checked against the sources" : "The generated answer did not pass the check against the sources";
    if (!data.grounded) badge.classList.add("unchecked");
  } else if (data.answer_mode === "extractive") {
    badge.textContent = "Quoted from the sources";
    badge.classList.add("quoted");
  } else {
    return;  // declined: the answer says so
  }
  line.append(badge);
  if (data.answer_mode === "extractive" && data.fallback) {
    const note = document.createElement("span");
    note.className = "muted";
    // Why the draft was not used: it failed the check, the generator declined or failed.
    note.textContent = ` instead of the generated answer: ${data.fallback}`;
    line.append(note);
  }
}

function documentLink(documentId, page) {
  return `/v1/documents/${encodeURIComponent(documentId)}/content` + (page ? `#page=${page}` : "");
}

// The quoted units the answer rests on (all of them when it names none), with the spans
// the answer repeats marked. Text nodes only: quotes come from users' documents.
function showEvidence(evidence) {
  const cited = evidence.filter((unit) => unit.cited);
  for (const unit of cited.length ? cited : evidence) {
    const figure = document.createElement("figure");
    figure.dataset.source = String(unit.number);
    const quote = document.createElement("blockquote");
    let last = 0;
    for (const [start, end] of mergedSpans(unit.highlights, unit.quote)) {
      const mark = document.createElement("mark");
      mark.textContent = unit.quote.slice(start, end);
      quote.append(unit.quote.slice(last, start), mark);
      last = end;
    }
    quote.append(unit.quote.slice(last));
    const caption = document.createElement("figcaption");
    const where = [unit.title || unit.document_id, unit.page ? `page ${unit.page}` : null, unit.section].filter(Boolean);
    caption.append(`[${unit.number}] ${where.join(", ")} · `);
    const link = document.createElement("a");
    link.href = documentLink(unit.document_id, unit.page);
    link.target = "_blank";
    link.className = "evidence-link";
    link.textContent = unit.page ? `open page ${unit.page}` : "open the document";
    caption.append(link);
    figure.append(quote, caption);
    $("evidence").append(figure);
  }
}

// The spans in order, clipped to the text; overlapping ones, or ones only spaces apart,
// joined ("pet hair" is one mark, not two).
function mergedSpans(spans, text) {
  const merged = [];
  for (const [start, end] of [...spans].sort((a, b) => a[0] - b[0])) {
    const s = Math.max(0, start), e = Math.min(text.length, end);
    if (e <= s) continue;
    const previous = merged[merged.length - 1];
    if (previous && (s <= previous[1] || !text.slice(previous[1], s).trim())) previous[1] = Math.max(previous[1], e);
    else merged.push([s, e]);
  }
  return merged;
}

function showSources(sources, listId) {
  for (const c of sources) {
    const item = document.createElement("li");
    if (c.number != null) { item.id = `source-${c.number}`; item.value = c.number; }
    const link = document.createElement("a");
    const page = c.page_start ? `, page ${c.page_start}` : "";
    link.href = documentLink(c.document_id, c.page_start);
    link.target = "_blank";
    link.textContent = `${c.title || c.document_id}${page}`;
    link.className = "citation";
    item.appendChild(link);
    for (const [verdict, label] of [["relevant", "✓"], ["irrelevant", "✗"]]) {
      const button = document.createElement("button");
      button.className = "secondary judge";
      button.textContent = label;
      button.dataset.verdict = verdict;
      button.setAttribute("aria-label", `${verdict}: ${link.textContent}`);
      button.setAttribute("aria-pressed", "false");
      button.addEventListener("click", () => {
        judgments[c.chunk_id] = verdict;
        for (const other of item.querySelectorAll(".judge")) other.setAttribute("aria-pressed", String(other === button));
      });
      item.appendChild(button);
    }
    $(listId).appendChild(item);
  }
}

async function sendFeedback(rating) {
  if (!answerId) return;
  const response = await fetch("/v1/feedback", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({answer_id: answerId, rating, source_judgments: Object.keys(judgments).length ? judgments : null}),
  });
  $("feedback-status").textContent = response.ok ? "Thanks for the feedback." : "Feedback could not be saved.";
}

async function upload(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  const response = await fetch("/v1/documents", {method: "POST", body: form});
  const body = await response.json();
  if (!response.ok) { $("upload-status").textContent = `Rejected: ${body.error}`; return; }
  $("upload-status").textContent = `${body.filename}: ${body.status}`;
  watch(body.document_id, body.filename);
}

async function watch(documentId, filename) {
  for (let i = 0; i < 600; i++) {
    const response = await fetch(`/v1/documents/${encodeURIComponent(documentId)}`);
    if (response.ok) {
      const body = await response.json();
      const detail = body.status === "quarantined" ? ` (${body.reason})` : body.status === "indexed" ? ` (${body.chunks} chunks)` : "";
      $("upload-status").textContent = `${filename}: ${body.status}${detail}`;
      if (body.status === "indexed" || body.status === "quarantined") return;
    }
    await new Promise((done) => setTimeout(done, 2000));
  }
}

$("ask").addEventListener("submit", ask);
$("upload").addEventListener("submit", upload);
$("thumbs-up").addEventListener("click", () => sendFeedback("up"));
$("thumbs-down").addEventListener("click", () => sendFeedback("down"));
