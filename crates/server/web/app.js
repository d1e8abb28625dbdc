// The shell: who is signed in, the navigation, and a hash router (#/jobs, #/runs/ID, ...)
// so the server only ever serves one page. Each page renders into <main> and may return a
// function that stops what it started (live feeds, timers) when the viewer leaves it.

import { api, can, forgetCsrf, loadPermissions, onSignedOut } from './api.js';
import { fill, h } from './dom.js';
import { loginPage } from './pages/login.js';
import { dashboardPage } from './pages/dashboard.js';
import { connectionsPage } from './pages/connections.js';
import { jobFormPage, jobPage, jobsPage } from './pages/jobs.js';
import { runPage, runsPage } from './pages/runs.js';
import { browsePage, restorePage, restorePointPage } from './pages/restore.js';
import { settingsPage } from './pages/settings.js';

const main = document.getElementById('main');
const top = document.getElementById('top');

/** [pattern, page(main, ...captures)]; the first match wins. */
const routes = [
  [/^$/, dashboardPage],
  [/^connections$/, connectionsPage],
  [/^jobs$/, jobsPage],
  [/^jobs\/new$/, (el) => jobFormPage(el, null)],
  [/^jobs\/([^/]+)\/edit$/, jobFormPage],
  [/^jobs\/([^/]+)$/, jobPage],
  [/^runs$/, runsPage],
  [/^runs\/([^/]+)$/, runPage],
  [/^settings$/, settingsPage],
  [/^restore$/, restorePage],
  [/^restore\/([^/]+)\/([^/]+)$/, restorePointPage],
  [/^restore\/([^/]+)\/([^/]+)\/([^/]+)\/([^/]+)$/, browsePage],
];

let me = null;
let leavePage = null;

async function show() {
  if (leavePage) leavePage();
  leavePage = null;
  if (!me) return;
  const [path, query] = location.hash.replace(/^#\/?/, '').split('?');
  for (const link of top.querySelectorAll('nav a')) {
    const target = link.getAttribute('href').replace(/^#\/?/, '');
    const current = target === '' ? path === '' : path === target || path.startsWith(`${target}/`);
    if (current) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const route = routes.find(([pattern]) => pattern.test(path));
  if (!route) {
    fill(main, h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/' }, 'Back to the dashboard')));
    return;
  }
  const captures = path.match(route[0]).slice(1).map(decodeURIComponent);
  fill(main, h('p', { class: 'muted' }, 'Loading…'));
  try {
    const params = new URLSearchParams(query ?? '');
    leavePage = (await route[1](main, ...captures, params)) ?? null;
  } catch (error) {
    fill(main, h('h1', {}, 'Something went wrong'), h('p', { class: 'error', role: 'alert' }, error.message));
  }
}

function signedOut() {
  me = null;
  forgetCsrf();
  if (leavePage) leavePage();
  leavePage = null;
  top.hidden = true;
  loginPage(main, signedIn);
}

async function signedIn(who) {
  me = who;
  await loadPermissions(me.role);
  fill(document.getElementById('who-user'), me.user);
  fill(document.getElementById('who-role'), me.role);
  document.getElementById('who-role').title = `signed in as ${me.actor}`;
  document.getElementById('settings-link').hidden = !can('GET', '/api/users');
  top.hidden = false;
  await show();
}

document.getElementById('logout').addEventListener('click', async () => {
  try {
    await api('POST', '/api/auth/logout');
  } finally {
    location.hash = '#/';
    signedOut();
  }
});
onSignedOut(() => {
  if (me) signedOut();
});
window.addEventListener('hashchange', () => {
  show();
  main.focus();
});

try {
  await signedIn(await api('GET', '/api/auth/me'));
} catch {
  signedOut();
}
