"use strict";
const $ = (id) => document.getElementById(id);
const models = JSON.parse(document.body.dataset.models);  // name -> about, crop_note, route (its routes' prefix)
const drop = $("drop"), input = $("file"), select = $("model"), legend = $("legend");
const drift = !$("drift").hidden;  // a server without drift monitoring hides the panel
const model = () => select.value;
const route = (what) => models[model()].route + what;

drop.addEventListener("click", () => input.click());
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
input.addEventListener("change", () => { if (input.files.length) send(input.files[0], input.files[0].name); });
for (const t of ["dragenter", "dragover"]) drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); });
for (const t of ["dragleave", "drop"]) drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); });
drop.addEventListener("drop", (e) => { const f = e.dataTransfer.files[0]; if (f) send(f, f.name); });
select.addEventListener("change", () => {
  $("about").textContent = models[model()].about;
  legend.dataset.cropNote = models[model()].crop_note;
  for (const id of ["verdict", "overlay"]) $(id).style.display = "none";
  for (const id of ["details", "legend", "error", "status"]) $(id).textContent = "";
  refreshDrift();
});

function fail(message) {
  $("status").textContent = "";
  $("error").textContent = message;
  document.body.dataset.state = "error";
}

async function send(blob, name) {
  $("error").textContent = "";
  $("status").textContent = "scoring " + name + " with " + model() + " ...";
  document.body.dataset.state = "busy";
  const form = new FormData();
  form.append("file", blob, name);
  let response, body;
  try {
    response = await fetch(route("predict?overlay=true"), {method: "POST", body: form});
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
  refreshDrift();
}

function fmt(x) { return x === null || x === undefined ? "-" : Number(x).toPrecision(4); }
function pct(x) { return x === null || x === undefined ? "-" : (100 * x).toFixed(1) + "%"; }

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
    (b.reason ? "reason: " + b.reason + "\n" : "") +
    "time " + t.total.toFixed(0) + " ms (decode " + t.decode.toFixed(0) + ", queue " + t.queue.toFixed(0) +
    ", model " + t.inference.toFixed(0) + " in a batch of " + b.batch_size + ")";
  const img = $("overlay");
  img.onload = () => {
    img.classList.toggle("small", img.naturalWidth < 600);
    document.body.dataset.state = "done";
  };
  img.src = "data:image/png;base64," + b.overlay_png_base64;
  img.style.display = "block";
  legend.textContent = "left: the image; right: anomaly heat map (blue = normal, red = anomalous)" +
    (b.pixel_threshold === null ? "" : ", red contour = pixels above the pixel threshold") + legend.dataset.cropNote;
  $("status").textContent = "";
}

function row(label, value, reference, bad) {
  const tr = document.createElement("tr");
  const cells = [["th", label], ["td", value], ["td", reference]];
  for (const [tag, text] of cells) {
    const cell = document.createElement(tag);
    cell.textContent = text;
    tr.appendChild(cell);
  }
  if (bad) tr.children[1].className = "bad";
  return tr;
}

function showDrift(d) {
  const badge = $("drift-status");
  badge.textContent = d.status.replace("_", " ");
  badge.className = "badge " + d.status;
  const rows = [row("images in the window", d.count + " of " + d.window, "status from " + d.min_count, false)];
  if (d.calibrated) {
    rows.push(
      row("above the threshold", pct(d.share_above), "expected " + pct(d.expected_share_above) +
          ", limit " + pct(d.share_above_limit), d.share_above !== null && d.share_above > d.share_above_limit),
      row("frame check rejects", pct(d.frame_reject_share), "expected under " + pct(d.fpr), false),
      row("PSI", fmt(d.psi), "watch " + fmt(d.psi_watch) + ", limit " + fmt(d.psi_limit) + " (" + d.bins + " bins)",
          d.psi !== null && d.psi > d.psi_limit),
      row("Kolmogorov-Smirnov", fmt(d.ks), "limit " + fmt(d.ks_limit), d.ks !== null && d.ks > d.ks_limit),
      row("score median / p95", fmt(d.score_median) + " / " + fmt(d.score_p95),
          "calibration " + fmt(d.calibration_median) + " / " + fmt(d.calibration_p95) + " (" +
          d.calibration_count + " good images)", false));
  } else {
    rows.push(row("frame check rejects", pct(d.frame_reject_share), "", false),
              row("score median / p95", fmt(d.score_median) + " / " + fmt(d.score_p95), "no calibration", false));
  }
  $("drift-table").tBodies[0].replaceChildren(...rows);
  $("drift-reasons").replaceChildren(...(d.reasons || []).map((text) => {
    const li = document.createElement("li");
    li.textContent = text;
    return li;
  }));
}

async function refreshDrift() {
  if (!drift) return;
  try {
    const response = await fetch(route("drift"));
    if (response.ok) showDrift(await response.json());
  } catch (e) { /* the next refresh tries again */ }
}

if (drift) {
  refreshDrift();
  setInterval(refreshDrift, 5000);
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
