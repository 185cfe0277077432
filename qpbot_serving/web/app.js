const $ = (id) => document.getElementById(id);
let answerId = null;
let judgments = {};  // chunk_id -> "relevant" | "irrelevant", sent with the thumbs
let watchedUpload = 0;  // the upload whose status the page follows (a newer one takes over)

const TOKEN_KEY = "qpbot.api-token";  // sessionStorage: kept for this tab's session only
// How long a document's blob URL lives: the new tab has loaded the PDF long before.
const BLOB_LIFETIME_MS = 10 * 60 * 1000;
let tokenRequest = null;  // the open token dialog: calls refused together wait for one token

class NoToken extends Error {}  // the token dialog was cancelled

// Every call of the page goes through here. It sends the access token when there is one;
// on a 401 it asks for one (again, with the reason, when the one sent was refused) and
// repeats the call. Other answers, a 403 included, are the caller's to show.
async function api(path, options = {}, {beforeAsking} = {}) {
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = new Headers(options.headers);
    if (token) headers.set("Authorization", `Bearer ${token}`);
    const response = await fetch(path, {...options, headers});
    if (response.status !== 401) return response;
    const body = await response.json().catch(() => ({}));
    if (sessionStorage.getItem(TOKEN_KEY) !== token) continue;  // a newer token came meanwhile
    sessionStorage.removeItem(TOKEN_KEY);
    showTokenState();
    if (beforeAsking) beforeAsking();
    await askForToken(token ? `That token was not accepted: ${body.error || response.statusText}.` : "");
  }
}

// The token dialog; resolves once a token is stored, rejects when the user cancels.
function askForToken(reason) {
  $("token-error").textContent = reason;
  if (tokenRequest) return tokenRequest;
  tokenRequest = new Promise((resolve, reject) => {
    const dialog = $("token-dialog");
    $("token").value = "";
    dialog.returnValue = "";
    dialog.addEventListener("close", () => {
      tokenRequest = null;
      const token = $("token").value.trim();
      $("token").value = "";
      if (dialog.returnValue === "use" && token) {
        sessionStorage.setItem(TOKEN_KEY, token);
        showTokenState();
        resolve();
      } else {
        reject(new NoToken("This needs an access token, and none was given."));
      }
    }, {once: true});
    dialog.showModal();
    $("token").focus();
  });
  return tokenRequest;
}

function showTokenState() {
  $("change-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
}

// What a refused call says to the user; a 403 names the token as the reason.
async function failureMessage(response) {
  const body = await response.json().catch(() => ({}));
  const reason = body.error || (body.detail && JSON.stringify(body.detail)) || response.statusText;
  if (response.status === 403) {
    return sessionStorage.getItem(TOKEN_KEY)
      ? `The access token you gave may not do this (${reason}). Use another token to do it.`
      : `Not allowed: ${reason}`;
  }
  return reason;
}

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
    const response = await api("/v1/answer", {
      method: "POST", headers: {"Content-Type": "application/json"},
      // More sources than the prompt holds: the rest are shown to be judged.
      body: JSON.stringify({query, k: 8, stream: true}),
    });
    if (!response.ok) throw new Error(await failureMessage(response));
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

// A link to a document's original: the href says where it is, the click opens it (with
// the token: a plain navigation would carry none, and the service sends originals as
// downloads so that an uploaded HTML page can never run as this page).
function linkToDocument(link, documentId, page, format) {
  link.href = documentLink(documentId, page);
  link.target = "_blank";
  link.dataset.documentId = documentId;
  link.dataset.format = format || "";
  if (page) link.dataset.page = String(page);
  link.addEventListener("click", openDocument);
}

// A PDF opens in a new tab at its cited page, from a blob of type application/pdf; any
// other original is downloaded, never shown in this origin.
async function openDocument(event) {
  event.preventDefault();
  const {documentId, page, format} = event.currentTarget.dataset;
  // A PDF's tab is opened now, while the click lasts: one opened once the bytes are in may
  // be stopped by the popup blocker. The citation says the original's format.
  let tab = format === "pdf" ? window.open("", "_blank") : null;
  if (tab) tab.opener = null;
  const closeTab = () => { if (tab) tab.close(); tab = null; };
  try {
    // The token dialog is in this tab: the blank one must not hide it.
    const response = await api(documentLink(documentId), {}, {beforeAsking: closeTab});
    if (!response.ok) throw new Error(await failureMessage(response));
    const bytes = await response.arrayBuffer();
    const type = (response.headers.get("content-type") || "").split(";")[0].trim().toLowerCase();
    const name = attachmentName(response.headers.get("content-disposition")) || documentId;
    if (type === "application/pdf") {
      const url = URL.createObjectURL(new Blob([bytes], {type: "application/pdf"}));
      setTimeout(() => URL.revokeObjectURL(url), BLOB_LIFETIME_MS);
      const target = url + (page ? `#page=${page}` : "");
      if (tab && !tab.closed) tab.location.href = target;
      else if (!window.open(target, "_blank")) download(bytes, name);  // the tab was blocked
    } else {
      closeTab();
      download(bytes, name);
    }
  } catch (error) {
    closeTab();
    $("error").textContent = `The document could not be opened: ${error.message}`;
  }
}

// Saves bytes as a file. Always as application/octet-stream: a blob of the original's
// type (text/html) would be a page of this origin.
function download(bytes, filename) {
  const url = URL.createObjectURL(new Blob([bytes], {type: "application/octet-stream"}));
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), BLOB_LIFETIME_MS);
}

