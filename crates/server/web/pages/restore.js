// Restore: the restore points of a repository by VM; one restore point's disks and
// volumes with image exports (VHD, qcow2, raw) and instant access over NBD; restoring the
// VM (as a new one or over the original) or one disk, followed until it finishes; and a
// file browser with downloads (a file, or a folder as tar or zip).

import { api, can, seg } from '../api.js';
import { actionButton, badge, clearErrors, field, fill, h, placeError, showFieldError, uid } from '../dom.js';
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

/** #/restore/REPO/ID: the disks and volumes, exports, instant access, and the restore forms. */
export async function restorePointPage(main, repo, id) {
  const point = await api('GET', pointPath(repo, id));
  const disks = await Promise.all(point.disks.map(async (disk) => {
    try {
      return { disk, volumes: await api('GET', `${pointPath(repo, id)}/disks/${disk.position}/volumes`) };
    } catch (error) {
      return { disk, error };
    }
  }));
  const mayExport = can('GET', `${POINT}/disks/{position}/export`);
  const exportLink = (disk, format, label) => h('a', {
    class: 'button', href: `${pointPath(repo, id)}/disks/${disk.position}/export?format=${format}`, download: '',
    'aria-label': `Export disk ${disk.position} as ${label}`,
  }, label);
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
      h('h3', {}, `Disk ${disk.position}: ${disk.label || disk.name} (${bytes(disk.size)})`),
      error ? h('p', { class: 'error' }, error.message)
        : h('ul', {}, volumes.map((volume) => h('li', {},
          volume.browsable && can('GET', `${VOLUME}/entries`)
            ? h('a', { href: `#/restore/${seg(repo)}/${seg(id)}/${disk.position}/${seg(volume.name)}` }, `Browse ${volume.name}`)
            : volume.name,
          ` ${volume.description}, ${bytes(volume.size)}`))),
      mayExport ? h('div', { class: 'actions' }, h('span', { class: 'hint' }, 'Download the disk as an image:'),
        exportLink(disk, 'vhd', 'VHD'), exportLink(disk, 'qcow2', 'qcow2'), exportLink(disk, 'raw', 'raw')) : null)),
    can('GET', '/api/instant-access') ? await instantAccessSection(repo, point) : null,
    can('POST', '/api/restores') ? await restoreSection(repo, point) : null);
}

const diskText = (d) => `${d.position}: ${d.label || d.name} (${bytes(d.size)})`;
const option = (value, text, selected) => h('option', { value, selected }, text);
/** The first item per key. */
const distinct = (items, key) => [...new Map(items.map((item) => [key(item), item])).values()];

/** A group of radio buttons; `group.value` is the checked one's value. */
function radios(legend, name, choices, onChange) {
  const inputs = choices.map(([value, text], n) => {
    const input = h('input', { type: 'radio', name, value, id: uid(name), checked: n === 0 });
    input.addEventListener('change', onChange);
    return [input, text];
  });
  const group = h('fieldset', {}, h('legend', {}, legend),
    inputs.map(([input, text]) => h('div', { class: 'field check' }, input, h('label', { for: input.id }, text))));
  Object.defineProperty(group, 'value', { get: () => inputs.find(([input]) => input.checked)[0].value });
  return group;
}

/** Shows or hides a field (its wrapper's display is the stylesheet's, so a plain div carries `hidden`). */
const toggled = (...children) => h('div', {}, children);

