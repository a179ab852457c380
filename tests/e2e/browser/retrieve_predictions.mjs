// Retrieve predictions the way a labeler does: the project's Data Manager, select all tasks, Actions > the
// predictions action, confirm; then reload and screenshot the table with the backend's columns.
// usage: node retrieve_predictions.mjs <ls-url> <email> <password> <project> <screenshot.png>
// Prints one JSON line: {"action": menu item used, "status": HTTP status of the action, "detail": its message,
// "seconds": how long it took, "columns": texts of the backend_status / backend_error cells after reloading}.
import { login, reporting } from './session.mjs';

const [url, email, password, project, screenshot] = process.argv.slice(2);
const report = { action: null, status: null, detail: null, seconds: null, columns: [] };
await reporting(report, async (browser) => {
  const page = await login(browser, { url, email, password, width: 1600, height: 1000 });
  await page.goto(`${url}/projects/${project}/data`);
  await page.locator('input[aria-label="Select all rows"]').click();
  await page.locator('button[aria-label="Tasks Actions"]:not([disabled])').waitFor();
  await page.locator('button[aria-label="Tasks Actions"]').click();
  const item = page.getByText(/^(Batch predictions|Retrieve Predictions)$/).first();
  report.action = (await item.innerText()).trim();
  const started = Date.now();
  const answered = page.waitForResponse((r) => r.url().includes('/api/dm/actions') && r.request().method() === 'POST',
    { timeout: 300000 });
  answered.catch(() => {});  // reported through the awaited one below
  await item.click();
  const confirm = page.locator('button', { hasText: /^OK$/ });  // "This operation might be ... interrupted"
  await confirm.waitFor({ timeout: 10000 });
  await confirm.click();
  const response = await answered;
  report.seconds = (Date.now() - started) / 1000;
  report.status = response.status();
  report.detail = (await response.json().catch(() => ({}))).detail || null;
  await page.reload();
  await page.locator('input[aria-label="Select all rows"]').waitFor();
  await page.waitForTimeout(1000);
  report.columns = await page.getByText(/^(pre-labeling|click) (queued|failed)/).allInnerTexts();
  await page.screenshot({ path: screenshot, fullPage: true });
});
