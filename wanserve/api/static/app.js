// wanserve web page: submit, watch progress live (Server-Sent Events), cancel, play and download.
// Plain JavaScript, no build step, no CDN: it must work on machines without internet.
"use strict";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const $ = (id) => document.getElementById(id);
const tasks = new Map(); // task_id -> {element, stream, firstStep, stepTimes}

function apiKey() {
  return $("api-key").value.trim();
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  let body = null;
  const type = response.headers.get("content-type") || "";
  if (type.includes("application/json")) body = await response.json();
  if (!response.ok) {
    const error = (body && body.error) || {};
    const field = error.field ? ` (${error.field})` : "";
    throw new Error(`${error.message || response.statusText || "request failed"}${field}`);
  }
  return body;
}

// ---------------------------------------------------------------- health and model
async function refreshHealth() {
  const badge = $("health");
  try {
    const response = await fetch("/health");
    const health = await response.json();
    badge.textContent = health.status;
    badge.className = `badge ${health.status}`;
    const model = health.model || "no model";
    $("model").textContent = `${model} · ${health.device_count || 0} × ${health.device_type || "?"}`;
    $("demo-note").hidden = !String(model).includes("demo, random weights");
  } catch (e) {
    badge.textContent = "unreachable";
    badge.className = "badge unhealthy";
  }
}

// ---------------------------------------------------------------- form
function preview(input, img) {
  input.addEventListener("change", () => {
    const file = input.files && input.files[0];
    if (!file) {
      img.hidden = true;
      img.removeAttribute("src");
      return;
    }
    img.src = URL.createObjectURL(file);
    img.hidden = false;
  });
}

