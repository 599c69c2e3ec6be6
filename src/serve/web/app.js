// omni web page: one more client of the server's own API (/v1/models, /v1/videos...).
// Vanilla JS, no build step. Everything the form offers comes from the /v1/models card
// (defaults, sizes, model-specific parameters, presets); nothing model-specific is written here.
'use strict';

const $ = (id) => document.getElementById(id);
const KEY_STORE = 'omni-api-key';
const PAGE_SIZE = 12;

let model = null;        // the /v1/models card of the served model
let job = null;          // {id, video, timer} of the job shown in "Current video"
let galleryAfter = null; // `after` cursor of the next gallery page
let keyPrompt = null;    // the pending key dialog, shared by concurrent 401s
const blobUrls = new Map(); // element → object URL to revoke

// ---- API -------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.param = error.param || null;
    this.code = error.code || null;
  }
}

const apiKey = () => sessionStorage.getItem(KEY_STORE) || '';
const authHeaders = () => (apiKey() ? { Authorization: `Bearer ${apiKey()}` } : {});

// fetch with the bearer key; a 401 asks for a key (once for concurrent calls) and retries;
// a non-2xx answer throws ApiError with the envelope's message and param.
async function api(path, options = {}) {
  for (;;) {
    const r = await fetch(path, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
    if (r.status === 401) {
      const refused = apiKey() !== '';
      if (!(await askKey(refused))) throw new ApiError(401, { message: 'This server needs an API key.' });
      continue;
    }
    if (!r.ok) {
      let error = null;
      try { error = (await r.json()).error; } catch (_) { /* not JSON */ }
      throw new ApiError(r.status, error || { message: `HTTP ${r.status} ${r.statusText}` });
    }
    return r;
  }
}

function askKey(refused) {
  if (keyPrompt) return keyPrompt;
  const dialog = $('key-dialog');
  $('key').value = '';
  $('key-err').hidden = !refused;
  $('key-err').textContent = refused ? 'The server refused that key.' : '';
  keyPrompt = new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      const k = $('key').value.trim();
      if (k) sessionStorage.setItem(KEY_STORE, k);
      $('key-button').hidden = false;
      keyPrompt = null;
      resolve(k !== '');
    }, { once: true });
  });
  dialog.showModal();
  return keyPrompt;
}

const contentPath = (id, variant) => `/v1/videos/${encodeURIComponent(id)}/content` +
  (variant && variant !== 'video' ? `?variant=${variant}` : '');

// A URL for a video or preview: the plain URL without a key (streams with Range); with a key
// the bytes are fetched with the bearer header and shown through an object URL.
async function mediaUrl(el, id, variant) {
  revoke(el);
  if (!apiKey()) return contentPath(id, variant);
  const blob = await (await api(contentPath(id, variant))).blob();
  const url = URL.createObjectURL(blob);
  blobUrls.set(el, url);
  return url;
}

function revoke(el) {
  const url = blobUrls.get(el);
  if (url) { URL.revokeObjectURL(url); blobUrls.delete(el); }
}

async function download(id) {
  const a = document.createElement('a');
  a.download = `${id}.mp4`;
  a.href = await mediaUrl(a, id, 'video');
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => revoke(a), 60000);
}

// ---- the form ----------------------------------------------------------------------------------

const MAIN_FIELDS = { negative_prompt: 'negative_prompt', num_frames: 'length', fps: 'fps', seed: 'seed' };

function renderModel() {
  const d = model.defaults;
  $('model-line').textContent = `${model.id} · ${model.pipeline} · default ${d.size}, ${d.num_frames} frames at ${d.fps} fps`;
  $('size-hint').textContent = `(WxH, multiples of ${model.size_multiple}, at most ${model.limits.max_long_side}x${model.limits.max_short_side})`;
  const sizes = $('sizes');
  sizes.replaceChildren(...model.sizes.map((s) => new Option(s, s)));
  const preset = $('preset');
  for (const p of model.presets) preset.append(new Option(p.name, p.name));
  $('length').max = model.limits.max_num_frames;
  const knobs = $('knobs');
  knobs.replaceChildren();
  for (const p of model.parameters) knobs.append(knobField(p));
  $('knobs-box').hidden = model.parameters.length === 0;
}

