/**
 * Browser tests of the notebook panel (`%%finetune` output) in JupyterLab 4 and Notebook 7: the panel appears, the
 * loss plot grows while the run trains, the freezing slider changes the layer map, Stop stops the run.
 * The plots' data are read from BokehJS's documents in the page (sources named nbft-*), so "the plot grows" is
 * the browser's own copy of the data growing, streamed by the kernel.
 */
import { expect, test } from '@jupyterlab/galata';
import type { Locator, Page } from '@playwright/test';
import { createNotebook, NOTEBOOK7, notebook7Url, openNotebook, setupCell, trainCell, uniqueName } from './helpers';

const PANEL = '.nb-finetune-panel';

/** The column `column` of the BokehJS ColumnDataSource named `name`, from any Bokeh document on the page. */
async function bokehColumn(page: Page, name: string, column: string): Promise<unknown[] | null> {
  return page.evaluate(
    ([name, column]) => {
      const B = (window as any).Bokeh;
      if (!B) return null;
      const docs = new Set<any>();
      for (const d of B.documents ?? []) docs.add(d);
      const index = B.index;
      const views: any[] = index == null ? [] : typeof index[Symbol.iterator] === 'function' ? [...index] : Object.values(index);
      for (const v of views) {
        const doc = (v as any)?.model?.document;
        if (doc) docs.add(doc);
      }
      let best: unknown[] | null = null;
      for (const d of docs) {
        const m = d.get_model_by_name?.(name);
        const col = m?.data?.[column];
        if (col != null) {
          const arr = Array.from(col as ArrayLike<unknown>);
          if (best == null || arr.length > best.length) best = arr;
        }
      }
      return best;
    },
    [name, column] as const
  );
}

async function lossPoints(page: Page): Promise<number> {
  return ((await bokehColumn(page, 'nbft-loss', 'step')) ?? []).length;
}

/** Every column the second views must show, as counts, and the loss steps (1..n with none missing). */
async function history(page: Page) {
  const steps = ((await bokehColumn(page, 'nbft-loss', 'step')) ?? []) as number[];
  return {
    steps,
    evals: ((await bokehColumn(page, 'nbft-eval', 'step')) ?? []).length,
    lr: ((await bokehColumn(page, 'nbft-lr', 'step')) ?? []).length,
    layers: ((await bokehColumn(page, 'nbft-layers', 'group')) ?? []).length
  };
}

function contiguous(steps: number[]): boolean {
  return steps.length > 0 && steps.every((s, i) => s === i + 1);
}

/**
 * A second view of the running panel: the page reloaded, then Notebook 7 opened on the same running kernel. Each
 * shows every point logged before it (loss steps 1..n, none missing; evaluations, lr, the layer map) and then
 * keeps streaming.
 */
async function secondViews(page: Page, path: string, shots: string) {
  await expect
    .poll(async () => (await history(page)).evals, { timeout: 90000, message: 'two evaluations before the reload' })
    .toBeGreaterThanOrEqual(2);
  // saved as a user does (the panel's outputs keep the notebook dirty, so no wait for a clean state)
  await page.evaluate(() => (window as any).jupyterapp.commands.execute('docmanager:save'));
  await expect
    .poll(
      async () => {
        const r = await page.request.get(`api/contents/${path.split('/').map(encodeURIComponent).join('/')}?content=1`);
        return r.ok() && (await r.text()).includes('application/vnd.jupyter.widget-view+json');
      },
      { timeout: 30000, message: 'the notebook is saved with the panel in it' }
    )
    .toBe(true);
  const before = await history(page);
  // the browser's own reload (Galata's `page.reload()` waits for a tab state this page never reaches)
  await page.evaluate(() => window.location.reload());
  await page.waitForSelector('.jp-Notebook', { timeout: 60000 });
  const panel = page.locator(PANEL).first(); // the workspace reopens the notebook, its outputs from the saved file
  await expect(panel).toBeVisible({ timeout: 60000 });
  await expect
    .poll(async () => (await history(page)).steps.length, { timeout: 30000, message: 'the history after a reload' })
    .toBeGreaterThanOrEqual(before.steps.length);
  const after = await history(page);
  expect(contiguous(after.steps), `loss steps after the reload start at 1 with none missing: ${after.steps}`).toBe(true);
  expect(after.evals, 'the evaluations before the reload').toBeGreaterThanOrEqual(before.evals);
  expect(after.lr, 'the lr points before the reload').toBeGreaterThanOrEqual(before.lr);
  expect(after.layers, 'the layer map after the reload').toBe(before.layers);
  await expect
    .poll(async () => (await history(page)).steps.length, { timeout: 60000, message: 'streams after the reload' })
    .toBeGreaterThan(after.steps.length);
  await panel.scrollIntoViewIfNeeded();
  await page.screenshot({ path: test.info().outputPath(`${shots}-reloaded.png`) });

  // Notebook 7 on the same server and running kernel, in a second tab
  const nb7 = await page.context().newPage();
  await nb7.goto(notebook7Url(path));
  const panel7 = nb7.locator(PANEL).first();
  await expect(panel7).toBeVisible({ timeout: 90000 });
  const seen = (await history(page)).steps.length;
  await expect
    .poll(async () => (await history(nb7)).steps.length, { timeout: 30000, message: 'the history in Notebook 7' })
    .toBeGreaterThanOrEqual(seen);
  const nb = await history(nb7);
  expect(contiguous(nb.steps), `loss steps in Notebook 7 start at 1 with none missing`).toBe(true);
  expect(nb.evals).toBeGreaterThanOrEqual(after.evals);
  expect(nb.lr).toBeGreaterThanOrEqual(after.lr);
  expect(nb.layers).toBe(before.layers);
  await expect
    .poll(async () => (await history(nb7)).steps.length, { timeout: 60000, message: 'Notebook 7 streams' })
    .toBeGreaterThan(nb.steps.length);
  await panel7.scrollIntoViewIfNeeded();
  await nb7.screenshot({ path: test.info().outputPath(`${shots}-notebook7-second-view.png`) });
  await nb7.close();
}

