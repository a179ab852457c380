// Open a task's labeling page in headless Chromium, click the smart keypoint tool on the image,
// accept the backend's suggestion and submit the annotation.
// usage: node label_with_click.mjs <ls-url> <email> <password> <project> <task> <label> <x-frac> <y-frac> <screenshot.png>
//        [<refine-x-frac> <refine-y-frac>]  (a second click after picking the label again)
// Prints one JSON line: {"suggestions": n, "regions": [...], "submitted": true}.
import { chromium } from 'playwright-core';

const [url, email, password, project, task, label, xFrac, yFrac, screenshot, refineX, refineY] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const report = { suggestions: 0, regions: [], submitted: false, ml_requests: 0, clicks_sent: [], statuses: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const origin = new URL(url).origin;
  await page.route('**/*', (route) => (route.request().url().startsWith(origin) || route.request().url().startsWith('blob:')
    || route.request().url().startsWith('data:') ? route.continue() : route.abort()));
  page.on('request', (r) => { if (r.url().includes('/interactive-annotating')) report.ml_requests += 1; });

  await page.goto(`${url}/user/login/`);
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit], input[type=submit]')]);
  await page.goto(`${url}/projects/${project}/data?task=${task}`);
  const image = page.locator('img[alt=image]');
  await image.waitFor({ state: 'visible', timeout: 60000 });

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
  await page.getByTestId('bottombar-accept-suggestions-button').click();
  await page.getByTestId('bottombar-accept-suggestions-button').waitFor({ state: 'detached', timeout: 10000 });
  report.regions = (await page.locator('.lsf-outliner-item__title').allInnerTexts())
    .map((t) => t.trim()).filter(Boolean);
  await page.screenshot({ path: screenshot });
  const submitted = page.waitForResponse((r) => r.url().includes('/annotations') && r.request().method() === 'POST');
  await page.getByRole('button', { name: 'Submit' }).click();
  report.submitted = (await submitted).ok();
} finally {
  console.log(JSON.stringify(report));
  await browser.close();
}
