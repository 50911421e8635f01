/**
 * Helpers shared by the browser specs (the lab extension's and the notebook panel's).
 *
 *   const path = await createNotebook(page, `${tmpPath}/t.ipynb`, [setupCell(), '%%finetune a\n...']);
 *   await openNotebook(page, path);                  // JupyterLab (/lab/tree/...)
 *   await page.goto(notebook7Url(path));             // or Notebook 7 on the same server
 *   await page.notebook.runCell(0);                  // waits for the cell
 *   await runCellNoWait(page, 1);                    // e.g. `%%finetune NAME --wait`: the kernel stays busy
 */
import type { IJupyterLabPageFixture } from '@jupyterlab/galata';
import type { Page } from '@playwright/test';

/** A nbformat 4 notebook of code cells (python3 kernel: the server's venv). */
export function notebookJson(cells: string[]): string {
  return JSON.stringify({
    cells: cells.map(source => ({
      cell_type: 'code',
      execution_count: null,
      metadata: {},
      outputs: [],
      source
    })),
    metadata: {
      kernelspec: { display_name: 'Python 3 (ipykernel)', language: 'python', name: 'python3' },
      language_info: { name: 'python' }
    },
    nbformat: 4,
    nbformat_minor: 5
  });
}

/** Writes a notebook made of `cells` to `path` (relative to the server root) through the contents API. */
export async function createNotebook(page: IJupyterLabPageFixture, path: string, cells: string[]): Promise<string> {
  await page.contents.uploadContent(notebookJson(cells), 'text', path);
  return path;
}

/** Opens a notebook in JupyterLab and waits for its kernel to be idle. */
export async function openNotebook(page: IJupyterLabPageFixture, path: string): Promise<void> {
  await page.notebook.openByPath(path);
  await page.notebook.activate(path.split('/').pop()!);
  await waitForKernel(page, ['idle']);
}

/**
 * `test.use(NOTEBOOK7)` in a describe block: pages are Notebook 7's (no automatic /lab, ready when its main panel
 * is there); then `await page.goto(notebook7Url(path))` or `await page.goto('tree')`.
 */
export const NOTEBOOK7 = {
  autoGoto: false,
  appPath: '',
  waitForApplication: async ({}, use: (f: (page: Page) => Promise<void>) => Promise<void>) => {
    await use(async (page: Page) => {
      await page.waitForSelector('#main-panel', { timeout: 60000 });
    });
  }
} as any;

/** The Notebook 7 URL of a notebook on the same server. */
export function notebook7Url(path: string): string {
  return `notebooks/${path.split('/').map(encodeURIComponent).join('/')}`;
}

/** The current notebook's kernel status in JupyterLab ("idle", "busy", ... or "" without one). */
export async function kernelStatus(page: Page): Promise<string> {
  return page.evaluate(() => {
    const app = (window as any).jupyterapp;
    const widget = app?.shell?.currentWidget;
    return widget?.sessionContext?.session?.kernel?.status ?? '';
  });
}

export async function waitForKernel(page: Page, states: string[], timeout = 60000): Promise<void> {
  await page.waitForFunction(
    wanted => {
      const app = (window as any).jupyterapp;
      const status = app?.shell?.currentWidget?.sessionContext?.session?.kernel?.status;
      return wanted.includes(status);
    },
    states,
    { timeout }
  );
}

/** Runs cell `index` of the current notebook without waiting for it to finish. */
export async function runCellNoWait(page: IJupyterLabPageFixture, index: number): Promise<void> {
  await page.notebook.selectCells(index);
  await page.evaluate(() => {
    void (window as any).jupyterapp.commands.execute('notebook:run-cell');
  });
}

/** Executes a JupyterLab command by id (not awaited beyond its promise). */
export async function execCommand(page: Page, id: string, args: Record<string, unknown> = {}): Promise<void> {
  await page.evaluate(([id, args]) => (window as any).jupyterapp.commands.execute(id, args), [id, args] as const);
}

/** A run name unique to this test run. */
export function uniqueName(prefix: string): string {
  return `${prefix}_${Date.now().toString(36)}${Math.floor(Math.random() * 1296).toString(36)}`;
}

/**
 * The setup cell: a tiny BERT (hidden 32, 2 blocks, built from a config by tests/conftest.py's build_tiny_model,
 * saved with save_pretrained; no download) in `model_dir`, a 192-row sentiment-like CSV `train.csv`, the magics.
 */
export function setupCell(): string {
  return [
    'import os, sys, pathlib',
    'sys.path.insert(0, os.environ["NBF_REPO_ROOT"])',
    'from tests.conftest import build_tiny_model, make_texts',
    'import pandas as pd',
    'model_dir = build_tiny_model(pathlib.Path("tiny-model").resolve())',
    'texts, labels = make_texts(192, seed=1)',
    'pd.DataFrame({"text": texts, "label": labels}).to_csv("train.csv", index=False)',
    '%load_ext nb_finetune',
    'print("setup ok", model_dir)'
  ].join('\n');
}

/** A `%%finetune` cell that trains the tiny model "forever" (max_steps 1e6) until it is stopped. */
export function trainCell(name: string, flags = ''): string {
  return [
    `%%finetune ${name}${flags ? ' ' + flags : ''}`,
    'model: {{model_dir}}',
    'data:',
    '  train: train.csv',
    '  eval_split: 0',
    'max_steps: 1000000',
    'batch_size: 16',
    'lr: 1e-3',
    'log_every: 5',
    'output_dir: runs'
  ].join('\n');
}

/** The column `column` of the BokehJS ColumnDataSource named `name`, from any Bokeh document on the page. */
export async function bokehColumn(page: Page, name: string, column: string): Promise<unknown[] | null> {
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