async function submitForm(event) {
  event.preventDefault();
  const error = $("form-error");
  error.hidden = true;
  const form = $("submit-form");
  const data = new FormData();
  for (const name of ["prompt", "task", "image_size", "num_frames", "infer_steps", "guidance_scale", "seed",
                      "negative_prompt", "resize_mode"]) {
    const value = form.elements[name].value.trim();
    if (value !== "") data.append(name, value);
  }
  for (const name of ["image", "last_image", "video"]) {
    const file = form.elements[name].files[0];
    if (file) data.append(name, file);
  }
  if (form.elements.video.files[0]) data.append("strength", form.elements.strength.value);
  const button = $("submit-button");
  button.disabled = true;
  try {
    const created = await api("/submit", { method: "POST", body: data });
    localStorage.setItem("wanserve-api-key", apiKey());
    await loadTasks();
    if (!tasks.has(created.task_id)) upsertTask({ ...created, prompt: form.elements.prompt.value });
  } catch (e) {
    error.textContent = e.message;
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- task list
function formatSeconds(seconds) {
  if (!isFinite(seconds) || seconds < 0) return "";
  if (seconds < 10) return `${seconds.toFixed(1)} s`; // short tasks read "0.4 s", not "0 s"
  if (seconds < 60) return `${Math.round(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${Math.round(seconds - minutes * 60)} s`;
}

function eta(entry, status) {
  // From the pace of the denoising steps seen so far (the bulk of a task's time).
  if (status.stage !== "denoise" || !status.current_step || !status.total_steps) return "";
  const now = performance.now() / 1000;
  if (!entry.firstStep || status.current_step < entry.firstStep.step) {
    entry.firstStep = { step: status.current_step, at: now };
    return "";
  }
  const done = status.current_step - entry.firstStep.step;
  if (done <= 0) return "";
  const perStep = (now - entry.firstStep.at) / done;
  return `ETA ${formatSeconds(perStep * (status.total_steps - status.current_step))}`;
}

function progressText(entry, status) {
  if (status.status === "queued") {
    return status.queue_position ? `queued, position ${status.queue_position}` : "queued";
  }
  if (status.status === "running") {
    const parts = [status.stage || "starting"];
    if (status.total_steps) parts.push(`step ${status.current_step || 0}/${status.total_steps}`);
    const remaining = eta(entry, status);
    if (remaining) parts.push(remaining);
    return parts.join(" · ");
  }
  if (status.status === "completed") {
    return `done in ${formatSeconds(status.elapsed)}`;
  }
  return status.status;
}

async function attachVideo(entry, status) {
  const result = entry.element.querySelector(".task-result");
  if (!result.hidden || !status.video_url) return;
  const video = result.querySelector("video");
  const link = result.querySelector(".download");
  let src = status.video_url;
  if (apiKey()) {
    // <video> cannot send an Authorization header: fetch with it and play the blob.
    const response = await fetch(status.video_url, { headers: authHeaders() });
    if (!response.ok) return;
    src = URL.createObjectURL(await response.blob());
  }
  video.src = src;
  if (status.thumbnail_url && !apiKey()) video.poster = status.thumbnail_url;
  link.href = src;
  link.setAttribute("download", `${status.task_id}.mp4`);
  result.hidden = false;
}

function upsertTask(status) {
  let entry = tasks.get(status.task_id);
  if (!entry) {
    const element = $("task-template").content.firstElementChild.cloneNode(true);
    element.dataset.taskId = status.task_id;
    element.querySelector(".cancel").addEventListener("click", () => cancelTask(status.task_id));
    entry = { element, stream: null, firstStep: null };
    tasks.set(status.task_id, entry);
    $("tasks").prepend(element);
  }
  const el = entry.element;
  el.dataset.status = status.status;
  const chip = el.querySelector(".status-chip");
  chip.textContent = status.status;
  chip.className = `status-chip ${status.status}`;
  const request = status.request || {};
  const kind = [status.task || request.task, request.size || status.size,
                request.num_frames || status.num_frames ? `${request.num_frames || status.num_frames} frames` : ""]
    .filter(Boolean).join(" · ");
  el.querySelector(".task-kind").textContent = kind;
  el.querySelector(".task-id").textContent = status.task_id.slice(0, 8);
  const prompt = status.prompt !== undefined ? status.prompt : request.prompt;
  if (prompt !== undefined) el.querySelector(".task-prompt").textContent = prompt || "(no prompt)";
  const bar = el.querySelector("progress");
  bar.value = status.status === "completed" ? 100 : Number(status.progress || 0);
  bar.setAttribute("aria-valuetext", `${Math.round(bar.value)}%`);
  el.querySelector(".progress-text").textContent = progressText(entry, status);
  el.querySelector(".cancel").hidden = TERMINAL.has(status.status);
  const error = el.querySelector(".task-error");
  error.hidden = !status.error;
  if (status.error) error.textContent = `${status.error.message} [${status.error.code}]`;
  const notes = el.querySelector(".task-notes");
  const adjustments = status.adjustments || [];
  notes.hidden = adjustments.length === 0;
  notes.textContent = adjustments.map((a) => `${a.field} ${a.requested} → ${a.used}: ${a.reason}`).join("; ");
  if (status.status === "completed") attachVideo(entry, status);
  if (!TERMINAL.has(status.status) && !entry.stream) follow(status.task_id);
  $("tasks-empty").hidden = tasks.size > 0;
}

// Server-Sent Events read with fetch, because EventSource cannot send the Authorization header.
async function follow(taskId) {
  const entry = tasks.get(taskId);
  const controller = new AbortController();
  entry.stream = controller;
  try {
    const response = await fetch(`/events/${taskId}`, { headers: authHeaders(), signal: controller.signal });
    if (!response.ok || !response.body) throw new Error(`events: HTTP ${response.status}`);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (data) upsertTask(JSON.parse(data));
      }
    }
  } catch (e) {
    if (e.name === "AbortError") return;
    // The stream broke (server restart, network): fall back to polling this task.
    await new Promise((resolve) => setTimeout(resolve, 2000));
  } finally {
    entry.stream = null;
  }
  try {
    const status = await api(`/status/${taskId}`);
    upsertTask(status);
  } catch (e) {
    /* the next refresh shows it */
  }
}

async function cancelTask(taskId) {
  try {
    upsertTask(await api(`/cancel/${taskId}`, { method: "POST" }));
  } catch (e) {
    $("tasks-error").textContent = e.message;
    $("tasks-error").hidden = false;
  }
}

async function loadTasks() {
  const filter = $("status-filter").value;
  const errorBox = $("tasks-error");
  try {
    const page = await api(`/tasks?limit=50${filter ? `&status=${filter}` : ""}`);
    errorBox.hidden = true;
    const seen = new Set();
    for (const status of [...page.tasks].reverse()) {
      seen.add(status.task_id);
      upsertTask(status);
    }
    for (const [id, entry] of tasks) {
      if (!seen.has(id) && filter) {
        if (entry.stream) entry.stream.abort();
        entry.element.remove();
        tasks.delete(id);
      }
    }
    $("tasks-empty").hidden = tasks.size > 0;
  } catch (e) {
    errorBox.textContent = e.message;
    errorBox.hidden = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = localStorage.getItem("wanserve-api-key") || "";
  preview($("image"), $("image-preview"));
  preview($("last_image"), $("last-image-preview"));
  $("submit-form").addEventListener("submit", submitForm);
  $("refresh").addEventListener("click", loadTasks);
  $("status-filter").addEventListener("change", loadTasks);
  $("api-key").addEventListener("change", () => {
    localStorage.setItem("wanserve-api-key", apiKey());
    loadTasks();
  });
  refreshHealth();
  loadTasks();
  setInterval(refreshHealth, 10000);
});
