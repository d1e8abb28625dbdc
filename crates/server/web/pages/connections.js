// Pools and repositories: list, add, test, delete. A pool whose certificate this server
// does not trust is shown with the fingerprint it presented; the admin compares it with the
// host's and confirms, and the pool is added with that fingerprint pinned. Each repository
// shows its size, dedup ratio and last verify, with "Verify now".

import { api, can, seg } from '../api.js';
import { actionButton, badge, clearErrors, field, fill, h, placeError, showFieldError } from '../dom.js';
import { bytes, relative, time } from '../format.js';

const VERIFY = '/api/repositories/{name}/verify';
const VERIFY_POLL_MS = 2000;

export async function connectionsPage(main) {
  const pools = h('section', { 'aria-labelledby': 'pools-title' });
  const repositories = h('section', { 'aria-labelledby': 'repos-title' });
  fill(main, h('h1', {}, 'Pools & repositories'), pools, repositories);
  await Promise.all([renderPools(pools), renderRepositories(repositories)]);
}

async function renderPools(section) {
  const list = await api('GET', '/api/pools');
  const rows = list.map((pool) => {
    const result = h('div', { role: 'status' });
    const error = h('div', { class: 'error', role: 'alert' });
    const actions = h('div', { class: 'actions' });
    if (can('POST', '/api/pools/{name}/test')) {
      actions.append(actionButton('Test', error, async () => {
        const check = await api('POST', `/api/pools/${seg(pool.name)}/test`);
        fill(result, `${check.pool_name}: ${check.hosts} host(s), ${check.vms} VM(s), API ${check.api_version}`);
      }, { 'aria-label': `Test pool ${pool.name}` }));
    }
    if (can('DELETE', '/api/pools/{name}')) {
      actions.append(actionButton('Delete', error, async () => {
        if (!confirm(`Delete pool ${pool.name}? Jobs that use it must be changed first.`)) return;
        await api('DELETE', `/api/pools/${seg(pool.name)}`);
        await renderPools(section);
      }, { class: 'danger', 'aria-label': `Delete pool ${pool.name}` }));
    }
    const trust = pool.tls === 'fingerprint'
      ? h('span', {}, 'pinned ', h('span', { class: 'fingerprint' }, pool.fingerprint))
      : pool.tls;
    return h('tr', {}, h('td', {}, pool.name), h('td', {}, pool.url), h('td', { class: 'wide' }, pool.user),
      h('td', { class: 'wide' }, trust), h('td', {}, actions, result, error));
  });
  fill(section,
    h('h2', { id: 'pools-title' }, 'Pools'),
    list.length
      ? h('div', { class: 'table-wrap' }, h('table', {},
        h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Master'), h('th', { class: 'wide' }, 'User'),
          h('th', { class: 'wide' }, 'Certificate'), h('th', {}, ''))),
        h('tbody', {}, rows)))
      : h('p', { class: 'muted' }, 'No pool yet.'),
    can('POST', '/api/pools') ? addPoolForm(() => renderPools(section)) : null);
}

