// Open a task's labeling page in headless Chromium and take a screenshot once its images have loaded.
// usage: node render_task.mjs <ls-url> <email> <password> <project> <task> <screenshot.png> [text ...]
// (VIEWPORT=WIDTHxHEIGHT sets the window; default 1400x1000)
// Prints one JSON line: {"images": n, "texts": {"<text>": visible}, "image_box": {x, y, width, height}, "viewport"}.
import { launch, openTask } from './session.mjs';

const [url, email, password, project, task, screenshot, ...texts] = process.argv.slice(2);
const browser = await launch();
const [width, height] = (process.env.VIEWPORT || '1400x1000').split('x').map(Number);
const report = { images: 0, texts: {}, image_box: null, viewport: { width, height } };
try {
  const page = await openTask(browser, { url, email, password, project, task, width, height });
  await page.waitForTimeout(1000);
  report.images = await page.locator('.lsf-main-content img').evaluateAll(
    (images) => images.filter((i) => i.complete && i.naturalWidth > 0).length);
  for (const text of texts) {
    report.texts[text] = await page.getByText(text, { exact: false }).first().isVisible().catch(() => false);
  }
  report.image_box = await page.locator('img[alt=image]').first().boundingBox();
  await page.screenshot({ path: screenshot });
} finally {
  console.log(JSON.stringify(report));
  await browser.close();
}
