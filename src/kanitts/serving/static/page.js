// The page of `kanitts serve`: asks /v1/audio/speech for raw PCM and plays it while it arrives.
// Each chunk of the response body becomes an AudioBuffer scheduled right after the previous one
// on one AudioContext running at the model's sample rate; the whole is offered as a WAV at the end.
// window.kanitts holds what happened (samples received, played, time to first audio) for tests.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], ctx: null, abort: null };
window.kanitts = { received: 0, played: 0, firstAudioMs: null, done: false, error: null };

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error ? body.error.message : JSON.stringify(body);
  } catch (e) {
    return response.status + " " + response.statusText;
  }
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) {
    status("cannot list the models: " + (await errorText(response)) + " (enter the API key, then Speak)", true);
    return;
  }
  state.models = (await response.json()).data;
  const select = $("model");
  select.replaceChildren(...state.models.map((m) => new Option(m.id, m.id)));
  showModel();
}

function showModel() {
  const model = state.models.find((m) => m.id === $("model").value);
  if (!model) return;
  $("voices").replaceChildren(...model.voices.map((v) => new Option(v)));
  $("voice").placeholder = model.default_voice || "default";
  for (const [name, value] of Object.entries(model.sampling)) $(name).value = value;
  $("text").maxLength = model.max_input_chars;
}

function settings() {
  const body = { model: $("model").value, input: $("text").value, response_format: "pcm" };
  const voice = $("voice").value.trim();
  if (voice) body.voice = voice;
  for (const name of ["temperature", "top_p", "repetition_penalty"]) {
    if ($(name).value !== "") body[name] = parseFloat($(name).value);
  }
  for (const name of ["max_new_tokens", "seed"]) {
    if ($(name).value !== "") body[name] = parseInt($(name).value, 10);
  }
  return body;
}

function wavBlob(chunks, rate) {
  const length = chunks.reduce((n, c) => n + c.length, 0);
  const view = new DataView(new ArrayBuffer(44 + 2 * length));
  const text = (at, s) => [...s].forEach((ch, i) => view.setUint8(at + i, ch.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * length, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, 2 * length, true);
  let at = 44;
  for (const chunk of chunks) for (const s of chunk) { view.setInt16(at, s, true); at += 2; }
  return new Blob([view], { type: "audio/wav" });
}

async function speak(event) {
  event.preventDefault();
  if (!state.models.length) await loadModels();
  const model = state.models.find((m) => m.id === $("model").value);
  if (!model) return;
  const rate = model.sample_rate;
  if (!state.ctx || state.ctx.sampleRate !== rate) state.ctx = new AudioContext({ sampleRate: rate });
  const ctx = state.ctx;
  await ctx.resume();
  Object.assign(window.kanitts, { received: 0, played: 0, firstAudioMs: null, done: false, error: null });
  $("download").hidden = true;
  $("speak").disabled = true;
  $("stop").disabled = false;
  state.abort = new AbortController();
  const started = performance.now();
  const pcm = [];
  let carry = null;
  let at = ctx.currentTime + 0.05;
  status("generating...");
  try {
    const response = await fetch("/v1/audio/speech", {
      method: "POST", headers: headers(), body: JSON.stringify(settings()), signal: state.abort.signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      let bytes = value;
      if (carry) { bytes = new Uint8Array(carry.length + value.length); bytes.set(carry); bytes.set(value, carry.length); }
      const whole = bytes.length - (bytes.length % 2);
      carry = whole < bytes.length ? bytes.slice(whole) : null;
      if (!whole) continue;
      const samples = new Int16Array(bytes.slice(0, whole).buffer);
      pcm.push(samples);
      if (window.kanitts.firstAudioMs === null) {
        window.kanitts.firstAudioMs = performance.now() - started;
        status(`playing (first audio after ${Math.round(window.kanitts.firstAudioMs)} ms)...`);
      }
      const buffer = ctx.createBuffer(1, samples.length, rate);
      buffer.getChannelData(0).set(Float32Array.from(samples, (s) => s / 32768));
      const source = ctx.createBufferSource();
      source.buffer = buffer;
      source.connect(ctx.destination);
      at = Math.max(at, ctx.currentTime);
      source.start(at);
      at += buffer.duration;
      source.onended = () => { window.kanitts.played += samples.length; };
      window.kanitts.received += samples.length;
    }
    const seconds = window.kanitts.received / rate;
    const link = $("download");
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(wavBlob(pcm, rate));
    link.hidden = false;
    status(`${seconds.toFixed(2)} s of audio; first audio after ${Math.round(window.kanitts.firstAudioMs || 0)} ms`);
  } catch (error) {
    window.kanitts.error = String(error.message || error);
    status(error.name === "AbortError" ? "stopped" : "error: " + window.kanitts.error, error.name !== "AbortError");
  } finally {
    window.kanitts.done = true;
    $("speak").disabled = false;
    $("stop").disabled = true;
  }
}

async function start() {
  // With an API key required, the models are listed once the key is typed (at the first Speak).
  const health = await (await fetch("/health")).json();
  if (health.api_key_required) status("this server needs its API key: enter it below, then Speak");
  else await loadModels();
}

$("form").addEventListener("submit", speak);
$("stop").addEventListener("click", () => state.abort && state.abort.abort());
$("model").addEventListener("change", showModel);
start();
