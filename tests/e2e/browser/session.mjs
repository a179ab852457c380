// What every browser check shares: headless Chromium that talks to Label Studio only, a logged-in labeling page
// of one task, and accepting the backend's suggestions then submitting.
import { chromium } from 'playwright-core';

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
}

// A page logged in to Label Studio at `url` (every other origin is blocked).
export async function login(browser, { url, email, password, width = 1400, height = 1000 }) {
  const page = await browser.newPage({ viewport: { width, height } });
  const origin = new URL(url).origin;
  await page.route('**/*', (route) => (route.request().url().startsWith(origin) || route.request().url().startsWith('blob:')
    || route.request().url().startsWith('data:') ? route.continue() : route.abort()));
  await page.goto(`${url}/user/login/`);
  await page.fill('input[name=email]', email);
  await page.fill('input[name=password]', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit], input[type=submit]')]);
  return page;
}

// A logged-in page showing `task` of `project`.
export async function openTask(browser, { url, email, password, project, task, width = 1400, height = 1000 }) {
  const page = await login(browser, { url, email, password, width, height });
  await page.goto(`${url}/projects/${project}/data?task=${task}`);
  await page.locator('img[alt=image]').first().waitFor({ state: 'visible', timeout: 60000 });
  return page;
}

export async function regionTitles(page) {
  return (await page.locator('.lsf-outliner-item__title').allInnerTexts()).map((t) => t.trim()).filter(Boolean);
}

// Accept the suggestions on screen, screenshot, submit: {regions, submitted}.
export async function acceptAndSubmit(page, screenshot) {
  await page.getByTestId('bottombar-accept-suggestions-button').click();
  await page.getByTestId('bottombar-accept-suggestions-button').waitFor({ state: 'detached', timeout: 10000 });
  const regions = await regionTitles(page);
  await page.screenshot({ path: screenshot });
  const submitted = page.waitForResponse((r) => r.url().includes('/annotations') && r.request().method() === 'POST');
  await page.getByRole('button', { name: 'Submit' }).click();
  return { regions, submitted: (await submitted).ok() };
}

// Run `work(browser)` in a fresh headless Chromium and print `report` as the last line whatever happens: a
// failure is written into it as `error` and the process exits non-zero.
export async function reporting(report, work) {
  const browser = await launch();
  try {
    await work(browser);
  } catch (error) {
    report.error = String(error).split('\n')[0];
    process.exitCode = 1;
  } finally {
    console.log(JSON.stringify(report));
    await browser.close();
  }
}
