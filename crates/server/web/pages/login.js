// Sign in with a user name and password: the server sets the session cookie, and the
// answer's CSRF token is kept for the requests that change something.

import { api, rememberCsrf } from '../api.js';
import { clearErrors, field, fill, h, placeError } from '../dom.js';

export function loginPage(main, signedIn) {
  const user = field('User', h('input', { name: 'user', autocomplete: 'username', required: true }));
  const password = field('Password', h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true }));
  const submit = h('button', { class: 'primary', type: 'submit' }, 'Log in');
  const form = h('form', { class: 'panel login', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'xenvault'), h('p', { class: 'muted' }, 'Sign in to manage backups.'),
    user, password, h('div', { class: 'error form-error', role: 'alert' }), h('p', {}, submit));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors(form);
    submit.disabled = true;
    try {
      const session = await api('POST', '/api/auth/login', { user: user.control.value, password: password.control.value });
      rememberCsrf(session.csrf_token);
      const me = await api('GET', '/api/auth/me');
      await signedIn(me);
    } catch (error) {
      placeError(form, error, password.control);
    } finally {
      submit.disabled = false;
    }
  });
  fill(main, form);
  user.control.focus();
}
