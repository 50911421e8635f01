/**
 * Browser tests of the runs sidebar's controls: Set LR with a real learning rate (`1e-5`) reaches the run, and
 * "Stop all" asks first, stops this server's run and leaves a run of another process alone. Screenshots of both
 * dialogs in the light and the dark theme.
 */
import { expect, test } from '@jupyterlab/galata';
import type { IJupyterLabPageFixture } from '@jupyterlab/galata';
import type { Locator } from '@playwright/test';
import { createNotebook, openNotebook, setupCell, trainCell, uniqueName } from './helpers';

const SIDEBAR = '#nb-finetune-runs';
const DIALOG = '.jp-Dialog';

/** A run that trains until stopped at a constant lr: the logged lr is the base lr itself, no schedule factor. */
function constantLrCell(name: string): string {
  return `${trainCell(name)}\nwarmup: 0\nscheduler: constant`;
}

/**
 * A cell that starts a run in a process that is not this kernel's (nor a child of it: `sh` exits at once, so the
 * process is re-parented away from the kernel) and prints its pid. It registers like a run started from a terminal,
 * stays "training" and ends by itself after 5 minutes if nothing kills it.
 */
function otherProcessCell(name: string): string {
  const child = [
    'import os, sys, time',
    'sys.path.insert(0, os.environ["NBF_REPO_ROOT"])',
    'from nb_finetune.core.runs import RunDir',
    `rd = RunDir.create("runs", "${name}")`,
    `rd.write_status(state="training", pid=os.getpid(), name=rd.name, step=3, total_steps=100)`,
    'rd.register()',
    // a second run of the same name in another folder: the sidebar tells the two apart by where they live
    `twin = RunDir.create("elsewhere/runs", "${name}")`,
    `twin.write_status(state="training", pid=os.getpid(), name=twin.name, step=1, total_steps=100)`,
    'twin.register()',
    'end = time.time() + 300',
    'while time.time() < end:',
    '    rd.write_status()',
    '    twin.write_status()',
    '    time.sleep(1)'
  ].join('\n');
  return [
    'import subprocess, sys',
    `child = ${JSON.stringify(child)}`,
    'out = subprocess.run(["sh", "-c", sys.executable + \' -c "$0" >/dev/null 2>&1 & echo $!\', child],',
    '                     capture_output=True, text=True, check=True)',
    'other_pid = int(out.stdout.split()[0])',
    'print("other pid", other_pid)'
  ].join('\n');
}

function row(page: IJupyterLabPageFixture, name: string): Locator {
  return page.locator(`${SIDEBAR} li.nbf-Run`, { has: page.locator('.nbf-Run-name', { hasText: name }) });
}

async function openSidebar(page: IJupyterLabPageFixture): Promise<void> {
  await page.click('.jp-SideBar.jp-mod-left li[data-id="nb-finetune-runs"]');
  await expect(page.locator(SIDEBAR)).toBeVisible();
}

async function setTheme(page: IJupyterLabPageFixture, dark: boolean): Promise<void> {
  await (dark ? page.theme.setDarkTheme() : page.theme.setLightTheme());
  await expect(page.locator('body')).toHaveAttribute('data-jp-theme-light', dark ? 'false' : 'true');
}

/** The run's record from the server extension, as the sidebar gets it. */
async function serverRun(page: IJupyterLabPageFixture, name: string): Promise<any> {
  const reply = await page.request.get('nb-finetune/api/runs');
  expect(reply.ok()).toBe(true);
  const runs = (await reply.json()).runs as any[];
  const run = runs.find(r => r.name === name);
  if (!run) {
    return null;
  }
  const detail = await page.request.get(`nb-finetune/api/runs/${run.id}`);
  return detail.json();
}

