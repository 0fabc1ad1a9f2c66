// The page of `predict.py --serve`: draw or drop a digit, POST it to /predict, show the answer.
"use strict";

// The pen, in canvas pixels: a digit drawn across most of the 280-pixel canvas with it has MNIST's pen
// (benchmarks/results/predict_framing.json, "canvas_pen"); the framing redraws any other pen to MNIST's.
const PEN_WIDTH = 32;

const pad = document.getElementById("pad");
const ink = pad.getContext("2d");
const seen = document.getElementById("seen");
const bars = document.getElementById("bars");
const message = document.getElementById("message");
const drop = document.getElementById("drop");
const fileInput = document.getElementById("file");
let drawing = null;  // the pointer drawing a stroke, while it draws
let drawn = false;  // whether the canvas holds any stroke
let asked = 0;  // the number of the latest request: an older answer arriving late is not shown

function clearPad() {
  ink.fillStyle = "#fff";
  ink.fillRect(0, 0, pad.width, pad.height);
  drawn = false;
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * pad.width / box.width, (event.clientY - box.top) * pad.height / box.height];
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  drawing = event.pointerId;
  const [x, y] = point(event);
  ink.strokeStyle = "#000";
  ink.fillStyle = "#000";
  ink.lineWidth = PEN_WIDTH;
  ink.lineCap = "round";
  ink.lineJoin = "round";
  ink.beginPath();
  ink.arc(x, y, PEN_WIDTH / 2, 0, 2 * Math.PI);
  ink.fill();
  ink.beginPath();
  ink.moveTo(x, y);
  drawn = true;
});

pad.addEventListener("pointermove", (event) => {
  if (event.pointerId !== drawing) return;
  const moves = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const move of moves.length ? moves : [event]) {
    const [x, y] = point(move);
    ink.lineTo(x, y);
  }
  ink.stroke();
});

function endStroke(event) {
  if (event.pointerId !== drawing) return;
  drawing = null;
  pad.toBlob((blob) => ask(blob, "drawing.png"), "image/png");
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

document.getElementById("clear").addEventListener("click", () => {
  clearPad();
  asked += 1;  // an answer still on its way is for the cleared drawing
  showAnswer(null);
  showMessage("");
});

fileInput.addEventListener("change", () => {
  if (fileInput.files.length) ask(fileInput.files[0], fileInput.files[0].name);
  fileInput.value = "";  // choosing the same file again answers again
});
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const file = event.dataTransfer.files[0];
  if (file) ask(file, file.name);
});

async function ask(blob, name) {
  const number = ++asked;
  const form = new FormData();
  form.append("image", blob, name);
  let status, body;
  try {
    const response = await fetch("/predict", { method: "POST", body: form });
    status = response.status;
    body = await response.json().catch(() => ({}));  // an answer that is not JSON is still the server's answer
  } catch (error) {
    if (number === asked) showMessage(`${name}: no answer from the server (${error.message}); is predict.py --serve still running?`);
    return;
  }
  if (number !== asked) return;
  if (status !== 200) {
    showAnswer(null);
    showMessage(body.error || `${name}: the server answered ${status}`);
    return;
  }
  showMessage("");
  showAnswer(body, name === "drawing.png" ? "your drawing" : name);
}

function showMessage(text) {
  message.textContent = text;
  message.hidden = !text;
}

function showAnswer(answer, source) {
  document.getElementById("digit").textContent = answer ? String(answer.digit) : "?";
  document.getElementById("source").textContent = answer ? `${(100 * answer.probabilities[answer.digit]).toFixed(1)}% for ${source}` : "";
  bars.querySelectorAll("li").forEach((row, digit) => {
    const probability = answer ? answer.probabilities[digit] : 0;
    row.classList.toggle("best", Boolean(answer) && digit === answer.digit);
    row.querySelector(".fill").style.width = `${(100 * probability).toFixed(1)}%`;
    row.querySelector(".value").textContent = answer ? `${(100 * probability).toFixed(1)}%` : "";
  });
  const view = seen.getContext("2d");
  const image = view.createImageData(28, 28);
  for (let row = 0; row < 28; row++) {
    for (let col = 0; col < 28; col++) {
      const level = answer ? answer.pixels[row][col] : 0;
      const at = 4 * (28 * row + col);
      image.data[at] = image.data[at + 1] = image.data[at + 2] = level;
      image.data[at + 3] = 255;
    }
  }
  view.putImageData(image, 0, 0);
  if (answer) showModel(answer.model);
}

function showModel(model) {
  const line = document.getElementById("model");
  line.textContent = "";
  const run = model.run_id ? `, run ${model.run_id}` : "";
  line.append(model.kind === "checkpoint"
    ? `Model: checkpoint ${model.checkpoint} (md5 ${model.md5})`
    : `Model: ${model.name} version ${model.version} (alias ${model.alias})${run}`);
  if (model.run_url) {
    const link = document.createElement("a");
    link.href = model.run_url;
    link.textContent = "the run in MLflow";
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    line.append(" · ", link);
  }
}

for (let digit = 0; digit < 10; digit++) {
  const row = document.createElement("li");
  row.dataset.digit = String(digit);
  row.innerHTML = `<span>${digit}</span><span class="bar"><span class="fill"></span></span><span class="value"></span>`;
  bars.append(row);
}
clearPad();
showAnswer(null);
fetch("/model").then((response) => response.json()).then((about) => showModel(about.model))
  .catch(() => showMessage("no answer from the server; is predict.py --serve still running?"));
