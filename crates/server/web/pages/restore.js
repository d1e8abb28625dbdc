// Restore: the restore points of a repository by VM, one restore point's disks and
// volumes, a file browser with downloads (a file, or a folder as tar or zip), and
// restoring a VM as a new one, followed until it finishes.

import { api, can, seg } from '../api.js';
import { badge, clearErrors, field, fill, h, placeError } from '../dom.js';
import { bytes, time } from '../format.js';

const POINT = '/api/repositories/{repo}/restore-points/{id}';
const VOLUME = `${POINT}/disks/{position}/volumes/{volume}`;
const RESTORE_POLL_MS = 2000;

const pointPath = (repo, id) => `/api/repositories/${seg(repo)}/restore-points/${seg(id)}`;
const volumePath = (repo, id, disk, volume) => `${pointPath(repo, id)}/disks/${seg(disk)}/volumes/${seg(volume)}`;

/** #/restore?repo=NAME: the restore points of one repository, newest first, by VM. */
export async function restorePage(main, params) {
  const repositories = await api('GET', '/api/repositories');
  if (!repositories.length) {
    fill(main, h('h1', {}, 'Restore'), h('p', {}, 'No repository yet. ', h('a', { href: '#/connections' }, 'Add one')));
    return;
  }
  const repo = params.get('repo') ?? repositories[0].name;
  const chooser = field('Repository', h('select', { name: 'repository' },
    repositories.map((r) => h('option', { value: r.name, selected: r.name === repo }, r.name))));
  chooser.control.addEventListener('change', () => { location.hash = `#/restore?repo=${seg(chooser.control.value)}`; });
  const list = h('div');
  fill(main, h('h1', {}, 'Restore'), h('div', { class: 'panel' }, chooser), list);
  let page;
  try {
    page = await api('GET', `/api/repositories/${seg(repo)}/restore-points?limit=1000`);
  } catch (error) {
    fill(list, h('p', { class: 'error', role: 'alert' }, error.message));
    return;
  }
  if (!page.restore_points.length) {
    fill(list, h('p', { class: 'muted' }, 'No restore point in this repository yet.'));
    return;
  }
  const byVm = new Map();
  for (const point of page.restore_points) {
    const key = `${point.vm_name} (${point.vm_uuid})`;
    if (!byVm.has(key)) byVm.set(key, []);
    byVm.get(key).push(point);
  }
  fill(list, [...byVm].map(([vm, points]) => h('section', { 'data-vm': points[0].vm_name },
    h('h2', {}, vm),
    h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'Taken'), h('th', {}, 'Level'), h('th', { class: 'num' }, 'Size'),
        h('th', { class: 'wide' }, 'Disks'), h('th', { class: 'wide' }, 'Tags'))),
      h('tbody', {}, points.map((point) => h('tr', {},
        h('td', {}, h('a', { href: `#/restore/${seg(repo)}/${seg(point.id)}` }, time(point.time))),
        h('td', {}, point.level ?? point.source_kind), h('td', { class: 'num' }, bytes(point.size)),
        h('td', { class: 'wide' }, point.disks.map((d) => `${d.position}: ${d.name}`).join(', ')),
        h('td', { class: 'wide' }, point.tags.join(', '))))))))),
  h('p', { class: 'muted' }, `${page.total} restore point(s)`));
}

/** #/restore/REPO/ID: the disks and volumes, and the VM restore form. */
export async function restorePointPage(main, repo, id) {
  const point = await api('GET', pointPath(repo, id));
  const disks = await Promise.all(point.disks.map(async (disk) => {
    try {
      return { disk, volumes: await api('GET', `${pointPath(repo, id)}/disks/${disk.position}/volumes`) };
    } catch (error) {
      return { disk, error };
    }
  }));
  fill(main,
    h('h1', {}, `${point.vm_name}, `, time(point.time)),
    h('p', {}, h('a', { href: `#/restore?repo=${seg(repo)}` }, `All restore points in ${repo}`)),
    h('section', {}, h('dl', {},
      h('dt', {}, 'Kind'), h('dd', {}, `${point.source_kind}${point.level ? `, ${point.level}` : ''}`),
      h('dt', {}, 'Size'), h('dd', {}, bytes(point.size)),
      h('dt', {}, 'Pool'), h('dd', {}, point.pool ?? '—'),
      h('dt', {}, 'Tags'), h('dd', {}, point.tags.join(', ') || '—'))),
    h('h2', {}, 'Disks and files'),
    disks.map(({ disk, volumes, error }) => h('section', { 'data-disk': disk.position },
      h('h3', {}, `Disk ${disk.position}: ${disk.name} (${bytes(disk.size)})`),
      error ? h('p', { class: 'error' }, error.message)
        : h('ul', {}, volumes.map((volume) => h('li', {},
          volume.browsable && can('GET', `${VOLUME}/entries`)
            ? h('a', { href: `#/restore/${seg(repo)}/${seg(id)}/${disk.position}/${seg(volume.name)}` }, `Browse ${volume.name}`)
            : volume.name,
          ` ${volume.description}, ${bytes(volume.size)}`))))),
    point.restorable_as_vm && can('POST', '/api/restores') ? await vmRestoreForm(repo, point) : null);
}

