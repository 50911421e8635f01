// Drives the UI-cost notebook in JupyterLab with headless Chromium (Debian's), like a user running it cell by cell.
// node ui_driver.js URL RESULTS_DIR '["ready", null, "widget_0", ...]' SCREENSHOT.png
// For each cell: Shift+Enter, then (when the list names a file) wait until RESULTS_DIR/<name>.json exists.
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

(async () => {
  const [url, results, waitsJson, shot] = process.argv.slice(2);
  const waits = JSON.parse(waitsJson);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
           '--disable-sync', '--no-first-run'],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  await page.goto(url);
  await page.waitForSelector('.jp-Notebook .jp-Cell', { timeout: 120000 });
  await page.waitForSelector('.jp-Spinner', { state: 'detached', timeout: 120000 }).catch(() => {});
  await page.waitForTimeout(3000);
  await page.waitForSelector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', { timeout: 120000 })
    .catch(() => {});
  const accept = await page.$('.jp-Dialog .jp-mod-accept');
  if (accept) await accept.click();
  await (await page.$$('.jp-Notebook .jp-Cell'))[0].click();
  for (const w of waits) {
    await page.keyboard.press('Shift+Enter');
    if (w === null) { await page.waitForTimeout(500); continue; }
    const file = path.join(results, w === 'ready' ? 'ready' : `${w}.json`);
    const t0 = Date.now();
    while (!fs.existsSync(file)) {
      if (Date.now() - t0 > 15 * 60 * 1000) throw new Error(`timed out waiting for ${file}`);
      await page.waitForTimeout(250);
    }
  }
  await page.screenshot({ path: shot, fullPage: false });
  await browser.close();
})().catch((e) => { console.error(e); process.exit(1); });
