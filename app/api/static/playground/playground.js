// The playground: one form, submitted through /v2, watched live, with its outputs and the same
// request as curl or segmind SDK code. Plain modern JavaScript, no dependencies, no build step.
//
// Seeds are handled as BigInt and text throughout: they go up to 2^64-1, past what a JS number holds.

const $ = (id) => document.getElementById(id);
const KEY_STORE = "sdxl-img2img.api_key";
const SLUG = "sdxl-img2img";
const SEED_MODULUS = 2n ** 64n;
const MAX_SEED = SEED_MODULUS - 1n;
const EXTENSIONS = { jpeg: "jpg", png: "png", webp: "webp" };
// Extensions sent only when they differ from the server's default, so the copied code stays short.
const OPTIONAL_DEFAULTS = { output_quality: 95, base64: false, webhook_url: "" };

const form = $("request");
const ui = {
  key: $("api_key"),
  file: $("image_file"),
  url: $("image_url"),
  preview: $("image_preview"),
  submit: $("submit"),
  cancel: $("cancel"),
  error: $("error"),
  status: $("status"),
  progress: $("progress"),
  facts: $("facts"),
  outputs: $("outputs"),
  snippet: $("snippet"),
  copyStatus: $("copy_status"),
  includeKey: $("include_key"),
};

// The image: whichever of the file input and the text box was set last.
let imageSource = null; // {kind: "file", file} | {kind: "text", value}
// The request being watched: {id, abort: AbortController, cancelling}.
let current = null;
// The last submitted request: its fingerprint (every field but the seed) and its resolved seed,
// so that copied code reproduces it exactly when the form still asks for seed -1.
let lastSent = null;

// ---- API key: only in localStorage, never in the page -------------------------------------------

ui.key.value = localStorage.getItem(KEY_STORE) || "";
ui.key.addEventListener("input", () => {
  const key = ui.key.value.trim();
  if (key) localStorage.setItem(KEY_STORE, key);
  else localStorage.removeItem(KEY_STORE);
});
$("forget_key").addEventListener("click", () => {
  localStorage.removeItem(KEY_STORE);
  ui.key.value = "";
  ui.key.focus();
});

function headers(extra = {}) {
  const key = ui.key.value.trim();
  return key ? { "x-api-key": key, ...extra } : { ...extra };
}

// Relative to the page, so the playground also works behind a proxy that mounts it under a prefix.
const apiUrl = (path) => new URL(path, document.baseURI).href;
const serverBase = () => new URL(".", document.baseURI).href.replace(/\/$/, "");

// ---- Models and schedulers: from the server --------------------------------------------------

async function loadConfig() {
  try {
    const response = await fetch(apiUrl("playground/config.json"));
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const config = await response.json();
    fillSelect($("base_model"), config.models.map((m) => m.name), config.default_base_model,
      Object.fromEntries(config.models.map((m) => [m.name, m.description])));
    fillSelect($("scheduler"), config.schedulers, config.default_scheduler);
    fillSelect($("output_format"), config.output_formats, "jpeg");
  } catch (error) {
    showError(`Could not load the model list (${error.message}); reload the page.`);
  }
}

function fillSelect(select, names, selected, titles = {}) {
  select.replaceChildren(...names.map((name) => {
    const option = new Option(name, name, name === selected, name === selected);
    if (titles[name]) option.title = titles[name];
    return option;
  }));
}

// ---- The input image -----------------------------------------------------------------------

let previewUrl = null;

function setPreview(src) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = null;
  if (!src) {
    ui.preview.hidden = true;
    ui.preview.removeAttribute("src");
    return;
  }
  ui.preview.src = src;
  ui.preview.hidden = false;
}

ui.file.addEventListener("change", () => {
  const file = ui.file.files[0];
  if (!file) {
    imageSource = ui.url.value.trim() ? { kind: "text", value: ui.url.value.trim() } : null;
    return;
  }
  imageSource = { kind: "file", file };
  ui.url.value = "";
  setPreview(null);
  previewUrl = URL.createObjectURL(file);
  ui.preview.src = previewUrl;
  ui.preview.hidden = false;
});

ui.url.addEventListener("input", () => {
  const value = ui.url.value.trim();
  imageSource = value ? { kind: "text", value } : null;
  if (value) ui.file.value = "";
  setPreview(/^(https?:|data:image\/)/i.test(value) ? value : null);
});

// An image pasted into the text box (a screenshot, a copied picture) becomes the uploaded file.
ui.url.addEventListener("paste", (event) => {
  const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
  if (!file) return;
  event.preventDefault();
  const transfer = new DataTransfer();
  transfer.items.add(file);
  ui.file.files = transfer.files;
  ui.file.dispatchEvent(new Event("change"));
});

