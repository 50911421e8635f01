/**
 * Browser tests of the notebook panel (`%%finetune` output) in JupyterLab 4 and Notebook 7: the panel appears, the
 * loss plot grows while the run trains, the freezing slider changes the layer map, Stop stops the run.
 * The plots' data are read from BokehJS's documents in the page (sources named nbft-*), so "the plot grows" is
 * the browser's own copy of the data growing, streamed by the kernel.
 */
import { expect, test } from '@jupyterlab/galata';
import type { IJupyterLabPageFixture } from '@jupyterlab/galata';
import type { Locator, Page } from '@playwright/test';
import {
  bokehColumn,
  createNotebook,
  NOTEBOOK7,
  notebook7Url,
  openNotebook,
  setupCell,
  trainCell,
  uniqueName
} from './helpers';

const PANEL = '.nb-finetune-panel';

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

type History = Awaited<ReturnType<typeof history>>;

/** Console errors of the tabs `newTab` opened, kept for `untilHistory`'s failure message. */
const CONSOLE_ERRORS = new WeakMap<Page, string[]>();

/**
 * Polls the page's data until `ok` holds; a failure names what the page had at the end (counts, first and last loss
 * steps) and its console errors, so a CI log says whether the view had no plots, stale ones, or a gap.
 */
async function untilHistory(page: Page, ok: (h: History) => boolean, timeout: number, message: string) {
  let last: History | undefined;
  try {
    await expect.poll(async () => ok((last = await history(page))), { timeout, message }).toBe(true);
  } catch (e) {
    const h = last;
    const seen = h
      ? `loss steps ${h.steps.length} (${h.steps.slice(0, 3).join(',')} .. ${h.steps.slice(-3).join(',')}), ` +
        `evaluations ${h.evals}, lr points ${h.lr}, layer rows ${h.layers}`
      : 'nothing read';
    const errors = CONSOLE_ERRORS.get(page);
    const logged = errors ? errors.slice(-8).join(' | ') || 'none' : 'not watched on this page';
    throw new Error(`${message}: the page had ${seen}; console errors: ${logged}`);
  }
  return last as History;
}

/** A new tab of the same browser context, its console errors kept for `untilHistory`. */
async function newTab(page: Page): Promise<Page> {
  const tab = await page.context().newPage();
  const errors: string[] = [];
  tab.on('console', m => {
    if (m.type() === 'error') errors.push(m.text().slice(0, 200));
  });
  tab.on('pageerror', e => errors.push(String(e).slice(0, 200)));
  CONSOLE_ERRORS.set(tab, errors);
  return tab;
}

/** Saves the notebook as a user does (the panel's outputs keep it dirty, so no wait for a clean state). */
async function saveWithPanel(page: Page, path: string) {
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
}

/**
 * The page reloaded while the run trains (JupyterLab or Notebook 7): once the notebook is saved with the panel in it,
 * the new page shows every point logged before the reload (loss steps 1..n, none missing; evaluations, lr, the layer
 * map), then keeps streaming. Returns the history seen after the reload.
 */
async function reloadKeepsHistory(page: Page, path: string, shots: string) {
  await untilHistory(page, h => h.evals >= 2, 90000, 'two evaluations before the reload');
  await saveWithPanel(page, path);
  const before = await history(page);
  expect(before.steps.length, 'points before the reload').toBeGreaterThan(0);
  // the browser's own reload (Galata's `page.reload()` waits for a tab state this page never reaches)
  await page.evaluate(() => window.location.reload());
  await page.waitForSelector('.jp-Notebook', { timeout: 60000 });
  const panel = page.locator(PANEL).first(); // the notebook reopens, its outputs from the saved file
  await expect(panel).toBeVisible({ timeout: 60000 });
  // every point before the reload is in the state the new page gets; the few streamed while the page built its
  // view come with the one re-render the kernel sends once the view answers
  const after = await untilHistory(
    page,
    h => h.steps.length >= before.steps.length && contiguous(h.steps),
    30000,
    'the whole history after a reload (loss steps 1..n, none missing)'
  );
  expect(after.evals, 'the evaluations before the reload').toBeGreaterThanOrEqual(before.evals);
  expect(after.lr, 'the lr points before the reload').toBeGreaterThanOrEqual(before.lr);
  expect(after.layers, 'the layer map after the reload').toBe(before.layers);
  await expect
    .poll(async () => (await history(page)).steps.length, { timeout: 60000, message: 'streams after the reload' })
    .toBeGreaterThan(after.steps.length);
  await panel.scrollIntoViewIfNeeded();
  await page.screenshot({ path: test.info().outputPath(`${shots}-reloaded.png`) });
  return { before, after };
}

