// The kling-edge demo page: sign in with a browser token, make a task of one of three
// families (add sound to a video, by URL or from the user's own file, uploaded first; a
// video with sound from text; a sound from text), follow it live, play the result, and
// list earlier tasks. It talks to the worker on its own origin
// with Kling's paths, exactly as any web app would, and holds no key.

/** The families the page offers: Kling's path, the prompt's limit, and what the result holds. */
const FAMILIES = {
  v2a: { path: '/v1/audio/video-to-audio', label: 'Add sound to a video', maxPrompt: 200, plays: ['video', 'audio'] },
  t2v: { path: '/v1/videos/text2video', label: 'Video with sound from text', maxPrompt: 2500, plays: ['video'] },
  t2a: { path: '/v1/audio/text-to-audio', label: 'Sound from text', maxPrompt: 200, plays: ['audio'] },
};
const TOKEN_KEY = 'kling-edge-token';
const FAMILY_KEY = 'kling-edge-family';
/** Polling starts fast and slows down: real Kling tasks take minutes. */
const POLL_FIRST_MS = 1000;
const POLL_MAX_MS = 10_000;
const POLL_GROWTH = 1.5;
/** After a task succeeds, how long the page waits for the worker's copies of its files. */
const COPY_WAIT_MS = 8_000;
/** How long a create waits for the browser to read the video's length. */
const DURATION_WAIT_MS = 3000;

const STATUS_LABELS = { submitted: 'Submitted', processing: 'Processing', succeed: 'Done', failed: 'Failed' };
/** The page's name for each request field the worker may name in an error. */
const FIELD_LABELS = {
  video_url: 'Video URL', sound_effect_prompt: 'Prompt', bgm_prompt: 'Prompt', prompt: 'Prompt',
  video_duration: 'Video length', asmr_mode: 'Sound', Authorization: 'Sign-in', duration: 'Length',
  file: 'Your video', 'Content-Type': 'Your video',
};

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(TOKEN_KEY) ?? '';
let family = FAMILIES[sessionStorage.getItem(FAMILY_KEY)] ? sessionStorage.getItem(FAMILY_KEY) : 'v2a';
const familyPath = () => FAMILIES[family].path;
let following = null; // { taskId, timer, ticker, startedAt }
/** The user's own video, when one is chosen: it is uploaded (POST /v1/assets) before the create. */
let chosenFile = null;

const isFinal = (status) => status === 'succeed' || status === 'failed';

// --- sign-in -------------------------------------------------------------------------

function claimsOf(jwt) {
  try {
    return JSON.parse(atob(jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
  } catch {
    return null;
  }
}

function setToken(value) {
  token = value;
  sessionStorage.setItem(TOKEN_KEY, token);
  showWhoami();
  refreshList();
}

/**
 * Signs in with a pasted token, but only once the worker accepts it: a wrong paste never
 * replaces a token that works.
 */
async function tryToken(value) {
  const candidate = value.trim();
  const note = $('token-note');
  note.textContent = '';
  if (!candidate) return;
  if (!claimsOf(candidate)) {
    note.textContent = 'That is not a browser token (one starts with "eyJ" and has two dots). '
      + 'A key from PROXY_API_KEYS belongs on your server, never in a page: mint a token with it (POST /v1/tokens).';
    return;
  }
  try {
    await api('GET', `${familyPath()}?pageNum=1&pageSize=1`, undefined, candidate);
  } catch (error) {
    note.textContent = `The worker refused that token: ${error.message.replace(/[.!?]?$/, '.')}`
      + (token ? ' You are still signed in with your previous token.' : '');
    return;
  }
  setToken(candidate);
}

function showWhoami() {
  const claims = token && claimsOf(token);
  if (!claims) {
    $('whoami').textContent = 'Not signed in.';
    return;
  }
  const expires = new Date(claims.exp * 1000);
  const expired = expires < new Date();
  $('whoami').textContent = `${expired ? 'Expired token for' : 'Signed in as'} ${claims.sub} (app ${claims.app}), `
    + `${expired ? 'expired' : 'valid until'} ${expires.toLocaleTimeString()}.`
    + (expired ? ' Paste a new token below (your server mints one with POST /v1/tokens; `make dev` prints a fresh link).' : '');
}

// The `make dev` link carries a development token (and the stand-in's sample video) in the
// fragment, which never reaches a server; take them and clean the address bar.
function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get('video')) $('video-url').value = params.get('video');
  if (params.get('token')) {
    setToken(params.get('token'));
    history.replaceState(null, '', location.pathname + location.search);
  }
}