ui.preview.addEventListener("error", () => { ui.preview.hidden = true; });

// ---- Reading and checking the form ---------------------------------------------------------

class FormError extends Error {
  constructor(message, control) {
    super(message);
    this.control = control;
  }
}

function integerField(name) {
  const input = form.elements[name];
  const low = Number(input.min), high = Number(input.max), text = input.value.trim();
  if (!/^-?\d+$/.test(text)) throw new FormError(`${name} must be an integer between ${low} and ${high}, got '${text}'`, input);
  const value = Number(text);
  if (value < low || value > high) throw new FormError(`${name} must be between ${low} and ${high}, got ${value}`, input);
  return value;
}

function numberField(name) {
  const input = form.elements[name];
  const low = Number(input.min), high = Number(input.max), text = input.value.trim();
  const value = Number(text);
  if (text === "" || !Number.isFinite(value)) throw new FormError(`${name} must be a number between ${low} and ${high}, got '${text}'`, input);
  if (value < low || value > high) throw new FormError(`${name} must be between ${low} and ${high}, got ${value}`, input);
  return value;
}

function seedField() {
  const input = $("seed");
  const text = input.value.trim();
  const value = /^(-1|\d{1,20})$/.test(text) ? BigInt(text) : null;
  if (value === null || value > MAX_SEED) {
    throw new FormError(`seed must be -1 (random) or between 0 and ${MAX_SEED}, got '${text}'`, input);
  }
  return value;
}

// The request as the contract names it, in the contract's order. `image` is a File or a string.
function readForm() {
  if (!imageSource) throw new FormError("image is required: upload a file or give a URL", ui.file);
  const prompt = $("prompt").value;
  if (prompt.length < 1) throw new FormError("prompt must be 1 to 10000 characters", $("prompt"));
  const params = {
    image: imageSource.kind === "file" ? imageSource.file : imageSource.value,
    prompt,
    negative_prompt: $("negative_prompt").value,
    base_model: $("base_model").value,
    scheduler: $("scheduler").value,
    num_inference_steps: integerField("num_inference_steps"),
    guidance_scale: numberField("guidance_scale"),
    strength: numberField("strength"),
    samples: integerField("samples"),
    seed: seedField(),
    output_format: $("output_format").value,
  };
  const optional = {
    output_quality: integerField("output_quality"),
    base64: $("base64").checked,
    webhook_url: $("webhook_url").value.trim(),
  };
  for (const [name, value] of Object.entries(optional)) {
    if (value !== OPTIONAL_DEFAULTS[name]) params[name] = value;
  }
  return params;
}

function fingerprint(params) {
  const { image, seed, ...rest } = params;
  const imageId = image instanceof File ? ["file", image.name, image.size, image.lastModified] : ["text", image];
  return JSON.stringify([imageId, rest]);
}

// The seed the copied code should carry: the form's, or the one the server drew for the last
// request when the form still says -1 and nothing else changed.
function reproducible(params) {
  if (params.seed === -1n && lastSent?.seed != null && lastSent.fingerprint === fingerprint(params)) {
    return { ...params, seed: lastSent.seed };
  }
  return params;
}

// ---- Encoding: one function per wire format, shared by the page and the copied code ----------

// Multipart fields are text: numbers as JS writes them, booleans as true/false, seeds in full.
const fieldText = (value) => String(value);

// JSON with the seed written as an integer literal (JSON.stringify cannot write a BigInt).
function jsonBody(params) {
  const parts = Object.entries(params).map(([name, value]) => {
    const text = typeof value === "bigint" ? value.toString() : JSON.stringify(value);
    return `${JSON.stringify(name)}: ${text}`;
  });
  return `{${parts.join(", ")}}`;
}

function formBody(params) {
  const body = new FormData();
  for (const [name, value] of Object.entries(params)) {
    if (value instanceof File) body.append(name, value, value.name);
    else body.append(name, fieldText(value));
  }
  return body;
}

function encode(params) {
  if (params.image instanceof File) return { body: formBody(params), headers: headers() };
  return { body: jsonBody(params), headers: headers({ "Content-Type": "application/json" }) };
}

// ---- Talking to the API --------------------------------------------------------------------

class ApiError extends Error {}

