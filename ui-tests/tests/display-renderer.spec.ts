/**
 * The `display` renderer (`%config FinetuneMagic.renderer = "display"`, what Colab and VS Code get) in pages that
 * have NO widget manager:
 *
 * 1. JupyterLab with ipywidgets' and jupyter_bokeh's lab extensions disabled (in the page config the server sends,
 *    edited in the page before JupyterLab reads it), like a frontend that renders no widgets: the plots are re-rendered into
 *    the cell's output about once a second, so their glyph data (read from BokehJS in the page) grows while the run
 *    trains; after `%finetune stop` the run's summary (name, state, evaluation table) and the final plots show.
 * 2. That notebook exported by the server's nbconvert and opened as a plain HTML page (no JupyterLab, no widgets):
 *    the summary and the final plots with all their points.
 *
 * Control case: the same readings on a page where the plots did not render give no Bokeh data (null), and
 * JupyterLab with its widget manager lists the `@jupyter-widgets/` plugins this page must not have.
 */
import { expect, test } from '@jupyterlab/galata';
import type { Page } from '@playwright/test';
import { bokehColumn, createNotebook, setupCell, trainCell, uniqueName, waitForKernel } from './helpers';

/** The lab extensions a widget-less frontend lacks: the ipywidgets manager and jupyter_bokeh (which needs it). */
const WIDGET_EXTENSIONS = ['@jupyter-widgets/jupyterlab-manager', '@bokeh/jupyter_bokeh'];

/**
 * JupyterLab's pages from now on load with `WIDGET_EXTENSIONS` in their page config's disabled extensions: the config
 * (`#jupyter-config-data`) is edited in the page as the parser inserts it, before any JupyterLab script reads it.
 * (Serving an edited page through `page.route` would make Chromium block its websockets to localhost.)
 */
async function withoutWidgetManager(page: Page): Promise<void> {
  await page.addInitScript(disabled => {
    const observer = new MutationObserver(() => {
      const el = document.getElementById('jupyter-config-data');
      if (!el || el.dataset.nbfEdited) {
        return;
      }
      try {
        const data = JSON.parse(el.textContent ?? '');
        data.disabledExtensions = [...(data.disabledExtensions ?? []), ...disabled];
        el.textContent = JSON.stringify(data);
        el.dataset.nbfEdited = '1';
        observer.disconnect();
      } catch {
        // the element's text is not all there yet: the next mutation tries again
      }
    });
    observer.observe(document, { childList: true, subtree: true, characterData: true });
  }, WIDGET_EXTENSIONS);
}

async function lossSteps(page: Page): Promise<number[]> {
  return ((await bokehColumn(page, 'nbft-loss', 'step')) ?? []) as number[];
}

/** The loss column's length and whether its values are real numbers (glyph data, not an empty source). */
async function lossGlyphs(page: Page): Promise<{ points: number; finite: boolean }> {
  const loss = ((await bokehColumn(page, 'nbft-loss', 'loss')) ?? []) as unknown[];
  return { points: loss.length, finite: loss.length > 0 && loss.every(v => typeof v === 'number' && isFinite(v)) };
}

