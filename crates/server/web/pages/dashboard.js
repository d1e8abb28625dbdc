// At a glance: which VMs are not protected (first), the last result of every job (failures
// first), running tasks with their progress (refreshed while the page is open), a 30-day
// chart of bytes stored and run time, and the repositories' use.

import { api, can, seg } from '../api.js';
import { badge, field, fill, h, showFieldError, uid } from '../dom.js';
import { bytes, duration, time } from '../format.js';
import { lastRun } from './jobs.js';

const REFRESH_MS = 5000;
const GOOD = new Set(['success', 'running', 'queued']);
const DAYS_KEY = 'xenvault.protection-days';
const DEFAULT_DAYS = 2;
const CHART_DAYS = 30;

/** The VMs of every pool, unprotected first (the server's order), with the days setting. */
async function showProtection(section, days) {
  const listing = await api('GET', `/api/vms?days=${days}`);
  const unprotected = listing.vms.filter((vm) => !vm.protected).length;
  const jobLinks = (jobs) => (jobs.length ? jobs.map((job, i) => [i ? ', ' : '', h('a', { href: `#/jobs/${seg(job.id)}` }, job.name)]) : h('span', { class: 'muted' }, 'none'));
  fill(section,
    h('p', { class: unprotected ? 'status-failed summary' : 'status-success summary' }, listing.vms.length
      ? `${unprotected} of ${listing.vms.length} VMs not protected (in no job, or no restore point in the last ${listing.days} days)`
      : 'No VM yet.'),
    listing.problems.map((problem) => h('p', { class: 'notice', role: 'status' }, problem)),
    listing.vms.length ? h('div', { class: 'table-wrap' }, h('table', { id: 'protection' },
      h('thead', {}, h('tr', {}, h('th', {}, 'VM'), h('th', { class: 'wide' }, 'Pool'), h('th', {}, 'Protection'), h('th', {}, 'Jobs'),
        h('th', {}, 'Newest restore point'))),
      h('tbody', {}, listing.vms.map((vm) => h('tr', { 'data-vm': vm.name, 'data-protected': String(vm.protected) },
        h('td', {}, vm.name),
        h('td', { class: 'wide' }, vm.pool),
        h('td', {}, vm.protected ? badge('protected') : [badge('unprotected'), ' ', h('span', { class: 'muted' }, vm.reason)]),
        h('td', {}, jobLinks(vm.jobs)),
        h('td', {}, vm.newest ? [time(vm.newest.created_at), h('span', { class: 'muted' }, ` in ${vm.newest.repository}`)] : h('span', { class: 'muted' }, 'none'))))))) : null);
}

const SVG = 'http://www.w3.org/2000/svg';
/** An SVG element, like h() for HTML. */
function svg(tag, attrs = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, String(value));
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined) element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

const dayLabel = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
/** A 'YYYY-MM-DD' day as a local date. */
const localDay = (date) => {
  const [year, month, day] = date.split('-').map(Number);
  return new Date(year, month - 1, day);
};

/**
 * Bytes stored per day as bars (left scale) and the time runs took per day as a line (right
 * scale), drawn as inline SVG; colours come from the stylesheet so both schemes read well.
 */
