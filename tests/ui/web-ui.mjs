// The web UI end to end in Debian's chromium, driven by playwright-core. Started by
// crates/server/tests/web_ui.rs, which runs the server, the simulated pool and a local
// repository and passes them in XV_* variables. It does what a new admin does, saving a
// screenshot of each step (a backup job, then a second repository and a mirror job to it,
// both made in the job form and run), then checks that an operator cannot edit a job. Any failed
// expectation throws: the process exits non-zero and the Rust test shows this output.
// stdout line "watching-live-run" tells the Rust side the run page is open on the live run.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { browser, env, expect, logIn, main, shot, url } from './lib.mjs';

const hex = (text) => text.replace(/[^0-9a-f]/gi, '').toLowerCase();

async function admin() {
  const { page, problems, close } = await browser('admin');
  await page.goto(url);
  await page.getByLabel('User').waitFor();
  await page.getByLabel('User').fill('admin');
  await page.getByLabel('Password').fill('wrong password');
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('[aria-invalid="true"]').waitFor();
  const refused = await page.locator('.error:not(:empty)').first().textContent();
  expect(/wrong user name or password/.test(refused), `a refused login is shown: ${refused}`);
  await shot(page, 'login-refused');

  await logIn(page, 'admin', env('XV_ADMIN_PASSWORD'));
  expect((await page.locator('#who-role').textContent()) === 'admin', 'the role is shown');
  await shot(page, 'dashboard-empty');

  // A pool: the simulator's self-signed certificate is shown to confirm, then pinned.
  await page.getByRole('link', { name: 'Pools & repositories' }).click();
  await page.getByRole('heading', { name: 'Add a pool' }).waitFor();
  await page.getByLabel('Name', { exact: true }).first().fill('sim');
  await page.getByLabel('Master URL').fill(env('XV_SIM_URL'));
  await page.getByLabel('Password').fill(env('XV_SIM_PASSWORD'));
  await page.getByRole('button', { name: 'Add pool' }).click();
  const shown = await page.locator('[data-fingerprint]').getAttribute('data-fingerprint');
  expect(hex(shown) === hex(env('XV_SIM_FINGERPRINT')) && /^[0-9a-f:]+$/i.test(shown), `the fingerprint shown (${shown}) is the simulator's`);
  await shot(page, 'pool-fingerprint-to-confirm');
  await page.getByRole('button', { name: 'Trust this certificate and add the pool' }).click();
  await page.getByRole('cell', { name: /pinned/ }).waitFor();
  await page.getByRole('button', { name: 'Test pool sim' }).click();
  await page.getByText(/\d+ host\(s\), \d+ VM\(s\)/).waitFor();
  await shot(page, 'pool-added-and-tested');

  // A repository: a wrong passphrase is refused next to the form, the right one adds it.
  const repoForm = page.locator('form', { has: page.getByRole('heading', { name: 'Add a repository' }) });
  await repoForm.getByLabel('Name').fill('local');
  await repoForm.getByLabel('Location').fill(env('XV_REPO'));
  await repoForm.getByLabel('Passphrase').fill('not the passphrase');
  await repoForm.getByRole('button', { name: 'Add repository' }).click();
  await repoForm.locator('[aria-invalid="true"]').waitFor();
  await shot(page, 'repository-refused');
  await repoForm.getByLabel('Passphrase').fill(env('XV_PASSPHRASE'));
  await repoForm.getByRole('button', { name: 'Add repository' }).click();
  const row = page.locator('tr[data-repository="local"]');
  await row.waitFor();
  // It holds one restore point: the Rust side backed up the demo VM into it.
  await row.getByRole('cell', { name: '1', exact: true }).waitFor();
  await row.getByRole('cell', { name: /^\d+\.\d\d×$/ }).waitFor();
  await shot(page, 'repository-added');

  // The dashboard: the demo VM has a restore point (the Rust side's backup) but is in no job,
  // so it is listed as not protected, unprotected VMs first; the 30-day chart is drawn.
  await page.getByRole('link', { name: 'Dashboard' }).click();
  const demoVm = page.locator(`#protection tr[data-vm="${env('XV_VM')}"]`);
  await demoVm.waitFor();
  expect((await demoVm.getAttribute('data-protected')) === 'false', 'the demo VM is not protected yet');
  expect((await demoVm.textContent()).includes('in no job'), 'the reason is shown');
  expect((await page.locator('#protection tbody tr').first().getAttribute('data-protected')) === 'false', 'unprotected VMs come first');
  expect((await page.locator('svg.chart rect.bar').count()) === 30, 'the chart has a bar per day for 30 days');
  expect((await page.getByLabel('Not protected without a restore point in (days)').inputValue()) === '2', 'the default is 2 days');
  await shot(page, 'dashboard-unprotected');

  // A daily job for the VMs tagged prod; a wrong cron line is shown next to its field.
  await page.getByRole('link', { name: 'Jobs' }).click();
  await page.getByRole('link', { name: 'New job' }).click();
  await page.getByLabel('Name', { exact: true }).first().fill('prod-daily');
  expect((await page.getByLabel('Pool').inputValue()) === 'sim', 'the pool is offered');
  expect((await page.getByLabel('Repository').inputValue()) === 'local', 'the repository is offered');
  await page.getByLabel('VMs with any of these tags').fill('prod');
  // The live preview: the VMs tagged prod now, the demo VM only.
  await page.locator(`.preview li[data-vm="${env('XV_VM')}"]`).waitFor();
  await page.locator('.preview h3', { hasText: 'Matching VMs now: 1' }).waitFor();
  expect((await page.locator('.preview li').count()) === 1, 'only the prod VM matches');
  await page.getByLabel('Time zone').fill('Europe/Berlin');
  await page.getByLabel('Keep daily').fill('7');
  await page.locator('.schedule-reading .reading', { hasText: 'At 02:00.' }).waitFor();
  await shot(page, 'job-preview-and-schedule');
  // A wrong cron line: its reading says why while typing, and the job is refused.
  await page.getByLabel('Cron line').fill('61 2 * * *');
  await page.locator('.schedule-reading .error', { hasText: '61 2' }).waitFor();
  await page.getByRole('button', { name: 'Create job' }).click();
  await page.locator('input[name="cron"][aria-invalid="true"]').waitFor();
  await shot(page, 'job-cron-refused');
  await page.getByLabel('Cron line').fill('0 2 * * *');
  await page.locator('ol.next-runs li').nth(4).waitFor();
  await page.getByRole('button', { name: 'Create job' }).click();
  await page.getByRole('heading', { name: 'Job prod-daily' }).waitFor();
  await page.getByText('tagged prod').waitFor();
  await page.getByText('0 2 * * * (Europe/Berlin), inc').waitFor();
  // The schedule in words with its next 5 runs, at 02:00 in its zone (the browser's is Berlin too).
  await page.locator('.schedule-view .reading', { hasText: 'At 02:00.' }).waitFor();
  const nextRuns = await page.locator('.schedule-view ol.next-runs time').allTextContents();
  expect(nextRuns.length === 5 && nextRuns.every((t) => /02:00/.test(t)), `5 next runs at 02:00: ${nextRuns.join(' | ')}`);
  await shot(page, 'job-created');
  // Edit: the whole job is replaced in one request.
  await page.getByRole('link', { name: 'Edit prod-daily' }).click();
  // Cleared first: over WebDriver BiDi, Firefox's fill of a number field adds to its value.
  await page.getByLabel('Keep daily').clear();
  await page.getByLabel('Keep daily').fill('14');
  await page.getByRole('button', { name: 'Save job' }).click();
  await page.getByText('keeps daily 14').waitFor();

  const runNow = page.getByRole('button', { name: 'Run prod-daily now' });
  if (await runNow.count()) {
    await runNow.click();
    await page.locator('#run-status', { hasText: /success|partial|failed|cancelled|interrupted/ }).waitFor({ timeout: 300_000 });
    expect((await page.locator('#run-status').textContent()) === 'success', 'the run succeeds');
    const disks = page.locator('.task[data-kind="disk"]');
    expect((await disks.count()) > 0, 'the run shows its disks');
    for (const disk of await disks.all()) expect((await disk.locator('.strategy').count()) === 1, 'each disk shows its strategy');
    await shot(page, 'run-now-finished');
    // Now the demo VM is in a job with a fresh restore point: protected, listed after the rest.
    await page.getByRole('link', { name: 'Dashboard' }).click();
    await page.locator(`#protection tr[data-vm="${env('XV_VM')}"][data-protected="true"]`).waitFor();
    const protection = await page.locator('#protection tbody tr').evaluateAll((rows) => rows.map((r) => r.dataset.protected));
    expect(protection.lastIndexOf('false') < protection.indexOf('true'), `unprotected VMs before protected ones: ${protection.join(', ')}`);
    await page.getByText('The figures as a table').click();
    await page.locator('#daily-figures tbody tr').first().waitFor();
    await shot(page, 'dashboard-protected');
  } else {
    console.log('run now: the API has no POST /api/jobs/{job}/run yet, so the page offers no button');
  }

  // A run in progress (the Rust side finishes it once the page follows its live feed).
  await page.getByRole('link', { name: 'Runs' }).click();
  await page.getByLabel('Job', { exact: true }).selectOption({ label: 'nightly' });
  await page.getByRole('button', { name: 'Filter' }).click();
  await page.getByRole('table').getByRole('link').first().click();
  await page.locator('#run-status', { hasText: 'running' }).waitFor();
  await page.locator('progress').first().waitFor();
  await shot(page, 'run-live');
  console.log('watching-live-run');
  await page.locator('#run-status', { hasText: 'success' }).waitFor({ timeout: 60_000 });
  const disks = page.locator('.task[data-kind="disk"]');
  expect((await disks.count()) === 2, 'both disks are in the tree');
  expect((await disks.nth(0).locator('.strategy').textContent()).includes('cbt-nbd'), 'disk 0 shows its strategy');
  expect((await disks.nth(1).locator('.strategy').textContent()).includes('full'), 'disk 1 shows its strategy');
  await page.getByText('changed block tracking was off').waitFor();
  await page.locator('.log', { hasText: 'disk 1 read' }).waitFor();
  await shot(page, 'run-finished');
  await page.setViewportSize({ width: 390, height: 844 });
  await shot(page, 'run-phone');
  await page.setViewportSize({ width: 1280, height: 900 });

  await restore(page);
  await mirrorJob(page);

  // Settings: an API token (its secret shown once) and the audit log of what was done.
  await page.getByRole('link', { name: 'Settings' }).click();
  await page.getByLabel('Name', { exact: true }).nth(1).fill('monitoring');
  await page.getByRole('button', { name: 'Create token' }).click();
  expect((await page.locator('#new-token').textContent()).startsWith('xvt_'), 'the new token is shown once');
  await page.locator('tr[data-token="monitoring"]').waitFor();
  await page.locator('tr[data-action="pool.add"]', { hasText: 'sim' }).waitFor();
  await page.locator('tr[data-action="job.update"]', { hasText: 'prod-daily' }).waitFor();
  await shot(page, 'settings');

  await page.getByRole('link', { name: 'Dashboard' }).click();
  await page.locator('tr[data-job="prod-daily"]').waitFor();
  await page.locator('#protection tbody tr').first().waitFor();
  await page.locator('svg.chart').waitFor();
  const order = await page.locator('tr[data-job]').evaluateAll((rows) => rows.map((r) => r.dataset.job));
  expect(order[0] === 'flaky', `failures come first: ${order.join(', ')}`);
  await shot(page, 'dashboard');
  // Dark by the system's preference: the same dashboard in a browser whose system prefers dark.
  const background = (p) => p.evaluate(() => getComputedStyle(document.body).backgroundColor);
  const dark = await browser('admin-dark', { dark: true });
  await logIn(dark.page, 'admin', env('XV_ADMIN_PASSWORD'));
  await dark.page.locator('tr[data-job="prod-daily"]').waitFor();
  await dark.page.locator('svg.chart').waitFor();
  expect((await background(dark.page)) !== (await background(page)), 'the page follows a dark system preference');
  await shot(dark.page, 'dashboard-dark');
  expect(dark.problems.length === 0, dark.problems.join('\n'));
  await dark.close();
  await page.setViewportSize({ width: 390, height: 844 });
  await shot(page, 'dashboard-phone');
  await page.setViewportSize({ width: 1280, height: 900 });

  await page.getByRole('button', { name: 'Log out' }).click();
  await page.getByLabel('User').waitFor();
  expect(problems.length === 0, problems.join('\n'));
  await close();
}