function addPoolForm(added) {
  const name = field('Name', h('input', { name: 'name', required: true }), 'How jobs refer to the pool.');
  const url = field('Master URL', h('input', { name: 'url', type: 'url', required: true, placeholder: 'https://10.0.0.1' }));
  const user = field('User', h('input', { name: 'user', value: 'root', required: true, autocomplete: 'off' }));
  const password = field('Password', h('input', { name: 'password', type: 'password', required: true, autocomplete: 'new-password' }));
  const confirmBox = h('div');
  const submit = h('button', { class: 'primary', type: 'submit' }, 'Add pool');
  const form = h('form', { 'aria-labelledby': 'add-pool-title' },
    h('h2', { id: 'add-pool-title' }, 'Add a pool'),
    h('div', { class: 'grid' }, name, url, user, password),
    confirmBox, h('div', { class: 'error form-error', role: 'alert' }), h('p', {}, submit));

  const send = async (fingerprint) => {
    clearErrors(form);
    fill(confirmBox);
    submit.disabled = true;
    const body = { name: name.control.value.trim(), url: url.control.value.trim(), user: user.control.value, password: password.control.value };
    if (fingerprint) body.fingerprint = fingerprint;
    try {
      await api('POST', '/api/pools', body);
      form.reset();
      await added();
    } catch (error) {
      const seen = error.code === 'untrusted_certificate' && /fingerprint ([0-9A-Fa-f]{2}(?::?[0-9A-Fa-f]{2}){31})/.exec(error.message);
      if (seen) askToTrust(seen[1]);
      else if (error.code === 'pool_login_refused') placeError(form, error, password.control);
      else if (error.code === 'pool_unreachable') showFieldError(url.control, error.message);
      else placeError(form, error);
    } finally {
      submit.disabled = false;
    }
  };

  const askToTrust = (fingerprint) => {
    const trust = h('button', { type: 'button', class: 'primary' }, 'Trust this certificate and add the pool');
    trust.addEventListener('click', () => send(fingerprint));
    const cancel = h('button', { type: 'button' }, 'Cancel');
    cancel.addEventListener('click', () => fill(confirmBox));
    fill(confirmBox, h('div', { class: 'notice', role: 'alert' },
      h('p', {}, 'This server does not trust the certificate the pool master presents. Its SHA-256 fingerprint is:'),
      h('p', {}, h('code', { class: 'fingerprint', 'data-fingerprint': fingerprint }, fingerprint)),
      h('p', { class: 'hint' }, 'Compare it with the one the host shows (on the host: openssl x509 -in /etc/xensource/xapi-ssl.pem -noout -fingerprint -sha256). If they are the same, the pool is added with this certificate pinned.'),
      h('div', { class: 'actions' }, trust, cancel)));
    trust.focus();
  };

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    send(null);
  });
  return form;
}

async function renderRepositories(section) {
  const list = await api('GET', '/api/repositories');
  const mayTest = can('POST', '/api/repositories/{name}/test');
  const rows = list.map((repo) => {
    const cells = { points: h('td', { class: 'num' }, '—'), stored: h('td', { class: 'num' }, '—'),
      logical: h('td', { class: 'num wide' }, '—'), ratio: h('td', { class: 'num' }, '—') };
    const error = h('div', { class: 'error', role: 'alert' });
    const test = async () => {
      const check = await api('POST', `/api/repositories/${seg(repo.name)}/test`);
      fill(cells.points, check.restore_points);
      fill(cells.stored, bytes(check.stored_bytes));
      fill(cells.logical, bytes(check.logical_bytes));
      fill(cells.ratio, check.stored_bytes ? `${check.dedup_ratio.toFixed(2)}×` : '—');
    };
    const actions = h('div', { class: 'actions' });
    const verified = h('td', { class: 'verify' }, '—');
    if (can('GET', VERIFY)) showVerify(repo.name, verified, actions, error);
    if (mayTest) {
      actions.append(actionButton('Test', error, test, { 'aria-label': `Test repository ${repo.name}` }));
      test().catch((e) => { error.textContent = e.message; });
    }
    if (can('DELETE', '/api/repositories/{name}')) {
      actions.append(actionButton('Delete', error, async () => {
        if (!confirm(`Forget repository ${repo.name}? Its data stays where it is.`)) return;
        await api('DELETE', `/api/repositories/${seg(repo.name)}`);
        await renderRepositories(section);
      }, { class: 'danger', 'aria-label': `Delete repository ${repo.name}` }));
    }
    return h('tr', { 'data-repository': repo.name }, h('td', {}, repo.name), h('td', {}, repo.settings.location),
      cells.points, cells.stored, cells.logical, cells.ratio, verified, h('td', { class: 'wide' }, time(repo.updated_at)),
      h('td', {}, actions, error));
  });
  fill(section,
    h('h2', { id: 'repos-title' }, 'Repositories'),
    list.length
      ? h('div', { class: 'table-wrap' }, h('table', {},
        h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Location'), h('th', { class: 'num' }, 'Restore points'),
          h('th', { class: 'num' }, 'Stored'), h('th', { class: 'num wide' }, 'Disk data'), h('th', { class: 'num' }, 'Dedup'), h('th', {}, 'Verified'),
          h('th', { class: 'wide' }, 'Changed'), h('th', {}, ''))),
        h('tbody', {}, rows)))
      : h('p', { class: 'muted' }, 'No repository yet.'),
    can('POST', '/api/repositories') ? addRepositoryForm(() => renderRepositories(section)) : null);
}

