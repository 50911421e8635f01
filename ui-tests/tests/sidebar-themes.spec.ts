/**
 * The runs sidebar groups runs by output directory (two runs of one name in two folders sit under two headings, the
 * directory shortened, its whole path on hover), keeps every value on one line (ellipsis + title), and the sidebar
 * and the status bar follow JupyterLab's light and dark themes: screenshots of both, whose pixels are read back
 * (background and text colours) and compared with the theme's variables.
 *
 * The runs are written by the kernel itself (run directories, status and a few log records, no training), so the
 * test is quick; a last cell marks them stopped, so no other test sees them as live.
 */
import { expect, test } from '@jupyterlab/galata';
import type { IJupyterLabPageFixture } from '@jupyterlab/galata';
import type { Locator, Page } from '@playwright/test';
import { createNotebook, openNotebook, uniqueName } from './helpers';

const SIDEBAR = '#nb-finetune-runs';
const STATUS = '#jp-main-statusbar .nbf-Status';
const LONG_DIR = 'a_folder_whose_name_is_long_enough_to_be_cut_in_the_heading';

/** A cell that registers runs the way a training run does (pid: this kernel, so they count as this server's). */
function fakeRunsCell(name: string, long: string): string {
  return [
    'import os, sys',
    'sys.path.insert(0, os.environ["NBF_REPO_ROOT"])',
    'from nb_finetune.core.runs import RunDir',
    'from nb_finetune.core.events import Logged',
    'fakes = []',
    'def fake(out, name, state, step, total):',
    '    rd = RunDir.create(out, name)',
    '    for i in range(5, step + 1, 5):',
    '        rd.append_event(Logged(step=i, epoch=i / total, loss=2 / (1 + 0.05 * i), lr=1e-3, grad_norm=None,',
    '                               samples_per_s=100.0, tokens_per_s=1000.0))',
    '    rd.write_status(state=state, pid=os.getpid(), name=rd.name, step=step, total_steps=total)',
    '    rd.register()',
    '    fakes.append(rd)',
    `fake("runs", "${long}", "finished", 100, 100)`,
    `fake("${LONG_DIR}/runs", "${name}", "finished", 100, 100)`,
    `fake("elsewhere/deeper/runs", "${name}", "finished", 30, 100)`,
    `fake("runs", "${name}", "training", 40, 100)`,
    'print("fakes ok", len(fakes))'
  ].join('\n');
}

const STOP_FAKES = 'for rd in fakes:\n    rd.write_status(state="stopped", reason="user")\nprint("fakes stopped")';

function row(page: Page, name: string): Locator {
  return page.locator(`${SIDEBAR} li.nbf-Run`, { has: page.locator('.nbf-Run-name', { hasText: name }) });
}

/** The heading text of the group that holds `r`. */
async function groupOf(r: Locator): Promise<{ label: string; title: string; count: string }> {
  return r.evaluate(el => {
    const head = el.closest('.nbf-Group')!.querySelector('.nbf-Group-head')!;
    const where = head.querySelector('.nbf-Group-where') as HTMLElement;
    return { label: where.textContent ?? '', title: where.title, count: head.querySelector('.nbf-Group-count')!.textContent ?? '' };
  });
}

/** Whether an element holds one line of text that is cut with an ellipsis when it does not fit, and its tooltip. */
async function oneLine(l: Locator) {
  return l.evaluate(el => {
    const s = getComputedStyle(el);
    const line = parseFloat(s.lineHeight) || parseFloat(s.fontSize) * 1.4;
    return {
      text: el.textContent ?? '',
      title: (el as HTMLElement).title,
      cut: el.scrollWidth > el.clientWidth,
      ellipsis: s.textOverflow === 'ellipsis' && s.whiteSpace === 'nowrap',
      oneLine: el.getBoundingClientRect().height <= line * 1.5
    };
  });
}

type RGB = [number, number, number];

