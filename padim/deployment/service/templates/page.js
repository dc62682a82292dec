"use strict";
const $ = (id) => document.getElementById(id);
const drop = $("drop"), input = $("file");
drop.addEventListener("click", () => input.click());
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
input.addEventListener("change", () => { if (input.files.length) send(input.files[0], input.files[0].name); });
for (const t of ["dragenter", "dragover"]) drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); });
for (const t of ["dragleave", "drop"]) drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); });
drop.addEventListener("drop", (e) => { const f = e.dataTransfer.files[0]; if (f) send(f, f.name); });

function fail(message) {
  $("status").textContent = "";
  $("error").textContent = message;
  document.body.dataset.state = "error";
}

async function send(blob, name) {
  $("error").textContent = "";
  $("status").textContent = "scoring " + name + " ...";
  document.body.dataset.state = "busy";
  const form = new FormData();
  form.append("file", blob, name);
  let response, body;
  try {
    response = await fetch("predict?overlay=true", {method: "POST", body: form});
    body = await response.json();
  } catch (e) {
    fail("request failed: " + e);
    return;
  }
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    fail("HTTP " + response.status + ": " + detail);
    return;
  }
  show(body, name);
}

function fmt(x) { return x === null || x === undefined ? "-" : Number(x).toPrecision(4); }

function show(b, name) {
  const v = $("verdict");
  if (b.defective === null) { v.className = "score"; v.textContent = "score " + fmt(b.score); }
  else if (b.defective) { v.className = "defect"; v.textContent = "DEFECT"; }
  else { v.className = "ok"; v.textContent = "OK"; }
  v.style.display = "block";
  const t = b.timing_ms;
  $("details").textContent =
    name + " (" + b.image.width + "x" + b.image.height + ")\n" +
    "score " + fmt(b.score) + "   normalised " + fmt(b.normalized_score) +
    "   image threshold " + fmt(b.image_threshold) + "   pixel threshold " + fmt(b.pixel_threshold) + "\n" +
    "time " + t.total.toFixed(0) + " ms (decode " + t.decode.toFixed(0) + ", queue " + t.queue.toFixed(0) +
    ", model " + t.inference.toFixed(0) + " in a batch of " + b.batch_size + ")";
  const img = $("overlay");
  img.onload = () => {
    img.classList.toggle("small", img.naturalWidth < 600);
    document.body.dataset.state = "done";
  };
  img.src = "data:image/png;base64," + b.overlay_png_base64;
  img.style.display = "block";
  const legend = $("legend");
  legend.textContent = "left: the image; right: anomaly heat map (blue = normal, red = anomalous)" +
    (b.pixel_threshold === null ? "" : ", red contour = pixels above the pixel threshold") + legend.dataset.cropNote;
  $("status").textContent = "";
}

const demo = new URLSearchParams(location.search).get("demo");
if (demo) {
  const url = new URL(demo, location.href);
  if (url.origin !== location.origin) fail("the demo image must come from this server");
  else fetch(url)
    .then((r) => { if (!r.ok) throw new Error("HTTP " + r.status); return r.blob(); })
    .then((blob) => send(blob, url.pathname.split("/").pop() || "demo"))
    .catch((e) => fail("cannot load the demo image: " + e.message));
}
