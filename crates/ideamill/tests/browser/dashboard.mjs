// The dashboard in a real browser (Debian's Chromium through playwright-core),
// against a real `ideamill run` whose stages sleep a little so that movement
// is visible. Run by crates/ideamill/tests/browser.rs, which sets:
//   BASE_URL        the dashboard, e.g. http://127.0.0.1:41234
//   CHROMIUM        the browser binary (default /usr/bin/chromium)
//   SCREENSHOT_DIR  where the screenshots go
//   GO_FILE         created once the item's page is live: until then the
//                   `outline` stage waits, so the test sees it run
// Exit 0 and "BROWSER TEST PASSED" on success; any step that fails throws.
//
// The story: add an idea through the form; watch it move through the stages
// on its page, live (server-sent events, no reload); it fails (its first
// `implement` fails on purpose); retry it with the button; watch QA send it
// back once and then pass; check the timeline, the feedback and the
// highlighted files; search for it; see the QA lift panel on the overview;
// take screenshots.

import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const BASE = process.env.BASE_URL;
const SHOTS = process.env.SCREENSHOT_DIR;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const GO_FILE = process.env.GO_FILE;
if (!BASE || !SHOTS || !GO_FILE) throw new Error("BASE_URL, SCREENSHOT_DIR and GO_FILE must be set");
mkdirSync(SHOTS, { recursive: true });

const STEP_TIMEOUT = 60_000;
const started = Date.now();
function log(...args) {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args);
}