test.describe('nb_finetune sidebar controls', () => {
  test("Set LR accepts 1e-5, prefilled with the run's lr, says why a value is refused, and the run applies it", async ({
    page,
    tmpPath
  }) => {
    const name = uniqueName('ui_lr');
    const path = await createNotebook(page, `${tmpPath}/lr.ipynb`, [setupCell(), constantLrCell(name)]);
    await openNotebook(page, path);
    await page.notebook.runCell(0);
    await expect(page.locator('.jp-Cell').nth(0).locator('.jp-Cell-outputWrapper')).toContainText('setup ok');
    await openSidebar(page);
    await page.notebook.runCell(1); // background run: the cell returns, the run trains
    const r = row(page, name);
    await expect(r).toHaveAttribute('data-state', 'training', { timeout: 60000 });
    await expect(r.locator('.nbf-Run-lr')).toHaveText('lr 0.001', { timeout: 30000 });

    try {
      for (const dark of [false, true]) {
        await setTheme(page, dark);
        const theme = dark ? 'dark' : 'light';
        await r.locator('button.nbf-Button-lr').click();
        const dialog = page.locator(DIALOG);
        const input = dialog.locator('input.nbf-LrDialog-input');
        const ok = dialog.locator('button.jp-mod-accept');
        const message = dialog.locator('.nbf-LrDialog-message');
        await expect(input).toBeFocused();
        await expect(input).toHaveValue('0.001'); // the run's base lr
        await expect(ok).toBeEnabled();
        await expect(dialog.locator('.nbf-LrDialog-hint')).toContainText('last logged lr 0.001');
        await dialog.locator('.jp-Dialog-content').screenshot({ path: test.info().outputPath(`set-lr-${theme}.png`) });

        // a bad value: the reason inline, Ok disabled, Enter does not submit
        await input.fill('abc');
        await expect(message).toHaveText(/"abc" is not a number/);
        await expect(message).toHaveAttribute('data-kind', 'error');
        await expect(ok).toBeDisabled();
        await input.press('Enter');
        await expect(dialog).toBeVisible();
        await dialog
          .locator('.jp-Dialog-content')
          .screenshot({ path: test.info().outputPath(`set-lr-refused-${theme}.png`) });
        await input.fill('0');
        await expect(message).toHaveText(/greater than 0/);
        await expect(ok).toBeDisabled();
        // the dialog's own placeholder and the notations people write are all fine
        for (const text of ['6e-5', '0.00006', '1E-5']) {
          await input.fill(text);
          await expect(message).toHaveText('');
          await expect(ok).toBeEnabled();
        }
        if (!dark) {
          await input.press('Escape'); // cancelled: nothing is sent
          await expect(dialog).toBeHidden();
          await expect(r.locator('.nbf-Run-ack')).toHaveText('');
        } else {
          await input.fill('1e-5');
          await expect(ok).toBeEnabled();
          await input.press('Enter'); // Enter submits
          await expect(dialog).toBeHidden();
        }
      }
      await page.locator(SIDEBAR).screenshot({ path: test.info().outputPath('sidebar-set-lr-dark.png') });
    } finally {
      await setTheme(page, false);
    }

    // acknowledged by the run, which logs the new lr from its next log point (constant schedule: exactly 1e-5)
    await expect(r.locator('.nbf-Run-ack')).toHaveText(/set lr=1e-5 acknowledged \(#\d+\)/, { timeout: 60000 });
    await expect(r.locator('.nbf-Run-lr')).toHaveText('lr 1e-5', { timeout: 60000 });
    const detail = await serverRun(page, name);
    const set = detail.commands.filter((c: any) => c.cmd === 'set');
    expect(set).toHaveLength(1); // the cancelled dialog sent nothing
    expect(set[0]).toMatchObject({ args: { lr: 1e-5 }, acknowledged: true });
    expect(detail.lr).toBeCloseTo(1e-5, 12);
    expect(detail.base_lr).toBeCloseTo(1e-5, 12);
    await page.locator(SIDEBAR).screenshot({ path: test.info().outputPath('sidebar-lr-applied.png') });

    await r.locator('button.nbf-Button-stop').click();
    await expect(r).toHaveAttribute('data-state', 'stopped', { timeout: 60000 });
  });

  test("Stop all asks first, names how many runs, stops this server's run and leaves another process's alone", async ({
    page,
    tmpPath
  }) => {
    const mine = uniqueName('ui_mine');
    const other = uniqueName('ui_other');
    const path = await createNotebook(page, `${tmpPath}/stopall.ipynb`, [
      setupCell(),
      otherProcessCell(other),
      trainCell(mine),
      'import os, signal\nos.kill(other_pid, signal.SIGKILL)\nprint("killed")'
    ]);
    await openNotebook(page, path);
    await page.notebook.runCell(0);
    await expect(page.locator('.jp-Cell').nth(0).locator('.jp-Cell-outputWrapper')).toContainText('setup ok');
    await page.notebook.runCell(1);
    await expect(page.locator('.jp-Cell').nth(1).locator('.jp-Cell-outputWrapper')).toContainText('other pid');
    try {
      await openSidebar(page);
      await page.notebook.runCell(2);
      const mineRow = row(page, mine);
      const otherRow = row(page, other).first();
      await expect(mineRow).toHaveAttribute('data-state', 'training', { timeout: 60000 });
      // two runs named `other` (runs/ and elsewhere/runs/) under two headings: where each lives, the path on hover
      await expect(row(page, other)).toHaveCount(2);
      const heading = (r: Locator) =>
        r.evaluate(el => (el.closest('.nbf-Group')!.querySelector('.nbf-Group-where') as HTMLElement).title);
      const wheres = await Promise.all([0, 1].map(i => heading(row(page, other).nth(i))));
      expect(new Set(wheres).size, `locations ${wheres}`).toBe(2);
      expect(wheres.some(w => w.endsWith('/elsewhere/runs'))).toBe(true);
      expect(wheres).toContain(await heading(mineRow)); // control: mine shares runs/ with one of them
      await expect(otherRow).toHaveAttribute('data-state', 'training');
      await expect(mineRow).toHaveAttribute('data-own', 'true');
      await expect(otherRow).toHaveAttribute('data-own', 'false');
      await expect(otherRow.locator('.nbf-Run-owner')).toBeVisible();
      await expect(mineRow.locator('.nbf-Run-owner')).toBeHidden();
      const status = page.locator('#jp-main-statusbar .nbf-Status');
      await expect(status).toContainText(mine, { timeout: 30000 });

      const dialog = page.locator(DIALOG);
      const stopAll = page.locator(`${SIDEBAR} button.nbf-StopAll`);
      try {
        for (const dark of [false, true]) {
          await setTheme(page, dark);
          await stopAll.click();
          await expect(dialog.locator('.jp-Dialog-header')).toHaveText(/^Stop \d+ runs?\?$/);
          // every run it names is one of this server's kernels': ours is there, the other process's is not
          await expect(dialog.locator('.nbf-StopAllDialog li', { hasText: mine })).toHaveCount(1);
          await expect(dialog.locator('.nbf-StopAllDialog li', { hasText: other })).toHaveCount(0);
          const note = dialog.locator('.nbf-StopAllDialog-note');
          await expect(note).toContainText(/runs? of (another process|other processes) .* left alone/);
          const header = await dialog.locator('.jp-Dialog-header').innerText();
          const n = Number(header.match(/Stop (\d+) run/)![1]);
          await expect(dialog.locator('.nbf-StopAllDialog li')).toHaveCount(n);
          await expect(dialog.locator('button.jp-mod-accept')).toHaveText(`Stop ${n} run${n === 1 ? '' : 's'}`);
          await dialog
            .locator('.jp-Dialog-content')
            .screenshot({ path: test.info().outputPath(`stop-all-confirm-${dark ? 'dark' : 'light'}.png`) });
          if (!dark) {
            await dialog.locator('button.jp-mod-reject').click(); // Cancel: nothing stops
            await expect(dialog).toBeHidden();
          } else {
            await dialog.locator('button.jp-mod-accept').click();
            await expect(dialog).toBeHidden();
          }
        }
      } finally {
        await setTheme(page, false);
      }

      await expect(mineRow).toHaveAttribute('data-state', 'stopped', { timeout: 60000 });
      // the status bar hides rather than jumping to the other process's run, which goes on untouched
      await expect(status).toBeHidden({ timeout: 30000 });
      await expect(otherRow).toHaveAttribute('data-state', 'training');
      const detail = await serverRun(page, other);
      expect(detail).toMatchObject({ state: 'training', alive: true, kernel_id: null, commands: [] });
      const stopped = await serverRun(page, mine);
      expect(stopped.commands.map((c: any) => c.cmd)).toEqual(['stop']); // the Cancel sent nothing
      await page.locator(SIDEBAR).screenshot({ path: test.info().outputPath('sidebar-after-stop-all.png') });
    } finally {
      await page.notebook.runCell(3); // the other process ends with the test
    }
    await expect(page.locator('.jp-Cell').nth(3).locator('.jp-Cell-outputWrapper')).toContainText('killed');
    await expect(row(page, other).first()).toHaveAttribute('data-state', 'dead', { timeout: 30000 });
  });
});
