// Runs: the history with filters and paging, and one run's task tree (run → VM → disk →
// steps) with strategies, reasons, bytes, throughput, warnings and errors, kept live over
// the run's Server-Sent Events feed while it runs.

import { api, can, seg } from '../api.js';
import { badge, field, fill, h } from '../dom.js';
import { bytes, duration, rate, seconds, time } from '../format.js';

const PAGE = 50;
const STATUSES = ['queued', 'running', 'success', 'partial', 'failed', 'cancelled', 'interrupted'];

export async function runsPage(main, params) {
  const jobs = await api('GET', '/api/jobs');
  const jobNames = new Map(jobs.map((j) => [j.id, j.name]));
  const job = field('Job', h('select', { name: 'job' }, h('option', { value: '' }, 'any'),
    jobs.map((j) => h('option', { value: j.id, selected: params.get('job') === j.id }, j.name))));
  const status = field('Status', h('select', { name: 'status' }, h('option', { value: '' }, 'any'),
    STATUSES.map((s) => h('option', { value: s, selected: params.get('status') === s }, s))));
  const vm = field('VM', h('input', { name: 'vm', value: params.get('vm') ?? '', placeholder: 'name or uuid' }));
  const since = field('From', h('input', { name: 'since', type: 'date', value: params.get('since') ?? '' }));
  const until = field('Until', h('input', { name: 'until', type: 'date', value: params.get('until') ?? '' }));
  const offset = Number(params.get('offset') ?? 0);
  const form = h('form', { class: 'panel', 'aria-label': 'Filters' },
    h('div', { class: 'grid' }, job, status, vm, since, until), h('p', {}, h('button', { type: 'submit' }, 'Filter')));
  const query = (overrides) => {
    const q = new URLSearchParams();
    const values = { job: job.control.value, status: status.control.value, vm: vm.control.value.trim(),
      since: since.control.value, until: until.control.value, ...overrides };
    for (const [k, v] of Object.entries(values)) if (v) q.set(k, v);
    return q;
  };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    location.hash = `#/runs?${query({})}`;
  });

  // Dates are the viewer's days: from the start of `since` to the end of `until`.
  const apiQuery = new URLSearchParams({ limit: PAGE, offset });
  for (const key of ['job', 'status', 'vm']) if (params.get(key)) apiQuery.set(key, params.get(key));
  if (params.get('since')) apiQuery.set('since', new Date(`${params.get('since')}T00:00`).toISOString());
  if (params.get('until')) apiQuery.set('until', new Date(`${params.get('until')}T23:59:59.999`).toISOString());
  const body = h('div');
  fill(main, h('h1', {}, 'Runs'), form, body);
  let page;
  try {
    page = await api('GET', `/api/runs?${apiQuery}`);
  } catch (error) {
    fill(body, h('p', { class: 'error', role: 'alert' }, error.message));
    return;
  }
  const pager = h('div', { class: 'actions' },
    offset > 0 ? h('a', { class: 'button', href: `#/runs?${query({ offset: Math.max(0, offset - PAGE) })}` }, 'Newer') : null,
    h('span', { class: 'muted' }, page.total ? `${offset + 1}–${offset + page.runs.length} of ${page.total}` : 'No run matches.'),
    offset + PAGE < page.total ? h('a', { class: 'button', href: `#/runs?${query({ offset: offset + PAGE })}` }, 'Older') : null);
  fill(body, page.runs.length ? h('section', {}, h('div', { class: 'table-wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, h('th', {}, 'Started'), h('th', {}, 'Job'), h('th', {}, 'Status'), h('th', { class: 'wide' }, 'Trigger'),
      h('th', { class: 'num' }, 'VMs ok / failed'), h('th', { class: 'num wide' }, 'Read'), h('th', { class: 'num' }, 'Stored'), h('th', { class: 'num' }, 'Took'))),
    h('tbody', {}, page.runs.map((run) => h('tr', {},
      h('td', {}, h('a', { href: `#/runs/${seg(run.id)}` }, time(run.started_at ?? run.queued_at))),
      h('td', {}, jobNames.get(run.job_id) ?? run.job_id), h('td', {}, badge(run.status)),
      h('td', { class: 'wide' }, run.trigger, run.level ? ` (${run.level})` : ''),
      h('td', { class: 'num' }, `${run.totals.vms_ok} / ${run.totals.vms_failed}`),
      h('td', { class: 'num wide' }, bytes(run.totals.bytes_read)), h('td', { class: 'num' }, bytes(run.totals.bytes_stored)),
      h('td', { class: 'num' }, duration(seconds(run.started_at, run.finished_at))))))))) : null, pager);
}

/** "VM web01", "disk 0 root", "step retention": the kind unless the name already says it. */
function taskLabel(task) {
  const kind = task.kind === 'vm' ? 'VM' : task.kind;
  return task.name.toLowerCase().startsWith(kind.toLowerCase()) ? task.name : `${kind} ${task.name}`;
}

