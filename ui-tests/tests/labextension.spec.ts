/** Browser tests of the nb_finetune JupyterLab extension: highlighting, the runs sidebar, the status bar. */
import { expect, test } from '@jupyterlab/galata';
import type { Locator, Page } from '@playwright/test';
import {
  createNotebook,
  execCommand,
  kernelStatus,
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
    const body = 'model: tiny-bert\nepochs: 3\nfreeze: all_but_head';
    const path = await createNotebook(page, `${tmpPath}/highlight.ipynb`, [`%%finetune demo\n${body}`, body]);
    await openNotebook(page, path);
    const cells = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell');
    await expect(cells).toHaveCount(2);

    // line 1 of the magic cell: `model: tiny-bert` as YAML -> the key is a token with its own colour
    const yaml = await lineTokens(page, 0, 1);
    const plain = await lineTokens(page, 1, 0);
    console.log('yaml line tokens', JSON.stringify(yaml));
    console.log('python line tokens', JSON.stringify(plain));
    expect(yaml.text).toBe('model: tiny-bert');
    const key = yaml.tokens.find(t => t.text === 'model');
    expect(key, 'the YAML key is a highlighted token').toBeTruthy();
    expect(key!.color).not.toBe(yaml.base);
    // the same text in an ordinary (Python) cell is not highlighted like that
    const pyKey = plain.tokens.find(t => t.text === 'model');
    expect(pyKey?.color ?? plain.base).not.toBe(key!.color);

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
  });
});
