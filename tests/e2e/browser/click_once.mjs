// One smart-keypoint click on a task's labeling page, whatever the backend answers.
// usage: node click_once.mjs <ls-url> <email> <password> <project> <task> <label> <x-frac> <y-frac> <screenshot.png>
// Prints one JSON line: {"status": HTTP status of Label Studio's interactive call, "answer": its JSON body,
// "suggestions": number of suggestions on screen afterwards}.
import { openTask, reporting } from './session.mjs';

const [url, email, password, project, task, label, xFrac, yFrac, screenshot] = process.argv.slice(2);
const report = { status: null, answer: null, suggestions: 0 };
await reporting(report, async (browser) => {
  const page = await openTask(browser, { url, email, password, project, task, height: 900 });
  await page.getByText('Auto-Annotation').click();
  await page.locator('.lsf-toolbar__smart [aria-label=key-point-tool]').dispatchEvent('click');
  await page.getByText(label, { exact: true }).nth(0).click();
  const box = await page.locator('img[alt=image]').boundingBox();
  const answered = page.waitForResponse((r) => r.url().includes('/interactive-annotating'), { timeout: 120000 });
  await page.mouse.click(box.x + Number(xFrac) * box.width, box.y + Number(yFrac) * box.height);
  const response = await answered;
  report.status = response.status();
  report.answer = await response.json().catch(() => null);
  await page.waitForTimeout(1500);
  const shown = await page.getByText(/\d+ suggestions?/).allInnerTexts();
  report.suggestions = shown.length ? Number(shown[0].match(/\d+/)[0]) : 0;
  await page.screenshot({ path: screenshot });
});