/** Where to restore to: a registered pool, whose SRs, networks, VMs and disks fill both forms. */
async function restoreSection(repo, point) {
  const pools = await api('GET', '/api/pools');
  if (!pools.length) {
    return h('section', {}, h('h2', {}, 'Restore'), h('p', {}, 'No pool to restore into yet. ', h('a', { href: '#/connections' }, 'Add one')));
  }
  const stored = point.restorable_as_vm && can('GET', `${POINT}/vm`) ? await api('GET', `${pointPath(repo, point.id)}/vm`) : null;
  const pool = field('Restore into pool', h('select', { name: 'pool' },
    pools.map((p) => option(p.name, p.name, p.name === point.pool))));
  const forms = h('div');
  const show = async () => {
    showFieldError(pool.control, '');
    let targets = { srs: [], networks: [], vms: [], vdis: [] };
    try {
      targets = await api('GET', `/api/pools/${seg(pool.control.value)}/targets`);
    } catch (error) {
      showFieldError(pool.control, error.message);
    }
    fill(forms,
      point.restorable_as_vm ? vmRestoreForm(repo, point, stored, pool.control.value, targets) : null,
      diskRestoreForm(repo, point, pool.control.value, targets));
  };
  pool.control.addEventListener('change', show);
  await show();
  return h('section', { 'aria-labelledby': 'restore-title' }, h('h2', { id: 'restore-title' }, 'Restore'), pool, forms);
}

const srText = (sr) => `${sr.name} (${sr.type}, ${bytes(Math.max(0, sr.size - sr.used))} free)${sr.default ? ', the default' : ''}`;

/** A whole VM: as a new one (SRs and networks mapped, MACs, template, start) or over the original. */
function vmRestoreForm(repo, point, stored, poolName, targets) {
  const name = stored?.name ?? point.vm_name;
  const submit = h('button', { class: 'primary', type: 'submit' }, 'Restore as a new VM');
  const mode = radios('How', 'vm-mode', [['as-new', 'As a new VM (the original stays as it is)'],
    ['over-original', 'Over the original VM (its disks are replaced)']], () => sync());
  const confirm = field('I understand: the original VM\'s disks are replaced', h('input', { type: 'checkbox', name: 'confirm-overwrite' }));
  const differential = field('Differential: write only the blocks that differ', h('input', { type: 'checkbox', name: 'differential' }));
  const overwrite = toggled(h('div', { class: 'notice', role: 'note' },
    h('p', {}, `The VM ${name} (${point.vm_uuid}) is shut down if it runs, and its disks are overwritten with this restore point's. What they hold now is lost.`)),
  confirm, differential);
  const srMaps = distinct(stored?.disks ?? [], (d) => d.sr_uuid).map((d) => field(`Disks from SR ${d.sr_name || d.sr_uuid}`,
    h('select', { name: 'sr-map', 'data-from': d.sr_uuid }, option('', 'the same SR, else as below'),
      targets.srs.map((sr) => option(sr.uuid, srText(sr))))));
  const sr = field('Other disks go to', h('select', { name: 'sr' },
    option('', 'their own SR, else the default SR'), targets.srs.map((s) => option(s.uuid, srText(s)))));
  const networkMaps = distinct(stored?.vifs ?? [], (v) => v.network_uuid).map((v) => field(`Interfaces on network ${v.network_name || v.network_uuid}`,
    h('select', { name: 'network-map', 'data-from': v.network_uuid }, option('', 'the same network (uuid, then name)'),
      targets.networks.map((n) => option(n.uuid, `${n.name} (${n.bridge})`)))));
  const macs = field('MAC addresses', h('select', { name: 'macs' },
    [['auto', 'the stored ones unless the original VM still exists'], ['keep', 'keep the stored ones'], ['new', 'new ones']]
      .map(([value, text]) => option(value, text))));
  const template = field('As a template', h('input', { name: 'as-template', type: 'checkbox' }));
  const start = field('Start the VM once restored', h('input', { name: 'start', type: 'checkbox' }));
  const asNew = toggled(h('div', { class: 'grid' }, srMaps, sr, networkMaps, macs, template));
  const status = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'panel', 'aria-labelledby': 'restore-vm-title' },
    h('h3', { id: 'restore-vm-title' }, `Restore the VM ${name}`),
    mode, overwrite, asNew, start,
    h('div', { class: 'error form-error', role: 'alert' }), h('p', {}, submit), status);
  const sync = () => {
    const over = mode.value === 'over-original';
    overwrite.hidden = !over;
    asNew.hidden = over;
    // A template cannot be started (the API refuses both).
    start.control.disabled = !over && template.control.checked;
    if (start.control.disabled) start.control.checked = false;
    submit.textContent = over ? 'Restore over the original VM' : 'Restore as a new VM';
  };
  template.control.addEventListener('change', sync);
  sync();
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    submit.disabled = true;
    const body = { kind: 'vm', repository: repo, restore_point: point.id, pool: poolName, start: start.control.checked };
    if (mode.value === 'over-original') {
      Object.assign(body, { mode: 'overwrite', confirm_overwrite: confirm.control.checked, differential: differential.control.checked });
    } else {
      const chosen = (fields) => Object.fromEntries(fields.filter((f) => f.control.value).map((f) => [f.control.dataset.from, f.control.value]));
      Object.assign(body, { mode: 'new', macs: macs.control.value, as_template: template.control.checked,
        sr_map: chosen(srMaps), network_map: chosen(networkMaps) });
      if (sr.control.value) body.sr = sr.control.value;
    }
    await send(form, body, submit, status, confirm.control);
  });
  return form;
}

