// Open a task's labeling page in headless Chromium and take a screenshot once its images have loaded.
// usage: node render_task.mjs <ls-url> <email> <password> <project> <task> <screenshot.png> [text ...]
// Prints one JSON line: {"images": n, "texts": {"<text>": visible}}.
import { chromium } from 'playwright-core';

const [url, email, password, project, task, screenshot, ...texts] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const report = { images: 0, texts: {} };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const origin = new URL(url).origin;
  await page.route('**/*', (route) => (route.request().url().startsWith(origin) || route.request().url().startsWith('blob:')
    || route.request().url().startsWith('data:') ? route.continue() : route.abort()));
  await page.goto(`${url}/user/login/`);
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit], input[type=submit]')]);
  await page.goto(`${url}/projects/${project}/data?task=${task}`);
  await page.locator('img[alt=image]').first().waitFor({ state: 'visible', timeout: 60000 });
  await page.waitForTimeout(1000);
  report.images = await page.locator('.lsf-main-content img').evaluateAll(
    (images) => images.filter((i) => i.complete && i.naturalWidth > 0).length);
  for (const text of texts) {
    report.texts[text] = await page.getByText(text, { exact: false }).first().isVisible().catch(() => false);
  }
  await page.screenshot({ path: screenshot });
} finally {
  console.log(JSON.stringify(report));
  await browser.close();
}