function knobField(p) {
  const div = document.createElement('div');
  div.className = 'field';
  div.dataset.param = p.name;
  const id = `knob-${p.name}`;
  const label = document.createElement('label');
  label.htmlFor = id;
  label.textContent = p.name.replaceAll('_', ' ');
  const input = document.createElement('input');
  input.id = id;
  input.name = p.name;
  input.dataset.knob = p.name;
  if (p.type === 'boolean') {
    input.type = 'checkbox';
  } else if (p.type === 'integer' || p.type === 'number') {
    input.type = 'number';
    input.step = p.type === 'integer' ? '1' : 'any';
    if (p.minimum != null) input.min = p.minimum;
    if (p.maximum != null) input.max = p.maximum;
  } else {
    input.type = 'text';
    input.spellcheck = false;
  }
  const hint = document.createElement('p');
  hint.className = 'hint';
  hint.id = `${id}-hint`;
  hint.textContent = p.description + (p.type === 'array' ? ' (comma-separated)' : '');
  const err = document.createElement('p');
  err.className = 'err';
  err.id = `${id}-err`;
  err.hidden = true;
  input.setAttribute('aria-describedby', `${hint.id} ${err.id}`);
  div.append(label, input, hint, err);
  return div;
}

function setKnob(name, value) {
  const input = document.querySelector(`[data-knob="${name}"]`);
  if (!input) return false;
  if (input.type === 'checkbox') input.checked = Boolean(value);
  else input.value = Array.isArray(value) ? value.join(', ') : String(value ?? '');
  return true;
}

function readKnob(p) {
  const input = document.querySelector(`[data-knob="${p.name}"]`);
  if (input.type === 'checkbox') return input.checked;
  const raw = input.value.trim();
  if (raw === '') return null;
  if (p.type === 'integer' || p.type === 'number') return Number(raw);
  if (p.type === 'array') {
    try { return JSON.parse(`[${raw.replace(/^\[|\]$/g, '')}]`); } catch (_) { return raw; }
  }
  return raw;
}

// Request fields and knobs as the server resolves a request without them, then a preset's values.
function fillForm(values) {
  const d = { ...model.defaults, ...values };
  if (values.width || values.height) d.size = `${d.width}x${d.height}`;
  $('size').value = d.size;
  $('length-unit').value = 'num_frames';
  $('length').value = d.num_frames;
  $('fps').value = d.fps;
  $('seed').value = d.seed ?? '';
  $('negative_prompt').value = d.negative_prompt || '';
  for (const p of model.parameters) setKnob(p.name, d[p.name] ?? p.default);
}

// frames ↔ seconds at the form's fps when the unit changes.
function switchUnit() {
  const n = Number($('length').value);
  const fps = Number($('fps').value) || model.defaults.fps;
  if (!n) return;
  $('length').value = $('length-unit').value === 'seconds' ? Math.max(1, Math.round(n / fps)) : n * fps;
}

function applyPreset() {
  const name = $('preset').value;
  const preset = model.presets.find((p) => p.name === name);
  fillForm(preset ? preset.values : {});
}

