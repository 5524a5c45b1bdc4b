// The web page: a playground (POST /generate, then long-poll GET /jobs/<id>) and a queue panel
// (GET /queue every 2 s, drawn as a chart of the last few minutes). Plain JS, no dependencies; the
// API key stays in this tab's sessionStorage.
"use strict";

const KEY_STORAGE = "moderation-api-key";
const QUEUE_REFRESH_MS = 2000;
const CHART_SECONDS = 300;  // how much history the queue chart keeps and draws
const CHART = { width: 900, height: 130, top: 20, bottom: 20 };  // SVG user units (about CSS pixels)
const HISTORY_STORAGE = "moderation-queue-history";
const SVG_NS = "http://www.w3.org/2000/svg";
// model -> [{t, depth, rate}]: the GET /queue samples of the last CHART_SECONDS, kept in this tab's
// sessionStorage so that a reload does not blank the chart.
const history = new Map(JSON.parse(sessionStorage.getItem(HISTORY_STORAGE) || "[]"));
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
    thresholdCell.textContent = threshold === undefined ? "–" : String(Number(threshold.toFixed(3)));  // 0.425, 0.75: as set, to 3 places
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
    recordSamples(data.models);
    drawCharts();
    $("#queue-updated").textContent = "Last update: " + new Date().toLocaleTimeString();
    show($("#queue-error"), "");
  } catch (error) {
    show($("#queue-error"), "Queue unavailable: " + error.message);
  }
}

function recordSamples(models) {
  const now = Date.now() / 1000;
  for (const model of models) {
    const samples = history.get(model.model) || [];
    samples.push({ t: now, depth: model.depth, rate: model.texts_per_second });
    while (samples.length && samples[0].t < now - CHART_SECONDS) samples.shift();
    history.set(model.model, samples);
  }
  sessionStorage.setItem(HISTORY_STORAGE, JSON.stringify([...history]));
}

function svg(tag, attributes, text) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

function tidy(value) {
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

// One series as a polyline, scaled to its own maximum (the label at its end of the chart says it);
// data-last and data-max repeat the numbers for scripts and tests, the table has them as text.
function seriesLine(samples, key, now, span, className) {
  const values = samples.map((sample) => sample[key]);
  const max = Math.max(0, ...values);
  const plot = CHART.height - CHART.top - CHART.bottom;
  const points = samples.map((sample) => {
    const x = CHART.width * (1 - (now - sample.t) / span);
    const y = CHART.top + plot * (1 - (max ? sample[key] / max : 0));
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  return svg("polyline", { class: className, points: points.join(" "), "data-series": key,
                           "data-last": tidy(values[values.length - 1] ?? 0), "data-max": tidy(max) });
}

// The time axis spans the history this tab has (at least a minute, at most CHART_SECONDS).
function chartSpan(now) {
  const oldest = Math.min(now, ...[...history.values()].map((samples) => samples[0]?.t ?? now));
  return Math.min(CHART_SECONDS, Math.max(60, now - oldest));
}

function ago(seconds) {
  return seconds < 120 ? `${Math.round(seconds)} s ago` : `${(seconds / 60).toFixed(1)} min ago`;
}

function drawCharts() {
  const box = $("#queue-charts");
  const now = Date.now() / 1000;
  const span = chartSpan(now);
  box.replaceChildren();
  for (const [model, samples] of history) {
    const last = samples[samples.length - 1];
    const chart = svg("svg", { viewBox: `0 0 ${CHART.width} ${CHART.height}`, class: "queue-chart",
                               role: "img", "data-model": model });
    chart.append(svg("title", {}, `${model}: queued jobs and texts/s since ${ago(span)}; ` +
                                  `now ${last.depth} queued, ${last.rate.toFixed(1)} texts/s`));
    const baseline = CHART.height - CHART.bottom;
    chart.append(svg("line", { class: "axis", x1: 0, x2: CHART.width, y1: baseline, y2: baseline }));
    const depth = seriesLine(samples, "depth", now, span, "depth");
    const rate = seriesLine(samples, "rate", now, span, "rate");
    chart.append(depth, rate);
    chart.append(svg("text", { class: "depth", x: 6, y: 14 },
                     `${model}: queued jobs (max ${depth.dataset.max})`));
    chart.append(svg("text", { class: "rate", x: CHART.width - 6, y: 14, "text-anchor": "end" },
                     `texts/s, last minute (max ${rate.dataset.max})`));
    chart.append(svg("text", { class: "tick", x: 6, y: CHART.height - 6 }, ago(span)));
    chart.append(svg("text", { class: "tick", x: CHART.width - 6, y: CHART.height - 6, "text-anchor": "end" },
                     "now"));
    box.append(chart);
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