/** Browses the demo VM's restore point, downloads /etc/hostname, restores the VM as new. */
async function restore(page) {
  await page.getByRole('link', { name: 'Restore' }).click();
  const vm = page.locator(`section[data-vm="${env('XV_VM')}"]`);
  await vm.getByRole('link').first().click();
  await page.getByRole('link', { name: 'Browse p1' }).click();
  await page.getByRole('link', { name: 'etc/' }).click();
  await page.locator('tr[data-entry="hostname"]').waitFor();
  await shot(page, 'file-browser');
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('link', { name: 'Download hostname' }).click()]);
  const saved = await download.path();
  const digest = createHash('sha256').update(readFileSync(saved)).digest('hex');
  expect(digest === env('XV_HOSTNAME_SHA256'), `the downloaded /etc/hostname is the disk's (${digest})`);
  await page.getByRole('link', { name: 'Back to the restore point' }).click();
  await page.getByRole('button', { name: 'Restore as a new VM' }).click();
  await page.locator('#restore-status', { hasText: /success|failed|cancelled/ }).waitFor({ timeout: 300_000 });
  expect((await page.locator('#restore-status').textContent()) === 'success', 'the VM restore succeeds');
  await shot(page, 'vm-restored');
}

/**
 * A second repository, then a mirror job made in the form (the kind shows its own fields) and
 * run now: the Rust side checks the restore points arrived there.
 */
