/** Browser tests of the nb_finetune JupyterLab extension: highlighting, the runs sidebar, the status bar. */
import { expect, test } from '@jupyterlab/galata';
import type { Locator, Page } from '@playwright/test';
import {
  createNotebook,
  execCommand,
  kernelStatus,
  NOTEBOOK7,
  notebook7Url,
  openNotebook,
  runCellNoWait,
  setupCell,
  trainCell,
  uniqueName,
  waitForKernel
} from './helpers';

const SIDEBAR = '#nb-finetune-runs';

/** Text and computed colour of every highlighted token on line `line` (0-based) of cell `cell`'s editor. */
async function lineTokens(page: Page, cell: number, line: number) {
  return page.evaluate(
    ([cell, line]) => {
      const cells = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell');
      const lines = cells[cell].querySelectorAll('.cm-content .cm-line');
      const el = lines[line] as HTMLElement;
      const base = getComputedStyle(el).color;
      const tokens = Array.from(el.querySelectorAll('span'))
        .filter(s => s.children.length === 0 && s.textContent!.trim() !== '')
        .map(s => ({ text: s.textContent!, color: getComputedStyle(s).color, cls: s.className }));
      return { text: el.textContent, base, tokens };
    },
    [cell, line] as const
  );
}

test.describe('nb_finetune lab extension', () => {
  test('a %%finetune cell body is highlighted as YAML', async ({ page, tmpPath }) => {
    const body = 'model: tiny-bert\nepochs: 3\nfreeze: all_but_head\nlr: 5e-5';
    const path = await createNotebook(page, `${tmpPath}/highlight.ipynb`, [`%%finetune demo\n${body}`, body]);
    await openNotebook(page, path);
    const cells = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell');
    await expect(cells).toHaveCount(2);

    // line 1 of the magic cell: `model: tiny-bert` as YAML -> the key is a token with its own colour
    const yaml = await lineTokens(page, 0, 1);
    const plain = await lineTokens(page, 1, 0);
    expect(yaml.text).toBe('model: tiny-bert');
    const key = yaml.tokens.find(t => t.text === 'model');
    expect(key, 'the YAML key is a highlighted token').toBeTruthy();
    expect(key!.color).not.toBe(yaml.base);
    // the same text in an ordinary (Python) cell is not highlighted like that
    const pyKey = plain.tokens.find(t => t.text === 'model');
    expect(pyKey?.color ?? plain.base).not.toBe(key!.color);

    // numbers in any notation (JupyterLab's YAML leaves `5e-5` plain), the freeze spec and the magic line are marked
    const lr = await lineTokens(page, 0, 4);
    const num = lr.tokens.find(t => t.text === '5e-5');
    expect(num?.cls ?? '', 'the number 5e-5 is marked').toContain('nbft-tok-number');
    expect(num!.color).not.toBe(lr.base);
    expect((await lineTokens(page, 0, 3)).tokens.some(t => t.cls.includes('nbft-tok-spec'))).toBe(true);
    const magic = await lineTokens(page, 0, 0);
    expect(magic.tokens.map(t => t.cls).join(' ')).toContain('nbft-tok-name');
    await cells.nth(0).screenshot({ path: test.info().outputPath('finetune-cell-yaml.png') });
    await page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook').screenshot({
      path: test.info().outputPath('yaml-vs-python.png')
    });

    // removing the magic switches the cell back to Python, typing it again switches to YAML
    await page.notebook.setCell(0, 'code', body);
    const after = await lineTokens(page, 0, 0);
    expect(after.tokens.find(t => t.text === 'model')?.color ?? after.base).not.toBe(key!.color);
    await page.notebook.setCell(0, 'code', `%%finetune again\n${body}`);
    const again = await lineTokens(page, 0, 1);
    expect(again.tokens.find(t => t.text === 'model')?.color).toBe(key!.color);

    // "Insert %%finetune Template" adds a highlighted %%finetune cell below the active one
    await page.notebook.selectCells(1);
    await execCommand(page, 'nb-finetune:insert-template');
    await expect(cells).toHaveCount(3);
    await expect(cells.nth(2).locator('.cm-line').first()).toHaveText('%%finetune my_run');
    const inserted = await lineTokens(page, 2, 1);
    expect(inserted.tokens.find(t => t.text === 'model')?.color).toBe(key!.color);
  });

  test('the sidebar lists a run and its Stop button stops it while the kernel is busy', async ({ page, tmpPath }) => {
    const name = uniqueName('ui_stop');
    const path = await createNotebook(page, `${tmpPath}/stop.ipynb`, [setupCell(), trainCell(name, '--wait')]);
    await openNotebook(page, path);
    await page.notebook.runCell(0);
    await expect(page.locator('.jp-Cell').nth(0).locator('.jp-Cell-outputWrapper')).toContainText('setup ok');

    // open the sidebar by its tab, then start the run: `--wait` keeps the kernel busy until the run ends
    await page.click('.jp-SideBar.jp-mod-left li[data-id="nb-finetune-runs"]');
    await expect(page.locator(SIDEBAR)).toBeVisible();
    await runCellNoWait(page, 1);

    const row = page.locator(`${SIDEBAR} li.nbf-Run`, { has: page.locator('.nbf-Run-name', { hasText: name }) });
    await expect(row).toHaveAttribute('data-state', 'training', { timeout: 60000 });
    await expect(row.locator('.nbf-Badge')).toHaveText('training');
    await expect(row.locator('.nbf-Run-step')).toContainText('/ 1,000,000');
    await expect(row.locator('.nbf-Spark path')).toHaveAttribute('d', /^M[\d.]+ [\d.]+ L/);
    const stepOf = async (r: Locator) => Number((await r.locator('.nbf-Run-step').innerText()).match(/step ([\d,]+)/)![1].replace(/,/g, ''));
    const s0 = await stepOf(row);
    await expect.poll(() => stepOf(row), { message: 'steps advance' }).toBeGreaterThan(s0);

    expect(await kernelStatus(page)).toBe('busy');
    await page.locator(SIDEBAR).screenshot({ path: test.info().outputPath('sidebar-training.png') });

    await row.locator('button.nbf-Button-stop').click();
    await expect(row.locator('.nbf-Run-ack')).toHaveText(/stop (sent|acknowledged)/);
    await expect(row).toHaveAttribute('data-state', 'stopped', { timeout: 60000 });
    await expect(row.locator('.nbf-Run-ack')).toHaveText(/stop acknowledged \(#\d+\)/);
    await expect(row.locator('button.nbf-Button-stop')).toBeDisabled();
    // the busy cell returns once the run stopped
    await waitForKernel(page, ['idle']);
    await page.locator(SIDEBAR).screenshot({ path: test.info().outputPath('sidebar-stopped.png') });
    await page.screenshot({ path: test.info().outputPath('lab-after-stop.png') });

    // "Open panel" inserts `%finetune show NAME` below the active cell and runs it
    await row.locator('button.nbf-Button-panel').click();
    const show = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell').nth(2);
    await expect(show.locator('.cm-content')).toHaveText(`%finetune show ${name}`);
    await expect(show.locator('.jp-InputPrompt')).toHaveText(/\[\d+\]/, { timeout: 60000 });
    await expect(show.locator('.jp-Cell-outputWrapper')).toContainText(name);
  });

  test('the status bar shows the active run and its progress', async ({ page, tmpPath }) => {
    const name = uniqueName('ui_status');
    const path = await createNotebook(page, `${tmpPath}/status.ipynb`, [setupCell(), trainCell(name)]);
    await openNotebook(page, path);
    await page.notebook.runCell(0);
    // without --wait the cell returns at once and the run trains in the background
    await page.notebook.runCell(1);

    const item = page.locator('#jp-main-statusbar .nbf-Status');
    await expect(item).toBeVisible({ timeout: 60000 });
    await expect(item).toContainText(name);
    const stepOf = async () => {
      const m = (await item.innerText()).match(/· ([\d,]+) \/ 1,000,000/);
      return m ? Number(m[1].replace(/,/g, '')) : -1;
    };
    await expect.poll(stepOf).toBeGreaterThan(0);
    const s0 = await stepOf();
    await expect.poll(stepOf, { message: 'the status bar follows the steps' }).toBeGreaterThan(s0);
    await expect(item).toContainText('ETA');
    await page.locator('#jp-main-statusbar').screenshot({ path: test.info().outputPath('statusbar.png') });

    // "Stop all" from the command: it asks first (not awaited here: the command waits for the dialog), naming the
    // run; the item hides once no run is active
    await page.evaluate(() => {
      void (window as any).jupyterapp.commands.execute('nb-finetune:stop-all');
    });
    const confirm = page.locator('.jp-Dialog');
    await expect(confirm.locator('.nbf-StopAllDialog li', { hasText: name })).toHaveCount(1);
    await confirm.locator('button.jp-mod-accept').click();
    await expect(item).toBeHidden({ timeout: 60000 });
  });
});

