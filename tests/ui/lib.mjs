// What the browser tests share: their XV_* settings, a browser with a fresh profile,
// numbered screenshots, the keyboard login and expectations that throw.

import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, firefox } from 'playwright-core';

export const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (this script is started by crates/server/tests/web_ui.rs)`);
  return value;
};
export const url = env('XV_URL');
const shots = env('XV_SCREENSHOTS');
// Only this run's screenshots (the folder's subfolders belong to the other scripts).
mkdirSync(shots, { recursive: true });
for (const file of readdirSync(shots)) if (file.endsWith('.png')) rmSync(join(shots, file));

// The flags that work on this machine's closed network (no background connections).
const FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];
// XV_BROWSER picks Debian's chromium (the default) or firefox-esr, which playwright-core
// drives over WebDriver BiDi (the moz-firefox channel) with the executable given.
// The system's colour preference is set at launch: Firefox over BiDi does not emulate it later.
// Page errors that are the driver's own: in Firefox, playwright-core's <style> elements (put in
// on navigation and for screenshots) are held to the page's CSP and reported; the page makes
// none, and in Chromium every CSP report still counts.
const ENGINES = {
  chromium: {
    type: chromium,
    options: (dark) => ({ executablePath: '/usr/bin/chromium', args: FLAGS, colorScheme: dark ? 'dark' : 'light' }),
    driverErrors: null,
  },
  firefox: {
    type: firefox,
    options: (dark) => ({ channel: 'moz-firefox', executablePath: '/usr/bin/firefox-esr',
      firefoxUserPrefs: { 'layout.css.prefers-color-scheme.content-override': dark ? 0 : 1 } }),
    driverErrors: /blocked an inline style \(style-src-elem\) from being applied/,
  },
};
const engine = ENGINES[process.env.XV_BROWSER ?? 'chromium'];
if (!engine) throw new Error(`XV_BROWSER=${process.env.XV_BROWSER}: give chromium or firefox`);
const TIMEOUT = 30_000;

export function expect(condition, message) {
  if (!condition) throw new Error(`expectation failed: ${message}`);
}

/**
 * The browser with a fresh profile, its system preferring a light (or `dark`) colour scheme;
 * `problems` collects page errors and console errors.
 */
export async function browser(name, { dark = false } = {}) {
  const profile = mkdtempSync(join(tmpdir(), `xenvault-ui-${name}-`));
  const context = await engine.type.launchPersistentContext(profile, {
    ...engine.options(dark), headless: true,
    // The server's certificate is self-signed; the Rust test pins it for its own calls.
    ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 }, timezoneId: 'Europe/Berlin', acceptDownloads: true,
  });
  context.setDefaultTimeout(TIMEOUT);
  const page = context.pages()[0] ?? await context.newPage();
  openPages.push(page);
  const problems = [];
  page.on('pageerror', (e) => { if (!engine.driverErrors?.test(e.message)) problems.push(`page error: ${e.message}`); });
  page.on('console', (m) => { if (m.type() === 'error' && !/status of 4\d\d/.test(m.text())) problems.push(`console: ${m.text()}`); });
  const close = async () => {
    openPages.splice(openPages.indexOf(page), 1);
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, page, problems, close };
}

let step = 0;
/** The pages open now: a failure is shown from the newest. */
const openPages = [];
export async function shot(page, name) {
  step += 1;
  const file = join(shots, `${String(step).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot ${file}`);
}

export async function logIn(page, user, password) {
  await page.goto(url);
  await page.getByLabel('User').waitFor();
  // Keyboard only: the user field has the focus, Tab to the password, Enter submits.
  await page.keyboard.type(user);
  await page.keyboard.press('Tab');
  await page.keyboard.type(password);
  await page.keyboard.press('Enter');
  await page.locator('#who-user', { hasText: user }).waitFor();
}

/** Runs `steps`, exiting 0 when they pass and 1 with the error when one throws. */
export async function main(name, steps) {
  try {
    await steps();
    console.log(`${name}: all steps passed`);
    process.exit(0);
  } catch (error) {
    console.error(error.stack ?? String(error));
    const page = openPages.at(-1);
    if (page) {
      await shot(page, 'failure').catch(() => {});
      console.error(`the page showed:\n${await page.locator('main').innerText().catch((e) => e.message)}`);
    }
    process.exit(1);
  }
}
