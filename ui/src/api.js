// The service's HTTP API as the page uses it: the API key (memory only), problem+json errors, async jobs.

let apiKey = "";

export function setApiKey(key) {
  apiKey = key.trim();
}

/** An error the service explained (problem+json): `title`, `detail`, `status`, field `errors`. */
export class Problem extends Error {
  constructor(status, body, fallback) {
    const detail = (body && (body.detail || body.title)) || fallback || `HTTP ${status}`;
    super(detail);
    this.status = status;
    this.title = (body && body.title) || `HTTP ${status}`;
    this.detail = detail;
    this.errors = (body && Array.isArray(body.errors)) ? body.errors : [];
  }

  /** One readable message: the detail, then each field problem on its own line. */
  describe() {
    const fields = this.errors.map((e) => `${e.field ? e.field + ": " : ""}${e.message || ""}`);
    const head = this.status === 401 ? `${this.detail} — enter the API key at the top of the page.` : this.detail;
    return [`${this.title} (${this.status}): ${head}`, ...fields].join("\n");
  }
}

function headers(extra = {}) {
  const h = { ...extra };
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}

async function readBody(response) {
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) {
    try {
      return await response.json();
    } catch {
      return null;
    }
  }
  return null;
}

export async function request(path, { method = "GET", body, extraHeaders, signal } = {}) {
  let response;
  try {
    response = await fetch(path, { method, body, headers: headers(extraHeaders), signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Problem(0, { title: "Service unreachable", detail: "the service did not answer (is it running?)" });
  }
  const data = await readBody(response);
  if (!response.ok) throw new Problem(response.status, data, response.statusText);
  return { response, data };
}

export const getJson = async (path, opts) => (await request(path, opts)).data;

/** GET a binary body (a DICOM instance); errors as for JSON calls. */
export async function getBlob(path) {
  let response;
  try {
    response = await fetch(path, { headers: headers() });
  } catch {
    throw new Problem(0, { title: "Service unreachable", detail: "the service did not answer (is it running?)" });
  }
  if (!response.ok) throw new Problem(response.status, await readBody(response), response.statusText);
  return response.blob();
}

/**
 * multipart/form-data with the file in `image` and each option (lists repeated), as the API expects. `file` may be
 * a list of files (the slices of a DICOM series): each goes in its own `image` field.
 */
export function imageForm(file, options = {}) {
  const form = new FormData();
  for (const f of Array.isArray(file) ? file : [file]) form.append("image", f, f.name || "image");
  for (const [name, value] of Object.entries(options)) {
    if (value === undefined || value === null || value === "") continue;
    for (const v of Array.isArray(value) ? value : [value]) form.append(name, String(v));
  }
  return form;
}

const sleep = (ms, signal) => new Promise((resolve, reject) => {
  const timer = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => {
    clearTimeout(timer);
    reject(new DOMException("cancelled", "AbortError"));
  }, { once: true });
});

/**
 * POST with `Prefer: respond-async`; while the job runs, `onProgress(done, total, unit)`; resolves with the
 * synchronous body. Aborting `signal` cancels the job on the server (DELETE /jobs/{id}).
 */
export async function postAsync(path, form, { onProgress, signal } = {}) {
  const { response, data } = await request(path, { method: "POST", body: form, signal,
    extraHeaders: { Prefer: "respond-async" } });
  if (response.status !== 202) return data; // answered at once (e.g. from the result cache)
  const location = response.headers.get("location") || `/jobs/${data.id}`;
  let delay = 150;
  try {
    for (;;) {
      const job = await getJson(location, { signal });
      if (job.progress && onProgress) onProgress(job.progress.done, job.progress.total, job.progress.unit);
      if (job.status === "done") return job.result;
      if (job.status === "failed") throw new Problem(500, { title: "Explanation failed", detail: job.error });
      if (job.status === "cancelled") throw new Problem(503, { title: "Cancelled", detail: "the job was cancelled" });
      await sleep(delay, signal);
      delay = Math.min(1000, delay * 1.5);
    }
  } catch (err) {
    if (err.name === "AbortError") {
      fetch(location, { method: "DELETE", headers: headers() }).catch(() => {});
    }
    throw err;
  }
}

/** Decode a base64 string into bytes. */
export function base64Bytes(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
