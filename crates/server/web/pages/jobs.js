// Jobs: the list (run now, enable/disable), one job with its recent runs, and the form that
// creates or replaces a job in one request (nothing half-saved), with a live preview of the
// VMs its selection matches and each schedule read in words with its next runs. The form
// offers every kind of the job model and shows the fields the chosen kind uses. Buttons
// appear only for what the signed-in role may do.

import { api, can, seg } from '../api.js';
import { actionButton, badge, clearErrors, field, fill, h, placeError } from '../dom.js';
import { bytes, duration, relative, seconds, time, viewerZone } from '../format.js';

const JOB = '/api/jobs/{job}';
const PREVIEW = '/api/pools/{name}/preview';
/** How long typing must pause before the form asks the server again. */
const TYPING_PAUSE_MS = 350;
const NEXT_RUNS = 5;

/**
 * The kinds the form offers (the job model's, sequences aside) and what each uses: a pool,
 * VMs by name (`vms`), selection rules (`rules`), a mirror target (`mirror`), the per-VM
 * backup settings (`backup`).
 */
const KINDS = {
  backup: { pool: true, vms: true, rules: true, backup: true, hint: 'Image backup of the VMs\' disks (CBT and NBD when possible).' },
  'backup-xva': { pool: true, vms: true, rules: true, backup: true, hint: 'Full backup from an XVA export, re-exportable as an XVA.' },
  mirror: { vms: true, mirror: true,
    hint: 'Copies the restore points of the repository to another one: only missing chunks move; the schedule\'s retention is the target\'s. The VMs narrow what is copied (none: all).' },
  'pool-metadata': { pool: true, hint: 'Backs up the pool\'s database (xapi\'s pool dump) into the repository.' },
  'config-backup': {
    hint: 'Backs up this server\'s own configuration (settings, catalog, keys), sealed with its configuration backup passphrase (config_backup_passphrase_file in its settings), into the repository.' },
};

/** `action` once `TYPING_PAUSE_MS` passed without another call. */
function afterTyping(action) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(action, TYPING_PAUSE_MS);
  };
}

/** Calls `load` and shows what it gives with `show`, ignoring answers overtaken by a later call. */
function latestOnly(load, show) {
  let asked = 0;
  return async (...args) => {
    asked += 1;
    const mine = asked;
    let outcome;
    try {
      outcome = { value: await load(...args) };
    } catch (error) {
      outcome = { error };
    }
    if (mine === asked) show(outcome);
  };
}