// --- calls to the worker ---------------------------------------------------------------

class WorkerError extends Error {
  constructor(body, status) {
    super(body?.message ?? `HTTP ${status}`);
    this.code = body?.code;
    this.requestId = body?.request_id;
    this.status = status;
  }
}

async function api(method, path, body, bearer = token) {
  const headers = { Authorization: `Bearer ${bearer}` };
  if (body) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, { method, headers, body: body && JSON.stringify(body) });
  } catch (error) {
    throw new WorkerError({ message: `Could not reach the worker (${error.message})` }, 0);
  }
  const answer = await response.json().catch(() => null);
  if (!response.ok || answer?.code !== 0) throw new WorkerError(answer, response.status);
  return answer.data;
}

/** Shows the worker's message, with the field named as this page names it. */
function showError(error) {
  const box = $('error');
  if (!error) {
    box.hidden = true;
    box.textContent = '';
    return;
  }
  box.hidden = false;
  const match = /^([A-Za-z_]+): (.*)$/s.exec(error.message);
  const label = match && FIELD_LABELS[match[1]];
  box.textContent = label ? `${label}: ${match[2]}` : error.message;
  if (error.code !== undefined) {
    const detail = document.createElement('div');
    detail.className = 'muted';
    const parts = [label ? `field ${match[1]}` : null, `code ${error.code}`, error.requestId ? `request ${error.requestId}` : null];
    detail.textContent = parts.filter(Boolean).join(' · ');
    box.append(detail);
  }
}

// --- the form ------------------------------------------------------------------------

/** The video's length as the browser reads it: a promise per URL, null when unreadable. */
let durationProbe = { url: null, seconds: Promise.resolve(null) };

/** The video the create will name: the chosen file (as a local object URL) or the URL field. */
function videoSource() {
  return chosenFile ? chosenFile.objectUrl : $('video-url').value.trim();
}

function probeDuration() {
  const url = videoSource();
  const hint = $('duration');
  hint.textContent = '';
  hint.classList.remove('bad');
  if (!url) {
    durationProbe = { url, seconds: Promise.resolve(null) };
    return;
  }
  hint.textContent = 'Reading the video’s length…';
  const probe = document.createElement('video');
  probe.preload = 'metadata';
  probe.muted = true;
  const seconds = new Promise((resolve) => {
    probe.onloadedmetadata = () => resolve(Number.isFinite(probe.duration) ? Math.round(probe.duration * 100) / 100 : null);
    probe.onerror = () => resolve(null);
  });
  durationProbe = { url, seconds };
  seconds.then((known) => {
    if (durationProbe.url !== url) return;
    if (known === null) {
      hint.textContent = 'This browser could not read the video’s length; the worker checks it.';
      return;
    }
    const fits = known >= 3 && known <= 20;
    hint.textContent = `${known.toFixed(1)} s${fits ? ' ✓' : ': Kling needs 3 to 20 seconds'}`;
    hint.classList.toggle('bad', !fits);
  });
  probe.src = url;
}

/** The length of the video about to be sent, waiting briefly if the browser is still reading it. */
async function videoDuration(url) {
  if (durationProbe.url !== url) probeDuration();
  const timeout = new Promise((resolve) => setTimeout(() => resolve(null), DURATION_WAIT_MS));
  const known = await Promise.race([durationProbe.seconds, timeout]);
  if (known === null && durationProbe.url === url) {
    $('duration').textContent = 'Length unknown here; the worker checks it before a credit is spent.';
  }
  return known;
}

