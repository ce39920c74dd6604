// emodetect page: photos and the live webcam against this server's /v1 API. Vanilla JS, no build step,
// nothing loaded from anywhere else.
"use strict";

(() => {
  const COLORS = {
    anger: "#e5484d", contempt: "#8e4ec6", disgust: "#30a46c", fear: "#12a594",
    happy: "#e09c00", neutral: "#8b8d98", sad: "#3e63dd", surprise: "#f76b15",
  };
  const OTHER_COLOR = "#8b8d98";
  const TAU_S = 1.0; // time constant of the webcam's moving average (seconds)
  const WINDOW_S = 30; // seconds of emotion history per face
  const FORGET_S = 4; // a face unseen for this long is dropped
  const MAX_TIMELINES = 4;
  const MAX_SEND_SIDE = 640; // webcam frames are scaled down to this before sending
  const TOKEN_KEY = "emodetect-token";

  const $ = (id) => document.getElementById(id);
  const state = {
    classes: Object.keys(COLORS),
    maxUpload: 10_000_000,
    queue: [],
    busy: false,
  };

  const colorOf = (label) => COLORS[label] || OTHER_COLOR;
  const pct = (x) => `${Math.round(100 * x)}%`;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setStatus(text, isError = false) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("error", isError);
  }

  // ------------------------------------------------------------------------------------------ the API

  function authHeaders(extra = {}) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
  }

  async function api(path, options = {}) {
    const response = await fetch(path, { ...options, headers: authHeaders(options.headers) });
    if (response.status === 401) askForToken();
    return response;
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") return body.error;
    } catch (_) { /* not JSON */ }
    return response.statusText || `HTTP ${response.status}`;
  }

  // POST one image; a busy server (503) is retried after its Retry-After, a few times.
  async function postImage(body, contentType, tries = 4) {
    for (let attempt = 1; ; attempt++) {
      const headers = contentType ? { "Content-Type": contentType } : {};
      const response = await api("v1/analyze", { method: "POST", body, headers });
      if (response.status !== 503 || attempt >= tries) return response;
      const wait = Number(response.headers.get("Retry-After")) || 1;
      await sleep(1000 * Math.min(wait, 10));
    }
  }

  function askForToken() {
    $("token-box").hidden = false;
    setStatus("This server needs an access token.", true);
    $("token").focus();
  }

  async function connect() {
    try {
      const response = await api("v1/model");
      if (response.status === 401) return;
      if (!response.ok) throw new Error(await errorText(response));
      const m = await response.json();
      state.classes = m.classes;
      const acc = m.test_accuracy == null ? "" : ` · test accuracy ${(100 * m.test_accuracy).toFixed(1)}%`;
      $("model-info").textContent =
        `${m.name} model (${m.architecture}, ${m.input_size} px ${m.color_mode})${acc} · ${m.detector} faces`;
      const health = await api("v1/health");
      if (health.ok) state.maxUpload = (await health.json()).max_upload_bytes;
      $("drop-hint").textContent =
        `JPEG, PNG, WebP, BMP, TIFF or GIF, up to ${(state.maxUpload / 1e6).toFixed(0)} MB each. ` +
        "Photos are analysed on this server only.";
      buildLegend();
      setStatus("");
    } catch (err) {
      $("model-info").textContent = "not connected";
      setStatus(`Cannot reach the server (${err.message}).`, true);
    }
  }

  function buildLegend() {
    const legend = $("legend");
    legend.replaceChildren(...state.classes.map((c) => {
      const item = el("span", "", c);
      item.style.setProperty("--c", colorOf(c));
      return item;
    }));
  }

  // ------------------------------------------------------------------------------------------ drawing

  // Boxes first, then their labels on top (a label never hides under a neighbour's box).
  // boxes: [{x, y, w, h, color, text}]; scale: canvas pixels per screen pixel (one size on screen at any width).
  function drawBoxes(ctx, boxes, scale) {
    ctx.lineWidth = 2.5 * scale;
    for (const b of boxes) {
      ctx.strokeStyle = b.color;
      ctx.strokeRect(b.x, b.y, b.w, b.h);
    }
    const size = Math.round(13 * scale);
    const pad = Math.round(size * 0.3);
    ctx.font = `600 ${size}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    for (const b of boxes) {
      const tw = ctx.measureText(b.text).width + 2 * pad;
      const th = size + 2 * pad;
      const ty = b.y - th >= 0 ? b.y - th : b.y; // above the box, or inside it at the top edge
      const tx = b.x - ctx.lineWidth / 2;
      ctx.fillStyle = b.color;
      ctx.fillRect(tx, ty, tw, th);
      ctx.fillStyle = "#fff";
      ctx.fillText(b.text, tx + pad, ty + pad);
    }
  }

  function barChart(probabilities, label) {
    const bars = el("div", "bars");
    const top = Object.keys(probabilities).reduce((a, b) => (probabilities[a] >= probabilities[b] ? a : b));
    for (const c of state.classes) {
      const p = probabilities[c] ?? 0;
      const name = el("span", c === top ? "bar-name is-top" : "bar-name", c);
      const track = el("span", "bar-track");
      const fill = el("span", "bar-fill");
      fill.style.setProperty("--c", colorOf(c));
      fill.style.width = `${(100 * p).toFixed(1)}%`;
      track.append(fill);
      bars.append(name, track, el("span", "bar-value", pct(p)));
    }
    bars.setAttribute("aria-label", `probabilities; most likely ${label}`);
    return bars;
  }

  // ------------------------------------------------------------------------------------------- photos

  function addFiles(files) {
    const images = [...files];
    if (!images.length) return;
    for (const file of images) state.queue.push({ file, card: newCard(file) });
    runQueue();
  }

  function newCard(file) {
    const card = el("article", "result");
    const head = el("div", "result-head");
    head.append(el("span", "result-name", file.name || "image"), el("span", "muted result-meta", "waiting…"));
    card.append(head);
    $("results").prepend(card);
    return card;
  }

  async function runQueue() {
    if (state.busy) return;
    state.busy = true;
    try {
      while (state.queue.length) {
        const { file, card } = state.queue.shift();
        const left = state.queue.length;
        setStatus(left ? `Analysing… ${left} more waiting` : "Analysing…");
        await analyzeFile(file, card);
      }
      setStatus("");
    } finally {
      state.busy = false;
    }
  }

  function cardError(card, text) {
    card.querySelector(".result-meta").textContent = "error";
    card.append(el("p", "error-line", text));
    card.dataset.error = "1";
  }

  async function analyzeFile(file, card) {
    const meta = card.querySelector(".result-meta");
    if (file.size > state.maxUpload) {
      cardError(card, `This file is ${(file.size / 1e6).toFixed(1)} MB; the limit is ${(state.maxUpload / 1e6).toFixed(0)} MB.`);
      return;
    }
    meta.textContent = "analysing…";
    const form = new FormData();
    form.append("file", file, file.name || "image");
    const t0 = performance.now();
    let response;
    try {
      response = await postImage(form);
    } catch (err) {
      cardError(card, `The server cannot be reached (${err.message}).`);
      return;
    }
    if (!response.ok) {
      cardError(card, `${await errorText(response)} (HTTP ${response.status})`);
      return;
    }
    const result = await response.json();
    const ms = Math.round(performance.now() - t0);
    let bitmap = null;
    try {
      bitmap = await createImageBitmap(file);
    } catch (_) { /* a format this browser cannot show (e.g. TIFF): boxes on a blank canvas */ }
    renderResult(card, result, bitmap, ms);
  }

  function renderResult(card, result, bitmap, ms) {
    const n = result.faces.length;
    card.querySelector(".result-meta").textContent =
      `${n} face${n === 1 ? "" : "s"} · ${result.width}×${result.height} · ${ms} ms`;
    const body = el("div", "result-body");
    const canvas = el("canvas", "photo");
    const k = Math.min(1, 1400 / Math.max(result.width, result.height));
    canvas.width = Math.max(1, Math.round(result.width * k));
    canvas.height = Math.max(1, Math.round(result.height * k));
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", n ? result.faces.map((f, i) => `face ${i + 1}: ${f.label}`).join(", ") : "no face found");

    const list = el("ol", "faces");
    result.faces.forEach((f, i) => {
      const item = el("li", "face");
      const head = el("div", "face-head");
      const num = el("span", "face-num", String(i + 1));
      num.style.setProperty("--c", colorOf(f.label));
      head.append(num, el("span", "face-label", f.label), el("span", "face-conf", pct(f.confidence)));
      item.append(head, barChart(f.probabilities, f.label));
      list.append(item);
    });
    if (!n) list.append(el("li", "muted", "No face found. Faces smaller than about 40 pixels are not searched."));
    body.append(canvas, list);
    card.append(body);

    // drawn once the canvas is on the page, so that lines and labels have the same size on screen at any width
    const ctx = canvas.getContext("2d");
    if (bitmap) {
      ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      bitmap.close();
    } else {
      ctx.fillStyle = "#888";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
    }
    const perScreenPixel = canvas.width / (canvas.clientWidth || canvas.width);
    const boxes = result.faces.map((f, i) => {
      const [x, y, w, h] = f.box.map((v) => v * k);
      return { x, y, w, h, color: colorOf(f.label), text: `${i + 1} ${f.label} ${pct(f.confidence)}` };
    });
    drawBoxes(ctx, boxes.reverse(), perScreenPixel); // face 1 (the largest) drawn last, on top
    card.dataset.faces = String(n);
  }

  function setUpPhotos() {
    const drop = $("drop");
    $("file-input").addEventListener("change", (e) => {
      addFiles(e.target.files);
      e.target.value = "";
    });
    for (const type of ["dragenter", "dragover"]) {
      drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
    }
    for (const type of ["dragleave", "drop"]) {
      drop.addEventListener(type, () => drop.classList.remove("over"));
    }
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      addFiles(e.dataTransfer.files);
    });
    // a photo dropped beside the zone must not replace the page
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
  }

  // ------------------------------------------------------------------------------------------- webcam

  const cam = { stream: null, running: false, tracks: [], nextId: 1, grab: document.createElement("canvas") };

  function iou(a, b) {
    const x1 = Math.max(a[0], b[0]);
    const y1 = Math.max(a[1], b[1]);
    const x2 = Math.min(a[0] + a[2], b[0] + b[2]);
    const y2 = Math.min(a[1] + a[3], b[1] + b[3]);
    const inter = Math.max(0, x2 - x1) * Math.max(0, y2 - y1);
    const union = a[2] * a[3] + b[2] * b[3] - inter;
    return union > 0 ? inter / union : 0;
  }

  // Match this frame's faces to the tracks (greedy, by box overlap) and update each track's moving average.
  function updateTracks(faces, now) {
    const free = new Set(cam.tracks);
    for (const f of faces) {
      let best = null;
      let bestIou = 0.2;
      for (const t of free) {
        const o = iou(t.box, f.box);
        if (o > bestIou) { best = t; bestIou = o; }
      }
      const p = state.classes.map((c) => f.probabilities[c] ?? 0);
      if (best) {
        free.delete(best);
        const a = 1 - Math.exp(-(now - best.last) / TAU_S);
        best.ema = best.ema.map((v, k) => v + a * (p[k] - v));
        best.box = f.box;
        best.last = now;
      } else {
        best = { id: cam.nextId++, box: f.box, ema: p, last: now, history: [] };
        cam.tracks.push(best);
      }
      best.history.push({ t: now, p: best.ema.slice() });
      while (best.history.length && best.history[0].t < now - WINDOW_S) best.history.shift();
    }
    cam.tracks = cam.tracks.filter((t) => now - t.last < FORGET_S);
  }

  function smoothedTop(track) {
    let k = 0;
    track.ema.forEach((v, i) => { if (v > track.ema[k]) k = i; });
    return [state.classes[k], track.ema[k]];
  }

  // A cleared 2-D context sized to the canvas's CSS box at the screen's pixel density: [ctx, width, height].
  function sharpCanvas(canvas) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    return [ctx, w, h];
  }

  function drawOverlay(frameW, frameH, now) {
    const overlay = $("overlay");
    const [ctx, w] = sharpCanvas(overlay);
    const k = w / frameW;
    const boxes = cam.tracks.filter((t) => t.last === now).map((t) => { // the faces of this frame
      const [label, p] = smoothedTop(t);
      const [x, y, bw, bh] = t.box;
      const mx = frameW - x - bw; // the video is shown mirrored, like a mirror
      return { x: mx * k, y: y * k, w: bw * k, h: bh * k, color: colorOf(label), text: `${t.id} ${label} ${pct(p)}` };
    });
    drawBoxes(ctx, boxes, 1);
  }

  function drawTimelines(now) {
    const box = $("timelines");
    const shown = cam.tracks.slice(-MAX_TIMELINES);
    const keep = new Set(shown.map((t) => `t${t.id}`));
    for (const card of [...box.children]) if (!keep.has(card.id)) card.remove();
    for (const t of shown) {
      let card = document.getElementById(`t${t.id}`);
      if (!card) {
        card = el("div", "timeline");
        card.id = `t${t.id}`;
        const head = el("div", "timeline-head");
        head.append(el("strong", "", `Face ${t.id}`), el("span", "muted timeline-now", ""));
        const axis = el("div", "timeline-axis muted");
        axis.append(el("span", "", `${WINDOW_S} s ago`), el("span", "", "now"));
        card.append(head, el("canvas", ""), axis);
        box.append(card);
      }
      const [label, p] = smoothedTop(t);
      card.querySelector(".timeline-now").textContent = `${label} ${pct(p)}`;
      drawStack(card.querySelector("canvas"), t.history, now);
    }
  }

  // The smoothed probabilities over the last WINDOW_S seconds as stacked areas (they sum to 1).
  function drawStack(canvas, history, now) {
    const [ctx, w, h] = sharpCanvas(canvas);
    if (history.length < 2) return;
    const xOf = (t) => w * (1 - (now - t) / WINDOW_S);
    const below = history.map(() => 0);
    state.classes.forEach((c, k) => {
      ctx.beginPath();
      history.forEach((e, i) => {
        const y = h * (1 - below[i] - e.p[k]);
        if (i === 0) ctx.moveTo(xOf(e.t), y); else ctx.lineTo(xOf(e.t), y);
      });
      for (let i = history.length - 1; i >= 0; i--) ctx.lineTo(xOf(history[i].t), h * (1 - below[i]));
      ctx.closePath();
      ctx.fillStyle = colorOf(c);
      ctx.fill();
      history.forEach((e, i) => { below[i] += e.p[k]; });
    });
  }

  function grabFrame(video) {
    const k = Math.min(1, MAX_SEND_SIDE / Math.max(video.videoWidth, video.videoHeight));
    const g = cam.grab;
    g.width = Math.round(video.videoWidth * k);
    g.height = Math.round(video.videoHeight * k);
    g.getContext("2d").drawImage(video, 0, 0, g.width, g.height);
    return new Promise((resolve) => g.toBlob(resolve, "image/jpeg", 0.85));
  }

  async function camLoop() {
    const video = $("video");
    let lastDone = 0;
    let rate = 0; // frames/s actually analysed, smoothed
    while (cam.running) {
      const t0 = performance.now();
      const interval = 1000 / Number($("cam-fps").value);
      if (video.videoWidth > 0) {
        const blob = await grabFrame(video);
        try {
          const response = await api("v1/analyze", { method: "POST", body: blob, headers: { "Content-Type": "image/jpeg" } });
          if (response.ok) {
            const result = await response.json();
            const now = performance.now() / 1000;
            updateTracks(result.faces, now);
            if (!cam.running) break;
            drawOverlay(cam.grab.width, cam.grab.height, now);
            drawTimelines(now);
            const done = performance.now();
            if (lastDone) rate = rate ? rate + 0.3 * (1000 / (done - lastDone) - rate) : 1000 / (done - lastDone);
            lastDone = done;
            const nf = result.faces.length;
            $("cam-stats").textContent =
              `${nf} face${nf === 1 ? "" : "s"} · ${Math.round(done - t0)} ms · ${rate.toFixed(1)} frames/s`;
            setStatus("");
          } else if (response.status === 503) {
            await sleep(1000 * (Number(response.headers.get("Retry-After")) || 1));
          } else {
            setStatus(`Webcam: ${await errorText(response)} (HTTP ${response.status})`, true);
            if (response.status === 401) { stopCam(); break; }
          }
        } catch (err) {
          setStatus(`Webcam: the server cannot be reached (${err.message}).`, true);
          await sleep(1000);
        }
      }
      await sleep(Math.max(0, interval - (performance.now() - t0)));
    }
  }

  async function startCam() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setStatus("This browser gives no camera access here (it needs https or localhost).", true);
      return;
    }
    try {
      cam.stream = await navigator.mediaDevices.getUserMedia({
        video: { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: "user" }, audio: false,
      });
    } catch (err) {
      setStatus(`No camera: ${err.message || err.name}.`, true);
      return;
    }
    const video = $("video");
    video.srcObject = cam.stream;
    $("stage").hidden = false;
    await video.play();
    cam.running = true;
    $("cam-toggle").textContent = "Stop webcam";
    setStatus("");
    camLoop();
  }

  function stopCam() {
    cam.running = false;
    if (cam.stream) cam.stream.getTracks().forEach((t) => t.stop());
    cam.stream = null;
    $("video").srcObject = null;
    $("stage").hidden = true;
    $("cam-toggle").textContent = "Start webcam";
    $("cam-stats").textContent = "";
    cam.tracks = [];
  }

  // --------------------------------------------------------------------------------------------- page

  function selectTab(name) {
    for (const tab of ["photos", "webcam"]) {
      $(`tab-${tab}`).setAttribute("aria-selected", String(tab === name));
      $(tab).hidden = tab !== name;
    }
    if (name !== "webcam" && cam.running) stopCam();
  }

  function setUp() {
    $("tab-photos").addEventListener("click", () => selectTab("photos"));
    $("tab-webcam").addEventListener("click", () => selectTab("webcam"));
    $("cam-toggle").addEventListener("click", () => (cam.running ? stopCam() : startCam()));
    $("token-box").addEventListener("submit", (e) => {
      e.preventDefault();
      const token = $("token").value.trim();
      if (token) sessionStorage.setItem(TOKEN_KEY, token); else sessionStorage.removeItem(TOKEN_KEY);
      $("token-box").hidden = true;
      connect();
    });
    setUpPhotos();
    buildLegend();
    connect();
  }

  setUp();
})();
