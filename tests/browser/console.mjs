// Drives the gateway's /console in headless Debian Chromium (playwright-core, no browser
// download): the page connects with a pasted token, shows an event published from its own
// form, filters by type, and shows the caller's connection count.
//
//   node tests/browser/console.mjs <base-url> <ops-token> <service-token> <org>
//
// Exits 0 when every step held, 1 with the step that failed.

import { chromium } from "playwright-core";

const [base, opsToken, serviceToken, org] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const step = (what) => console.log(`step: ${what}`);

const browser = await chromium.launch({
  executablePath,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
try {
  const page = await browser.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(String(error)));
  page.setDefaultTimeout(10000);

  step("the page loads");
  await page.goto(`${base}/console`);

  step("a pasted token connects the stream");
  await page.fill("#token", opsToken);
  await page.click("#connect");
  await page.waitForSelector("#events li[data-type=connected]");
  await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("connected to"));

  step("an event published from the form appears on the stream");
  await page.fill("#service-token", serviceToken);
  await page.fill("#org", org);
  await page.fill("#type", "ticket.created");
  await page.fill("#data", '{"title":"from the console"}');
  await page.click("#publish");
  await page.waitForFunction(() => document.getElementById("publish-result").textContent.startsWith("202"));
  await page.waitForSelector("#events li[data-type='ticket.created']");
  const shown = await page.textContent("#events li[data-type='ticket.created']");
  if (!shown.includes("from the console")) throw new Error(`the event shows ${shown}`);

  step("a type filter keeps other types off the stream");
  await page.fill("#types", "payment.received");
  await page.fill("#resume", "");
  await page.click("#connect");
  await page.waitForFunction(() => document.querySelectorAll("#events li[data-type=connected]").length >= 2);
  await page.fill("#type", "ticket.updated");
  await page.click("#publish");
  await page.waitForFunction(() => document.getElementById("publish-result").textContent.startsWith("202"));
  await page.fill("#type", "payment.received");
  await page.click("#publish");
  await page.waitForSelector("#events li[data-type='payment.received']");
  if (await page.$("#events li[data-type='ticket.updated']")) throw new Error("a filtered-out type was shown");

  step("the connections panel counts the console's own stream");
  await page.waitForFunction(() => Number(document.getElementById("connections-total").textContent) >= 1);

  if (problems.length) throw new Error(`the page raised: ${problems.join("; ")}`);
  console.log("ok");
} catch (error) {
  console.error(`failed: ${error.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