async function vmRestoreForm(repo, point) {
  const pools = await api('GET', '/api/pools');
  const pool = field('Into pool', h('select', { name: 'pool' }, pools.map((p) => h('option', { value: p.name, selected: p.name === point.pool }, p.name))));
  const sr = field('SR (uuid)', h('input', { name: 'sr' }), 'Where new disks go; empty: the pool\'s default SR.');
  const macs = field('MAC addresses', h('select', { name: 'macs' },
    [['auto', 'the stored ones unless the original VM still exists'], ['keep', 'keep the stored ones'], ['new', 'new ones']]
      .map(([value, text]) => h('option', { value }, text))));
  const template = field('As a template', h('input', { name: 'as-template', type: 'checkbox' }));
  const submit = h('button', { class: 'primary', type: 'submit' }, 'Restore as a new VM');
  const status = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'panel', 'aria-labelledby': 'restore-vm-title' },
    h('h2', { id: 'restore-vm-title' }, 'Restore the VM as a new one'),
    h('div', { class: 'grid' }, pool, sr, macs, template),
    h('div', { class: 'error form-error', role: 'alert' }), h('p', {}, submit), status);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    submit.disabled = true;
    const body = { kind: 'vm', repository: repo, restore_point: point.id, pool: pool.control.value, mode: 'new',
      macs: macs.control.value, as_template: template.control.checked };
    if (sr.control.value.trim()) body.sr = sr.control.value.trim();
    try {
      followRestore(status, await api('POST', '/api/restores', body), () => { submit.disabled = false; });
    } catch (error) {
      placeError(form, error);
      submit.disabled = false;
    }
  });
  return form;
}

/** Shows a restore's progress until it finishes. */
function followRestore(box, restore, finished) {
  const render = (r) => fill(box, h('p', {}, 'Restore ', h('span', { id: 'restore-status' }, badge(r.status)), ' started ', time(r.started_at)),
    r.progress.map((p) => h('div', {}, `${p.label} ${p.phase}: ${bytes(p.done)} of ${bytes(p.total)}`,
      h('progress', { max: p.total || 1, value: p.done, 'aria-label': `${p.label} ${p.phase}` }))),
    r.error ? h('p', { class: 'error' }, r.error) : null,
    r.report ? h('pre', { class: 'log' }, JSON.stringify(r.report, null, 2)) : null);
  render(restore);
  const poll = async () => {
    if (!box.isConnected) return;
    try {
      const current = await api('GET', `/api/restores/${seg(restore.id)}`);
      render(current);
      if (current.status === 'running') setTimeout(poll, RESTORE_POLL_MS);
      else finished();
    } catch (error) {
      box.append(h('p', { class: 'error' }, error.message));
      finished();
    }
  };
  if (restore.status === 'running') setTimeout(poll, RESTORE_POLL_MS);
  else finished();
}

/** #/restore/REPO/ID/DISK/VOLUME?path=/etc: one folder, with downloads. */
export async function browsePage(main, repo, id, disk, volume, params) {
  const path = params.get('path') || '/';
  const base = volumePath(repo, id, disk, volume);
  const entries = await api('GET', `${base}/entries?path=${seg(path)}`);
  const here = (p) => `#/restore/${seg(repo)}/${seg(id)}/${seg(disk)}/${seg(volume)}?path=${seg(p)}`;
  const parts = path.split('/').filter(Boolean);
  const crumbs = [h('a', { href: here('/') }, volume)];
  parts.forEach((part, i) => crumbs.push(' / ', h('a', { href: here(`/${parts.slice(0, i + 1).join('/')}`) }, part)));
  const mayDownload = can('GET', `${VOLUME}/files`);
  const archive = (format) => h('a', { class: 'button', href: `${base}/archive?path=${seg(path)}&format=${format}`, download: '' }, `Download this folder (${format})`);
  fill(main,
    h('h1', {}, 'Files'),
    h('p', {}, h('a', { href: `#/restore/${seg(repo)}/${seg(id)}` }, 'Back to the restore point')),
    h('nav', { 'aria-label': 'Folder', class: 'panel' }, crumbs),
    mayDownload && can('GET', `${VOLUME}/archive`) ? h('div', { class: 'actions' }, archive('tar'), archive('zip')) : null,
    h('section', {}, h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', { class: 'num' }, 'Size'), h('th', { class: 'wide' }, 'Changed'), h('th', {}, ''))),
      h('tbody', {}, entries.map((entry) => h('tr', { 'data-entry': entry.name },
        h('td', {}, entry.kind === 'dir' ? h('a', { href: here(entry.path) }, `${entry.name}/`)
          : entry.kind === 'symlink' ? `${entry.name} → ${entry.symlink_target ?? ''}` : entry.name),
        h('td', { class: 'num' }, entry.kind === 'file' ? bytes(entry.size) : ''),
        h('td', { class: 'wide' }, entry.mtime ? time(entry.mtime) : ''),
        h('td', {}, entry.kind === 'file' && mayDownload
          ? h('a', { href: `${base}/files?path=${seg(entry.path)}`, download: entry.name, 'aria-label': `Download ${entry.name}` }, 'Download') : null))))))));
}