async function createBody() {
  const form = new FormData($('task-form'));
  const prompt = $('prompt').value.trim();
  if (family === 't2v') {
    // kling-v2-6 makes sound in pro mode; the worker refuses sound anywhere else.
    return { model_name: 'kling-v2-6', mode: 'pro', sound: 'on', prompt, duration: form.get('video_duration'), aspect_ratio: form.get('aspect_ratio') };
  }
  if (family === 't2a') {
    const seconds = $('audio-duration').value.trim();
    return { prompt, duration: seconds === '' ? undefined : Number(seconds) };
  }
  const seconds = await videoDuration(videoSource());
  if (chosenFile && seconds !== null && (seconds < 3 || seconds > 20)) {
    // Checked here, before a byte is sent, as the worker would check it on arrival.
    throw new WorkerError({ message: `file: the video lasts ${seconds.toFixed(1)} s; Kling needs 3 to 20 seconds` }, 0);
  }
  const body = { video_url: chosenFile ? (await uploadChosen()).url : $('video-url').value.trim() };
  const kind = form.get('kind');
  if (kind === 'music') {
    if (prompt) body.bgm_prompt = prompt;
  } else {
    if (prompt) body.sound_effect_prompt = prompt;
    if (kind === 'asmr') body.asmr_mode = true;
  }
  // A hint of the length lets the worker refuse a 3-20 s violation before a credit is spent
  // (an upload was measured by the worker itself).
  if (seconds !== null && !chosenFile) body.video_duration = seconds;
  return body;
}

// --- the user's own video --------------------------------------------------------------

function chooseFile(file) {
  if (chosenFile) URL.revokeObjectURL(chosenFile.objectUrl);
  chosenFile = file ? { file, objectUrl: URL.createObjectURL(file), uploaded: null } : null;
  $('video-url').disabled = Boolean(file);
  $('clear-file').hidden = !file;
  if (!file) $('video-file').value = '';
  $('upload-progress').hidden = true;
  probeDuration();
}

/**
 * Uploads the chosen file (once) with a progress bar: XMLHttpRequest, since fetch reports
 * no upload progress. Resolves with the worker's asset (its signed `url` names it in a create).
 */
function uploadChosen() {
  if (chosenFile.uploaded) return Promise.resolve(chosenFile.uploaded);
  const { file } = chosenFile;
  const bar = $('upload-progress');
  bar.hidden = false;
  bar.value = 0;
  $('duration').textContent = `Uploading ${file.name}…`;
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open('POST', '/v1/assets');
    request.setRequestHeader('Authorization', `Bearer ${token}`);
    request.setRequestHeader('Content-Type', file.type || (file.name.toLowerCase().endsWith('.mov') ? 'video/quicktime' : 'video/mp4'));
    request.upload.onprogress = (event) => {
      if (event.lengthComputable) bar.value = Math.round((event.loaded / event.total) * 100);
    };
    request.onerror = () => reject(new WorkerError({ message: 'Could not reach the worker to upload the video' }, 0));
    request.onload = () => {
      let answer = null;
      try { answer = JSON.parse(request.responseText); } catch { /* not JSON */ }
      if (request.status !== 200 || answer?.code !== 0) {
        bar.hidden = true;
        reject(new WorkerError(answer, request.status));
        return;
      }
      bar.value = 100;
      chosenFile.uploaded = answer.data;
      $('duration').textContent = `Uploaded: ${answer.data.duration.toFixed(1)} s, measured by the worker ✓`;
      resolve(answer.data);
    };
    request.send(file);
  });
}

function chooseFamily(name) {
  family = name;
  sessionStorage.setItem(FAMILY_KEY, name);
  for (const tab of document.querySelectorAll('.tabs [data-family]')) {
    tab.setAttribute('aria-selected', String(tab.dataset.family === name));
  }
  for (const block of document.querySelectorAll('[data-for]')) block.hidden = block.dataset.for !== name;
  $('history-family').textContent = `(${FAMILIES[name].label.toLowerCase()})`;
  stopFollowing();
  $('current').hidden = true;
  clearPlayers();
  showError(null);
  updatePromptCount();
  refreshList();
}