// The error as the API words it, with the HTTP status and, on 429, when to retry.
async function apiError(response) {
  let message = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") message = body.error;
  } catch {
    // not JSON: keep the status
  }
  let text = `${response.status}: ${message}`;
  const retry = response.headers.get("Retry-After");
  if (response.status === 429 && retry) text += ` (retry after ${retry} s)`;
  return new ApiError(text);
}

// Seeds as BigInt, read from the raw body text (JSON.parse would round those above 2^53).
function rawSeeds(text) {
  const match = /"seeds"\s*:\s*\[([^\]]*)\]/.exec(text);
  if (!match) return [];
  return match[1].split(",").map((s) => s.trim()).filter(Boolean).map((s) => BigInt(s));
}

function parseBody(text) {
  const body = JSON.parse(text);
  body.seeds = rawSeeds(text);
  return body;
}

async function getJson(path, signal) {
  const response = await fetch(apiUrl(path), { headers: headers(), signal, cache: "no-store" });
  if (!response.ok && response.status !== 422) throw await apiError(response);
  return { status: response.status, body: parseBody(await response.text()) };
}

const sleep = (ms, signal) => new Promise((resolve, reject) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(timer); reject(signal.reason); }, { once: true });
});

// Live status: the SSE stream when the server has it (read with fetch, since EventSource cannot
// send the key header), else long-polling `status?wait=` (which a server without it answers at once,
// so polls are spaced). Calls onStatus(body) at each change; returns the final result body.
async function watch(id, signal, onStatus) {
  const viaStream = await streamEvents(id, signal, onStatus).catch((error) => {
    if (signal.aborted || error instanceof ApiError) throw error;
    return null; // a broken stream: poll instead
  });
  if (viaStream) return viaStream;
  return poll(id, signal, onStatus);
}

async function streamEvents(id, signal, onStatus) {
  const response = await fetch(apiUrl(`v2/requests/${id}/events`), {
    headers: headers({ Accept: "text/event-stream" }), signal, cache: "no-store",
  });
  const type = response.headers.get("Content-Type") || "";
  if (response.status === 401 || response.status === 403) throw await apiError(response);
  if (!response.ok || !type.includes("text/event-stream")) return null;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return null; // ended without a result: poll for it
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = parseEvent(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (!event) continue;
      if (event.name === "result") {
        reader.cancel().catch(() => {});
        return event.body;
      }
      if (event.name === "progress" && !event.body.status) {
        onStatus({ status: "PROCESSING", progress: event.body.progress || event.body });
      } else {
        onStatus(event.body);
      }
    }
  }
}

function parseEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  try {
    return { name, body: parseBody(data.join("\n")) };
  } catch {
    return null;
  }
}

async function poll(id, signal, onStatus) {
  for (;;) {
    const started = performance.now();
    const { body } = await getJson(`v2/requests/${id}/status?wait=20`, signal);
    onStatus(body);
    if (body.status === "COMPLETED" || body.status === "FAILED") {
      return body.status === "FAILED" ? body : (await getJson(`v2/requests/${id}`, signal)).body;
    }
    const spent = performance.now() - started;
    if (spent < 400) await sleep(400 - spent, signal);
  }
}

// ---- What the page shows -------------------------------------------------------------------

function showError(text) {
  ui.error.textContent = text;
}

function clearError() {
  ui.error.textContent = "";
}

function setStatus(text) {
  ui.status.textContent = text;
}

function fact(term, value, extra) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.append(value);
  if (extra) dd.append(" ", extra);
  ui.facts.append(dt, dd);
}