async function panelFlow(page: Page, panel: Locator, name: string, shots: string) {
  await expect(panel).toBeVisible({ timeout: 60000 });
  await expect(panel.locator('b', { hasText: name }).first()).toBeVisible();
  await expect(panel).toContainText('training', { timeout: 60000 });
  await panel.scrollIntoViewIfNeeded();

  // the loss plot grows while the run trains
  await expect.poll(() => lossPoints(page), { timeout: 60000, message: 'loss points reach the browser' }).toBeGreaterThan(0);
  const n1 = await lossPoints(page);
  await expect.poll(() => lossPoints(page), { timeout: 60000, message: 'the loss plot grows' }).toBeGreaterThan(n1);
  await page.screenshot({ path: test.info().outputPath(`${shots}-training.png`) });

  // the freezing slider: train the last 0 of 2 blocks -> both blocks frozen in the layer map
  const before = await bokehColumn(page, 'nbft-layers', 'state');
  expect(before, 'the layer map is drawn').toContain('trainable');
  const slider = panel.locator('.widget-slider', { hasText: 'train last' });
  // a click at the left end of the track, as a user drags the handle there
  const track = slider.locator('.noUi-base, .ui-slider').first();
  await track.scrollIntoViewIfNeeded();
  const box = (await track.boundingBox())!;
  await page.mouse.click(box.x + 1, box.y + box.height / 2);
  await expect(slider.locator('.widget-readout')).toHaveText('0');
  await expect
    .poll(async () => ((await bokehColumn(page, 'nbft-layers', 'state')) ?? []).filter(s => s === 'frozen').length, {
      timeout: 60000,
      message: 'the layer map shows the frozen blocks'
    })
    .toBeGreaterThanOrEqual(2);
  await expect(panel).toContainText('freeze');
  await page.screenshot({ path: test.info().outputPath(`${shots}-frozen.png`) });

  // Stop: checkpoint, then stopped by the user; the controls turn off
  await panel.locator('button', { hasText: 'Stop' }).click();
  await expect(panel).toContainText('stopped · user', { timeout: 60000 });
  await expect(panel.locator('button', { hasText: 'Stop' })).toBeDisabled();
  await page.waitForTimeout(1500); // the final Bokeh output replaces the live one
  await page.screenshot({ path: test.info().outputPath(`${shots}-stopped.png`), fullPage: true });
}

test.describe('nb_finetune panel in JupyterLab', () => {
  test('a reload and Notebook 7 show the whole run so far; loss grows, freezing, Stop', async ({ page, tmpPath }) => {
    const name = uniqueName('panel_lab');
    const cell = trainCell(name).replace('eval_split: 0', 'eval_split: 0.25\neval_every: 8');
    const path = await createNotebook(page, `${tmpPath}/panel.ipynb`, [setupCell(), cell]);
    await openNotebook(page, path);
    await page.notebook.runCell(0);
    await expect(page.locator('.jp-Cell').nth(0).locator('.jp-Cell-outputWrapper')).toContainText('setup ok');
    await page.notebook.runCell(1); // returns at once: the run trains on a worker thread
    await expect(page.locator(PANEL).first()).toContainText('training', { timeout: 60000 });
    await secondViews(page, path, 'lab-panel');
    await panelFlow(page, page.locator(PANEL).first(), name, 'lab-panel');
  });
});

test.describe('nb_finetune panel in Notebook 7', () => {
  test.use(NOTEBOOK7);

  test('loss plot grows, freezing slider redraws the layer map, Stop stops the run', async ({ page, tmpPath }) => {
    const name = uniqueName('panel_nb7');
    const path = await createNotebook(page, `${tmpPath}/panel7.ipynb`, [setupCell(), trainCell(name)]);
    await page.goto(notebook7Url(path));
    await page.waitForSelector('.jp-Notebook .jp-Cell .cm-content', { timeout: 60000 });
    await page.waitForFunction(
      () => (window as any).jupyterapp?.shell?.currentWidget?.sessionContext?.session?.kernel?.status === 'idle',
      undefined,
      { timeout: 120000 }
    );
    await page.locator('.jp-Cell .cm-content').first().click();
    await page.keyboard.press('Shift+Enter');
    await expect(page.locator('.jp-Cell').nth(0).locator('.jp-Cell-outputWrapper')).toContainText('setup ok', {
      timeout: 120000
    });
    await page.locator('.jp-Cell .cm-content').nth(1).click();
    await page.keyboard.press('Shift+Enter');
    await panelFlow(page, page.locator(PANEL).first(), name, 'nb7-panel');
  });
});