test.describe('nb_finetune lab extension in Notebook 7', () => {
  test.use(NOTEBOOK7);

  test('Notebook 7: the extension loads without a status bar or lab shell, highlighting works', async ({ page, tmpPath }) => {
    const errors: string[] = [];
    // errors thrown from this extension's bundle (Notebook 7 itself may log unrelated ones)
    page.on('pageerror', e => {
      if (/nb-finetune/.test(String(e.stack ?? e))) {
        errors.push(String(e.stack ?? e));
      }
    });
    page.on('console', m => {
      if (m.type() === 'error' && /nb-finetune|nbf-/i.test(m.text())) {
        errors.push(m.text());
      }
    });
    const path = await createNotebook(page, `${tmpPath}/nb7.ipynb`, ['%%finetune nb7\nmodel: tiny-bert\nepochs: 3']);
    await page.goto(notebook7Url(path));
    const line = page.locator('.jp-Cell .cm-line').nth(1);
    await expect(line).toHaveText('model: tiny-bert', { timeout: 60000 });
    const colours = await line.evaluate(el => ({
      base: getComputedStyle(el).color,
      key: Array.from(el.querySelectorAll('span')).find(s => s.textContent === 'model')?.style && getComputedStyle(
        Array.from(el.querySelectorAll('span')).find(s => s.textContent === 'model')!
      ).color
    }));
    expect(colours.key, 'the YAML key is a highlighted token in Notebook 7 too').toBeTruthy();
    expect(colours.key).not.toBe(colours.base);
    await page.screenshot({ path: test.info().outputPath('notebook7.png') });
    expect(errors).toEqual([]);
  });
});
