// Desktop (1280×800) and phone (390 px, custom schedule) screenshots of any build of the page,
// after one run on the CPU backend: `node tests/e2e/screens-before.mjs DIST_DIR PREFIX`. Used to
// keep "before" pictures of an older build beside the end-to-end test's own.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { serve } from '../../scripts/serve.mjs';

const [dist, prefix = 'before'] = process.argv.slice(2);
const SHOTS = path.join(import.meta.dirname, 'screenshots');
fs.mkdirSync(SHOTS, { recursive: true });
const server = await serve(dist, 0);
const url = `http://127.0.0.1:${server.address().port}/`;
const set = (page, id, value) => page.evaluate(([id, value]) => {
  const el = document.getElementById(id);
  if (el.type === 'checkbox') el.checked = value; else el.value = String(value);
  el.dispatchEvent(new Event('input', { bubbles: true }));
  el.dispatchEvent(new Event('change', { bubbles: true }));
}, [id, value]);

for (const [name, device] of [['desktop-1280x800', { viewport: { width: 1280, height: 800 } }],
  ['phone-390', { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true }]]) {
  const context = await chromium.launchPersistentContext(fs.mkdtempSync(path.join(os.tmpdir(), 'disa-shot-')), {
    executablePath: '/usr/bin/chromium', headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage'], ...device,
  });
  try {
    const page = context.pages()[0] || (await context.newPage());
    await page.goto(url);
    await page.waitForFunction(() => document.body.dataset.state === 'ready', null, { timeout: 240_000 });
    await set(page, 'auto-run', false);
    if (name.startsWith('phone')) await set(page, 'preset', 'custom');
    await page.click('#generate');
    await page.waitForFunction(() => document.body.dataset.state === 'done', null, { timeout: 240_000 });
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    await page.screenshot({ path: path.join(SHOTS, `${prefix}-${name}.png`) });
    console.log(`${prefix}-${name}: page width ${width} px`);
  } finally {
    await context.close();
  }
}
server.close();
