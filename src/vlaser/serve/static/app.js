// The page of `vlaser serve`: images and a question go to POST v1/chat/completions (OpenAI format, images as
// base64 data URLs, the whole conversation each time), and the answer's <point>/<box> coordinates (Vlaser's
// 0-1000 grid) are drawn on the last image of the conversation. Parsing mirrors vlaser.points exactly, so the
// page shows what vlaser's evaluators would read from the same answer. Plain JS, no build step, no CDN.
"use strict";

const GRID = 1000;
const NUM = String.raw`[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?`;
const PAIR = new RegExp(String.raw`\[\s*(${NUM})\s*,\s*(${NUM})\s*\]`, "g");
const QUAD = new RegExp(String.raw`\[\s*(${NUM})\s*,\s*(${NUM})\s*,\s*(${NUM})\s*,\s*(${NUM})\s*\]`, "g");
const POINT_BLOCK = /<point>([\s\S]*?)<\/point>/g;
// An optional <ref>phrase</ref> right before a <box> block names its boxes (vlaser.points.parse_ref_boxes).
const BOX_BLOCK = /(?:<ref>([\s\S]*?)<\/ref>\s*)?<box>([\s\S]*?)<\/box>/g;

const state = {
  config: null,
  messages: [], // the OpenAI messages of the finished turns
  images: [], // {url, name} of every image sent so far, in order
  pending: [], // {url, name} chosen for the next question
  drawn: null, // {image, points, boxes} of the latest answer
  controller: null, // AbortController of the request in flight
};

const $ = (id) => document.getElementById(id);

/** Pairs inside <point> blocks; without any block, the pairs anywhere in the text (parse_points). */
function parsePoints(text) {
  const blocks = [...text.matchAll(POINT_BLOCK)].map((m) => m[1]);
  return (blocks.length ? blocks : [text]).flatMap((block) =>
    [...block.matchAll(PAIR)].map((m) => [Number(m[1]), Number(m[2])]));
}

/** Quadruples inside <box> blocks (parse_boxes), each with the <ref> phrase before its block, if any. */
function parseBoxes(text) {
  return [...text.matchAll(BOX_BLOCK)].flatMap((m) =>
    [...m[2].matchAll(QUAD)].map((q) => ({ref: (m[1] || "").trim(), box: q.slice(1, 5).map(Number)})));
}

/** Grid coordinates to the image's own pixels, truncated like vlaser.points.to_pixels. */
function toPixels(values, width, height) {
  return values.map((v, i) => Math.trunc((v / GRID) * (i % 2 === 0 ? width : height)));
}

/** The question wrapped in the point prompt, as vlaser.points.point_question builds it. */
function pointQuestion(question) {
  return `${state.config.point_prompt} ${question.trim()}`;
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`${file.name}: could not be read`));
    reader.readAsDataURL(file);
  });
}

/** Queue image files for the next question; files the browser cannot show as images are refused by name. */
async function addFiles(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) {
      setStatus(`${file.name} is not an image (${file.type || "unknown type"})`, true);
      continue;
    }
    try {
      const url = await readFile(file);
      const probe = new Image();
      probe.src = url;
      await probe.decode();
      state.pending.push({url, name: file.name});
      setStatus("");
    } catch (error) {
      setStatus(`${file.name}: this browser cannot decode the image`, true);
    }
  }
  renderPending();
  renderStage();
}

function thumbnail(image) {
  const img = document.createElement("img");
  img.src = image.url;
  img.alt = image.name;
  img.title = image.name;
  img.className = "thumb";
  return img;
}

function renderPending() {
  const box = $("pending");
  box.replaceChildren(...state.pending.map((image, i) => {
    const item = document.createElement("span");
    item.className = "pending-item";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = `Remove ${image.name}`;
    remove.addEventListener("click", () => {
      state.pending.splice(i, 1);
      renderPending();
      renderStage();
    });
    item.append(thumbnail(image), remove);
    return item;
  }));
}

/** The image answers are drawn on: the last one of the conversation, counting those not sent yet. */
function targetImage() {
  const all = [...state.images, ...state.pending];
  return all.length ? {image: all[all.length - 1], index: all.length, count: all.length} : null;
}

function renderStage() {
  const target = targetImage();
  $("stage").hidden = !target;
  if (!target) {
    $("overlay").replaceChildren();
    $("coords").replaceChildren();
    return;
  }
  const img = $("stage-image");
  if (img.getAttribute("src") !== target.image.url) {
    img.src = target.image.url;
  }
  if (img.complete && img.naturalWidth) {
    layout();
  }
}

