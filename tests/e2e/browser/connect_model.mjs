// Connect (or edit) a project's ML backend the way an admin does: Project > Settings > Model > Connect Model
// (or the model card's Edit), fill the form, Validate and Save.
// usage: node connect_model.mjs <ls-url> <email> <password> <project> <screenshot.png> <json options>
//   options: {"url": backend URL, "title": name, "user": basic auth user, "pass": ..., "extra": text, "edit": bool}
// Prints one JSON line: {"status": HTTP status of Label Studio's save, "closed": form closed, "shown": text of the
// form's error (if any), "card": text of the model card afterwards}.
import { login, reporting } from './session.mjs';

const [url, email, password, project, screenshot, optionsJson] = process.argv.slice(2);
const options = JSON.parse(optionsJson);
const report = { status: null, closed: false, shown: '', card: '' };
await reporting(report, async (browser) => {
  const page = await login(browser, { url, email, password });
  await page.goto(`${url}/projects/${project}/settings/ml`);
  if (options.edit) {  // the card's menu, then Edit
    await page.locator('[class*=card] button, [data-testid*=model] button').filter({ hasNotText: /Connect/ }).first()
      .click();
    await page.getByText('Edit', { exact: true }).click();
  } else {
    await page.locator('button[aria-label="Add machine learning model"]').click();
  }
  const form = page.locator('form[action=addMLBackend], form[action=updateMLBackend]');
  await form.waitFor();
  if (options.edit) {  // the form fills in the stored values after it opens: wait for them before typing
    await page.waitForFunction(() => document.querySelector('form input[name=url]')?.value, null, { timeout: 30000 });
    await page.waitForTimeout(500);
  }
  if (options.title !== undefined) await form.locator('input[name=title]').fill(options.title);
  if (options.url !== undefined) await form.locator('input[name=url]').fill(options.url);
  if (options.user !== undefined) {
    await form.locator('[data-testid^=select-trigger-auth_method]').click();
    await page.getByText('Basic Authentication', { exact: true }).last().click();
    await form.locator('input[name=basic_auth_user]').fill(options.user);
    await form.locator('input[name=basic_auth_pass]').fill(options.pass);
  }
  if (options.extra !== undefined) await form.locator('textarea[name=extra_params]').fill(options.extra);
  const interactive = form.locator('input[name=is_interactive]');
  if (!(await interactive.isChecked())) await interactive.dispatchEvent('click');
  const saved = page.waitForResponse((r) => /\/api\/ml(\/\d+)?(\?|$)/.test(r.url())
    && ['POST', 'PATCH'].includes(r.request().method()), { timeout: 60000 });
  await form.locator('button[type=submit]').click();
  report.status = (await saved).status();
  await page.waitForTimeout(1500);
  report.closed = !(await form.isVisible());
  if (!report.closed) report.shown = (await form.innerText()).replace(/\s+/g, ' ');
  report.card = (await page.locator('main, body').first().innerText()).replace(/\s+/g, ' ');
  await page.screenshot({ path: screenshot });
});