/** A CSS colour (any form the page accepts, `var(--jp-...)` too) as the browser resolves it, in 0-255 RGB. */
async function cssColour(page: Page, value: string): Promise<RGB> {
  return page.evaluate(v => {
    const probe = document.createElement('div');
    probe.style.color = v;
    document.body.append(probe);
    const c = getComputedStyle(probe).color;
    probe.remove();
    return c.match(/[\d.]+/g)!.slice(0, 3).map(Number) as [number, number, number];
  }, value);
}

async function computedColour(l: Locator, prop: 'color' | 'backgroundColor'): Promise<RGB> {
  const c = await l.evaluate((el, p) => getComputedStyle(el)[p], prop);
  return c.match(/[\d.]+/g)!.slice(0, 3).map(Number) as RGB;
}

/** Relative luminance (0 black .. 1 white). */
function luminance([r, g, b]: RGB): number {
  const f = (c: number) => {
    const s = c / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
}

function distance(a: RGB, b: RGB): number {
  return Math.max(...a.map((x, i) => Math.abs(x - b[i])));
}

/**
 * The pixels of a screenshot, decoded by the browser: the most frequent colour (the background) and the colour of
 * the text (the frequent colour farthest from the background: glyphs are drawn in it, anti-aliased around it).
 */
async function screenshotColours(page: Page, png: Buffer): Promise<{ background: RGB; ink: RGB }> {
  return page.evaluate(async b64 => {
    const img = new Image();
    img.src = `data:image/png;base64,${b64}`;
    await img.decode();
    const canvas = document.createElement('canvas');
    canvas.width = img.width;
    canvas.height = img.height;
    const ctx = canvas.getContext('2d')!;
    ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(0, 0, img.width, img.height).data;
    const counts = new Map<number, number>();
    for (let i = 0; i < d.length; i += 4) {
      const k = (d[i] << 16) | (d[i + 1] << 8) | d[i + 2];
      counts.set(k, (counts.get(k) ?? 0) + 1);
    }
    const rgb = (k: number): [number, number, number] => [(k >> 16) & 255, (k >> 8) & 255, k & 255];
    const sorted = [...counts.entries()].sort((a, b) => b[1] - a[1]);
    const background = rgb(sorted[0][0]);
    const frequent = sorted.filter(([, n]) => n >= 4).map(([k]) => rgb(k));
    const dist = (c: number[]) => Math.max(...c.map((x, i) => Math.abs(x - background[i])));
    const ink = frequent.reduce((best, c) => (dist(c) > dist(best) ? c : best), background);
    return { background, ink };
  }, png.toString('base64'));
}

async function setTheme(page: IJupyterLabPageFixture, dark: boolean): Promise<void> {
  await (dark ? page.theme.setDarkTheme() : page.theme.setLightTheme());
  await expect(page.locator('body')).toHaveAttribute('data-jp-theme-light', dark ? 'false' : 'true');
  await page.waitForTimeout(300); // the theme's stylesheet applied
}

/** One theme: screenshots of the sidebar and the status bar, their colours as drawn and as the theme defines them. */
async function themeLook(page: IJupyterLabPageFixture, name: string, dark: boolean) {
  await setTheme(page, dark);
  const theme = dark ? 'dark' : 'light';
  const sidebar = page.locator(SIDEBAR);
  const status = page.locator(STATUS);
  const sidebarShot = await sidebar.screenshot({ path: test.info().outputPath(`sidebar-${theme}.png`) });
  const statusShot = await page
    .locator('#jp-main-statusbar')
    .screenshot({ path: test.info().outputPath(`statusbar-${theme}.png`) });
  const itemShot = await status.screenshot({ path: test.info().outputPath(`statusbar-item-${theme}.png`) });
  const statusBarBg = await computedColour(page.locator('#jp-main-statusbar'), 'backgroundColor');
  return {
    sidebarPixels: await screenshotColours(page, sidebarShot),
    statusPixels: await screenshotColours(page, statusShot),
    itemPixels: await screenshotColours(page, itemShot),
    statusBarBg,
    vars: {
      layout1: await cssColour(page, 'var(--jp-layout-color1)'),
      layout2: await cssColour(page, 'var(--jp-layout-color2)'),
      font1: await cssColour(page, 'var(--jp-ui-font-color1)'),
      brand: await cssColour(page, 'var(--jp-brand-color1)')
    },
    sidebarBg: await computedColour(sidebar, 'backgroundColor'),
    nameColour: await computedColour(row(page, name).first().locator('.nbf-Run-name'), 'color'),
    groupBg: await computedColour(page.locator(`${SIDEBAR} .nbf-Group-head`).first(), 'backgroundColor'),
    statusColour: await computedColour(status.locator('.nbf-Status-text'), 'color'),
    fillColour: await computedColour(status.locator('.nbf-Status-fill'), 'backgroundColor')
  };
}

test.describe('nb_finetune sidebar: locations, one-line values, themes', () => {
  test('runs of one name in two folders sit under two headings; long values are cut; light and dark themes', async ({
    page,
    tmpPath
  }) => {
    const name = uniqueName('ui_group');
    const long = uniqueName('a_run_name_long_enough_to_be_cut_with_an_ellipsis_in_the_sidebar');
    const path = await createNotebook(page, `${tmpPath}/groups.ipynb`, [fakeRunsCell(name, long), STOP_FAKES]);
    await openNotebook(page, path);
    try {
      await page.notebook.runCell(0);
      await expect(page.locator('.jp-Cell').nth(0).locator('.jp-Cell-outputWrapper')).toContainText('fakes ok 4');
      await page.click('.jp-SideBar.jp-mod-left li[data-id="nb-finetune-runs"]');
      await expect(page.locator(SIDEBAR)).toBeVisible();
      const rows = row(page, name);
      await expect(rows).toHaveCount(3, { timeout: 30000 });

      // three runs named `name`, in three folders: three headings, each with its directory (the whole path on hover)
      const groups = await Promise.all([0, 1, 2].map(i => groupOf(rows.nth(i))));
      const titles = groups.map(g => g.title);
      expect(new Set(titles).size, `headings ${JSON.stringify(groups)}`).toBe(3);
      expect(titles.every(t => t.startsWith('/') && t.includes(tmpPath))).toBe(true);
      const byDir = (end: string) => groups.find(g => g.title.endsWith(end))!;
      expect(byDir(`/${tmpPath}/runs`).label).toBe(`${tmpPath}/runs`);
      expect(byDir(`/${tmpPath}/runs`).count).toBe('2'); // with the long-named run
      expect(byDir('/elsewhere/deeper/runs').label).toBe('…/deeper/runs'); // shortened: the last two folders
      expect(byDir(`/${LONG_DIR}/runs`).label).toBe(`${tmpPath}/${LONG_DIR}/runs`);
      // control: the long-named run shares its heading with the training run of the same folder
      expect((await groupOf(row(page, long))).title).toBe(byDir(`/${tmpPath}/runs`).title);
      await expect(page.locator(`${SIDEBAR} .nbf-Group`)).toHaveCount(3);

      // long values: one line each, cut with an ellipsis, the whole value as the tooltip
      const nameCell = await oneLine(row(page, long).locator('.nbf-Run-name'));
      expect(nameCell).toMatchObject({ text: long, cut: true, ellipsis: true, oneLine: true });
      expect(nameCell.title).toContain(long);
      const heading = await oneLine(
        page.locator(`${SIDEBAR} .nbf-Group-where`, { hasText: LONG_DIR }).first()
      );
      expect(heading).toMatchObject({ cut: true, ellipsis: true, oneLine: true });
      expect(heading.title).toMatch(new RegExp(`/${LONG_DIR}/runs$`));
      // ... cut at its start: the end of the path (what tells two folders apart) is the part left in view
      const ends = await page
        .locator(`${SIDEBAR} .nbf-Group-where`, { hasText: LONG_DIR })
        .first()
        .evaluate(el => {
          const text = el.querySelector('bdi')!.firstChild!;
          const n = text.textContent!.length;
          const range = document.createRange();
          const rect = (i: number) => {
            range.setStart(text, i);
            range.setEnd(text, i + 1);
            return range.getBoundingClientRect();
          };
          const box = el.getBoundingClientRect();
          return { firstCut: rect(0).left < box.left, lastShown: rect(n - 1).right <= box.right + 1 };
        });
      expect(ends, 'the heading shows the end of the path').toEqual({ firstCut: true, lastShown: true });
      for (const sel of ['.nbf-Run-name', '.nbf-Run-step', '.nbf-Run-loss', '.nbf-Run-lr']) {
        for (const r of [row(page, long), rows.first()]) {
          const cell = await oneLine(r.locator(sel));
          expect(cell.oneLine, `${sel} on one line: ${cell.text}`).toBe(true);
          expect(cell.ellipsis, `${sel} cut with an ellipsis`).toBe(true);
          if (cell.text) {
            expect(cell.title, `${sel} has a tooltip`).not.toBe('');
          }
        }
      }

      // the status bar: this kernel's training run, with its progress (40 / 100)
      const status = page.locator(STATUS);
      await expect(status).toContainText(`${name} · 40 / 100`, { timeout: 30000 });
      await expect(status.locator('.nbf-Status-fill')).toHaveAttribute('style', /width: 40(\.0)?%/);

      const light = await themeLook(page, name, false);
      const dark = await themeLook(page, name, true);
      await setTheme(page, false);
      for (const [theme, look] of [
        ['light', light],
        ['dark', dark]
      ] as const) {
        // what the CSS asks for is the theme's variables...
        expect(look.sidebarBg, `${theme}: sidebar background`).toEqual(look.vars.layout1);
        expect(look.nameColour, `${theme}: run name`).toEqual(look.vars.font1);
        expect(look.groupBg, `${theme}: group heading`).toEqual(look.vars.layout2);
        expect(look.statusColour, `${theme}: status bar text`).toEqual(look.vars.font1);
        expect(look.fillColour, `${theme}: status bar progress`).toEqual(look.vars.brand);
        // ... and what is drawn: the screenshots' background is the theme's, their text the theme's font colour
        expect(distance(look.sidebarPixels.background, look.vars.layout1), `${theme}: sidebar pixels`).toBeLessThan(8);
        expect(distance(look.statusPixels.background, look.statusBarBg), `${theme}: status bar pixels`).toBeLessThan(8);
        expect(distance(look.itemPixels.ink, look.vars.font1), `${theme}: status bar text pixels`).toBeLessThan(40);
        expect(distance(look.sidebarPixels.ink, look.sidebarPixels.background)).toBeGreaterThan(100);
      }
      // light and dark differ where they should: backgrounds light vs dark, the text the other way round
      expect(luminance(light.sidebarPixels.background)).toBeGreaterThan(0.6);
      expect(luminance(dark.sidebarPixels.background)).toBeLessThan(0.2);
      expect(luminance(light.statusPixels.background)).toBeGreaterThan(0.6);
      expect(luminance(dark.statusPixels.background)).toBeLessThan(0.2);
      expect(luminance(light.itemPixels.ink)).toBeLessThan(luminance(light.itemPixels.background));
      expect(luminance(dark.itemPixels.ink)).toBeGreaterThan(luminance(dark.itemPixels.background));
    } finally {
      await page.notebook.runCell(1); // the runs stop being live for the tests after this one
    }
    await expect(page.locator('.jp-Cell').nth(1).locator('.jp-Cell-outputWrapper')).toContainText('fakes stopped');
    await expect(page.locator(STATUS)).toBeHidden({ timeout: 30000 });
  });
});
