// binpose demo page: list the models, send an image to /v1/pose or /v1/classify, draw what comes back.
"use strict";

const $ = (id) => document.getElementById(id);
let models = {};

function fmt(n) {
  if (n === null || n === undefined) return "?";
  if (n >= 1e9) return (n / 1e9).toFixed(2) + " G";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + " M";
  if (n >= 1e3) return (n / 1e3).toFixed(1) + " k";
  return String(n);
}

function setStatus(text, state) {
  $("status").textContent = text;
  $("status").dataset.state = state;
}

function showModel() {
  const m = models[$("model").value];
  if (!m) return;
  const prov = typeof m.provenance === "string" ? m.provenance : JSON.stringify(m.provenance);
  $("model-info").textContent =
    `${m.task}, input ${m.input_size.join("x")}, backend ${m.backend}\n` +
    `OPs ${fmt(m.ops)} (BOPs ${fmt(m.bops)} / 64 + FLOPs ${fmt(m.flops)})\n` +
    `params ${fmt(m.params_binary)} binary + ${fmt(m.params_float)} float, packed ${fmt(m.packed_bytes)}B\n` +
    `weights: ${prov}`;
  $("pose-options").style.display = m.task === "pose" ? "" : "none";
}

async function loadModels() {
  const res = await fetch("/v1/models");
  const body = await res.json();
  const select = $("model");
  select.innerHTML = "";
  for (const m of body.models) {
    models[m.name] = m;
    const opt = document.createElement("option");
    opt.value = m.name;
    opt.textContent = `${m.name} (${m.task})`;
    if (m.default_for.includes("pose")) opt.selected = true;
    select.appendChild(opt);
  }
  if (!body.models.length) setStatus("No model is ready yet; reload in a moment.", "error");
  showModel();
}

function drawImage(img) {
  const c = $("canvas");
  c.width = img.width;
  c.height = img.height;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  return ctx;
}

function drawPose(ctx, body, model, threshold) {
  const lw = Math.max(2, Math.round(Math.max(ctx.canvas.width, ctx.canvas.height) / 250));
  for (const p of body.persons) {
    const [x1, y1, x2, y2] = p.box;
    ctx.strokeStyle = "#2ecc71";
    ctx.lineWidth = lw;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const k = p.keypoints;
    model.skeleton.forEach(([a, b], i) => {
      if (a >= k.length || b >= k.length || k[a].score < threshold || k[b].score < threshold) return;
      ctx.strokeStyle = `hsl(${(360 * i) / model.skeleton.length}, 85%, 50%)`;
      ctx.beginPath();
      ctx.moveTo(k[a].x, k[a].y);
      ctx.lineTo(k[b].x, k[b].y);
      ctx.stroke();
    });
    k.forEach((kp, j) => {
      if (kp.score < threshold) return;
      ctx.fillStyle = `hsl(${(360 * j) / k.length}, 90%, 55%)`;
      ctx.beginPath();
      ctx.arc(kp.x, kp.y, lw + 1, 0, 2 * Math.PI);
      ctx.fill();
    });
  }
}

function showTimings(rows) {
  $("timings").innerHTML = rows.map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join("");
}

async function run(blob) {
  const name = $("model").value;
  const model = models[name];
  if (!model) return;
  const img = await createImageBitmap(blob);
  const ctx = drawImage(img);
  const form = new FormData();
  form.append("image", blob, "image.jpg");
  form.append("model", name);
  const threshold = parseFloat($("threshold").value) || 0;
  let url = "/v1/classify";
  if (model.task === "pose") {
    url = "/v1/pose";
    form.append("detector", $("whole").checked ? "whole" : "hog");
    form.append("flip", $("flip").checked ? "true" : "false");
    form.append("score_threshold", String(threshold));
  }
  setStatus("Running…", "running");
  const t0 = performance.now();
  const res = await fetch(url, { method: "POST", body: form });
  const elapsed = performance.now() - t0;
  const body = await res.json();
  if (!res.ok) {
    setStatus(`Error ${res.status}: ${body.error ? body.error.message : res.statusText}`, "error");
    return;
  }
  $("classes").innerHTML = "";
  if (model.task === "pose") {
    drawPose(ctx, body, model, threshold);
    setStatus(`${body.persons.length} person(s), ${model.keypoint_names.length} keypoints each`, "done");
  } else {
    $("classes").innerHTML = body.classes
      .map((c) => `<li>${c.name}: ${(100 * c.probability).toFixed(1)}%</li>`)
      .join("");
    setStatus(`Top class: ${body.classes[0].name}`, "done");
  }
  const t = body.timings;
  showTimings([
    ["round trip", `${elapsed.toFixed(1)} ms`],
    ["server total", `${t.total_ms.toFixed(1)} ms`],
    ["network", `${t.inference_ms.toFixed(1)} ms`],
    ["queue", `${t.queue_ms.toFixed(1)} ms`],
    ["decode + detect + crop", `${(t.decode_ms + t.detect_ms + t.preprocess_ms).toFixed(1)} ms`],
    ["model OPs", fmt(model.ops)],
    ["backend", body.backend],
  ]);
}

// A stick figure drawn here, so the demo works with no image at hand (and in headless tests).
function syntheticSample() {
  const c = document.createElement("canvas");
  c.width = 384;
  c.height = 512;
  const ctx = c.getContext("2d");
  const g = ctx.createLinearGradient(0, 0, 0, 512);
  g.addColorStop(0, "#9ec9f0");
  g.addColorStop(1, "#6b8e4e");
  ctx.fillStyle = g;
  ctx.fillRect(0, 0, 384, 512);
  ctx.strokeStyle = "#3b2f2f";
  ctx.lineCap = "round";
  ctx.lineWidth = 22;
  const seg = (a, b) => { ctx.beginPath(); ctx.moveTo(...a); ctx.lineTo(...b); ctx.stroke(); };
  seg([192, 130], [192, 290]);
  seg([192, 150], [130, 230]); seg([130, 230], [110, 300]);
  seg([192, 150], [254, 230]); seg([254, 230], [274, 300]);
  seg([192, 290], [160, 390]); seg([160, 390], [150, 480]);
  seg([192, 290], [224, 390]); seg([224, 390], [234, 480]);
  ctx.fillStyle = "#e0b890";
  ctx.beginPath();
  ctx.arc(192, 95, 38, 0, 2 * Math.PI);
  ctx.fill();
  return new Promise((resolve) => c.toBlob(resolve, "image/jpeg", 0.92));
}

async function runSample() {
  $("whole").checked = true;
  await run(await syntheticSample());
}

$("model").addEventListener("change", showModel);
$("file").addEventListener("change", (e) => { if (e.target.files[0]) run(e.target.files[0]).catch(fail); });
$("sample").addEventListener("click", () => runSample().catch(fail));

function fail(err) { setStatus(`Error: ${err}`, "error"); }

loadModels()
  .then(() => {
    const params = new URLSearchParams(location.search);
    if (params.get("model") && models[params.get("model")]) { $("model").value = params.get("model"); showModel(); }
    if (params.get("sample")) return runSample();
  })
  .catch(fail);
