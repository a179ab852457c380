// Open a task's labeling page in headless Chromium, click the smart keypoint tool on the image,
// accept the backend's suggestion and submit the annotation.
// usage: node label_with_click.mjs <ls-url> <email> <password> <project> <task> <label> <x-frac> <y-frac> <screenshot.png>
//        [<refine-x-frac> <refine-y-frac>]  (a second click after picking the label again)
// Prints one JSON line: {"suggestions": n, "regions": [...], "submitted": true}.
import { acceptAndSubmit, launch, openTask } from './session.mjs';

const [url, email, password, project, task, label, xFrac, yFrac, screenshot, refineX, refineY] = process.argv.slice(2);
const browser = await launch();
const report = { suggestions: 0, regions: [], submitted: false, ml_requests: 0, clicks_sent: [], statuses: [] };
try {
  const page = await openTask(browser, { url, email, password, project, task, height: 900 });
  page.on('request', (r) => { if (r.url().includes('/interactive-annotating')) report.ml_requests += 1; });

  const image = page.locator('img[alt=image]');

  await page.getByText('Auto-Annotation').click();
  // The smart keypoint tool sits in the toolbar's smart slot; select it as the slot's menu does.
  await page.locator('.lsf-toolbar__smart [aria-label=key-point-tool]').dispatchEvent('click');
  // The KeyPointLabels label: the config's "Click" row comes first.
  const pickLabel = () => page.getByText(label, { exact: true }).nth(0).click();
  const clickAt = async (x, y) => {
    const box = await image.boundingBox();
    const answered = page.waitForResponse((r) => r.url().includes('/interactive-annotating'), { timeout: 60000 });
    await page.mouse.click(box.x + x * box.width, box.y + y * box.height);
    const response = await answered;
    report.clicks_sent.push(JSON.parse(response.request().postData()).context.result.length);
    report.statuses.push(response.status());
  };
  await pickLabel();
  await clickAt(Number(xFrac), Number(yFrac));
  const suggestions = page.getByText(/\d+ suggestions?/);
  await suggestions.waitFor({ timeout: 30000 });
  if (refineX) {  // Label Studio deselects the label after a click: pick it again, then a refining click
    await pickLabel();
    await clickAt(Number(refineX), Number(refineY));
    await page.waitForTimeout(500);
  }
  report.suggestions = Number((await suggestions.innerText()).match(/\d+/)[0]);
  Object.assign(report, await acceptAndSubmit(page, screenshot));
} finally {
  console.log(JSON.stringify(report));
  await browser.close();
}
