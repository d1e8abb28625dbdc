// Settings (admins): users and their roles, API tokens (the secret shown once, when made),
// and the audit log of who did what.

import { actionButton, clearErrors, field, fill, h, placeError } from '../dom.js';
import { api, can, seg } from '../api.js';
import { time } from '../format.js';

const ROLES = ['read-only', 'operator', 'admin'];
const AUDIT_PAGE = 100;

function roleSelect(name) {
  return h('select', { name }, ROLES.map((role) => h('option', { value: role }, role)));
}

export async function settingsPage(main) {
  if (!can('GET', '/api/users')) {
    fill(main, h('h1', {}, 'Settings'), h('p', { class: 'notice', role: 'alert' }, 'Only admins see users, tokens and the audit log.'));
    return;
  }
  const users = h('section', { 'aria-labelledby': 'users-title' });
  const tokens = h('section', { 'aria-labelledby': 'tokens-title' });
  const audit = h('section', { 'aria-labelledby': 'audit-title' });
  fill(main, h('h1', {}, 'Settings'), users, tokens, audit);
  const refreshAudit = () => renderAudit(audit);
  await Promise.all([renderUsers(users, refreshAudit), renderTokens(tokens, refreshAudit), refreshAudit()]);
}

async function renderUsers(section, changed) {
  const list = await api('GET', '/api/users');
  const name = field('Name', h('input', { name: 'user-name', required: true, autocomplete: 'off' }));
  const password = field('Password', h('input', { name: 'user-password', type: 'password', required: true, autocomplete: 'new-password' }), 'At least 8 characters.');
  const role = field('Role', roleSelect('user-role'));
  const form = h('form', { 'aria-label': 'Add a user' }, h('div', { class: 'grid' }, name, password, role),
    h('div', { class: 'error form-error', role: 'alert' }), h('p', {}, h('button', { type: 'submit', class: 'primary' }, 'Add user')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    try {
      await api('POST', '/api/users', { name: name.control.value.trim(), password: password.control.value, role: role.control.value });
      await renderUsers(section, changed);
      await changed();
    } catch (error) {
      placeError(form, error, error.message.includes('password') ? password.control : null);
    }
  });
  fill(section, h('h2', { id: 'users-title' }, 'Users'),
    h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'User'), h('th', {}, 'Role'), h('th', { class: 'wide' }, 'Since'), h('th', {}, ''))),
      h('tbody', {}, list.map((user) => {
        const error = h('div', { class: 'error', role: 'alert' });
        return h('tr', { 'data-user': user.name }, h('td', {}, user.name), h('td', {}, user.role), h('td', { class: 'wide' }, time(user.created_at)),
          h('td', {}, actionButton('Delete', error, async () => {
            if (!confirm(`Delete user ${user.name}?`)) return;
            await api('DELETE', `/api/users/${seg(user.name)}`);
            await renderUsers(section, changed);
            await changed();
          }, { class: 'danger', 'aria-label': `Delete user ${user.name}` }), error));
      })))),
    h('h3', {}, 'Add a user'), form);
}

async function renderTokens(section, changed) {
  const list = await api('GET', '/api/tokens');
  const name = field('Name', h('input', { name: 'token-name', required: true, autocomplete: 'off' }), 'What uses it, e.g. "monitoring".');
  const role = field('Role', roleSelect('token-role'));
  const days = field('Expires after (days)', h('input', { name: 'token-days', type: 'number', min: 1, max: 36500 }), 'Empty: never.');
  const secret = h('div', { 'aria-live': 'polite' });
  const form = h('form', { 'aria-label': 'Create an API token' }, h('div', { class: 'grid' }, name, role, days),
    h('div', { class: 'error form-error', role: 'alert' }), h('p', {}, h('button', { type: 'submit', class: 'primary' }, 'Create token')), secret);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    const body = { name: name.control.value.trim(), role: role.control.value };
    if (days.control.value) body.expires_in_days = Number(days.control.value);
    try {
      const created = await api('POST', '/api/tokens', body);
      await renderTokens(section, changed);
      await changed();
      section.append(h('div', { class: 'notice', role: 'alert' }, h('p', {}, `Token ${created.token.name}: copy it now, it is not shown again.`),
        h('p', {}, h('code', { class: 'fingerprint', id: 'new-token' }, created.secret))));
    } catch (error) {
      placeError(form, error, days.control.value ? days.control : null);
    }
  });
  fill(section, h('h2', { id: 'tokens-title' }, 'API tokens'),
    list.length ? h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Role'), h('th', { class: 'wide' }, 'Prefix'), h('th', { class: 'wide' }, 'Made by'),
        h('th', {}, 'Expires'), h('th', { class: 'wide' }, 'Last used'), h('th', {}, ''))),
      h('tbody', {}, list.map((token) => {
        const error = h('div', { class: 'error', role: 'alert' });
        return h('tr', { 'data-token': token.name }, h('td', {}, token.name), h('td', {}, token.role), h('td', { class: 'wide' }, `${token.prefix}…`),
          h('td', { class: 'wide' }, token.created_by), h('td', {}, token.expires_at ? time(token.expires_at) : 'never'),
          h('td', { class: 'wide' }, token.last_used_at ? time(token.last_used_at) : 'never'),
          h('td', {}, actionButton('Revoke', error, async () => {
            if (!confirm(`Revoke token ${token.name}?`)) return;
            await api('DELETE', `/api/tokens/${seg(token.id)}`);
            await renderTokens(section, changed);
            await changed();
          }, { class: 'danger', 'aria-label': `Revoke token ${token.name}` }), error));
      })))) : h('p', { class: 'muted' }, 'No API token yet.'),
    h('h3', {}, 'Create a token'), form);
}

async function renderAudit(section) {
  const entries = await api('GET', `/api/audit?limit=${AUDIT_PAGE}`);
  fill(section, h('h2', { id: 'audit-title' }, 'Audit log'), h('p', { class: 'hint' }, `The newest ${AUDIT_PAGE} entries.`),
    h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'When'), h('th', {}, 'Who'), h('th', {}, 'What'), h('th', {}, 'On'), h('th', { class: 'wide' }, 'Detail'))),
      h('tbody', {}, entries.map((entry) => h('tr', { 'data-action': entry.action }, h('td', {}, time(entry.at)), h('td', {}, entry.actor),
        h('td', {}, entry.action), h('td', {}, entry.target ?? ''), h('td', { class: 'wide' }, entry.detail ?? '')))))));
}