async function mirrorJob(page) {
  await page.getByRole('link', { name: 'Pools & repositories' }).click();
  const repoForm = page.locator('form', { has: page.getByRole('heading', { name: 'Add a repository' }) });
  await repoForm.getByLabel('Name').fill('offsite');
  await repoForm.getByLabel('Location').fill(env('XV_MIRROR_REPO'));
  await repoForm.getByLabel('Passphrase').fill(env('XV_MIRROR_PASSPHRASE'));
  await repoForm.getByRole('button', { name: 'Add repository' }).click();
  await page.locator('tr[data-repository="offsite"]').waitFor();

  await page.getByRole('link', { name: 'Jobs' }).click();
  await page.getByRole('link', { name: 'New job' }).click();
  // The form fills its kinds when the job model arrives: read them once it has.
  await page.getByLabel('Kind').locator('option', { hasText: 'config-backup' }).waitFor({ state: 'attached' });
  const kinds = await page.getByLabel('Kind').locator('option').allTextContents();
  for (const kind of ['backup', 'backup-xva', 'mirror', 'pool-metadata', 'config-backup']) {
    expect(kinds.includes(kind), `the form offers the ${kind} kind (${kinds.join(', ')})`);
  }
  await page.getByLabel('Name', { exact: true }).first().fill('offsite-copy');
  await page.getByLabel('Kind').selectOption('mirror');
  await page.locator('#kind-hint', { hasText: 'only missing chunks move' }).waitFor();
  expect(!(await page.getByLabel('Pool').isVisible()), 'a mirror job has no pool');
  expect(!(await page.getByLabel('VMs with any of these tags').isVisible()), 'nor selection rules');
  expect(!(await page.getByLabel('VMs at once').isVisible()), 'nor per-VM backup settings');
  expect(await page.getByLabel('VMs by name or uuid').isVisible(), 'VMs by name narrow what is copied');
  await page.getByLabel('Repository').selectOption('local');
  await page.getByLabel('Copy to').selectOption('offsite');
  await page.getByLabel('Keep last').clear();
  await page.getByLabel('Keep last').fill('5');
  await shot(page, 'job-mirror-form');
  await page.getByRole('button', { name: 'Create job' }).click();
  await page.getByRole('heading', { name: 'Job offsite-copy' }).waitFor();
  await page.getByText('local → offsite').waitFor();
  await page.getByText('to offsite, every restore point, verified after copying').waitFor();
  await page.getByRole('button', { name: 'Run offsite-copy now' }).click();
  await page.locator('#run-status', { hasText: /success|partial|failed|cancelled|interrupted/ }).waitFor({ timeout: 120_000 });
  expect((await page.locator('#run-status').textContent()) === 'success', 'the mirror run succeeds');
  await shot(page, 'mirror-run-finished');
}

