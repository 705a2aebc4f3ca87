// The drawing pad: strokes on a black canvas (MNIST's digits are light on dark), sent as a PNG to
// /api/predict while drawing; one request in flight at a time, the latest drawing sent next.
"use strict";

const pad = document.getElementById("pad");
const ink = pad.getContext("2d");
const seen = document.getElementById("seen").getContext("2d");
const label = document.getElementById("label");
const confidence = document.getElementById("confidence");
const statusLine = document.getElementById("status");
const ms = document.getElementById("ms");
const bars = [];

let pointer = null;     // the pointer drawing now, if any
let last = null;        // its last position, in canvas pixels
let drawn = false;      // any ink since the last clear
let inFlight = false;   // a request is on its way
let dirty = false;      // the drawing changed since the request in flight was sent
let generation = 0;     // bumped by Clear: answers to older drawings are dropped

function makeBars() {
  const list = document.getElementById("bars");
  for (let d = 0; d < 10; d++) {
    const item = document.createElement("li");
    item.innerHTML = `<span class="digit">${d}</span><span class="track"><span class="fill"></span></span>` +
      `<span class="value">0.0%</span>`;
    list.appendChild(item);
    bars.push({ item, fill: item.querySelector(".fill"), value: item.querySelector(".value") });
  }
}

function setState(state, message) {
  document.body.dataset.state = state;
  if (message !== undefined) statusLine.textContent = message;
}

function clearAll() {
  generation++;
  ink.fillStyle = "#000";
  ink.fillRect(0, 0, pad.width, pad.height);
  seen.fillStyle = "#000";
  seen.fillRect(0, 0, 28, 28);
  drawn = false;
  dirty = false;
  label.textContent = "–";
  confidence.textContent = "";
  ms.textContent = "";
  for (const bar of bars) {
    bar.fill.style.width = "0%";
    bar.value.textContent = "0.0%";
    bar.item.classList.remove("top");
  }
  if (!inFlight) setState("idle", "draw with a mouse, pen or finger");
}

function position(event) {
  const box = pad.getBoundingClientRect();
  return { x: (event.clientX - box.left) * pad.width / box.width, y: (event.clientY - box.top) * pad.height / box.height };
}

function stroke(from, to) {
  ink.strokeStyle = "#fff";
  ink.lineWidth = pad.width / 14;
  ink.lineCap = "round";
  ink.lineJoin = "round";
  ink.beginPath();
  ink.moveTo(from.x, from.y);
  ink.lineTo(to.x, to.y);
  ink.stroke();
  drawn = true;
}

function show(answer) {
  const top = answer.label;
  label.textContent = String(top);
  confidence.textContent = `${(100 * answer.probabilities[top]).toFixed(1)}%`;
  ms.textContent = `(answered in ${answer.ms.toFixed(1)} ms)`;
  answer.probabilities.forEach((p, d) => {
    bars[d].fill.style.width = `${(100 * p).toFixed(1)}%`;
    bars[d].value.textContent = `${(100 * p).toFixed(1)}%`;
    bars[d].item.classList.toggle("top", d === top);
  });
  const picture = seen.createImageData(28, 28);
  answer.image.flat().forEach((v, i) => {
    picture.data.set([v, v, v, 255], 4 * i);
  });
  seen.putImageData(picture, 0, 0);
}

async function send() {
  if (!drawn) return;
  inFlight = true;
  dirty = false;
  const sent = generation;
  setState("busy", "reading…");
  try {
    const png = await new Promise((done) => pad.toBlob(done, "image/png"));
    const reply = await fetch("api/predict", { method: "POST", headers: { "Content-Type": "image/png" }, body: png });
    const answer = await reply.json();
    if (sent === generation) {
      if (reply.ok) {
        show(answer);
        statusLine.textContent = "";
      } else {
        statusLine.textContent = reply.status === 400 ? "no digit found yet: keep drawing" : `error: ${answer.error}`;
      }
    }
  } catch (error) {
    statusLine.textContent = "the server cannot be reached: is `mnistfx serve` running?";
  } finally {
    inFlight = false;
  }
  if (dirty && drawn) {
    send();
  } else {
    setState("idle");
  }
}

function changed() {
  dirty = true;
  if (!inFlight) send();
}

pad.addEventListener("pointerdown", (event) => {
  if (pointer !== null || event.button > 0) return;
  event.preventDefault();
  pointer = event.pointerId;
  pad.setPointerCapture(pointer);
  last = position(event);
  stroke(last, last);
  changed();
});

pad.addEventListener("pointermove", (event) => {
  if (event.pointerId !== pointer) return;
  const moves = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const move of moves.length ? moves : [event]) {
    const next = position(move);
    stroke(last, next);
    last = next;
  }
  changed();
});

for (const kind of ["pointerup", "pointercancel"]) {
  pad.addEventListener(kind, (event) => {
    if (event.pointerId !== pointer) return;
    pointer = null;
    changed();
  });
}

document.getElementById("clear").addEventListener("click", clearAll);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" || event.key === "Delete") clearAll();
});

async function health() {
  const model = document.getElementById("model");
  try {
    const reply = await fetch("api/health");
    const about = await reply.json();
    model.textContent = about.members ? `an ensemble of ${about.members} ${about.model} models answers`
      : `the ${about.model} model answers`;
  } catch (error) {
    model.textContent = "the server cannot be reached: is `mnistfx serve` running?";
  }
}

makeBars();
clearAll();
health();