const profile = mkdtempSync(join(tmpdir(), "ideamill-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 1360, height: 900 },
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
context.setDefaultTimeout(STEP_TIMEOUT);

const problems = [];
function watch(page) {
  // A CSP violation, a script error or a failed request is a bug.
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("dialog", (d) => d.accept());
}

function expect(cond, what) {
  if (!cond) throw new Error(`expected: ${what}`);
}

try {
  const page = context.pages()[0] || (await context.newPage());
  watch(page);

  // 1. Add an idea through the form.
  await page.goto(`${BASE}/add`);
  await page.fill(
    "#ideas",
    [
      "a flaky CLI that converts CSV to JSON",
      "a web page that shows the phase of the moon",
      "a Python library for disk usage reports",
    ].join("\n"),
  );
  await page.click("#add-submit");
  const link = page.locator("#add-result a[href^='/items/']").first();
  await link.waitFor();
  const href = await link.getAttribute("href");
  const id = Number(href.split("/").pop());
  expect(id > 0, `an item id in ${href}`);
  expect((await page.inputValue("#ideas")) === "", "the form is cleared after adding");
  expect((await page.locator("#add-result").textContent()).includes("Added 3 items"), "three items added");
  log(`added items ${id}… through the form`);

  // While they run: the overview, live, in another tab.
  const overview = await context.newPage();
  watch(overview);
  await overview.goto(`${BASE}/`);
  await overview.locator("#live.on").waitFor();
  await overview.locator("table.running tbody tr").first().waitFor();
  await overview.locator("#chart-throughput .uplot").waitFor();
  const liveShot = join(SHOTS, "overview-live.png");
  await overview.screenshot({ path: liveShot, fullPage: true });
  await overview.close();

  // 2. Its page, live: the stages move without a reload.
  await page.goto(`${BASE}/items/${id}`);
  await page.evaluate(() => { window.__notReloaded = true; });
  await page.locator("#live.on").waitFor();
  writeFileSync(GO_FILE, "");
  const seen = new Set();
  const deadline = Date.now() + STEP_TIMEOUT;
  while (Date.now() < deadline) {
    const running = await page.locator(".step.s-running .step-name").allTextContents();
    running.forEach((s) => seen.add(s));
    const state = (await page.locator("#item-state").textContent()).trim();
    if (state === "failed") break;
    await page.waitForTimeout(100);
  }
  expect(seen.has("outline"), `outline seen running live (saw ${[...seen]})`);
  expect(seen.has("implement"), `implement seen running live (saw ${[...seen]})`);
  await page.locator("#item-state", { hasText: "failed" }).waitFor();
  expect(await page.evaluate(() => window.__notReloaded === true), "no reload while it moved");
  await page.locator(".callout.c-failed", { hasText: "simulated failure" }).waitFor();
  await page.locator(".step.s-failed .step-name", { hasText: "implement" }).waitFor();
  log(`watched it live: ${[...seen].join(" → ")} → failed`);

  // 3. Retry it with the button; QA sends it back once, then it passes.
  await page.click("#retry");
  await page.locator("#item-state", { hasText: /running|queued/ }).waitFor();
  await page.locator("#item-state", { hasText: "done" }).waitFor();
  expect(await page.evaluate(() => window.__notReloaded === true), "no reload through the retry");
  const rounds = await page.locator(".round h3").allTextContents();
  expect(rounds.length >= 2, `two rounds in the timeline (saw ${rounds})`);
  await page.locator(".t-feedback", { hasText: "AssertionError" }).waitFor();
  await page.locator(".badge", { hasText: "sent back by QA" }).first().waitFor();
  const keywords = await page.locator(".file pre.hl .k").count();
  expect(keywords > 0, "generated files are shown highlighted");
  expect(await page.locator("#retry").count() === 1, "a done item can be run again");
  log(`retried: done after ${rounds.length} rounds, QA feedback and highlighted files shown`);
  await page.evaluate(() => window.scrollTo(0, 0));
  const itemShot = join(SHOTS, "item.png");
  await page.screenshot({ path: itemShot, fullPage: true });

  // 4. The items list: search narrows it as you type.
  await page.goto(`${BASE}/items`);
  await page.fill("#q", "flaky csv");
  await page.waitForFunction(
    (id) => {
      const rows = document.querySelectorAll("#results tbody tr");
      return rows.length === 1 && rows[0].querySelector("td.id a")?.textContent.trim() === String(id);
    },
    id,
  );
  // The address follows the search (replaced, not pushed, after the swap).
  await page.waitForURL(/\/items\?q=flaky\+csv$/);
  await page.fill("#q", "nothing-like-this");
  await page.locator("#results .empty").waitFor();
  const listShot = join(SHOTS, "items.png");
  await page.fill("#q", "");
  await page.locator("#results tbody tr").first().waitFor();
  await page.screenshot({ path: listShot, fullPage: true });
  log("searched the items list");

  // 5. The overview: the verdict first; its load time.
  await page.goto(`${BASE}/`);
  await page.locator("#verdict.v-healthy").waitFor();
  await page.locator("#live.on").waitFor();
  await page.locator("#chart-throughput .uplot").waitFor();
  await page.locator(".events li", { hasText: "item retried" }).first().waitFor();
  // The QA lift: QA rejects every item's first round and passes its second
  // (the flaky one's after its retry), so all three pass at a later round.
  const qa = page.locator("#qa-lift tr[data-gate='qa'][data-model='no model']");
  await qa.locator("td[data-k='passed_later']", { hasText: /^3$/ }).waitFor();
  expect((await qa.locator("td[data-k='passed_first']").textContent()).trim() === "0", "no item passed QA at round 1");
  expect((await qa.locator("td[data-k='rates']").textContent()).includes("0% → 100%"), "pass rate 0% at round 1, 100% after the last");
  expect((await qa.locator("td[data-k='lift']").textContent()).trim() === "—", "no lift without a first-round pass");
  log("the QA lift panel shows 3 items passing QA at a later round");
  const timing = await page.evaluate(() => {
    const n = performance.getEntriesByType("navigation")[0];
    return { dom: n.domContentLoadedEventEnd, load: n.loadEventEnd, ttfb: n.responseStart - n.requestStart };
  });
  log(`overview: first byte ${timing.ttfb.toFixed(1)} ms, DOM ready ${timing.dom.toFixed(1)} ms, loaded ${timing.load.toFixed(1)} ms`);
  const overviewShot = join(SHOTS, "overview.png");
  await page.screenshot({ path: overviewShot, fullPage: true });

  expect(problems.length === 0, `no console errors:\n${problems.join("\n")}`);
  log(`screenshots: ${itemShot} ${overviewShot} ${liveShot} ${listShot}`);
  console.log("BROWSER TEST PASSED");
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