function buildBody() {
  const fd = new FormData();
  fd.append('prompt', $('prompt').value);
  const text = (id) => $(id).value.trim();
  if (text('negative_prompt')) fd.append('negative_prompt', $('negative_prompt').value);
  if (text('size')) fd.append('size', text('size'));
  if (text('length')) fd.append($('length-unit').value, text('length'));
  if (text('fps')) fd.append('fps', text('fps'));
  if (text('seed')) fd.append('seed', text('seed'));
  const extra = {};
  for (const p of model.parameters) {
    const v = readKnob(p);
    if (v === null || JSON.stringify(v) === JSON.stringify(p.default)) continue;
    if (p.in === 'body') fd.append(p.name, String(v));
    else extra[p.name] = v;
  }
  if (Object.keys(extra).length) fd.append('extra_params', JSON.stringify(extra));
  const file = $('reference').files[0];
  if (file) fd.append('input_reference', file, file.name);
  return fd;
}

function clearErrors() {
  for (const el of document.querySelectorAll('#form .err')) { el.hidden = true; el.textContent = ''; }
  for (const el of document.querySelectorAll('#form [aria-invalid]')) el.removeAttribute('aria-invalid');
}

// The server's 400 message next to the field its `param` names (a knob named in the message of
// an `extra_params` error too), else above the form.
function showError(e) {
  const fields = [...document.querySelectorAll('#form .field')];
  let field = fields.find((f) => f.dataset.param.split(' ').includes(e.param));
  if (!field && e.param) field = fields.find((f) => f.dataset.param.split(' ').some((n) => e.message.includes(`\`${n}\``)));
  const target = field ? field.querySelector('.err') : $('form-error');
  target.textContent = e.message;
  target.hidden = false;
  if (field) {
    const details = field.closest('details');
    if (details) details.open = true;
    const input = field.querySelector('input, textarea, select');
    input.setAttribute('aria-invalid', 'true');
    input.focus();
  }
}

async function submit(ev) {
  ev.preventDefault();
  clearErrors();
  const button = $('submit');
  button.disabled = true;
  try {
    const r = await api('/v1/videos', { method: 'POST', body: buildBody() });
    showJob(await r.json());
    refreshGallery();
  } catch (e) {
    showError(e);
  } finally {
    button.disabled = false;
  }
}

// ---- the current job ---------------------------------------------------------------------------

const seconds = (s) => (s < 60 ? `${Math.round(s)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`);
const now = () => Date.now() / 1000;

function showJob(v) {
  if (job) clearTimeout(job.timer);
  job = { id: v.id, video: v, timer: null };
  const player = $('player');
  player.pause();
  player.removeAttribute('src');
  player.hidden = true;
  revoke(player);
  $('download').hidden = true;
  $('job').hidden = false;
  renderJob(v);
  if (v.status === 'completed') showVideo(v);
  else if (v.status !== 'failed') poll();
}

function renderJob(v) {
  job.video = v;
  $('job-prompt').textContent = v.prompt;
  const state = v.status.replace('_', ' ') + (v.queue_position ? ` (position ${v.queue_position})` : '');
  $('job-state').textContent = state;
  $('job-percent').textContent = `${v.progress}%`;
  $('job-progress').value = v.progress;
  const end = v.completed_at || now();
  $('job-elapsed').textContent = seconds(Math.max(0, end - v.created_at));
  let eta = null;
  if (v.status === 'in_progress' && v.progress > 0 && v.started_at) {
    eta = ((now() - v.started_at) * (100 - v.progress)) / v.progress;
  }
  $('job-eta-wrap').hidden = v.status === 'completed' || v.status === 'failed';
  $('job-eta').textContent = eta === null ? '—' : seconds(eta);
  $('job-error').hidden = !v.error;
  $('job-error').textContent = v.error ? `Failed: ${v.error.message}` : '';
  const stages = $('job-stages');
  const rows = Object.entries(v.stage_durations || {}).map(([k, s]) => [k, `${Number(s).toFixed(2)} s`]);
  if (v.inference_time_s != null) rows.push(['total', `${v.inference_time_s.toFixed(2)} s`]);
  if (v.peak_memory_mb) rows.push(['peak memory', `${Math.round(v.peak_memory_mb)} MB`]);
  stages.replaceChildren(...rows.flatMap(([k, s]) => {
    const dt = document.createElement('dt'); dt.textContent = k;
    const dd = document.createElement('dd'); dd.textContent = s;
    return [dt, dd];
  }));
  stages.hidden = rows.length === 0;
  $('cancel').hidden = v.status === 'completed' || v.status === 'failed';
}