test.describe('nb_finetune display renderer without a widget manager', () => {
  test.use({ autoGoto: false });

  test('live plots re-render and grow, then the summary and the final plots; the exported page shows both', async ({
    page,
    tmpPath
  }) => {
    test.setTimeout(240000);
    const name = uniqueName('ui_display');
    const cell = trainCell(name).replace('eval_split: 0', 'eval_split: 0.25\neval_every: 8');
    const setup = `${setupCell()}\n%config FinetuneMagic.renderer = "display"`;
    const path = await createNotebook(page, `${tmpPath}/display.ipynb`, [setup, cell, `%finetune stop ${name}`]);

    // control: the ordinary page has the widget manager
    await page.goto();
    const widgetPlugins = () =>
      page.evaluate(() =>
        ((window as any).jupyterapp.listPlugins() as string[]).filter(id => id.startsWith('@jupyter-widgets/'))
      );
    expect((await widgetPlugins()).length).toBeGreaterThan(0);
    expect(await bokehColumn(page, 'nbft-loss', 'step'), 'no plots yet: no Bokeh data').toBeNull();

    await withoutWidgetManager(page);
    // Playwright's own navigation (Galata's waits for the launcher, which a notebook URL does not show)
    await page.page.goto(`lab/tree/${path.split('/').map(encodeURIComponent).join('/')}`);
    await page.waitForAppStarted();
    await (page as any).hookHelpersUp(); // Galata's in-page helpers take the app, as its own goto does
    await expect(page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell')).toHaveCount(3, { timeout: 60000 });
    expect(await widgetPlugins(), 'JupyterLab without the widget manager').toEqual([]);
    await waitForKernel(page, ['idle'], 120000);
    await page.notebook.runCell(0);
    const out = (i: number) => page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell').nth(i).locator('.jp-Cell-outputWrapper');
    await expect(out(0)).toContainText('setup ok');
    await page.notebook.runCell(1); // returns at once: the run trains on a worker thread

    // no widget renders: the panel's output falls back to its HTML caption, the plots come through the display handle
    await expect(out(1).locator('.nb-finetune-caption')).toContainText(name, { timeout: 60000 });
    await expect(page.locator('.nb-finetune-panel')).toHaveCount(0);
    await expect(out(1).locator('.nb-finetune-plots').first()).toBeAttached({ timeout: 60000 });
    await expect
      .poll(async () => (await lossGlyphs(page)).points, { timeout: 90000, message: 'loss points reach the plots' })
      .toBeGreaterThan(0);
    const n1 = (await lossSteps(page)).length;
    await expect
      .poll(async () => (await lossSteps(page)).length, { timeout: 60000, message: 'the re-rendered plots grow' })
      .toBeGreaterThan(n1);
    await expect
      .poll(async () => ((await bokehColumn(page, 'nbft-eval', 'step')) ?? []).length, {
        timeout: 90000,
        message: 'evaluations reach the plots'
      })
      .toBeGreaterThanOrEqual(1);
    expect((await lossGlyphs(page)).finite, 'the loss glyphs are real numbers').toBe(true);
    await out(1).scrollIntoViewIfNeeded();
    await page.screenshot({ path: test.info().outputPath('display-training.png') });

    // stopped from another cell (the kernel is idle: the run is on its worker thread)
    await page.notebook.runCell(2);
    const summary = out(1).locator('.nb-finetune-summary');
    await expect(summary).toBeVisible({ timeout: 60000 });
    await expect(summary).toContainText(name);
    await expect(summary).toContainText('stopped');
    const evalRows = await summary.locator('.nbft-eval-row').count();
    expect(evalRows, 'the evaluation table').toBeGreaterThanOrEqual(1);
    // the final plots: interactive Bokeh (the SVG fallback hidden once BokehJS rendered), every logged point
    await expect(out(1).locator('.nb-finetune-static')).toBeHidden();
    await expect.poll(async () => (await lossGlyphs(page)).finite, { timeout: 30000 }).toBe(true);
    const final = await lossSteps(page);
    expect(final.length).toBeGreaterThanOrEqual(n1);
    expect(final.every((s, i) => s === i + 1), 'loss steps 1..n, none missing').toBe(true);
    await summary.scrollIntoViewIfNeeded();
    await page.screenshot({ path: test.info().outputPath('display-stopped.png') });

    // the saved notebook as a plain HTML page (nbconvert): no JupyterLab, no widget manager
    await page.evaluate(() => (window as any).jupyterapp.commands.execute('docmanager:save'));
    const url = `nbconvert/html/${path.split('/').map(encodeURIComponent).join('/')}?download=false`;
    await expect
      .poll(async () => {
        const r = await page.request.get(url);
        return r.ok() && (await r.text()).includes('nb-finetune-summary');
      }, { timeout: 30000, message: 'the exported HTML carries the run summary' })
      .toBe(true);
    const view = await page.context().newPage();
    await view.goto(url);
    const exported = view.locator('.nb-finetune-summary').first();
    await expect(exported).toBeVisible();
    await expect(exported).toContainText(name);
    await expect(exported.locator('.nbft-eval-row')).toHaveCount(evalRows);
    expect(await view.evaluate(() => 'jupyterapp' in window)).toBe(false);
    await expect.poll(async () => (await lossSteps(view)).length, { timeout: 30000 }).toBe(final.length);
    expect((await lossGlyphs(view)).finite).toBe(true);
    await expect(view.locator('body')).not.toContainText('VBox(');
    await exported.scrollIntoViewIfNeeded();
    await view.screenshot({ path: test.info().outputPath('display-exported.png'), fullPage: true });
    await view.close();
  });
});
