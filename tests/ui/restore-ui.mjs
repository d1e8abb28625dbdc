// The restore page and the repository status end to end in Debian's chromium, driven by
// playwright-core, as an operator (who may verify, export and restore, but edit nothing).
// Started by crates/server/tests/web_ui.rs, which registers the simulated pool and a local
// repository holding a backup of the demo VM, then writes over the VM's root disk so a
// restore over the original has something to put back. Steps: verify the repository now;
// export disk 0 as raw (bytes equal to the disk backed up) and qcow2 (qemu-img compare);
// instant access to disk 0 read by qemu-img from the connection string shown, then stopped;
// the VM restored as a new one with its network mapped; a disk restored to a new VDI and
// again over it (differential: nothing written); the
// VM restored over the original (refused without the confirmation, next to it, then
// differential); last, the Rust side damages a pack and verify now names the damage.
// stdout "new-vm UUID" names the VM restored as new for the Rust side; after "damage-a-pack"
// the script waits for the file XV_DAMAGED_MARKER, which the Rust side makes once it has.

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { browser, env, expect, logIn, main, shot } from './lib.mjs';

const vmName = env('XV_VM');
const diskSha256 = env('XV_DISK0_SHA256');
const work = mkdtempSync(join(tmpdir(), 'xenvault-restore-ui-'));
const sha256 = (file) => createHash('sha256').update(readFileSync(file)).digest('hex');
const RESTORE_TIMEOUT = 300_000;

async function download(page, link) {
  const [file] = await Promise.all([page.waitForEvent('download'), link.click()]);
  const saved = join(work, file.suggestedFilename());
  await file.saveAs(saved);
  return { name: file.suggestedFilename(), saved };
}

/** The restore started by `button` in `form` ends in success; returns its report. */
async function restoreSucceeds(form, button) {
  await form.getByRole('button', { name: button }).click();
  const status = form.locator('#restore-status');
  await status.filter({ hasText: /success|failed|cancelled/ }).waitFor({ timeout: RESTORE_TIMEOUT });
  const report = form.locator('pre.log');
  const text = (await status.textContent()) === 'success' ? await report.textContent() : await form.textContent();
  expect((await status.textContent()) === 'success', `${button} succeeds: ${text}`);
  return JSON.parse(text);
}

async function repositoryStatus(page) {
  await page.getByRole('link', { name: 'Pools & repositories' }).click();
  const row = page.locator('tr[data-repository="local"]');
  await row.getByRole('cell', { name: /^\d+\.\d\d×$/ }).waitFor();
  await row.getByText('never verified').waitFor();
  // An operator runs and tests, but adds and deletes nothing.
  for (const heading of ['Add a pool', 'Add a repository']) {
    expect((await page.getByRole('heading', { name: heading }).count()) === 0, `an operator has no ${heading} form`);
  }
  expect((await page.getByRole('button', { name: /^Delete / }).count()) === 0, 'an operator has no Delete buttons');
  await page.getByRole('button', { name: 'Verify repository local now' }).click();
  await row.locator('[data-verify="ok"]').waitFor({ timeout: 120_000 });
  expect(/verified, \d+ chunks .* intact/.test(await row.locator('[data-verify]').textContent()), 'the verify result is shown');
  await shot(page, 'repository-verified');
}

/** Verify now finds the pack the Rust side damaged. */
async function damageFound(page) {
  console.log('damage-a-pack');
  const marker = env('XV_DAMAGED_MARKER');
  for (let waited = 0; !existsSync(marker); waited += 100) {
    expect(waited < 30_000, 'the Rust side damages a pack');
    await new Promise((resolve) => { setTimeout(resolve, 100); });
  }
  await page.getByRole('link', { name: 'Pools & repositories' }).click();
  const row = page.locator('tr[data-repository="local"]');
  await row.locator('[data-verify="ok"]').waitFor();
  await page.getByRole('button', { name: 'Verify repository local now' }).click();
  await row.locator('[data-verify="damaged"]').waitFor({ timeout: 120_000 });
  const shown = await row.locator('[data-verify]').textContent();
  expect(/\d+ bad chunk\(s\), \d+ restore point\(s\) touched/.test(shown), `the damage is shown: ${shown}`);
  await shot(page, 'repository-damaged');
}

async function exports(page) {
  const disk = page.locator('section[data-disk="0"]');
  const raw = await download(page, disk.getByRole('link', { name: 'Export disk 0 as raw' }));
  expect(new RegExp(`^${vmName}-disk0-\\d{8}T\\d{4}Z\\.raw$`).test(raw.name), `the file is named by VM, disk and time: ${raw.name}`);
  expect(sha256(raw.saved) === diskSha256, 'the raw export is the disk backed up, byte for byte');
  const qcow2 = await download(page, disk.getByRole('link', { name: 'Export disk 0 as qcow2' }));
  expect(qcow2.name.endsWith('.qcow2'), `qcow2 export named ${qcow2.name}`);
  execFileSync('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', raw.saved, qcow2.saved]);
  await shot(page, 'restore-point-exports');
}