/**
 * A second view of the running panel: the page reloaded, then Notebook 7 opened on the same running kernel. Each
 * shows every point logged before it (loss steps 1..n, none missing; evaluations, lr, the layer map) and then
 * keeps streaming.
 */
async function secondViews(page: Page, path: string, shots: string) {
  const { before, after } = await reloadKeepsHistory(page, path, shots);

  // Notebook 7 on the same server and running kernel, in a second tab
  const nb7 = await newTab(page);
  await nb7.goto(notebook7Url(path));
  const panel7 = nb7.locator(PANEL).first();
  await expect(panel7).toBeVisible({ timeout: 90000 });
  const seen = (await history(page)).steps.length;
  const nb = await untilHistory(
    nb7,
    h => h.steps.length >= seen && contiguous(h.steps),
    30000,
    'the whole history in Notebook 7 (loss steps 1..n, none missing)'
  );
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

/**
 * The stopped run's notebook saved and exported through the server's nbconvert (what GitHub and nbviewer get: no
 * widget state): the run's name, its final metrics and the evaluation table, no `VBox(` repr; then that page shown.
 */
async function exported(page: Page, path: string, name: string, shots: string) {
  await page.evaluate(() => (window as any).jupyterapp.commands.execute('docmanager:save'));
  const url = `nbconvert/html/${path.split('/').map(encodeURIComponent).join('/')}?download=false`;
  let body = '';
  await expect
    .poll(
      async () => {
        const r = await page.request.get(url);
        body = r.ok() ? await r.text() : '';
        return body.includes('nb-finetune-summary');
      },
      { timeout: 30000, message: 'the exported HTML carries the run summary' }
    )
    .toBe(true);
  expect(body).not.toContain('VBox(');
  expect(body).toContain(name);
  expect(body).toMatch(/accuracy<\/span> <b>\d\.\d{4}<\/b>/); // the final metrics
  expect((body.match(/class="nbft-eval-row/g) ?? []).length, 'the evaluation table').toBeGreaterThanOrEqual(2);
  const view = await page.context().newPage();
  await view.goto(url);
  await view.locator('.nb-finetune-summary').first().scrollIntoViewIfNeeded();
  await view.screenshot({ path: test.info().outputPath(`${shots}-exported.png`), fullPage: true });
  await view.close();
}

/** What a plot's background shows: the figures' own fill (null: transparent) and the page colour behind them. */
async function plotBackground(page: Page): Promise<{ fills: unknown[]; page: string }> {
  return page.evaluate(() => {
    const B = (window as any).Bokeh;
    const fills: unknown[] = [];
    for (const d of B?.documents ?? []) {
      for (const m of d._all_models?.values?.() ?? []) {
        if (m?.constructor?.__name__ === 'Figure' || m?.constructor?.__name__ === 'Plot') {
          fills.push(m.background_fill_color);
        }
      }
    }
    let el: Element | null = document.querySelector('.nb-finetune-panel');
    let colour = '';
    while (el) {
      colour = getComputedStyle(el).backgroundColor;
      if (colour && colour !== 'rgba(0, 0, 0, 0)' && colour !== 'transparent') break;
      el = el.parentElement;
    }
    return { fills, page: colour };
  });
}

/** JupyterLab's light and dark themes: the plots take the theme's background (screenshots of both). */
async function themes(page: IJupyterLabPageFixture, shots: string) {
  await page.locator(`${PANEL} .nb-finetune-status`).first().evaluate(e => e.scrollIntoView({ block: 'start' }));
  const light = await plotBackground(page);
  await page.screenshot({ path: test.info().outputPath(`${shots}-light.png`) });
  // JupyterLab's own command (Galata's theme helper lost its hook on the app at the browser reload above)
  const theme = (name: string) =>
    page.evaluate(n => (window as any).jupyterapp.commands.execute('apputils:change-theme', { theme: n }), name);
  await theme('JupyterLab Dark');
  await expect(page.locator('body')).toHaveAttribute('data-jp-theme-light', 'false');
  await page.waitForTimeout(500);
  const dark = await plotBackground(page);
  await page.screenshot({ path: test.info().outputPath(`${shots}-dark.png`) });
  await theme('JupyterLab Light');
  await expect(page.locator('body')).toHaveAttribute('data-jp-theme-light', 'true');
  expect(light.fills.length, 'figures found').toBeGreaterThan(0);
  expect(light.fills.every(f => f == null), `figures are transparent: ${light.fills}`).toBe(true);
  expect(dark.page, 'the plot background follows the theme').not.toBe(light.page);
}

/** Where each Bokeh legend of the page sits: the figure side it is in ('above', 'center', ...). */
async function legendPlaces(page: Page): Promise<string[]> {
  return page.evaluate(() => {
    const B = (window as any).Bokeh;
    const places: string[] = [];
    for (const d of B?.documents ?? []) {
      for (const m of d._all_models?.values?.() ?? []) {
        if (m?.constructor?.__name__ !== 'Figure') continue;
        for (const side of ['above', 'below', 'left', 'right', 'center']) {
          for (const r of m[side] ?? []) {
            if (r?.constructor?.__name__ === 'Legend') places.push(side);
          }
        }
      }
    }
    return places;
  });
}

/**
 * The plot items while the run trains (on a page reloaded mid-run): an lr change from another cell (cell `setCell`) has a tooltip that reads
 * from → to and by whom, every legend sits above its figure (outside the data area), the evaluation table has one
 * row per evaluation in the eval plot. Control: no run summary in the box while it trains.
 */
async function plotItems(page: Page, panel: Locator, setCell: number) {
  await expect
    .poll(async () => ((await bokehColumn(page, 'nbft-eval', 'step')) ?? []).length, { timeout: 90000 })
    .toBeGreaterThanOrEqual(2);
  // JupyterLab's own commands (Galata's notebook helpers lost their hook on the app at the browser reload)
  await page.evaluate(i => {
    const app = (window as any).jupyterapp;
    app.shell.currentWidget.content.activeCellIndex = i;
    return app.commands.execute('notebook:run-cell');
  }, setCell);
  await expect
    .poll(async () => ((await bokehColumn(page, 'nbft-markers', 'text')) ?? []).join(' | '), { timeout: 60000 })
    .toMatch(/lr 1e-3 → 5e-4, by magic, step \d+/);
  const places = await legendPlaces(page);
  expect(places.length, 'legends found').toBeGreaterThanOrEqual(3);
  expect(places.every(p => p === 'above'), `legend places: ${places}`).toBe(true);
  await expect
    .poll(
      async () => {
        const rows = await panel.locator('.nb-finetune-eval-table .nbft-eval-row').count();
        const evals = ((await bokehColumn(page, 'nbft-eval', 'step')) ?? []).length;
        return rows > 0 && rows === evals;
      },
      { timeout: 30000, message: 'one table row per evaluation' }
    )
    .toBe(true);
  await expect(panel.locator('.nb-finetune-summary')).toHaveCount(0);
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
  // the final view is the box's own (widget state): a page reloaded mid-run gets the summary and final plots too
  const summary = panel.locator('.nb-finetune-summary');
  await expect(summary).toBeVisible({ timeout: 30000 });
  await expect(summary).toContainText(name);
  await expect(summary).toContainText('stopped');
  expect(await summary.locator('.nbft-eval-row').count(), 'the evaluation table in the summary').toBeGreaterThanOrEqual(2);
  const steps = ((await bokehColumn(page, 'nbft-loss', 'step')) ?? []) as number[];
  expect(steps.length > 0 && steps.every((s, i) => s === i + 1), 'the final plots: loss steps 1..n').toBe(true);
  await page.waitForTimeout(1500);
  await summary.scrollIntoViewIfNeeded();
  await page.screenshot({ path: test.info().outputPath(`${shots}-stopped.png`) });
}

test.describe('nb_finetune panel in JupyterLab', () => {
  test('a reload and Notebook 7 show the whole run so far; loss grows, freezing, Stop', async ({ page, tmpPath }) => {
    test.setTimeout(240000);
    const name = uniqueName('panel_lab');
    const cell = trainCell(name).replace('eval_split: 0', 'eval_split: 0.25\neval_every: 8');
    const path = await createNotebook(page, `${tmpPath}/panel.ipynb`, [
      setupCell(),
      cell,
      `%finetune set ${name} lr=5e-4`
    ]);
    await openNotebook(page, path);
    await page.notebook.runCell(0);
    await expect(page.locator('.jp-Cell').nth(0).locator('.jp-Cell-outputWrapper')).toContainText('setup ok');
    await page.notebook.runCell(1); // returns at once: the run trains on a worker thread
    await expect(page.locator(PANEL).first()).toContainText('training', { timeout: 60000 });
    await secondViews(page, path, 'lab-panel');
    await plotItems(page, page.locator(PANEL).first(), 2); // on the page reloaded mid-run
    await themes(page, 'lab-panel');
    await panelFlow(page, page.locator(PANEL).first(), name, 'lab-panel'); // on the page reloaded mid-run
    await page.evaluate(() =>
      (window as any).jupyterapp.commands.execute('apputils:change-theme', { theme: 'JupyterLab Dark' })
    );
    await expect(page.locator('body')).toHaveAttribute('data-jp-theme-light', 'false');
    await page.waitForTimeout(500);
    await page.screenshot({ path: test.info().outputPath('lab-panel-stopped-dark.png') });
  });
});

test.describe('nb_finetune panel in Notebook 7', () => {
  test.use(NOTEBOOK7);

  test('a reload mid-run shows the whole run so far; loss grows, freezing, Stop; the export shows the summary', async ({
    page,
    tmpPath
  }) => {
    test.setTimeout(240000);
    const name = uniqueName('panel_nb7');
    const cell = trainCell(name).replace('eval_split: 0', 'eval_split: 0.25\neval_every: 8');
    const path = await createNotebook(page, `${tmpPath}/panel7.ipynb`, [setupCell(), cell]);
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
    await expect(page.locator(PANEL).first()).toContainText('training', { timeout: 60000 });
    // a Notebook 7 page reloaded mid-run shows the whole history, then streams (counted in BokehJS's data). It is a
    // second tab: a reloaded page never gets the final output, which goes to the display id of the first page's
    // output, so the export below is of the first page's notebook.
    await saveWithPanel(page, path);
    const second = await newTab(page);
    await second.goto(notebook7Url(path));
    await expect(second.locator(PANEL).first()).toContainText('training', { timeout: 90000 });
    await reloadKeepsHistory(second, path, 'nb7-panel');
    await second.close();
    await panelFlow(page, page.locator(PANEL).first(), name, 'nb7-panel');
    await exported(page, path, name, 'nb7-panel');
  });
});