function formatSeconds(seconds) {
  if (seconds < 60) return `${Math.max(0, Math.round(seconds))} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

function renderStatus(body) {
  const eta = typeof body.eta_s === "number" ? `, about ${formatSeconds(body.eta_s)} left` : "";
  if (body.status === "QUEUED") {
    const position = body.queue_position;
    const where = position == null ? "" : position === 0 ? ", next in line" : `, ${position} ahead`;
    const workers = body.workers === 0 ? " (no worker is serving this model right now)" : "";
    setStatus(`Queued${where}${eta}${workers}.`);
    ui.progress.hidden = false;
    ui.progress.removeAttribute("value"); // indeterminate while waiting
  } else if (body.status === "PROCESSING") {
    const { step = 0, total = 0 } = body.progress || {};
    ui.progress.hidden = false;
    if (total > 0) {
      ui.progress.max = total;
      ui.progress.value = step;
      setStatus(`Processing, step ${step} of ${total}${eta}.`);
    } else {
      setStatus(`Processing${eta}.`);
    }
  }
}

function renderSeed(seed, drawn) {
  const reuse = document.createElement("button");
  reuse.type = "button";
  reuse.className = "quiet";
  reuse.textContent = "Use this seed";
  reuse.addEventListener("click", () => {
    $("seed").value = seed.toString();
    $("seed").focus();
  });
  fact("Seed", `${seed}${drawn ? " (drawn by the server)" : ""}`, reuse);
}

function renderResult(body, requestSeed) {
  ui.progress.hidden = false;
  ui.progress.max = 1;
  ui.progress.value = 1;
  const seconds = body.metrics?.inference_time;
  setStatus(`Completed${typeof seconds === "number" ? ` in ${seconds.toFixed(2)} s of inference` : ""}.`);
  ui.outputs.replaceChildren(...body.images.map((image, i) => {
    const seed = body.seeds[i] ?? (requestSeed + BigInt(i)) % SEED_MODULUS;
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = image.url;
    img.alt = `output ${i + 1}, seed ${seed}`;
    img.dataset.seed = seed.toString();
    const caption = document.createElement("figcaption");
    const seedText = document.createElement("span");
    seedText.className = "seed";
    seedText.textContent = `seed ${seed}`;
    const link = document.createElement("a");
    link.href = image.url;
    link.download = image.file_name;
    link.textContent = `Download ${image.file_name.split(".").pop()}`;
    const size = document.createElement("span");
    size.textContent = `${Math.round(image.file_size / 1024)} KB`;
    caption.append(seedText, " · ", size, " · ", link);
    figure.append(img, caption);
    return figure;
  }));
}

function setRunning(running) {
  ui.submit.disabled = running;
  ui.cancel.disabled = !running;
  form.setAttribute("aria-busy", String(running));
}

// ---- Submit and cancel ---------------------------------------------------------------------

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (current) return;
  clearError();
  let params;
  try {
    params = readForm();
  } catch (error) {
    if (!(error instanceof FormError)) throw error;
    showError(error.message);
    error.control?.focus();
    return;
  }
  ui.outputs.replaceChildren();
  ui.facts.replaceChildren();
  ui.progress.hidden = true;
  setStatus("Submitting…");
  // On a phone the result sits under the form: bring it into view (focus stays on the button).
  if (matchMedia("(max-width: 760px)").matches) $("result").scrollIntoView({ block: "start" });
  setRunning(true);
  const abort = new AbortController();
  try {
    const { body, headers: sendHeaders } = encode(params);
    const response = await fetch(apiUrl(`v2/${SLUG}`), { method: "POST", body, headers: sendHeaders, signal: abort.signal });
    if (!response.ok) throw await apiError(response);
    const submitted = await response.json();
    current = { id: submitted.request_id, abort, cancelling: false };
    lastSent = { fingerprint: fingerprint(params), seed: params.seed === -1n ? null : params.seed };
    fact("Request", submitted.request_id);
    setStatus("Queued.");
    const seed = await resolvedSeed(submitted.request_id, params.seed, abort.signal);
    if (seed !== null) {
      lastSent.seed = seed;
      renderSeed(seed, params.seed === -1n);
    }
    const final = await watch(submitted.request_id, abort.signal, renderStatus);
    if (final.status === "COMPLETED") {
      renderResult(final, seed ?? 0n);
    } else if (final.error === "cancelled" && current.cancelling) {
      ui.progress.hidden = true;
      setStatus("Cancelled: the request ended FAILED (cancelled) and its credits were refunded.");
    } else {
      ui.progress.hidden = true;
      setStatus("Failed.");
      showError(`FAILED: ${final.error ?? "unknown reason"}`);
    }
  } catch (error) {
    if (abort.signal.aborted) return;
    ui.progress.hidden = true;
    setStatus("Not done.");
    showError(error instanceof ApiError ? error.message : `Could not reach the server: ${error.message}`);
  } finally {
    current = null;
    setRunning(false);
  }
});

// The seed is drawn at submission, so the result body knows it while the request still waits.
async function resolvedSeed(id, asked, signal) {
  if (asked !== -1n) return asked;
  try {
    const { body } = await getJson(`v2/requests/${id}`, signal);
    return body.seeds[0] ?? null;
  } catch (error) {
    if (signal.aborted) throw error;
    return null;
  }
}

ui.cancel.addEventListener("click", async () => {
  if (!current) return;
  const request = current;
  request.cancelling = true;
  ui.cancel.disabled = true;
  setStatus("Cancelling…");
  try {
    const response = await fetch(apiUrl(`v2/requests/${request.id}`), { method: "DELETE", headers: headers() });
    if (!response.ok) {
      request.cancelling = false;
      showError((await apiError(response)).message);
    }
  } catch (error) {
    request.cancelling = false;
    showError(`Could not reach the server: ${error.message}`);
  }
});

// Ctrl+Enter (or Cmd+Enter) in any text box submits, as in most prompt tools.
form.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    form.requestSubmit(ui.submit);
  }
});

// ---- Copy as curl / as segmind SDK ---------------------------------------------------------

const shellQuote = (text) => `'${text.replaceAll("'", `'\\''`)}'`;

function keyForShell() {
  return ui.includeKey.checked ? shellQuote(`x-api-key: ${ui.key.value.trim()}`) : `"x-api-key: $SDXL_API_KEY"`;
}

function curlCode(params) {
  const ext = EXTENSIONS[params.output_format] || "jpg";
  const lines = [];
  if (!ui.includeKey.checked) lines.push("# export SDXL_API_KEY=<your key>");
  if (params.samples > 1) lines.push(`# v1 answers the first image (seed ${params.seed}); output i has seed + i`);
  lines.push(`curl -sS -X POST ${shellQuote(`${serverBase()}/v1/${SLUG}`)} \\`);
  lines.push(`  -H ${keyForShell()} \\`);
  if (params.image instanceof File) {
    // The same file, sent as multipart exactly as the page sent it.
    lines.push(`  -F ${shellQuote(`image=@${curlFileName(params.image.name)}`)} \\`);
    for (const [name, value] of Object.entries(params)) {
      if (name !== "image") lines.push(`  --form-string ${shellQuote(`${name}=${fieldText(value)}`)} \\`);
    }
    lines.push(`  -o output.${ext}`);
  } else {
    // The same JSON body, through a quoted here-document: no quoting to get wrong, no length limit.
    lines.push(`  -H 'Content-Type: application/json' \\`);
    lines.push(`  --data-binary @- -o output.${ext} <<'JSON'`);
    lines.push(jsonBody(params));
    lines.push("JSON");
  }
  return lines.join("\n");
}

function curlFileName(name) {
  return /[;,"\\]/.test(name) ? `"${name.replace(/["\\]/g, "\\$&")}"` : name;
}

function pythonValue(value) {
  if (typeof value === "boolean") return value ? "True" : "False";
  if (typeof value === "bigint") return value.toString();
  return JSON.stringify(value); // a JSON string or number is a valid Python literal
}

function sdkCode(params) {
  const file = params.image instanceof File;
  const key = ui.includeKey.checked ? JSON.stringify(ui.key.value.trim()) : `os.environ["SDXL_API_KEY"]`;
  const lines = [];
  const imports = [file ? "base64" : null, ui.includeKey.checked ? null : "os"].filter(Boolean);
  if (imports.length) lines.push(`import ${imports.join(", ")}`, "");
  lines.push("from segmind import SegmindClient", "");
  lines.push(`client = SegmindClient(api_key=${key}, base_url=${JSON.stringify(`${serverBase()}/v1`)})`);
  lines.push("result = client.run(", `    ${JSON.stringify(SLUG)},`);
  for (const [name, value] of Object.entries(params)) {
    const literal = name === "image" && file
      ? `base64.b64encode(open(${JSON.stringify(params.image.name)}, "rb").read()).decode()`
      : pythonValue(value);
    lines.push(`    ${name}=${literal},`);
  }
  lines.push(")", `print(result["seeds"], result["output"])`);
  return lines.join("\n");
}

async function copy(kind) {
  clearError();
  let params;
  try {
    params = reproducible(readForm());
  } catch (error) {
    if (!(error instanceof FormError)) throw error;
    showError(error.message);
    error.control?.focus();
    return;
  }
  const code = kind === "curl" ? curlCode(params) : sdkCode(params);
  ui.snippet.textContent = code;
  ui.snippet.hidden = false;
  ui.snippet.dataset.kind = kind;
  let copied = false;
  try {
    await navigator.clipboard.writeText(code);
    copied = true;
  } catch {
    copied = selectAndCopy(ui.snippet);
  }
  const seedNote = params.seed === -1n ? " The seed is -1 (random): send once or set a seed to get the same image." : "";
  ui.copyStatus.textContent = (copied ? "Copied to the clipboard." : "Select the code below and copy it.") + seedNote;
}

function selectAndCopy(element) {
  const range = document.createRange();
  range.selectNodeContents(element);
  const selection = getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
  try {
    return document.execCommand("copy");
  } catch {
    return false;
  }
}

$("copy_curl").addEventListener("click", () => copy("curl"));
$("copy_sdk").addEventListener("click", () => copy("sdk"));

loadConfig();