function taskNode(task, children) {
  const took = seconds(task.started_at, task.finished_at);
  const details = [
    task.strategy ? h('span', { class: 'strategy' }, 'strategy ', h('strong', {}, task.strategy)) : null,
    task.reason ? h('span', { class: 'muted reason' }, task.reason) : null,
    task.bytes_read || task.bytes_total ? h('span', {}, `read ${bytes(task.bytes_read)}${task.bytes_total ? ` of ${bytes(task.bytes_total)}` : ''}`) : null,
    task.bytes_stored ? h('span', {}, `stored ${bytes(task.bytes_stored)}`) : null,
    task.bytes_read && took ? h('span', {}, rate(task.bytes_read, took)) : null,
    task.started_at ? h('span', { class: 'muted' }, duration(took)) : null,
  ];
  const progress = task.status === 'running' && task.bytes_total
    ? h('progress', { max: task.bytes_total, value: task.bytes_read, 'aria-label': `${task.name} progress` }) : null;
  return h('li', {}, h('div', { class: 'task', 'data-kind': task.kind, 'data-task': task.name },
    h('div', { class: 'task-head' }, h('span', { class: 'task-name' }, taskLabel(task)), badge(task.status), details),
    progress,
    task.warnings.map((w) => h('div', { class: 'status-warning' }, `warning: ${w}`)),
    task.errors.map((e) => h('div', { class: 'error' }, `error: ${e}`))),
  children.length ? h('ul', {}, children) : null);
}

function tree(tasks) {
  const byParent = new Map();
  for (const task of tasks) {
    const parent = task.parent_id ?? '';
    if (!byParent.has(parent)) byParent.set(parent, []);
    byParent.get(parent).push(task);
  }
  const ids = new Set(tasks.map((t) => t.id));
  const build = (task) => taskNode(task, (byParent.get(task.id) ?? []).map(build));
  // Roots: tasks without a parent, or whose parent is not in the tree.
  const roots = tasks.filter((t) => !t.parent_id || !ids.has(t.parent_id));
  return h('ul', { class: 'tree' }, roots.map(build));
}

export async function runPage(main, id) {
  const detail = await api('GET', `/api/runs/${seg(id)}`);
  let job = null;
  try {
    job = await api('GET', `/api/jobs/${seg(detail.run.job_id)}`);
  } catch {
    // The job was deleted since; its runs stay.
  }
  const head = h('section', { 'aria-live': 'polite' });
  const treeBox = h('section', { 'aria-label': 'Tasks' });
  const log = h('pre', { class: 'log', 'aria-label': 'Log' });
  const error = h('div', { class: 'error', role: 'alert' });
  fill(main, h('h1', {}, `Run of ${job?.name ?? detail.run.job_id}`), head, error, h('h2', {}, 'Tasks'), treeBox,
    h('h2', {}, 'Log'), h('section', {}, log));

  const render = ({ run, tasks }) => {
    const cancel = !['queued', 'running'].includes(run.status) || !can('POST', '/api/runs/{id}/cancel') ? null
      : h('button', { type: 'button', class: 'danger' }, 'Cancel run');
    cancel?.addEventListener('click', async () => {
      cancel.disabled = true;
      try {
        await api('POST', `/api/runs/${seg(run.id)}/cancel`);
      } catch (e) {
        error.textContent = e.message;
        cancel.disabled = false;
      }
    });
    const took = seconds(run.started_at, run.finished_at);
    fill(head, h('div', { class: 'actions' }, h('span', { id: 'run-status' }, badge(run.status)), job ? h('a', { href: `#/jobs/${seg(job.id)}` }, job.name) : null,
      h('span', {}, `${run.trigger}${run.level ? `, ${run.level}` : ''}`), cancel),
    h('dl', {},
      h('dt', {}, 'Started'), h('dd', {}, time(run.started_at ?? run.queued_at)),
      h('dt', {}, 'Finished'), h('dd', {}, run.finished_at ? time(run.finished_at) : 'still running'),
      h('dt', {}, 'Took'), h('dd', {}, duration(took)),
      h('dt', {}, 'VMs'), h('dd', {}, `${run.totals.vms_ok} ok, ${run.totals.vms_failed} failed of ${run.totals.vms}`),
      h('dt', {}, 'Bytes'), h('dd', {}, `read ${bytes(run.totals.bytes_read)} (${rate(run.totals.bytes_read, took)}), stored ${bytes(run.totals.bytes_stored)}`)),
    run.error ? h('p', { class: 'error' }, run.error) : null);
    fill(treeBox, tasks.length ? tree(tasks) : h('p', { class: 'muted' }, 'No task yet.'));
  };
  const addLog = (line) => log.append(h('div', { class: line.level }, `${new Date(line.at).toLocaleTimeString()} ${line.level} ${line.message}`));
  render(detail);

  if (['queued', 'running'].includes(detail.run.status)) {
    const feed = new EventSource(`/api/runs/${seg(id)}/events`);
    feed.addEventListener('run', (event) => {
      const update = JSON.parse(event.data);
      render(update);
      if (!['queued', 'running'].includes(update.run.status)) feed.close();
    });
    feed.addEventListener('log', (event) => addLog(JSON.parse(event.data)));
    feed.onerror = () => {
      if (feed.readyState === EventSource.CLOSED) error.textContent = 'The live feed stopped: reload the page to follow the run.';
    };
    return () => feed.close();
  }
  for (const line of await api('GET', `/api/runs/${seg(id)}/log`)) addLog(line);
  return null;
}