function dailyChart(days) {
  const width = 760;
  const height = 250;
  const margin = { top: 30, right: 76, bottom: 30, left: 76 };
  const plotWidth = width - margin.left - margin.right;
  const plotHeight = height - margin.top - margin.bottom;
  const band = plotWidth / days.length;
  // Scales start at 1 KiB and 1 minute, so an idle month still has distinct tick labels.
  const maxBytes = Math.max(1024, ...days.map((d) => d.bytes_stored));
  const maxSeconds = Math.max(60, ...days.map((d) => d.run_seconds));
  const yBytes = (v) => margin.top + plotHeight - (v / maxBytes) * plotHeight;
  const ySeconds = (v) => margin.top + plotHeight - (v / maxSeconds) * plotHeight;
  const center = (i) => margin.left + band * (i + 0.5);
  const titleId = uid('chart-title');
  const descId = uid('chart-desc');
  const ticks = [0, 0.5, 1];
  const point = (d, i) => `${center(i).toFixed(1)},${ySeconds(d.run_seconds).toFixed(1)}`;
  const tip = (d) => `${dayLabel.format(localDay(d.date))}: ${bytes(d.bytes_stored)} stored, ${d.runs} runs (${d.failed} failed), ${duration(d.run_seconds)} of run time`;
  return svg('svg', { class: 'chart', viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-labelledby': `${titleId} ${descId}` },
    svg('title', { id: titleId }, `Bytes stored and run time per day, last ${days.length} days`),
    svg('desc', { id: descId }, `Bars: bytes stored (left scale, up to ${bytes(maxBytes)}). Line: time runs took (right scale, up to ${duration(maxSeconds)}). The table below holds the same figures.`),
    ticks.map((t) => svg('g', {},
      svg('line', { class: 'grid', x1: margin.left, x2: width - margin.right, y1: yBytes(t * maxBytes), y2: yBytes(t * maxBytes) }),
      svg('text', { class: 'axis', x: margin.left - 6, y: yBytes(t * maxBytes) + 4, 'text-anchor': 'end' }, bytes(Math.round(t * maxBytes))),
      svg('text', { class: 'axis', x: width - margin.right + 6, y: ySeconds(t * maxSeconds) + 4, 'text-anchor': 'start' }, duration(t * maxSeconds)))),
    days.map((d, i) => svg('rect', { class: 'bar', 'data-date': d.date, x: (center(i) - band * 0.3).toFixed(1), width: (band * 0.6).toFixed(1),
      y: yBytes(d.bytes_stored).toFixed(1), height: (margin.top + plotHeight - yBytes(d.bytes_stored)).toFixed(1) }, svg('title', {}, tip(d)))),
    svg('polyline', { class: 'line', points: days.map(point).join(' ') }),
    days.map((d, i) => (d.runs ? svg('circle', { class: 'dot', cx: center(i).toFixed(1), cy: ySeconds(d.run_seconds).toFixed(1), r: 3 }, svg('title', {}, tip(d))) : null)),
    days.map((d, i) => ((days.length - 1 - i) % 7 === 0
      ? svg('text', { class: 'axis', x: center(i).toFixed(1), y: height - margin.bottom + 16, 'text-anchor': 'middle' }, dayLabel.format(localDay(d.date)))
      : null)),
    svg('text', { class: 'axis-title', x: margin.left - 6, y: 14, 'text-anchor': 'end' }, 'stored'),
    svg('text', { class: 'axis-title', x: width - margin.right + 6, y: 14, 'text-anchor': 'start' }, 'run time'));
}

async function showChart(section) {
  const offset = -new Date().getTimezoneOffset();
  const days = await api('GET', `/api/stats/daily?days=${CHART_DAYS}&utc_offset_minutes=${offset}`);
  const runs = days.reduce((sum, d) => sum + d.runs, 0);
  fill(section, h('h2', { id: 'chart-heading' }, `Last ${CHART_DAYS} days`),
    h('p', { class: 'legend' }, h('span', { class: 'legend-item' }, h('span', { class: 'swatch stored' }), ' bytes stored per day'),
      h('span', { class: 'legend-item' }, h('span', { class: 'swatch duration' }), ' time runs took per day'),
      runs ? null : h('span', { class: 'muted' }, ' (no run yet)')),
    h('div', { class: 'chart-wrap' }, dailyChart(days)),
    h('details', {}, h('summary', {}, 'The figures as a table'), h('div', { class: 'table-wrap' }, h('table', { id: 'daily-figures' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Day'), h('th', { class: 'num' }, 'Runs'), h('th', { class: 'num' }, 'Failed'),
        h('th', { class: 'num' }, 'Stored'), h('th', { class: 'num' }, 'Run time'))),
      h('tbody', {}, days.filter((d) => d.runs).reverse().map((d) => h('tr', { 'data-date': d.date },
        h('td', {}, dayLabel.format(localDay(d.date))), h('td', { class: 'num' }, d.runs), h('td', { class: 'num' }, d.failed),
        h('td', { class: 'num' }, bytes(d.bytes_stored)), h('td', { class: 'num' }, duration(d.run_seconds)))))))));
}

export async function dashboardPage(main) {
  const cards = h('div', { class: 'cards' });
  const protection = h('div');
  const stored = Number(localStorage.getItem(DAYS_KEY));
  const daysInput = h('input', { name: 'protection-days', type: 'number', min: 1, max: 3650, required: true,
    value: Number.isInteger(stored) && stored > 0 ? stored : DEFAULT_DAYS });
  const daysField = field('Not protected without a restore point in (days)', daysInput);
  const vms = h('section', { 'aria-labelledby': 'vms-title' }, h('h2', { id: 'vms-title' }, 'VMs'), daysField, protection);
  const running = h('section', { 'aria-labelledby': 'running-title' });
  const results = h('section', { 'aria-labelledby': 'results-title' });
  const chart = h('section', { 'aria-labelledby': 'chart-heading' });
  const repositories = h('section', { 'aria-labelledby': 'repos-use-title' });
  fill(main, h('h1', {}, 'Dashboard'), cards, vms, running, results, chart, repositories);

  const loadProtection = () => showProtection(protection, Number(daysInput.value))
    .catch((error) => fill(protection, h('p', { class: 'error', role: 'alert' }, error.message)));
  daysInput.addEventListener('change', () => {
    const valid = daysInput.checkValidity();
    showFieldError(daysInput, valid ? '' : 'Give a whole number of days from 1 to 3650.');
    if (!valid) return;
    localStorage.setItem(DAYS_KEY, daysInput.value);
    loadProtection();
  });

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

  await Promise.all([refresh(), showRepositories(), loadProtection(), showChart(chart)]);
  const timer = setInterval(() => refresh().catch(() => {}), REFRESH_MS);
  return () => clearInterval(timer);
}
