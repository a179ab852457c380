// Open a task's labeling page in headless Chromium with Auto-Annotation on, type a phrase into the concept
// TextArea and press Add, wait for the backend's answer, accept the suggestions and submit.
// usage: node label_with_phrase.mjs <ls-url> <email> <password> <project> <task> <phrase> <placeholder> <screenshot.png>
// Prints one JSON line: {"sent": [...context item types], "status": n, "suggestions": n, "before": [...],
// "regions": [...], "submitted": bool} (before: the regions the task opened with, e.g. from pre-labeling).
import { acceptAndSubmit, launch, openTask, regionTitles } from './session.mjs';

const [url, email, password, project, task, phrase, placeholder, screenshot] = process.argv.slice(2);
const browser = await launch();
const report = { sent: [], status: 0, suggestions: 0, before: [], regions: [], submitted: false };
try {
  const page = await openTask(browser, { url, email, password, project, task });
  await page.waitForTimeout(2000);  // predictions, if any, fill the annotation as the task opens
  report.before = await regionTitles(page);
  await page.getByText('Auto-Annotation').click();
  const answered = page.waitForResponse((r) => r.url().includes('/interactive-annotating'), { timeout: 120000 });
  await page.getByPlaceholder(placeholder).fill(phrase);
  await page.getByRole('button', { name: 'Add' }).click();
  const response = await answered;
  report.sent = JSON.parse(response.request().postData()).context.result.map((item) => item.type);
  report.status = response.status();
  const suggestions = page.getByText(/\d+ suggestions?/);
  await suggestions.waitFor({ timeout: 30000 });
  report.suggestions = Number((await suggestions.innerText()).match(/\d+/)[0]);
  Object.assign(report, await acceptAndSubmit(page, screenshot));
} finally {
  console.log(JSON.stringify(report));
  await browser.close();
}
