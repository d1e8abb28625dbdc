// The REST API under /api. The session cookie (HttpOnly) goes along by itself; every
// request that changes something echoes the session's CSRF token. What the signed-in user
// may do is read from the OpenAPI document's security scopes, the same source the server
// enforces, so the UI never offers a button the API would refuse.

const CSRF_KEY = 'xenvault.csrf';
const RANK = { 'read-only': 0, operator: 1, admin: 2 };

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let signedOutHandler = () => {};
/** Called when the API answers 401: the session expired or was closed. */
export function onSignedOut(handler) {
  signedOutHandler = handler;
}

export function rememberCsrf(token) {
  localStorage.setItem(CSRF_KEY, token);
}

export function forgetCsrf() {
  localStorage.removeItem(CSRF_KEY);
}

export async function api(method, path, body) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET') headers['x-csrf-token'] = localStorage.getItem(CSRF_KEY) ?? '';
  let response;
  try {
    response = await fetch(path, {
      method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'network', `the server did not answer (${e.message})`);
  }
  if (!response.ok) {
    let answer = {};
    try {
      answer = await response.json();
    } catch {
      // Not an API error body (a proxy's page, say): the status line says enough.
    }
    const error = new ApiError(response.status, answer.code ?? 'http',
      answer.message ?? `${response.status} ${response.statusText}`);
    if (response.status === 401 && path !== '/api/auth/login') signedOutHandler(error);
    throw error;
  }
  return response.status === 204 ? null : response.json();
}

/** Path segment of a name or id. */
export const seg = encodeURIComponent;

let documentPaths = {};
let role = 'read-only';

/** Loads the OpenAPI document and remembers the signed-in role. */
export async function loadPermissions(signedInRole) {
  role = signedInRole;
  documentPaths = (await api('GET', '/api/openapi.json')).paths ?? {};
}

/** Whether the API has this operation at all (e.g. a part still being built). */
export function exists(method, template) {
  return Boolean(documentPaths[template]?.[method.toLowerCase()]);
}

/**
 * Whether the signed-in user may call `method template` (e.g. 'POST', '/api/jobs/{job}/run'):
 * the weakest role its security scopes name; an operation that is not there is refused.
 */
export function can(method, template) {
  const operation = documentPaths[template]?.[method.toLowerCase()];
  if (!operation) return false;
  if (!operation.security) return true;
  const scopes = operation.security.flatMap((requirement) => Object.values(requirement).flat());
  const ranks = scopes.map((s) => RANK[s]).filter((r) => r !== undefined);
  const needed = ranks.length ? Math.min(...ranks) : RANK.admin;
  return RANK[role] >= needed;
}