/** Starts a restore and follows it; a refusal goes next to what caused it (the confirmation when it lacked one). */
async function send(form, body, submit, status, confirmControl) {
  fill(status);
  try {
    followRestore(status, await api('POST', '/api/restores', body), () => { submit.disabled = false; });
  } catch (error) {
    if (error.code === 'confirmation_required') {
      showFieldError(confirmControl, error.message);
      confirmControl.focus();
    } else {
      placeError(form, error);
    }
    submit.disabled = false;
  }
}

/** One disk: into a new VDI on an SR (optionally attached to a VM), or over an existing VDI. */
function diskRestoreForm(repo, point, poolName, targets) {
  const disk = field('Disk', h('select', { name: 'disk' },
    point.disks.map((d) => option(String(d.position), diskText(d)))));
  const target = radios('Where', 'disk-target', [['to-new-vdi', 'A new disk on an SR'], ['over-vdi', 'Over an existing disk (its content is replaced)']], () => sync());
  const sr = field('SR', h('select', { name: 'disk-sr' }, targets.srs.map((s) => option(s.uuid, srText(s), s.default))));
  const label = field('Name of the new disk', h('input', { name: 'name-label' }), 'Empty: its name with when it was backed up.');
  const attachVm = field('Attach it to VM', h('select', { name: 'attach-vm' }, option('', 'none'),
    targets.vms.map((vm) => option(vm.uuid, `${vm.name} (${vm.power_state})`))));
  const device = field('As device number', h('input', { name: 'userdevice', inputmode: 'numeric', placeholder: '1' }), 'A free device number of that VM.');
  const plug = field('Plug it in now (a running VM)', h('input', { type: 'checkbox', name: 'plug' }));
  const vdi = field('Disk to overwrite', h('select', { name: 'vdi' }), 'Disks of the pool at least as large as the stored one.');
  const confirm = field('I understand: this disk\'s content is replaced', h('input', { type: 'checkbox', name: 'confirm-disk-overwrite' }));
  const differential = field('Differential: write only the blocks that differ', h('input', { type: 'checkbox', name: 'disk-differential' }));
  const force = field('Even if a running VM has it attached', h('input', { type: 'checkbox', name: 'force' }));
  const toNew = toggled(h('div', { class: 'grid' }, sr, label, attachVm, device, plug));
  const over = toggled(h('div', { class: 'grid' }, vdi, confirm, differential, force));
  const submit = h('button', { class: 'primary', type: 'submit' }, 'Restore the disk');
  const status = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'panel', 'aria-labelledby': 'restore-disk-title' },
    h('h3', { id: 'restore-disk-title' }, 'Restore a disk'), h('div', { class: 'grid' }, disk), target, toNew, over,
    h('div', { class: 'error form-error', role: 'alert' }), h('p', {}, submit), status);
  const fillVdis = () => {
    const stored = point.disks.find((d) => String(d.position) === disk.control.value);
    const fitting = targets.vdis.filter((v) => v.size >= stored.size);
    // The disk that was backed up first, when the pool still has it.
    fitting.sort((a, b) => (b.uuid === stored.uuid) - (a.uuid === stored.uuid));
    fill(vdi.control, fitting.map((v) => option(v.uuid, `${v.name} (${bytes(v.size)})${v.uuid === stored.uuid ? ', the disk backed up' : ''}`)));
  };
  const sync = () => {
    toNew.hidden = target.value !== 'to-new-vdi';
    over.hidden = !toNew.hidden;
  };
  disk.control.addEventListener('change', fillVdis);
  fillVdis();
  sync();
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    submit.disabled = true;
    const body = { kind: 'disk', repository: repo, restore_point: point.id, pool: poolName, disk: disk.control.value };
    if (target.value === 'to-new-vdi') {
      body.sr = sr.control.value;
      if (label.control.value.trim()) body.name_label = label.control.value.trim();
      if (attachVm.control.value) body.attach = { vm: attachVm.control.value, userdevice: device.control.value.trim(), plug: plug.control.checked };
    } else {
      Object.assign(body, { vdi: vdi.control.value, confirm_overwrite: confirm.control.checked,
        differential: differential.control.checked, force: force.control.checked });
    }
    await send(form, body, submit, status, confirm.control);
  });
  return form;
}

