// At a glance: the last result of every job (failures first), running tasks with their
// progress (refreshed while the page is open), and the repositories' use.

import { api, can, seg } from '../api.js';
import { badge, fill, h } from '../dom.js';
import { bytes, time } from '../format.js';
import { lastRun } from './jobs.js';

const REFRESH_MS = 5000;
const GOOD = new Set(['success', 'running', 'queued']);

export async function dashboardPage(main) {
  const cards = h('div', { class: 'cards' });
  const running = h('section', { 'aria-labelledby': 'running-title' });
  const results = h('section', { 'aria-labelledby': 'results-title' });
  const repositories = h('section', { 'aria-labelledby': 'repos-use-title' });
  fill(main, h('h1', {}, 'Dashboard'), cards, running, results, repositories);

  const card = (label, value, status) => h('div', { class: 'card' }, h('div', { class: 'muted' }, label),
    h('div', { class: `value ${status ? `status-${status}` : ''}` }, value));

  const refresh = async () => {
    const [jobs, active] = await Promise.all([api('GET', '/api/jobs'), api('GET', '/api/runs?status=running&limit=50')]);
    const names = new Map(jobs.map((j) => [j.id, j.name]));
    const last = await Promise.all(jobs.map((job) => lastRun(job.id)));
    const rows = jobs.map((job, i) => ({ job, run: last[i] }));
    // Failures first, then never run, then the rest by name.
    const rank = ({ run }) => (run ? (GOOD.has(run.status) ? 2 : 0) : 1);
    rows.sort((a, b) => rank(a) - rank(b) || a.job.name.localeCompare(b.job.name));
    const failing = rows.filter((r) => rank(r) === 0).length;

    fill(cards, card('Jobs', jobs.length), card('Failing jobs', failing, failing ? 'failed' : 'success'),
      card('Running now', active.total, active.total ? 'running' : null));
    const details = await Promise.all(active.runs.map((run) => api('GET', `/api/runs/${seg(run.id)}`)));
    fill(running, h('h2', { id: 'running-title' }, 'Running'), details.length ? h('ul', {}, details.map(({ run, tasks }) => {
      const disks = tasks.filter((t) => t.kind === 'disk');
      const total = disks.reduce((sum, t) => sum + (t.bytes_total ?? 0), 0);
      const done = disks.reduce((sum, t) => sum + t.bytes_read, 0);
      return h('li', {}, h('a', { href: `#/runs/${seg(run.id)}` }, names.get(run.job_id) ?? run.job_id), ' ', badge(run.status), ' ',
        `${bytes(done)}${total ? ` of ${bytes(total)}` : ''}`,
        total ? h('progress', { max: total, value: done, 'aria-label': `${names.get(run.job_id)} progress` }) : null);
    })) : h('p', { class: 'muted' }, 'Nothing is running.'));
    fill(results, h('h2', { id: 'results-title' }, 'Last result per job'), rows.length ? h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'Job'), h('th', {}, 'Last run'), h('th', {}, 'When'), h('th', { class: 'num' }, 'VMs ok / failed'), h('th', { class: 'num' }, 'Stored'))),
      h('tbody', {}, rows.map(({ job, run }) => h('tr', { 'data-job': job.name },
        h('td', {}, h('a', { href: `#/jobs/${seg(job.id)}` }, job.name)),
        h('td', {}, run ? h('a', { href: `#/runs/${seg(run.id)}` }, badge(run.status)) : h('span', { class: 'muted' }, 'never run')),
        h('td', {}, run ? time(run.started_at ?? run.queued_at) : ''),
        h('td', { class: 'num' }, run ? `${run.totals.vms_ok} / ${run.totals.vms_failed}` : ''),
        h('td', { class: 'num' }, run ? bytes(run.totals.bytes_stored) : '')))))) : h('p', {}, 'No job yet. ', can('POST', '/api/jobs') ? h('a', { href: '#/jobs/new' }, 'Create one') : null));
  };

  const showRepositories = async () => {
    const list = await api('GET', '/api/repositories');
    const mayTest = can('POST', '/api/repositories/{name}/test');
    const checks = await Promise.all(list.map((r) => (mayTest ? api('POST', `/api/repositories/${seg(r.name)}/test`).catch((e) => e) : null)));
    fill(repositories, h('h2', { id: 'repos-use-title' }, 'Repositories'), list.length ? h('ul', {}, list.map((repo, i) => {
      const check = checks[i];
      const text = !check ? '' : check instanceof Error ? check.message
        : `${check.restore_points} restore points, ${bytes(check.stored_bytes)} stored for ${bytes(check.logical_bytes)} of disks ${check.stored_bytes ? ` (dedup ${check.dedup_ratio.toFixed(2)}×)` : ''}`;
      return h('li', {}, h('strong', {}, repo.name), ` ${repo.settings.location} `, h('span', { class: check instanceof Error ? 'error' : 'muted' }, text));
    })) : h('p', {}, 'No repository yet. ', h('a', { href: '#/connections' }, 'Add one')));
  };

  await Promise.all([refresh(), showRepositories()]);
  const timer = setInterval(() => refresh().catch(() => {}), REFRESH_MS);
  return () => clearInterval(timer);
}