function zonedFormat(timezone) {
  const options = { weekday: 'short', year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' };
  try {
    return new Intl.DateTimeFormat(undefined, { ...options, timeZone: timezone });
  } catch {
    return new Intl.DateTimeFormat(undefined, options);
  }
}

const nextRuns = (cron, timezone) =>
  api('GET', `/api/schedules/next?cron=${seg(cron)}&timezone=${seg(timezone)}&count=${NEXT_RUNS}`);

/** Fills `slot` with a schedule's reading: the line in words and its next runs in its own zone. */
function showReading(slot, { value, error }) {
  if (error) {
    fill(slot, h('div', { class: 'error' }, error.message));
    return;
  }
  const format = zonedFormat(value.timezone);
  fill(slot, h('div', { class: 'reading' }, value.description),
    value.next.length
      ? [h('div', { class: 'hint' }, `Next runs (${value.timezone}):`), h('ol', { class: 'next-runs', 'aria-label': `Next runs of ${value.cron}` },
        value.next.map((iso) => h('li', {}, h('time', { datetime: iso, title: new Date(iso).toString() }, format.format(new Date(iso))),
          h('span', { class: 'muted' }, ` ${relative(iso)}`))))]
      : h('div', { class: 'hint' }, 'It never fires.'));
}

/** A schedule's reading, filled once the server answers. */
function scheduleReading(schedule) {
  const slot = h('div', { class: 'schedule-reading' });
  nextRuns(schedule.cron, schedule.timezone).then((value) => showReading(slot, { value }), (error) => showReading(slot, { error }));
  return slot;
}

function selectionText(selection) {
  const parts = [];
  if (selection.vms?.length) parts.push(`VMs ${selection.vms.join(', ')}`);
  const smart = selection.smart;
  if (smart) {
    if (smart.tags?.length) parts.push(`tagged ${smart.tags.join(' or ')}`);
    if (smart.hosts?.length) parts.push(`on ${smart.hosts.join(', ')}`);
    if (smart.power_states?.length) parts.push(smart.power_states.join('/'));
    if (smart.exclude_tags?.length) parts.push(`not tagged ${smart.exclude_tags.join(', ')}`);
    if (smart.exclude_vms?.length) parts.push(`except ${smart.exclude_vms.join(', ')}`);
    if (!parts.length) parts.push('every VM');
  }
  return parts.join('; ') || 'no VM';
}

/** Where a job reads from and writes to. */
function whereText(job) {
  if (job.kind === 'mirror') return `${job.repository} → ${job.mirror?.target ?? '?'}`;
  if (job.kind === 'config-backup') return `this server → ${job.repository}`;
  return `${job.pool} → ${job.repository}`;
}

function mirrorText(mirror) {
  const parts = [`to ${mirror.target}`, mirror.latest ? 'newest per VM only' : 'every restore point'];
  if (mirror.source_job) parts.push(`made by job ${mirror.source_job}`);
  parts.push(mirror.verify ? 'verified after copying' : 'not verified');
  return parts.join(', ');
}

function scheduleText(schedule) {
  return `${schedule.cron} (${schedule.timezone}), ${schedule.level}${schedule.enabled ? '' : ', off'}`;
}

/** Run now, enable/disable, edit, delete: as far as the role allows. */
function jobActions(job, changed, slot) {
  const actions = h('div', { class: 'actions' });
  const button = (label, attrs, action) => actions.append(actionButton(label, slot, action, attrs));
  if (can('POST', `${JOB}/run`)) {
    button('Run now', { class: 'primary', 'aria-label': `Run ${job.name} now` }, async () => {
      const run = await api('POST', `/api/jobs/${seg(job.id)}/run`);
      location.hash = `#/runs/${seg(run.id)}`;
    });
  }
  const toggle = job.enabled ? 'disable' : 'enable';
  if (can('POST', `${JOB}/${toggle}`)) {
    button(job.enabled ? 'Disable' : 'Enable', { 'aria-label': `${job.enabled ? 'Disable' : 'Enable'} ${job.name}` }, async () => {
      await api('POST', `/api/jobs/${seg(job.id)}/${toggle}`);
      await changed();
    });
  }
  if (can('PUT', JOB)) actions.append(h('a', { class: 'button', href: `#/jobs/${seg(job.id)}/edit`, 'aria-label': `Edit ${job.name}` }, 'Edit'));
  if (can('DELETE', JOB)) {
    button('Delete', { class: 'danger', 'aria-label': `Delete ${job.name}` }, async () => {
      if (!confirm(`Delete job ${job.name}? Its runs stay in the history.`)) return;
      await api('DELETE', `/api/jobs/${seg(job.id)}`);
      location.hash = '#/jobs';
      await changed();
    });
  }
  return actions;
}

export async function lastRun(jobId) {
  const page = await api('GET', `/api/runs?job=${seg(jobId)}&limit=1`);
  return page.runs[0] ?? null;
}

export async function jobsPage(main) {
  const render = async () => {
    const jobs = await api('GET', '/api/jobs');
    const last = await Promise.all(jobs.map((job) => lastRun(job.id)));
    const rows = jobs.map((job, i) => {
      const error = h('div', { class: 'error', role: 'alert' });
      const run = last[i];
      return h('tr', { 'data-job': job.name },
        h('td', {}, h('a', { href: `#/jobs/${seg(job.id)}` }, job.name), job.enabled ? '' : [' ', h('span', { class: 'badge' }, 'disabled')]),
        h('td', { class: 'wide' }, whereText(job)),
        h('td', {}, selectionText(job.selection)),
        h('td', { class: 'wide' }, job.schedules.map((s) => h('div', {}, scheduleText(s)))),
        h('td', {}, run ? h('a', { href: `#/runs/${seg(run.id)}` }, badge(run.status), ' ', time(run.started_at ?? run.queued_at)) : h('span', { class: 'muted' }, 'never run')),
        h('td', {}, jobActions(job, render, error), error));
    });
    fill(main,
      h('div', { class: 'actions' }, h('h1', {}, 'Jobs'),
        can('POST', '/api/jobs') ? h('a', { class: 'button primary', href: '#/jobs/new' }, 'New job') : null),
      jobs.length
        ? h('section', {}, h('div', { class: 'table-wrap' }, h('table', {},
          h('thead', {}, h('tr', {}, h('th', {}, 'Job'), h('th', { class: 'wide' }, 'From → to'), h('th', {}, 'VMs'),
            h('th', { class: 'wide' }, 'Schedules'), h('th', {}, 'Last run'), h('th', {}, ''))),
          h('tbody', {}, rows))))
        : h('p', { class: 'muted' }, 'No job yet.'));
  };
  await render();
}

export async function jobPage(main, key) {
  const render = async () => {
    const job = await api('GET', `/api/jobs/${seg(key)}`);
    const runs = await api('GET', `/api/runs?job=${seg(job.id)}&limit=20`);
    const error = h('div', { class: 'error', role: 'alert' });
    const s = job.settings;
    fill(main,
      h('h1', {}, `Job ${job.name}`, job.enabled ? '' : [' ', h('span', { class: 'badge' }, 'disabled')]),
      h('section', {}, jobActions(job, render, error), error,
        h('dl', {},
          h('dt', {}, 'Kind'), h('dd', {}, job.kind),
          h('dt', {}, 'From → to'), h('dd', {}, whereText(job)),
          job.mirror ? [h('dt', {}, 'Mirror'), h('dd', {}, mirrorText(job.mirror))] : null,
          h('dt', {}, 'VMs'), h('dd', {}, selectionText(job.selection)),
          h('dt', {}, 'Schedules'), h('dd', {}, job.schedules.length ? job.schedules.map((x) => h('div', { class: 'schedule-view' }, scheduleText(x), retentionText(x.retention), scheduleReading(x))) : 'by hand only'),
          h('dt', {}, 'Settings'), h('dd', {}, `${s.vm_concurrency} VMs and ${s.disk_concurrency} disks at once, ${s.nbd_connections} NBD connections, ${s.retries} retries`),
          h('dt', {}, 'Notifications'), h('dd', {}, `${job.notifications.when}${job.notifications.email.length ? `, email ${job.notifications.email.join(', ')}` : ''}${job.notifications.webhook ? `, webhook ${job.notifications.webhook}` : ''}`))),
      h('h2', {}, 'Recent runs'),
      runs.runs.length
        ? h('section', {}, h('div', { class: 'table-wrap' }, h('table', {}, h('tbody', {}, runs.runs.map((run) => h('tr', {},
          h('td', {}, h('a', { href: `#/runs/${seg(run.id)}` }, time(run.started_at ?? run.queued_at))),
          h('td', {}, badge(run.status)), h('td', { class: 'num' }, bytes(run.totals.bytes_stored)),
          h('td', { class: 'num' }, duration(seconds(run.started_at, run.finished_at)))))))))
        : h('p', { class: 'muted' }, 'Not run yet.'));
  };
  await render();
}

function retentionText(retention) {
  const kept = Object.entries(retention).filter(([, n]) => n > 0).map(([k, n]) => `${k} ${n}`);
  return kept.length ? ` — keeps ${kept.join(', ')}` : ' — keeps everything';
}

const list = (text) => text.split(',').map((x) => x.trim()).filter(Boolean);
const optionalNumber = (text) => (text.trim() === '' ? null : Number(text));

function select(name, options, value) {
  return h('select', { name }, options.map((o) => h('option', { value: o, selected: o === value }, o)));
}

function numberInput(name, value, attrs = {}) {
  return h('input', { name, type: 'number', min: 0, value: value ?? '', ...attrs });
}

const zones = typeof Intl.supportedValuesOf === 'function' ? Intl.supportedValuesOf('timeZone') : [];

function scheduleFieldset(schedule, remove) {
  const retention = schedule.retention ?? {};
  const controls = {
    name: field('Name', h('input', { name: 'schedule-name', value: schedule.name ?? '' })),
    cron: field('Cron line', h('input', { name: 'cron', required: true, value: schedule.cron ?? '0 2 * * *', spellcheck: 'false' }),
      'minute hour day month weekday, e.g. 0 2 * * * (daily at 02:00)'),
    timezone: field('Time zone', h('input', { name: 'timezone', required: true, list: 'zones', value: schedule.timezone ?? viewerZone })),
    level: field('Level', select('level', ['inc', 'full', 'diff'], schedule.level ?? 'inc')),
    enabled: field('Enabled', h('input', { name: 'schedule-enabled', type: 'checkbox', checked: schedule.enabled ?? true })),
  };
  const keep = ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'].map((k) =>
    [k, field(`Keep ${k}`, numberInput(`keep-${k}`, retention[k] ?? 0))]);
  const removeButton = h('button', { type: 'button', class: 'danger' }, 'Remove schedule');
  const reading = h('div', { class: 'schedule-reading', 'aria-live': 'polite' });
  const set = h('fieldset', { class: 'schedule' }, h('legend', {}, 'Schedule'),
    h('div', { class: 'grid' }, Object.values(controls), keep.map(([, f]) => f)), reading, removeButton);
  removeButton.addEventListener('click', () => remove(set));
  const read = latestOnly(() => nextRuns(controls.cron.control.value.trim(), controls.timezone.control.value.trim()),
    (outcome) => showReading(reading, outcome));
  const reread = afterTyping(read);
  for (const control of [controls.cron.control, controls.timezone.control]) control.addEventListener('input', reread);
  read();
  set.read = () => ({
    id: schedule.id ?? '',
    name: controls.name.control.value.trim(),
    cron: controls.cron.control.value.trim(),
    timezone: controls.timezone.control.value.trim(),
    level: controls.level.control.value,
    enabled: controls.enabled.control.checked,
    retention: Object.fromEntries(keep.map(([k, f]) => [k, Number(f.control.value || 0)])),
  });
  return set;
}

