// The kling-edge demo page: sign in with a browser token, create a video-to-audio task,
// follow it live, play the result, and list earlier tasks. It talks to the worker on its
// own origin with Kling's paths, exactly as any web app would, and holds no key.

const API = '/v1/audio/video-to-audio';
const TOKEN_KEY = 'kling-edge-token';
const POLL_MS = 1500;
const MAX_PROMPT = 200;

const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(TOKEN_KEY) ?? '';
let polling = null;

// --- sign-in -------------------------------------------------------------------------

function claimsOf(jwt) {
  try {
    return JSON.parse(atob(jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
  } catch {
    return null;
  }
}

function useToken(value) {
  token = value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  showWhoami();
  refreshList();
}

function showWhoami() {
  const claims = token && claimsOf(token);
  if (!claims) {
    $('whoami').textContent = token ? 'That does not look like a browser token.' : 'Not signed in.';
    return;
  }
  const expires = new Date(claims.exp * 1000);
  const expired = expires < new Date();
  $('whoami').textContent = `${expired ? 'Expired token for' : 'Signed in as'} ${claims.sub} (app ${claims.app}), `
    + `${expired ? 'expired' : 'valid until'} ${expires.toLocaleTimeString()}.`;
}

// The `make dev` link carries a development token (and the stand-in's sample video) in the
// fragment, which never reaches a server; take them and clean the address bar.
function readFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get('video')) $('video-url').value = params.get('video');
  if (params.get('token')) {
    useToken(params.get('token'));
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

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}` };
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

function showError(error) {
  const box = $('error');
  if (!error) {
    box.hidden = true;
    box.textContent = '';
    return;
  }
  box.hidden = false;
  box.textContent = error.message;
  if (error.code !== undefined) {
    const detail = document.createElement('div');
    detail.className = 'muted';
    detail.textContent = `code ${error.code}${error.requestId ? ` · request ${error.requestId}` : ''}`;
    box.append(detail);
  }
}

// --- the form ------------------------------------------------------------------------

let knownDuration = null;

function probeDuration() {
  const url = $('video-url').value.trim();
  const hint = $('duration');
  knownDuration = null;
  hint.textContent = '';
  hint.classList.remove('bad');
  if (!url) return;
  const probe = document.createElement('video');
  probe.preload = 'metadata';
  probe.muted = true;
  probe.onloadedmetadata = () => {
    if ($('video-url').value.trim() !== url || !Number.isFinite(probe.duration)) return;
    knownDuration = Math.round(probe.duration * 100) / 100;
    const fits = knownDuration >= 3 && knownDuration <= 20;
    hint.textContent = `${knownDuration.toFixed(1)} s${fits ? ' ✓' : ': Kling needs 3 to 20 seconds'}`;
    hint.classList.toggle('bad', !fits);
  };
  probe.onerror = () => { hint.textContent = 'Could not read the video here; the worker will still check it.'; };
  probe.src = url;
}

function createBody() {
  const body = { video_url: $('video-url').value.trim() };
  const prompt = $('prompt').value.trim();
  const kind = new FormData($('task-form')).get('kind');
  if (kind === 'music') {
    if (prompt) body.bgm_prompt = prompt;
  } else {
    if (prompt) body.sound_effect_prompt = prompt;
    if (kind === 'asmr') body.asmr_mode = true;
  }
  // The worker checks Kling's 3-20 s rule before a credit is spent.
  if (knownDuration !== null) body.video_duration = knownDuration;
  return body;
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
    const body = createBody();
    const created = await api('POST', API, body);
    showTask({ ...created, task_status: created.task_status ?? 'submitted' }, body.video_url);
    follow(created.task_id, body.video_url);
    refreshList();
  } catch (error) {
    showError(error);
  } finally {
    $('submit').disabled = false;
  }
}

// --- the current task ----------------------------------------------------------------

function showTask(task, videoUrl) {
  $('current').hidden = false;
  $('task-id').textContent = task.task_id;
  $('status').textContent = task.task_status;
  $('status-msg').textContent = task.task_status_msg ?? '';
  const order = ['submitted', 'processing', 'succeed'];
  const reached = task.task_status === 'failed' ? 1 : order.indexOf(task.task_status);
  for (const step of document.querySelectorAll('.steps li')) {
    const index = order.indexOf(step.dataset.step);
    step.className = index < reached || task.task_status === 'succeed' ? 'done' : index === reached ? 'active' : '';
    if (task.task_status === 'failed' && index === 2) step.className = 'failed';
  }
  const audio = task.task_result?.audios?.[0];
  if (task.task_status === 'succeed' && audio) {
    const video = videoUrl ?? task.task_info?.parent_video?.url ?? task.task_result?.videos?.[0]?.url;
    if ($('video-player').getAttribute('src') !== video) $('video-player').src = video;
    if ($('audio-player').getAttribute('src') !== audio.url_mp3) $('audio-player').src = audio.url_mp3;
    $('audio-wav').href = audio.url_wav ?? audio.url_mp3;
    $('players').hidden = false;
  } else {
    $('players').hidden = true;
  }
}

function follow(taskId, videoUrl) {
  clearTimeout(polling);
  const tick = async () => {
    try {
      const task = await api('GET', `${API}/${encodeURIComponent(taskId)}`);
      showTask(task, videoUrl);
      if (task.task_status === 'succeed' || task.task_status === 'failed') {
        refreshList();
        return;
      }
    } catch (error) {
      showError(error);
    }
    polling = setTimeout(tick, POLL_MS);
  };
  polling = setTimeout(tick, POLL_MS);
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

async function refreshList() {
  const body = $('task-list');
  if (!token) return;
  try {
    const tasks = await api('GET', `${API}?pageNum=1&pageSize=20`);
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
  badge.textContent = task.task_status;
  status.append(badge);
  const open = document.createElement('td');
  const button = document.createElement('button');
  button.type = 'button';
  button.className = 'link';
  button.textContent = 'open';
  button.onclick = () => {
    showTask(task);
    if (task.task_status !== 'succeed' && task.task_status !== 'failed') follow(task.task_id);
  };
  open.append(button);
  tr.append(status, open);
  return tr;
}

// --- wiring --------------------------------------------------------------------------

$('token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  useToken($('token-input').value);
  $('token-input').value = '';
});
$('task-form').addEventListener('submit', submit);
$('video-url').addEventListener('change', probeDuration);
$('prompt').addEventListener('input', () => {
  const count = [...$('prompt').value].length;
  $('prompt-count').textContent = `${count}/${MAX_PROMPT}`;
  $('prompt-count').style.color = count > MAX_PROMPT ? 'var(--bad)' : '';
});
$('play-together').addEventListener('click', playTogether);
$('refresh').addEventListener('click', refreshList);

readFragment();
showWhoami();
probeDuration();
refreshList();