async function operator() {
  const { page, problems, close } = await browser('operator');
  await logIn(page, 'oscar', env('XV_OPERATOR_PASSWORD'));
  expect((await page.locator('#who-role').textContent()) === 'operator', 'the operator role is shown');
  await page.getByRole('link', { name: 'Jobs' }).click();
  const row = page.locator('tr[data-job="prod-daily"]');
  await row.waitFor();
  expect((await page.getByRole('link', { name: 'New job' }).count()) === 0, 'an operator has no New job button');
  expect(!(await page.getByRole('link', { name: 'Settings' }).isVisible()), 'an operator has no Settings page');
  for (const label of ['Edit prod-daily', 'Delete prod-daily', 'Disable prod-daily']) {
    expect((await page.getByRole('button', { name: label }).count()) + (await page.getByRole('link', { name: label }).count()) === 0,
      `an operator has no ${label} button`);
  }
  await shot(page, 'operator-jobs');
  await page.goto(`${url}/#/jobs/prod-daily/edit`);
  await page.getByText('Your role may not change jobs.').waitFor();
  expect((await page.locator('form input').count()) === 0, 'no job form for an operator');
  await shot(page, 'operator-edit-refused');
  // And the API agrees: the same change through the session is refused.
  const status = await page.evaluate(async () => {
    const job = await (await fetch('/api/jobs/prod-daily')).json();
    const answer = await fetch('/api/jobs/prod-daily', { method: 'PUT', headers: { 'content-type': 'application/json',
      'x-csrf-token': localStorage.getItem('xenvault.csrf') }, body: JSON.stringify({ ...job, name: 'renamed' }) });
    return answer.status;
  });
  expect(status === 403, `the API refuses an operator's job change (got ${status})`);
  expect(problems.length === 0, problems.join('\n'));
  await close();
}

await main('web UI', async () => {
  await admin();
  await operator();
});
