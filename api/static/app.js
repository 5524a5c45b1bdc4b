// The web page: a playground (POST /generate, then long-poll GET /jobs/<id>) and a queue panel
// (GET /queue every 2 s). Plain JS, no dependencies; the API key stays in this tab's sessionStorage.
"use strict";

const KEY_STORAGE = "moderation-api-key";
const QUEUE_REFRESH_MS = 2000;
const $ = (selector) => document.querySelector(selector);
let thresholds = {};  // model -> {label: threshold}, from GET /models

function headers() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  const out = { "Content-Type": "application/json" };
  if (key) out.Authorization = "Bearer " + key;
  return out;
}

async function api(method, path, body) {
  const response = await fetch(path, { method, headers: headers(), body: body && JSON.stringify(body) });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (data.error && data.error.message) || response.statusText;
    throw new Error(`${response.status}: ${message}`);
  }
  return { status: response.status, data };
}

function show(element, text) {
  element.textContent = text;
  element.hidden = !text;
}

async function loadModels() {
  const { data } = await api("GET", "/models");
  const select = $("#model");
  select.replaceChildren();
  for (const model of data.models) {
    thresholds[model.name] = model.thresholds;
    const option = new Option(model.name, model.name, false, model.name === data.default_model);
    select.add(option);
  }
}

async function moderate(text, model) {
  let { status, data } = await api("POST", "/generate", { input_text: text, model, wait: 10 });
  while (status === 202 || !["succeeded", "failed", "canceled"].includes(data.status)) {
    ({ status, data } = await api("GET", `/jobs/${data.job_id}?wait=10`));
  }
  return data;
}

function renderResult(job) {
  const verdict = $("#verdict");
  const body = $("#scores tbody");
  body.replaceChildren();
  if (job.status !== "succeeded") {
    show($("#error"), `Job ${job.status}: ${job.error || ""}`);
    verdict.hidden = true;
    $("#scores").hidden = true;
    return;
  }
  const result = job.results[0];
  verdict.className = "verdict " + (result.flagged ? "flagged" : "clean");
  show(verdict, result.flagged ? "Flagged" : "Not flagged");
  const limits = thresholds[job.model] || {};
  for (const [label, score] of Object.entries(result.category_scores)) {
    const threshold = limits[label];
    const row = body.insertRow();
    row.dataset.category = label;
    const name = row.insertCell();
    name.textContent = label;
    if (result.categories[label]) {
      const mark = document.createElement("span");
      mark.className = "set-label";
      mark.textContent = " (set)";
      name.append(mark);
    }
    const scoreCell = row.insertCell();
    scoreCell.className = "num";
    scoreCell.textContent = score.toFixed(3);
    const thresholdCell = row.insertCell();
    thresholdCell.className = "num";
    thresholdCell.textContent = threshold === undefined ? "–" : threshold.toFixed(2);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("aria-hidden", "true");  // the numbers beside it say the same
    const fill = document.createElement("div");
    fill.className = "fill" + (result.categories[label] ? " set" : "");
    fill.style.width = `${(score * 100).toFixed(1)}%`;
    bar.append(fill);
    if (threshold !== undefined) {
      const mark = document.createElement("div");
      mark.className = "threshold";
      mark.style.left = `calc(${(threshold * 100).toFixed(1)}% - 1px)`;
      bar.append(mark);
    }
    row.insertCell().append(bar);
  }
  $("#scores").hidden = false;
}

function age(seconds) {
  if (seconds < 1) return "–";
  if (seconds < 120) return `${seconds.toFixed(0)} s`;
  return `${(seconds / 60).toFixed(1)} min`;
}

async function refreshQueue() {
  try {
    const { data } = await api("GET", "/queue");
    const body = $("#queue tbody");
    body.replaceChildren();
    for (const model of data.models) {
      const row = body.insertRow();
      row.dataset.model = model.model;
      const cells = [model.model, model.depth, age(model.oldest_job_age_seconds), model.live_workers,
                     model.texts_per_second.toFixed(1)];
      cells.forEach((value, index) => {
        const cell = row.insertCell();
        cell.textContent = String(value);
        if (index) cell.className = "num";
        cell.dataset.field = ["model", "depth", "oldest", "workers", "rate"][index];
      });
    }
    $("#queue-updated").textContent = "Last update: " + new Date().toLocaleTimeString();
    show($("#queue-error"), "");
  } catch (error) {
    show($("#queue-error"), "Queue unavailable: " + error.message);
  }
}

function init() {
  const keyInput = $("#api-key");
  keyInput.value = sessionStorage.getItem(KEY_STORAGE) || "";
  keyInput.addEventListener("input", () => {
    if (keyInput.value) sessionStorage.setItem(KEY_STORAGE, keyInput.value);
    else sessionStorage.removeItem(KEY_STORAGE);
    loadModels().catch((error) => show($("#error"), error.message));
  });
  $("#moderate-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("#submit");
    button.disabled = true;
    show($("#error"), "");
    show($("#verdict"), "Moderating…");
    $("#verdict").className = "verdict";
    try {
      renderResult(await moderate($("#text").value, $("#model").value || undefined));
    } catch (error) {
      $("#verdict").hidden = true;
      show($("#error"), error.message);
    } finally {
      button.disabled = false;
    }
  });
  loadModels().catch((error) => show($("#error"), "Could not load models: " + error.message));
  refreshQueue();
  setInterval(refreshQueue, QUEUE_REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", init);