/** Place the markers of the latest answer over the displayed image and list their pixel coordinates. */
function layout() {
  const img = $("stage-image");
  const target = targetImage();
  if (!target || !img.naturalWidth) {
    return;
  }
  const width = img.naturalWidth;
  const height = img.naturalHeight;
  const sx = img.clientWidth / width;
  const sy = img.clientHeight / height;
  const answered = Boolean(state.drawn && state.drawn.image === target.image);
  const drawn = answered ? state.drawn : {points: [], boxes: []};
  const markers = [];
  const rows = [];
  drawn.points.forEach((grid, i) => {
    const [x, y] = toPixels(grid, width, height);
    const marker = element("div", "marker point", String(i + 1));
    Object.assign(marker.dataset, {index: i + 1, x, y, left: round2(x * sx), top: round2(y * sy)});
    marker.style.left = `${x * sx}px`;
    marker.style.top = `${y * sy}px`;
    markers.push(marker);
    rows.push(coordRow("point", i + 1, `${i + 1}`, `(${x}, ${y})`, inside([x, y], width, height)));
  });
  drawn.boxes.forEach(({ref, box}, i) => {
    const [x1, y1, x2, y2] = toPixels(box, width, height);
    const marker = element("div", `marker box color${i % 5}`);
    const label = element("span", "box-label", `B${i + 1}${ref ? ` ${ref}` : ""}`);
    marker.append(label);
    const [left, top] = [Math.min(x1, x2) * sx, Math.min(y1, y2) * sy];
    const [w, h] = [Math.abs(x2 - x1) * sx, Math.abs(y2 - y1) * sy];
    Object.assign(marker.dataset, {index: i + 1, x1, y1, x2, y2, left: round2(left), top: round2(top),
      width: round2(w), height: round2(h)});
    Object.assign(marker.style, {left: `${left}px`, top: `${top}px`, width: `${w}px`, height: `${h}px`});
    markers.push(marker);
    const name = `B${i + 1}${ref ? ` ${ref}` : ""}`;
    rows.push(coordRow("box", i + 1, name, `(${x1}, ${y1}) – (${x2}, ${y2})`,
      inside([x1, y1], width, height) && inside([x2, y2], width, height)));
  });
  $("overlay").replaceChildren(...markers);
  $("coords").replaceChildren(...rows);
  const found = answered ? ` · ${drawn.points.length} point(s), ${drawn.boxes.length} box(es) in the last answer` : "";
  $("stage-caption").textContent =
    `Image ${target.index} of ${target.count}: ${target.image.name}, ${width}×${height} px${found}`;
}

function inside([x, y], width, height) {
  return x >= 0 && y >= 0 && x <= width && y <= height;
}

function round2(value) {
  return Math.round(value * 100) / 100;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

function coordRow(kind, index, name, text, isInside) {
  const row = element("li", `coord ${kind}`);
  row.dataset.kind = kind;
  row.dataset.index = index;
  row.append(element("strong", "", name), ` ${text} px${isInside ? "" : " (outside the image)"}`);
  return row;
}

function addBubble(role, text, images = []) {
  const bubble = element("div", `message ${role}`);
  if (images.length) {
    const strip = element("div", "thumbs");
    strip.append(...images.map(thumbnail));
    bubble.append(strip);
  }
  const body = element("div", "text", text);
  bubble.append(body);
  $("conversation").append(bubble);
  bubble.scrollIntoView({block: "end"});
  return bubble;
}

/** The error an API response carries, in OpenAI's {"error": {"message"}} shape when the server sent it. */
async function responseError(response) {
  let detail = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    detail = (body.error && (body.error.message || body.error)) || body.detail || detail;
  } catch (_) { /* not JSON: keep the status line */ }
  const hint = response.status === 401 ? " (fill in the API key)" : "";
  return new Error(`${typeof detail === "string" ? detail : JSON.stringify(detail)}${hint}`);
}

/** Read server-sent events (OpenAI chunks, then [DONE]), calling onDelta with the text so far. */
async function readStream(response, onDelta) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let text = "";
  let finish = null;
  for (;;) {
    const {value, done} = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), {stream: !done});
    const events = buffer.split(/\r?\n\r?\n/);
    buffer = done ? "" : events.pop();
    for (const event of events) {
      const data = event.split(/\r?\n/).filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
      if (!data) {
        continue;
      }
      if (data === "[DONE]") {
        return {text, finish};
      }
      const chunk = JSON.parse(data);
      if (chunk.error) {
        throw new Error(chunk.error.message || JSON.stringify(chunk.error));
      }
      const choice = (chunk.choices || [])[0] || {};
      text += (choice.delta && choice.delta.content) || "";
      finish = choice.finish_reason || finish;
      onDelta(text);
    }
    if (done) {
      return {text, finish};
    }
  }
}