async function submit(event) {
  event.preventDefault();
  showError(null);
  if (!token) {
    showError(new WorkerError({ message: 'Sign in with a browser token first.' }, 0));
    return;
  }
  $('submit').disabled = true;
  try {
    const body = await createBody();
    const created = await api('POST', familyPath(), body);
    // The uploaded video plays from the worker's link (the local file would do as well).
    showTask({ ...created, task_status: created.task_status ?? 'submitted' }, body.video_url);
    follow(created.task_id, body.video_url);
    refreshList();
  } catch (error) {
    showError(error);
  } finally {
    updatePromptCount();
  }
}

function updatePromptCount() {
  const count = [...$('prompt').value].length;
  const max = FAMILIES[family].maxPrompt;
  const over = count > max;
  $('prompt-count').textContent = over ? `${count}/${max}: too long for Kling` : `${count}/${max}`;
  $('prompt-count').classList.toggle('bad', over);
  $('submit').disabled = over;
}

// --- the current task ----------------------------------------------------------------

function clearPlayers() {
  $('players').hidden = true;
  for (const id of ['video-player', 'audio-player']) {
    const player = $(id);
    if (player.hasAttribute('src')) {
      player.pause();
      player.removeAttribute('src');
      player.load();
    }
  }
  $('audio-wav').removeAttribute('href');
  const canvas = $('waveform');
  canvas.hidden = true;
  delete canvas.dataset.src;
  delete canvas.dataset.seconds;
}

/** A link without its query: each answer signs the worker's links afresh, for the same file. */
function samePlace(a, b) {
  return Boolean(a && b) && a.split('?')[0] === b.split('?')[0];
}

/** Whether the worker is still making its first copies of the task's files. */
function copying(task) {
  return (task.copies?.files ?? []).some((file) => file.state === 'pending' && file.note === 'being copied');
}

/** Draws the sound's waveform from the worker's copy (same origin, so the page may read it). */
async function drawWaveform(src) {
  const canvas = $('waveform');
  if (samePlace(canvas.dataset.src, src)) return;
  canvas.dataset.src = src;
  delete canvas.dataset.seconds;
  try {
    const bytes = await (await fetch(src)).arrayBuffer();
    const decoded = await new OfflineAudioContext(1, 1, 44_100).decodeAudioData(bytes);
    if (canvas.dataset.src !== src) return;
    const samples = decoded.getChannelData(0);
    const context = canvas.getContext('2d');
    const { width, height } = canvas;
    context.clearRect(0, 0, width, height);
    context.fillStyle = getComputedStyle(canvas).color;
    const step = Math.max(1, Math.floor(samples.length / width));
    for (let x = 0; x < width; x += 1) {
      let peak = 0;
      for (let i = x * step; i < Math.min(samples.length, (x + 1) * step); i += 1) peak = Math.max(peak, Math.abs(samples[i]));
      const bar = Math.max(1, peak * height);
      context.fillRect(x, (height - bar) / 2, 1, bar);
    }
    canvas.dataset.seconds = decoded.duration.toFixed(2);
    canvas.hidden = false;
  } catch {
    canvas.hidden = true;
  }
}