/** A disk served over NBD while the operator needs it: start, the connection string, stop. */
async function instantAccessSection(repo, point) {
  const list = h('ul', { class: 'instant-list' });
  const mayStop = can('DELETE', '/api/instant-access/{id}');
  const render = async () => {
    const serving = (await api('GET', '/api/instant-access')).filter((view) => view.restore_point === point.id);
    fill(list, serving.length ? serving.map((view) => {
      const error = h('div', { class: 'error', role: 'alert' });
      return h('li', { 'data-instant': view.id },
        h('p', {}, `Disk ${view.disk} (${bytes(view.size)}) on ${view.address}${view.tls ? ', TLS' : ''}, since `, time(view.started_at),
          ` by ${view.started_by}`),
        h('p', {}, 'Connect to: ', h('code', { class: 'connection fingerprint' }, view.url)),
        view.fingerprint ? h('p', {}, 'Certificate SHA-256: ', h('code', { class: 'fingerprint' }, view.fingerprint)) : null,
        view.certificate_pem ? h('details', {}, h('summary', {}, 'The certificate (PEM), to save as PKI/ca-cert.pem'), h('pre', { class: 'log' }, view.certificate_pem)) : null,
        h('pre', { class: 'log commands', 'aria-label': 'Commands that read it' }, view.commands.join('\n')),
        mayStop ? h('div', { class: 'actions' }, actionButton('Stop', error, async () => {
          await api('DELETE', `/api/instant-access/${seg(view.id)}`);
          await render();
        }, { class: 'danger', 'aria-label': `Stop instant access to disk ${view.disk}` })) : null,
        error);
    }) : h('li', { class: 'muted' }, 'No disk of this restore point is served now.'));
  };
  await render();
  let form = null;
  if (can('POST', '/api/instant-access')) {
    const disk = field('Disk', h('select', { name: 'instant-disk' },
      point.disks.map((d) => option(String(d.position), diskText(d)))));
    const tls = field('With TLS (a new self-signed certificate)', h('input', { type: 'checkbox', name: 'instant-tls' }));
    const submit = h('button', { class: 'primary', type: 'submit' }, 'Start instant access');
    form = h('form', { 'aria-label': 'Start instant access' }, h('div', { class: 'grid' }, disk, tls),
      h('div', { class: 'error form-error', role: 'alert' }), h('p', {}, submit));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      clearErrors(form);
      submit.disabled = true;
      try {
        await api('POST', '/api/instant-access', { repository: repo, restore_point: point.id,
          disk: Number(disk.control.value), tls: tls.control.checked });
        await render();
      } catch (error) {
        placeError(form, error);
      } finally {
        submit.disabled = false;
      }
    });
  }
  return h('section', { 'aria-labelledby': 'instant-title' }, h('h2', { id: 'instant-title' }, 'Instant access over NBD'),
    h('p', { class: 'hint' }, 'A disk served read-only over NBD by this server, for as long as you need it: attach or copy it with qemu-img, nbdcopy or nbd-client.'),
    form, list);
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
