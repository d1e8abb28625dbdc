// Building the page with elements and text nodes only (never HTML strings), so nothing the
// API returns can become markup.

/** h('a', {href: '#/x', class: 'c'}, 'text', child): an element. `on*` attributes are listeners. */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
    else if (value === true) element.setAttribute(name, '');
    else element.setAttribute(name, String(value));
  }
  append(element, children);
  return element;
}

function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces an element's children. */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

let nextId = 0;
/** A unique id for label/field pairs. */
export function uid(prefix) {
  nextId += 1;
  return `${prefix}-${nextId}`;
}

/**
 * A labelled field: the control (given the label, a hint and an error slot described by it).
 * Returns the wrapper; the control is `wrapper.control`.
 */
export function field(labelText, control, hint) {
  const id = control.id || uid('f');
  control.id = id;
  const error = h('div', { class: 'error', id: `${id}-error`, role: 'alert' });
  const described = [hint ? `${id}-hint` : null, `${id}-error`].filter(Boolean).join(' ');
  control.setAttribute('aria-describedby', described);
  const isCheck = control.type === 'checkbox';
  const wrapper = isCheck
    ? h('div', { class: 'field check' }, control, h('label', { for: id }, labelText), error)
    : h('div', { class: 'field' }, h('label', { for: id }, labelText), control,
      hint ? h('div', { class: 'hint', id: `${id}-hint` }, hint) : null, error);
  wrapper.control = control;
  return wrapper;
}

/** Shows `message` next to a control made by `field` (empty clears it). */
export function showFieldError(control, message) {
  const slot = document.getElementById(`${control.id}-error`);
  if (slot) slot.textContent = message ?? '';
  if (message) control.setAttribute('aria-invalid', 'true');
  else control.removeAttribute('aria-invalid');
}

/** Clears every field error inside `root`. */
export function clearErrors(root) {
  for (const control of root.querySelectorAll('[aria-invalid]')) control.removeAttribute('aria-invalid');
  for (const slot of root.querySelectorAll('.error')) slot.textContent = '';
}

/**
 * Puts an API error next to what caused it: the control whose current value the message
 * quotes, else the one `fallback` names, else the form's own error slot.
 */
export function placeError(form, error, fallback) {
  const controls = [...form.querySelectorAll('input, select, textarea')];
  const quotes = (value) => {
    const escaped = value.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    return new RegExp(`(^|[^\\w])${escaped}([^\\w]|$)`).test(error.message);
  };
  const quoted = controls.find((c) => c.type !== 'checkbox' && c.value.trim().length >= 2 && quotes(c.value.trim()));
  const target = quoted ?? fallback;
  if (target) {
    showFieldError(target, error.message);
    target.focus();
  } else {
    const slot = form.querySelector('.form-error');
    if (slot) slot.textContent = error.message;
  }
}

/** A status badge ("success", "failed", ...). */
export function badge(status) {
  return h('span', { class: `badge status-${status}` }, status);
}

/** A button that runs `action`, disabled meanwhile, with its error shown in `slot`. */
export function actionButton(label, slot, action, attrs = {}) {
  const button = h('button', { type: 'button', ...attrs }, label);
  button.addEventListener('click', async () => {
    button.disabled = true;
    slot.textContent = '';
    try {
      await action();
    } catch (error) {
      slot.textContent = error.message;
    } finally {
      button.disabled = false;
    }
  });
  return button;
}