async function poll() {
  if (!job) return;
  const id = job.id;
  let r;
  try {
    r = await api(`/v1/videos/${encodeURIComponent(id)}`);
  } catch (e) {
    if (!job || job.id !== id) return;
    if (e.status === 404) { jobGone('This video was deleted.'); return; }
    job.timer = setTimeout(poll, 2000);
    return;
  }
  const v = await r.json();
  if (!job || job.id !== id) return;
  renderJob(v);
  if (v.status === 'completed') { await showVideo(v); refreshGallery(); return; }
  if (v.status === 'failed') { refreshGallery(); return; }
  const after = Number(r.headers.get('openai-poll-after-ms')) || 1000;
  job.timer = setTimeout(poll, Math.min(Math.max(after, 250), 1000));
}

async function showVideo(v) {
  const player = $('player');
  try {
    player.src = await mediaUrl(player, v.id, 'video');
  } catch (e) {
    $('job-error').textContent = e.message;
    $('job-error').hidden = false;
    return;
  }
  player.hidden = false;
  const a = $('download');
  a.hidden = false;
  a.href = apiKey() ? player.src : contentPath(v.id, 'video');
  a.download = `${v.id}.mp4`;
}

// Elapsed time and ETA move between polls too.
function tick() {
  if (job && !['completed', 'failed'].includes(job.video.status)) renderJob(job.video);
}

function jobGone(message) {
  if (job) clearTimeout(job.timer);
  job = null;
  $('job-state').textContent = message;
  $('job-progress').value = 0;
  $('cancel').hidden = true;
  $('job-eta-wrap').hidden = true;
  const player = $('player');
  player.pause();
  player.hidden = true;
  revoke(player);
  $('download').hidden = true;
}

async function remove(id) {
  await api(`/v1/videos/${encodeURIComponent(id)}`, { method: 'DELETE' });
  if (job && job.id === id) jobGone('Deleted.');
}

// ---- the gallery -------------------------------------------------------------------------------

async function loadGallery(reset) {
  const cards = $('cards');
  if (reset) galleryAfter = null;
  const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (galleryAfter) q.set('after', galleryAfter);
  let page;
  try {
    page = await (await api(`/v1/videos?${q}`)).json();
  } catch (e) {
    $('gallery-empty').textContent = `Could not list videos: ${e.message}`;
    $('gallery-empty').hidden = false;
    return;
  }
  if (reset) {
    for (const img of cards.querySelectorAll('img')) revoke(img);
    cards.replaceChildren();
  }
  for (const v of page.data) cards.append(card(v));
  if (page.last_id) galleryAfter = page.last_id;
  $('more').hidden = !page.has_more;
  $('gallery-empty').textContent = 'No videos yet.';
  $('gallery-empty').hidden = cards.children.length > 0;
}

let refreshing = null;
function refreshGallery() {
  refreshing = refreshing || loadGallery(true).finally(() => { refreshing = null; });
  return refreshing;
}

function button(text, label, onClick) {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = text;
  b.setAttribute('aria-label', label);
  b.addEventListener('click', onClick);
  return b;
}