function showTask(task, videoUrl) {
  $('current').hidden = false;
  $('task-id').textContent = task.task_id;
  // A create waiting at the edge for a free Kling slot says where it is in line.
  const waiting = Boolean(task.queue);
  $('status').textContent = waiting ? 'Waiting for a free slot' : STATUS_LABELS[task.task_status] ?? task.task_status;
  $('status').dataset.status = waiting ? 'waiting' : task.task_status;
  $('status-msg').textContent = task.task_status_msg ?? '';
  const failed = task.task_status === 'failed';
  const order = ['submitted', 'processing', 'succeed'];
  const reached = failed ? 2 : order.indexOf(task.task_status);
  for (const step of document.querySelectorAll('.steps li')) {
    const index = order.indexOf(step.dataset.step);
    if (index === 2) step.textContent = failed ? 'Failed' : 'Done';
    if (failed) step.className = index === 2 ? 'failed' : 'done';
    else step.className = index < reached || task.task_status === 'succeed' ? 'done' : index === reached ? 'active' : '';
  }
  const plays = FAMILIES[family].plays;
  // The worker's copies when it has made them (they play from its origin for a while), else Kling's links.
  const audio = task.task_result?.audios?.[0];
  const madeVideo = task.task_result?.videos?.[0];
  const made = madeVideo?.copy_url ?? madeVideo?.url;
  const sound = audio?.copy_url_mp3 ?? audio?.url_mp3;
  const ready = task.task_status === 'succeed' && (plays.includes('audio') ? audio : made);
  if (!ready) {
    clearPlayers();
    return;
  }
  // The result, when Kling made one (a video with sound, or with its new sound), else the input.
  const video = made ?? videoUrl ?? task.task_info?.parent_video?.url;
  $('video-figure').hidden = !plays.includes('video');
  $('audio-figure').hidden = !plays.includes('audio');
  // Playing the sound over the input makes sense only while the input is what plays.
  $('play-together').hidden = plays.length < 2 || Boolean(made);
  $('video-caption').textContent = !made ? 'Your video' : family === 't2v' ? 'Your video, with its sound' : 'Your video, with its new sound';
  $('video-download').hidden = !made;
  if (made) $('video-download').href = made;
  if (plays.includes('video') && !samePlace($('video-player').getAttribute('src'), video)) $('video-player').src = video;
  if (audio && !samePlace($('audio-player').getAttribute('src'), sound)) $('audio-player').src = sound;
  if (audio) $('audio-wav').href = audio.copy_url_wav ?? audio.url_wav ?? sound;
  $('audio-source').textContent = audio?.copy_url_mp3 ? 'from this deployment\'s copy' : 'from Kling\'s link';
  if (audio?.copy_url_mp3) drawWaveform(audio.copy_url_mp3);
  $('players').hidden = false;
}

