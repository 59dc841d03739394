// Desktop (1280×800) and phone (390 px, custom schedule) screenshots of any build of the page,
// after one run on the CPU backend: `node tests/e2e/screens-before.mjs DIST_DIR PREFIX`. Used to
// keep "before" pictures of an older build beside the end-to-end test's own.

import path from 'node:path';
import { SHOTS, serveDist, launchBrowser, setControl as set } from './harness.mjs';

const [dist, prefix = 'before'] = process.argv.slice(2);
const { server, baseUrl: url } = await serveDist(dist);

for (const [name, device] of [['desktop-1280x800', { viewport: { width: 1280, height: 800 } }],
  ['phone-390', { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true }]]) {
  const { context, page } = await launchBrowser(device);
  try {
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