/**
 * The repository's last verify ("ok 3 h ago", "damaged: 2 bad chunks"), followed while one
 * runs, and a "Verify now" button for those who may start one.
 */
function showVerify(name, cell, actions, error) {
  const path = `/api/repositories/${seg(name)}/verify`;
  let button = null;
  const render = (verify) => {
    if (!verify) {
      fill(cell, h('span', { class: 'muted' }, 'never verified'));
      return;
    }
    if (button) button.disabled = verify.status === 'running';
    if (verify.status === 'running') {
      const done = verify.progress.reduce((sum, p) => sum + p.done, 0);
      const total = verify.progress.reduce((sum, p) => sum + p.total, 0);
      fill(cell, badge('running'), ' verifying, started ', time(verify.started_at),
        h('progress', { max: total || 1, value: done, 'aria-label': `Verifying ${name}` }));
      setTimeout(() => poll(false), VERIFY_POLL_MS);
      return;
    }
    const finished = time(verify.finished_at);
    finished.textContent = relative(verify.finished_at);
    const damage = [[verify.bad_chunks, 'bad chunk(s)'], [verify.damaged_indexes, 'unreadable pack index(es)'],
      [verify.damaged_key_objects, 'damaged key object(s)'], [verify.damaged_restore_points.length, 'restore point(s) touched']]
      .filter(([count]) => count > 0).map(([count, what]) => `${count} ${what}`).join(', ');
    fill(cell, h('span', { 'data-verify': verify.status },
      verify.status === 'ok' ? [badge('ok'), ` verified, ${verify.chunks_checked} chunks (${bytes(verify.bytes_checked)}) intact, `, finished]
        : verify.status === 'damaged' ? [badge('damaged'), ` ${damage}, `, finished]
          : [badge('failed'), ` ${verify.error ?? ''}, `, finished]));
  };
  // The first call comes before the row is on the page; later ones stop once it is gone.
  const poll = async (first) => {
    if (!first && !cell.isConnected) return;
    try {
      render(await api('GET', path));
    } catch (e) {
      if (e.code === 'never_verified') render(null);
      else error.textContent = e.message;
    }
  };
  if (can('POST', VERIFY)) {
    button = actionButton('Verify now', error, async () => render(await api('POST', path)),
      { 'aria-label': `Verify repository ${name} now` });
    actions.append(button);
  }
  poll(true);
}

function addRepositoryForm(added) {
  const name = field('Name', h('input', { name: 'name', required: true }));
  const location = field('Location', h('input', { name: 'location', required: true, placeholder: '/backup/xen or s3://bucket/prefix' }),
    'An initialised repository (xenvault init).');
  const passphrase = field('Passphrase', h('input', { name: 'passphrase', type: 'password', required: true, autocomplete: 'off' }));
  const endpoint = field('S3 endpoint', h('input', { name: 's3_endpoint', type: 'url' }), 'Only for S3 services other than AWS.');
  const region = field('S3 region', h('input', { name: 's3_region' }));
  const submit = h('button', { class: 'primary', type: 'submit' }, 'Add repository');
  const form = h('form', { 'aria-labelledby': 'add-repo-title' },
    h('h2', { id: 'add-repo-title' }, 'Add a repository'),
    h('div', { class: 'grid' }, name, location, passphrase, endpoint, region),
    h('div', { class: 'error form-error', role: 'alert' }), h('p', {}, submit));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    submit.disabled = true;
    const body = { name: name.control.value.trim(), location: location.control.value.trim(), passphrase: passphrase.control.value };
    if (endpoint.control.value.trim()) body.s3_endpoint = endpoint.control.value.trim();
    if (region.control.value.trim()) body.s3_region = region.control.value.trim();
    try {
      await api('POST', '/api/repositories', body);
      form.reset();
      await added();
    } catch (error) {
      placeError(form, error, error.code === 'repository_unusable' ? location.control : null);
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}