/** Creates (no key) or replaces a job. Fields the form does not show are kept as they were. */
export async function jobFormPage(main, key) {
  if (!can(key ? 'PUT' : 'POST', key ? JOB : '/api/jobs')) {
    fill(main, h('h1', {}, key ? 'Edit job' : 'New job'),
      h('p', { class: 'notice', role: 'alert' }, 'Your role may not change jobs.'),
      key ? h('a', { href: `#/jobs/${seg(key)}` }, 'Back to the job') : null);
    return;
  }
  const [job, pools, repositories, jobs] = await Promise.all([
    key ? api('GET', `/api/jobs/${seg(key)}`) : Promise.resolve(null),
    api('GET', '/api/pools'), api('GET', '/api/repositories'), api('GET', '/api/jobs'),
  ]);
  const original = job ?? { name: '', enabled: true, kind: 'backup', selection: { vms: [] }, schedules: [{}], settings: {}, notifications: { when: 'failure', email: [] } };
  const smart = original.selection.smart ?? {};
  const s = { vm_concurrency: 2, disk_concurrency: 2, nbd_connections: 4, retries: 0, retry_backoff_secs: 60, catch_up_missed: true, ...original.settings };
  const mirror = { target: '', latest: false, source_job: null, verify: true, ...original.mirror };
  const backupJobs = jobs.filter((j) => j.kind === 'backup' || j.kind === 'backup-xva');

  const f = {
    name: field('Name', h('input', { name: 'name', required: true, value: original.name })),
    kind: field('Kind', select('kind', Object.keys(KINDS), original.kind)),
    pool: field('Pool', select('pool', pools.map((p) => p.name), original.pool), pools.length ? null : 'Add a pool first.'),
    repository: field('Repository', select('repository', repositories.map((r) => r.name), original.repository)),
    enabled: field('Enabled', h('input', { name: 'enabled', type: 'checkbox', checked: original.enabled })),
    // Not named "... repository": the Repository field is found by its label.
    target: field('Copy to', select('mirror-target', repositories.map((r) => r.name), mirror.target),
      'Another registered repository, with its own key and retention.'),
    latest: field('Only the newest restore point of each VM', h('input', { name: 'mirror-latest', type: 'checkbox', checked: mirror.latest })),
    sourceJob: field('Only restore points made by job', h('select', { name: 'mirror-source-job' },
      h('option', { value: '' }, 'any job'),
      backupJobs.map((j) => h('option', { value: j.id, selected: j.id === mirror.source_job }, j.name)))),
    verify: field('Verify after copying', h('input', { name: 'mirror-verify', type: 'checkbox', checked: mirror.verify })),
    vms: field('VMs by name or uuid', h('input', { name: 'vms', value: (original.selection.vms ?? []).join(', ') }), 'Comma-separated.'),
    tags: field('VMs with any of these tags', h('input', { name: 'tags', value: (smart.tags ?? []).join(', ') })),
    hosts: field('On hosts', h('input', { name: 'hosts', value: (smart.hosts ?? []).join(', ') })),
    excludeTags: field('Except VMs tagged', h('input', { name: 'exclude-tags', value: (smart.exclude_tags ?? []).join(', ') })),
    excludeVms: field('Except VMs', h('input', { name: 'exclude-vms', value: (smart.exclude_vms ?? []).join(', ') })),
    vmConcurrency: field('VMs at once', numberInput('vm-concurrency', s.vm_concurrency, { min: 1 })),
    diskConcurrency: field('Disks at once', numberInput('disk-concurrency', s.disk_concurrency, { min: 1 })),
    nbd: field('NBD connections', numberInput('nbd-connections', s.nbd_connections, { min: 1 })),
    retries: field('Retries per VM', numberInput('retries', s.retries)),
    backoff: field('Retry wait (s)', numberInput('retry-backoff', s.retry_backoff_secs)),
    vmTimeout: field('VM timeout (s)', numberInput('vm-timeout', s.vm_timeout_secs)),
    jobTimeout: field('Job timeout (s)', numberInput('job-timeout', s.job_timeout_secs)),
    speed: field('Speed limit (bytes/s)', numberInput('speed-limit', s.speed_limit_bytes_per_sec)),
    compression: field('Compression level', numberInput('compression', s.compression_level, { min: -7, max: 22 })),
    immutability: field('Immutable for (days)', numberInput('immutability', s.immutability_days)),
    offline: field('Offline backup (shut down, back up, start)', h('input', { name: 'offline', type: 'checkbox', checked: s.offline })),
    quiesce: field('Quiesce', h('input', { name: 'quiesce', type: 'checkbox', checked: s.quiesce })),
    catchUp: field('Run once at start when missed', h('input', { name: 'catch-up', type: 'checkbox', checked: s.catch_up_missed })),
    notifyWhen: field('Notify', select('notify-when', ['failure', 'always', 'never'], original.notifications.when)),
    emails: field('Email to', h('input', { name: 'email', value: original.notifications.email.join(', ') }), 'Comma-separated addresses.'),
    webhook: field('Webhook URL', h('input', { name: 'webhook', type: 'url', value: original.notifications.webhook ?? '' })),
  };
  const powerStates = ['running', 'halted', 'paused', 'suspended'].map((state) =>
    [state, field(state, h('input', { type: 'checkbox', name: `power-${state}`, checked: (smart.power_states ?? []).includes(state) }))]);

  const schedules = h('div');
  const removeSchedule = (set) => set.remove();
  for (const schedule of original.schedules) schedules.append(scheduleFieldset(schedule, removeSchedule));
  const addSchedule = h('button', { type: 'button' }, 'Add a schedule');
  addSchedule.addEventListener('click', () => schedules.append(scheduleFieldset({}, removeSchedule)));

  const readSelection = () => {
    const tags = list(f.tags.control.value);
    const hosts = list(f.hosts.control.value);
    const states = powerStates.filter(([, x]) => x.control.checked).map(([state]) => state);
    const excludeTags = list(f.excludeTags.control.value);
    const excludeVms = list(f.excludeVms.control.value);
    const smartUsed = tags.length || hosts.length || states.length || excludeTags.length || excludeVms.length;
    return {
      vms: list(f.vms.control.value),
      ...(smartUsed ? { smart: { tags, hosts, power_states: states, exclude_tags: excludeTags, exclude_vms: excludeVms } } : {}),
    };
  };
  const preview = h('div', { class: 'preview', 'aria-live': 'polite' });
  const showPreview = ({ value, error }) => {
    if (error) {
      fill(preview, h('h3', {}, 'Matching VMs now'), h('div', { class: 'error' }, error.message));
      return;
    }
    fill(preview, h('h3', {}, `Matching VMs now: ${value.length}`), value.length
      ? h('ul', { class: 'vm-list' }, value.map((vm) => h('li', { 'data-vm': vm.name }, h('strong', {}, vm.name), ' ',
        h('span', { class: 'muted' }, vm.power_state.toLowerCase()), vm.tags.length ? [' ', vm.tags.map((t) => h('span', { class: 'badge' }, t))] : null)))
      : h('p', { class: 'muted' }, 'None: the job would back up nothing.'));
  };
  const previewNow = latestOnly(() => api('POST', `/api/pools/${seg(f.pool.control.value)}/preview`, readSelection()), showPreview);
  const mayPreview = can('POST', PREVIEW) && pools.length > 0;

  const submit = h('button', { class: 'primary', type: 'submit' }, key ? 'Save job' : 'Create job');
  const kindHint = h('p', { class: 'hint', id: 'kind-hint', 'aria-live': 'polite' });
  const vmsHint = h('p', { class: 'hint' }, 'Resolved at every run; the job covers the named VMs and those the rules match.');
  const powerSet = h('fieldset', {}, h('legend', {}, 'Power states (none: all)'), h('div', { class: 'actions' }, powerStates.map(([, x]) => x)));
  const vmsSet = h('fieldset', {}, h('legend', {}, 'Which VMs'), vmsHint,
    h('div', { class: 'grid' }, f.vms, f.tags, f.hosts, f.excludeTags, f.excludeVms), powerSet, mayPreview ? preview : null);
  const mirrorSet = h('fieldset', {}, h('legend', {}, 'Mirror'), h('div', { class: 'grid' }, f.target, f.sourceJob, f.latest, f.verify));
  const form = h('form', { 'aria-labelledby': 'job-form-title' },
    h('h1', { id: 'job-form-title' }, key ? `Edit job ${original.name}` : 'New job'),
    h('datalist', { id: 'zones' }, zones.map((z) => h('option', { value: z }))),
    h('section', {}, h('div', { class: 'grid' }, f.name, f.kind, f.pool, f.repository, f.enabled), kindHint),
    mirrorSet,
    vmsSet,
    h('fieldset', {}, h('legend', {}, 'Schedules'), schedules, addSchedule),
    h('fieldset', {}, h('legend', {}, 'Settings'), h('div', { class: 'grid' }, f.vmConcurrency, f.diskConcurrency, f.nbd, f.retries, f.backoff,
      f.vmTimeout, f.jobTimeout, f.speed, f.compression, f.immutability, f.offline, f.quiesce, f.catchUp)),
    h('fieldset', {}, h('legend', {}, 'Notifications'), h('div', { class: 'grid' }, f.notifyWhen, f.emails, f.webhook)),
    h('div', { class: 'error form-error', role: 'alert' }),
    h('div', { class: 'actions' }, submit, h('a', { href: key ? `#/jobs/${seg(key)}` : '#/jobs' }, 'Cancel')));

  const uses = () => KINDS[f.kind.control.value] ?? KINDS.backup;
  /** Shows the fields the chosen kind uses (the others keep their values, unsent). */
  const showKind = () => {
    const kind = uses();
    kindHint.textContent = kind.hint;
    f.pool.hidden = !kind.pool;
    mirrorSet.hidden = !kind.mirror;
    vmsSet.hidden = !kind.vms;
    for (const rule of [f.tags, f.hosts, f.excludeTags, f.excludeVms, powerSet, vmsHint, preview]) rule.hidden = !kind.rules;
    for (const setting of [f.vmConcurrency, f.diskConcurrency, f.nbd, f.retries, f.backoff, f.vmTimeout, f.speed, f.compression,
      f.offline, f.quiesce]) setting.hidden = !kind.backup;
    f.immutability.hidden = !(kind.backup || kind.mirror);
  };
  f.kind.control.addEventListener('change', showKind);
  showKind();

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const kind = uses();
    const body = {
      ...original,
      name: f.name.control.value.trim(),
      kind: f.kind.control.value,
      pool: kind.pool ? f.pool.control.value : '',
      repository: f.repository.control.value,
      enabled: f.enabled.control.checked,
      selection: kind.rules ? readSelection() : { vms: kind.vms ? list(f.vms.control.value) : [] },
      mirror: kind.mirror
        ? { target: f.target.control.value, latest: f.latest.control.checked, source_job: f.sourceJob.control.value || null, verify: f.verify.control.checked }
        : undefined,
      schedules: [...schedules.querySelectorAll('fieldset.schedule')].map((set) => set.read()),
      settings: {
        ...s,
        vm_concurrency: Number(f.vmConcurrency.control.value),
        disk_concurrency: Number(f.diskConcurrency.control.value),
        nbd_connections: Number(f.nbd.control.value),
        retries: Number(f.retries.control.value || 0),
        retry_backoff_secs: Number(f.backoff.control.value || 0),
        vm_timeout_secs: optionalNumber(f.vmTimeout.control.value),
        job_timeout_secs: optionalNumber(f.jobTimeout.control.value),
        speed_limit_bytes_per_sec: optionalNumber(f.speed.control.value),
        compression_level: optionalNumber(f.compression.control.value),
        immutability_days: optionalNumber(f.immutability.control.value),
        offline: f.offline.control.checked,
        quiesce: f.quiesce.control.checked,
        catch_up_missed: f.catchUp.control.checked,
      },
      notifications: { when: f.notifyWhen.control.value, email: list(f.emails.control.value), webhook: f.webhook.control.value.trim() || null },
    };
    submit.disabled = true;
    try {
      const saved = key ? await api('PUT', `/api/jobs/${seg(key)}`, body) : await api('POST', '/api/jobs', body);
      location.hash = `#/jobs/${seg(saved.id)}`;
    } catch (error) {
      placeError(form, error, error.code === 'conflict' ? f.name.control : null);
    } finally {
      submit.disabled = false;
    }
  });
  if (mayPreview) {
    const selectionChanged = afterTyping(previewNow);
    for (const control of [f.vms, f.tags, f.hosts, f.excludeTags, f.excludeVms, ...powerStates.map(([, x]) => x)].map((x) => x.control)) {
      control.addEventListener('input', selectionChanged);
    }
    f.pool.control.addEventListener('change', previewNow);
    previewNow();
  }
  fill(main, form);
  f.name.control.focus();
}