// The file name of a Content-Disposition header: filename*=utf-8''… or filename="…".
function attachmentName(disposition) {
  if (!disposition) return null;
  const encoded = disposition.match(/filename\*\s*=\s*[^']*'[^']*'([^;]+)/i);
  if (encoded) {
    try { return decodeURIComponent(encoded[1].trim()); } catch { /* the plain name, then */ }
  }
  const plain = disposition.match(/filename\s*=\s*(?:"([^"]*)"|([^;]+))/i);
  return plain ? (plain[1] ?? plain[2]).trim() : null;
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
    linkToDocument(link, unit.document_id, unit.page, unit.format);
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
    linkToDocument(link, c.document_id, c.page_start, c.format);
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
  try {
    const response = await api("/v1/feedback", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({answer_id: answerId, rating, source_judgments: Object.keys(judgments).length ? judgments : null}),
    });
    $("feedback-status").textContent = response.ok ? "Thanks for the feedback." : `Feedback could not be saved: ${await failureMessage(response)}`;
  } catch (error) {
    $("feedback-status").textContent = `Feedback could not be saved: ${error.message}`;
  }
}

async function upload(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  const status = $("upload-status");
  watchedUpload++;  // the status line is this upload's now
  try {
    const response = await api("/v1/documents", {method: "POST", body: form});
    if (!response.ok) { status.textContent = `Rejected: ${await failureMessage(response)}`; return; }
    const body = await response.json();
    // `replaced`: a file of this name came before, and this one updates its document.
    const label = `${body.filename}: ${body.replaced ? "updated, " : ""}`;
    status.textContent = label + body.status;
    watch(body.document_id, label);
  } catch (error) {
    status.textContent = `Rejected: ${error.message}`;
  }
}

// Follows an upload until it is indexed or quarantined (or a newer upload takes over).
async function watch(documentId, label) {
  const upload = watchedUpload;
  const status = $("upload-status");
  for (let i = 0; i < 600 && upload === watchedUpload; i++) {
    let response = null;
    try {
      response = await api(`/v1/documents/${encodeURIComponent(documentId)}`);
    } catch (error) {
      if (error instanceof NoToken) return;  // not asked again every two seconds
    }
    if (upload !== watchedUpload) return;
    if (response && response.status === 403) {
      status.textContent = `${label}queued; its progress cannot be shown: ${await failureMessage(response)}`;
      return;
    }
    if (response && response.ok) {
      const body = await response.json();
      const detail = body.status === "quarantined" ? ` (${body.reason})` : body.status === "indexed" ? ` (${body.chunks} chunks)` : "";
      status.textContent = `${label}${body.status}${detail}`;
      if (body.status === "indexed" || body.status === "quarantined") return;
    }
    await new Promise((done) => setTimeout(done, 2000));
  }
}

$("ask").addEventListener("submit", ask);
$("upload").addEventListener("submit", upload);
$("thumbs-up").addEventListener("click", () => sendFeedback("up"));
$("thumbs-down").addEventListener("click", () => sendFeedback("down"));
$("token-form").addEventListener("submit", (event) => { event.preventDefault(); $("token-dialog").close("use"); });
$("token-cancel").addEventListener("click", () => $("token-dialog").close());
// Another token (one that may write, say): the one stored stays unless a new one is given.
$("change-token").addEventListener("click", () => {
  askForToken("").catch(() => {});
});
showTokenState();