function card(v) {
  const li = document.createElement('li');
  li.className = 'card';
  li.dataset.id = v.id;
  li.dataset.status = v.status;
  const short = v.prompt.length > 60 ? `${v.prompt.slice(0, 57)}…` : v.prompt;
  const thumb = document.createElement('div');
  thumb.className = 'thumb';
  if (v.status === 'completed') {
    const img = document.createElement('img');
    img.alt = `Thumbnail of “${short}”`;
    img.decoding = 'async';
    mediaUrl(img, v.id, 'thumbnail').then((u) => { img.src = u; }).catch(() => { img.alt = 'No thumbnail'; });
    thumb.append(img);
  } else {
    thumb.textContent = v.status === 'failed' ? 'failed' : `${v.status.replace('_', ' ')} ${v.progress}%`;
  }
  const meta = document.createElement('div');
  meta.className = 'meta';
  const p = document.createElement('p');
  p.className = 'card-prompt';
  p.textContent = v.prompt;
  p.title = v.prompt;
  const dur = v.num_frames && v.fps ? `${(v.num_frames / v.fps).toFixed(1)} s (${v.num_frames} frames at ${v.fps} fps)` : `${v.seconds} s`;
  const info = document.createElement('p');
  info.className = 'hint';
  info.textContent = `${v.size} · ${dur}`;
  const status = document.createElement('p');
  status.className = `status-${v.status}`;
  status.textContent = `${v.status.replace('_', ' ')} · ${new Date(v.created_at * 1000).toLocaleString()}`;
  meta.append(p, info, status);
  const actions = document.createElement('div');
  actions.className = 'actions';
  if (v.status === 'completed') {
    actions.append(
      button('Play', `Play “${short}”`, () => {
        showJob(v);
        $('job').scrollIntoView({ behavior: 'smooth' });
        $('player').focus();
      }),
      button('Download', `Download “${short}”`, () => download(v.id).catch(alertError)),
    );
  } else if (v.status !== 'failed') {
    actions.append(button('Watch', `Watch progress of “${short}”`, () => showJob(v)));
  }
  actions.append(button('Delete', `Delete “${short}”`, async () => {
    try {
      await remove(v.id);
      const next = li.nextElementSibling || li.previousElementSibling;
      revoke(li.querySelector('img'));
      li.remove();
      $('gallery-empty').hidden = $('cards').children.length > 0;
      (next ? next.querySelector('button') : $('gallery-title')).focus?.();
    } catch (e) { alertError(e); }
  }));
  li.append(thumb, meta, actions);
  return li;
}

function alertError(e) {
  $('gallery-empty').textContent = e.message;
  $('gallery-empty').hidden = false;
}

// ---- start -------------------------------------------------------------------------------------

async function waitReady() {
  for (;;) {
    const r = await fetch('/readyz').catch(() => null);
    if (r && r.ok) return;
    $('model-line').textContent = r ? 'The model is loading…' : 'Cannot reach the server; retrying…';
    await new Promise((res) => setTimeout(res, 2000));
  }
}

async function init() {
  $('form').addEventListener('submit', submit);
  $('reset').addEventListener('click', () => { $('preset').value = ''; clearErrors(); fillForm({}); });
  $('preset').addEventListener('change', applyPreset);
  $('cancel').addEventListener('click', async () => {
    if (!job) return;
    try { await remove(job.id); jobGone('Cancelled.'); refreshGallery(); } catch (e) { $('job-error').textContent = e.message; $('job-error').hidden = false; }
  });
  $('refresh').addEventListener('click', () => refreshGallery());
  $('more').addEventListener('click', () => loadGallery(false));
  $('key-button').hidden = !apiKey();
  $('key-button').addEventListener('click', () => askKey(false).then(() => (model ? refreshGallery() : start())));
  $('length-unit').addEventListener('change', switchUnit);
  setInterval(tick, 1000);
  await waitReady();
  await start();
}

// The model card, then the form and the gallery.
async function start() {
  try {
    const list = await (await api('/v1/models')).json();
    model = list.data[0];
  } catch (e) {
    $('model-line').textContent = `Cannot load the model list: ${e.message}`;
    return;
  }
  renderModel();
  fillForm({});
  $('submit').disabled = false;
  document.body.dataset.ready = 'true';
  await refreshGallery();
}

document.addEventListener('DOMContentLoaded', init);