function formatElapsed(ms) {
  const seconds = Math.floor(ms / 1000);
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`;
}

function stopFollowing() {
  if (!following) return;
  clearTimeout(following.timer);
  clearInterval(following.ticker);
  following = null;
}

/** Polls a task until it is final, slowing down as it runs, showing the time elapsed. */
function follow(taskId, videoUrl, createdAt = Date.now()) {
  stopFollowing();
  const state = { taskId, startedAt: createdAt, delay: POLL_FIRST_MS, lastStatus: null };
  following = state;
  const showElapsed = () => { $('elapsed').textContent = `${formatElapsed(Date.now() - state.startedAt)} elapsed`; };
  showElapsed();
  state.ticker = setInterval(showElapsed, 1000);
  const tick = async () => {
    if (following !== state) return;
    let task;
    try {
      task = await api('GET', `${familyPath()}/${encodeURIComponent(taskId)}`);
    } catch (error) {
      if (following !== state) return;
      stopFollowing();
      showError(error);
      $('elapsed').textContent = 'Stopped following this task; open it from the list to try again.';
      return;
    }
    if (following !== state) return;
    showTask(task, videoUrl);
    if (task.task_status !== state.lastStatus) {
      state.lastStatus = task.task_status;
      refreshList();
    }
    if (isFinal(task.task_status)) {
      // A success is followed a little longer, until the worker has copied its files.
      state.finalAt ??= Date.now();
      const waitForCopies = task.task_status === 'succeed' && (copying(task) || !task.copies)
        && Date.now() - state.finalAt < COPY_WAIT_MS;
      if (waitForCopies) {
        state.timer = setTimeout(tick, 500);
        return;
      }
      showElapsed();
      stopFollowing();
      return;
    }
    state.delay = Math.min(POLL_MAX_MS, state.delay * POLL_GROWTH);
    state.timer = setTimeout(tick, state.delay);
  };
  state.timer = setTimeout(tick, state.delay);
}

function playTogether() {
  const video = $('video-player');
  const audio = $('audio-player');
  video.muted = true;
  video.currentTime = 0;
  audio.currentTime = 0;
  video.play();
  audio.play();
}

// --- earlier tasks -------------------------------------------------------------------

/** The user's Kling credits today (GET /v1/usage): spent, and what is left of a budget. */
async function refreshCredits() {
  if (!token) return;
  try {
    const { credits } = await api('GET', '/v1/usage');
    const spent = `Credits today: ${credits.spent} spent${credits.reserved ? `, ${credits.reserved} reserved` : ''}`;
    $('credits').textContent = credits.budget === undefined
      ? `${spent} (no daily budget).`
      : `${spent}; ${credits.left} of ${credits.budget} left today (renews at 00:00 UTC).`;
  } catch (error) {
    $('credits').textContent = '';
  }
}

async function refreshList() {
  const body = $('task-list');
  if (!token) return;
  refreshCredits();
  try {
    const tasks = await api('GET', `${familyPath()}?pageNum=1&pageSize=20`);
    body.replaceChildren(...(tasks.length ? tasks.map(row) : [emptyRow('No tasks yet.')]));
  } catch (error) {
    body.replaceChildren(emptyRow(error.message));
  }
}

function emptyRow(text) {
  const tr = document.createElement('tr');
  const td = document.createElement('td');
  td.colSpan = 4;
  td.className = 'muted';
  td.textContent = text;
  tr.append(td);
  return tr;
}

function row(task) {
  const tr = document.createElement('tr');
  tr.dataset.taskId = task.task_id;
  const cells = [
    new Date(task.created_at).toLocaleString(),
    task.task_info?.external_task_id || task.task_id,
  ];
  for (const text of cells) {
    const td = document.createElement('td');
    td.textContent = text;
    tr.append(td);
  }
  const status = document.createElement('td');
  const badge = document.createElement('span');
  badge.className = `badge ${task.task_status}`;
  badge.textContent = STATUS_LABELS[task.task_status] ?? task.task_status;
  status.append(badge);
  const open = document.createElement('td');
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'link';
  button.textContent = 'open';
  button.onclick = () => {
    showError(null);
    stopFollowing();
    $('elapsed').textContent = '';
    showTask(task);
    if (!isFinal(task.task_status)) follow(task.task_id, undefined, task.created_at);
  };
  open.append(button);
  tr.append(status, open);
  return tr;
}

// --- wiring --------------------------------------------------------------------------

$('token-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const value = $('token-input').value;
  $('token-input').value = '';
  await tryToken(value);
});
$('task-form').addEventListener('submit', submit);
$('video-url').addEventListener('change', probeDuration);
$('video-file').addEventListener('change', () => chooseFile($('video-file').files[0] ?? null));
$('clear-file').addEventListener('click', () => chooseFile(null));
const dropZone = $('drop-zone');
dropZone.addEventListener('dragover', (event) => { event.preventDefault(); dropZone.classList.add('over'); });
dropZone.addEventListener('dragleave', () => dropZone.classList.remove('over'));
dropZone.addEventListener('drop', (event) => {
  event.preventDefault();
  dropZone.classList.remove('over');
  const [file] = event.dataTransfer.files;
  if (file) chooseFile(file);
});
$('prompt').addEventListener('input', updatePromptCount);
$('play-together').addEventListener('click', playTogether);
// The browser's own bubble says what is wrong with a field: an older error must not stay beside it.
$('task-form').addEventListener('invalid', () => showError(null), true);
$('refresh').addEventListener('click', refreshList);
for (const tab of document.querySelectorAll('.tabs [data-family]')) {
  tab.addEventListener('click', () => chooseFamily(tab.dataset.family));
}

readFragment();
showWhoami();
probeDuration();
chooseFamily(family);