async function complete(messages, stream, onDelta, signal) {
  const headers = {"Content-Type": "application/json"};
  const key = $("api-key").value.trim();
  if (key) {
    headers.Authorization = `Bearer ${key}`;
  }
  // skip_special_tokens false keeps the <ref>/<box> tags in the answer (a server drops them by default, as
  // model.chat does), so boxes are drawn with their labels.
  const request = {model: state.config.model, messages, stream, skip_special_tokens: false};
  const response = await fetch("v1/chat/completions", {
    method: "POST", headers, signal, body: JSON.stringify(request),
  });
  if (!response.ok) {
    throw await responseError(response);
  }
  if (stream) {
    return readStream(response, onDelta);
  }
  const body = await response.json();
  const choice = body.choices[0];
  return {text: choice.message.content || "", finish: choice.finish_reason};
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
}

async function send(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (state.controller) {
    return;
  }
  if (!question) {
    setStatus("Type a question first.", true);
    return;
  }
  const point = $("point-mode").checked;
  const text = point ? pointQuestion(question) : question;
  const parts = state.pending.map((image) => ({type: "image_url", image_url: {url: image.url}}));
  const userMessage = {role: "user", content: parts.length ? [...parts, {type: "text", text}] : text};
  const sentImages = [...state.pending];
  const target = targetImage();
  const asked = addBubble("user", question, sentImages);
  if (point) {
    asked.prepend(element("span", "badge", "point"));
  }
  const answer = addBubble("assistant", "…");
  answer.dataset.state = "waiting";
  const body = answer.querySelector(".text");
  state.controller = new AbortController();
  setBusy(true);
  setStatus("Thinking…");
  try {
    const result = await complete([...state.messages, userMessage], $("stream-mode").checked, (partial) => {
      answer.dataset.state = "streaming";
      body.textContent = partial;
    }, state.controller.signal);
    body.textContent = result.text;
    if (result.finish === "length") {
      answer.append(element("div", "note", "(cut at the token limit)"));
    }
    state.messages.push(userMessage, {role: "assistant", content: result.text});
    state.images.push(...sentImages);
    state.pending = [];
    state.drawn = target && {image: target.image, points: parsePoints(result.text), boxes: parseBoxes(result.text)};
    $("question").value = "";
    answer.dataset.state = "done";
    setStatus("");
    renderPending();
    renderStage();
  } catch (error) {
    const stopped = error.name === "AbortError";
    answer.dataset.state = "error";
    asked.classList.add("failed");
    answer.append(element("div", "note", stopped ? "Stopped: this turn is not part of the conversation."
      : `Error: ${error.message}`));
    setStatus(stopped ? "Stopped." : `The request failed: ${error.message}`, !stopped);
  } finally {
    state.controller = null;
    setBusy(false);
  }
}

function newConversation() {
  if (state.controller) {
    state.controller.abort();
  }
  Object.assign(state, {messages: [], images: [], pending: [], drawn: null});
  $("conversation").replaceChildren();
  renderPending();
  renderStage();
  setStatus("");
}

function wire() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    addFiles([...event.dataTransfer.files]);
  });
  $("file-input").addEventListener("change", (event) => {
    addFiles([...event.target.files]);
    event.target.value = "";
  });
  document.addEventListener("paste", (event) => {
    const files = [...event.clipboardData.files];
    if (files.length) {
      addFiles(files);
    }
  });
  $("ask").addEventListener("submit", send);
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("ask").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("new-chat").addEventListener("click", newConversation);
  $("stage-image").addEventListener("load", layout);
  new ResizeObserver(layout).observe($("stage-image"));
}

async function start() {
  wire();
  $("send").disabled = true;
  try {
    const response = await fetch("ui/config");
    if (!response.ok) {
      throw await responseError(response);
    }
    state.config = await response.json();
    $("model-name").textContent = state.config.model;
    document.title = `vlaser · ${state.config.model}`;
    setBusy(false);
  } catch (error) {
    setStatus(`Could not read the server's settings: ${error.message}`, true);
  }
}

start();