async function instantAccess(page) {
  const section = page.locator('section', { has: page.getByRole('heading', { name: 'Instant access over NBD' }) });
  // Keyboard only: the disk, Tab past TLS to the button, Enter.
  await section.getByLabel('Disk').focus();
  await page.keyboard.press('Home');
  await page.keyboard.press('Tab');
  await page.keyboard.press('Tab');
  expect(await section.getByRole('button', { name: 'Start instant access' }).evaluate((b) => b === document.activeElement),
    'Tab reaches Start instant access');
  await page.keyboard.press('Enter');
  const served = section.locator('li[data-instant]');
  await served.waitFor();
  const address = (await served.locator('code.connection').textContent()).trim();
  expect(/^nbd:\/\/127\.0\.0\.1:\d+\/[0-9a-f]{32}$/.test(address), `the connection string is shown: ${address}`);
  expect((await served.locator('pre.commands').textContent()).includes(`qemu-img convert -f raw ${address}`), 'the qemu-img line is shown');
  await shot(page, 'instant-access');
  const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', '-f', 'raw', address]).toString());
  expect(info['virtual-size'] > 0, `qemu-img reads its size: ${info['virtual-size']}`);
  const copy = join(work, 'instant.raw');
  execFileSync('qemu-img', ['convert', '-f', 'raw', address, '-O', 'raw', copy]);
  expect(sha256(copy) === diskSha256, 'the disk read over NBD is the disk backed up');
  await served.getByRole('button', { name: 'Stop instant access to disk 0' }).click();
  await section.getByText('No disk of this restore point is served now.').waitFor();
  let refused = false;
  try {
    execFileSync('qemu-img', ['info', '-f', 'raw', address], { stdio: 'pipe' });
  } catch {
    refused = true;
  }
  expect(refused, 'a stopped instant access is gone');
}

async function restores(page) {
  // As a new VM, its interface moved from the management network to the NBD network.
  const vmForm = page.locator('form', { has: page.getByRole('heading', { name: `Restore the VM ${vmName}` }) });
  await vmForm.getByLabel('Interfaces on network Pool-wide network associated with eth0').selectOption({ label: 'NBD network (xenbr1)' });
  await vmForm.getByLabel('As a template').check();
  expect(await vmForm.getByLabel('Start the VM once restored').isDisabled(), 'a template cannot be started');
  await vmForm.getByLabel('As a template').uncheck();
  await shot(page, 'restore-vm-as-new-mapped');
  const asNew = await restoreSucceeds(vmForm, 'Restore as a new VM');
  console.log(`new-vm ${asNew.vm_uuid}`);
  await shot(page, 'restored-as-new');

  // One disk into a new VDI on the shared SR.
  const diskForm = page.locator('form', { has: page.getByRole('heading', { name: 'Restore a disk' }) });
  await diskForm.getByLabel('Disk', { exact: true }).selectOption('1');
  const sr = diskForm.getByLabel('SR', { exact: true });
  await sr.selectOption(await sr.locator('option', { hasText: 'Shared NFS storage' }).getAttribute('value'));
  await diskForm.getByLabel('Name of the new disk').fill('data disk back');
  const disk = await restoreSucceeds(diskForm, 'Restore the disk');
  expect(disk.created && disk.name_label === 'data disk back' && disk.vdi_uuid, `a new VDI: ${JSON.stringify(disk)}`);
  await shot(page, 'disk-restored');
  // And back over that new disk, differential: it holds the same data, so nothing is written.
  await page.reload();
  await diskForm.getByLabel('Disk', { exact: true }).selectOption('1');
  await diskForm.getByLabel('Over an existing disk (its content is replaced)').check();
  const vdi = diskForm.getByLabel('Disk to overwrite');
  await vdi.selectOption(await vdi.locator('option', { hasText: 'data disk back' }).getAttribute('value'));
  await diskForm.getByLabel('I understand: this disk\'s content is replaced').check();
  await diskForm.getByLabel('Differential: write only the blocks that differ').check();
  const again = await restoreSucceeds(diskForm, 'Restore the disk');
  expect(!again.created && again.vdi_uuid === disk.vdi_uuid && again.bytes_written === 0,
    `over the same data nothing is written: ${JSON.stringify(again)}`);

  // Over the original: the page warns, the API refuses without the confirmation (shown
  // next to it), then a differential restore writes back only what changed.
  await vmForm.getByLabel('Over the original VM (its disks are replaced)').check();
  await vmForm.getByRole('note').filter({ hasText: 'What they hold now is lost.' }).waitFor();
  expect(await vmForm.getByLabel('Interfaces on network Pool-wide network associated with eth0').isHidden(), 'mappings are for restores as new');
  await vmForm.getByRole('button', { name: 'Restore over the original VM' }).click();
  const confirm = vmForm.getByLabel('I understand: the original VM\'s disks are replaced');
  await vmForm.locator('input[name="confirm-overwrite"][aria-invalid="true"]').waitFor();
  expect(/confirm_overwrite/.test(await vmForm.locator(`#${await confirm.getAttribute('id')}-error`).textContent()), 'the refusal is next to the confirmation');
  await shot(page, 'restore-over-refused-unconfirmed');
  await confirm.check();
  await vmForm.getByLabel('Differential: write only the blocks that differ').check();
  const over = await restoreSucceeds(vmForm, 'Restore over the original VM');
  expect(over.mode === 'overwrite' && over.differential && over.disks.every((d) => d.bytes_written < d.size), `a differential restore over the original: ${JSON.stringify(over)}`);
  await shot(page, 'restored-over-original');
}

await main('restore UI', async () => {
  const { page, problems, close } = await browser('restore');
  await logIn(page, 'oscar', env('XV_OPERATOR_PASSWORD'));
  await repositoryStatus(page);
  await page.getByRole('link', { name: 'Restore' }).click();
  await page.locator(`section[data-vm="${vmName}"]`).getByRole('link').first().click();
  await page.getByRole('heading', { name: 'Instant access over NBD' }).waitFor();
  await shot(page, 'restore-point');
  await exports(page);
  await instantAccess(page);
  await restores(page);
  await damageFound(page);
  expect(problems.length === 0, problems.join('\n'));
  await close();
  rmSync(work, { recursive: true, force: true });
});
