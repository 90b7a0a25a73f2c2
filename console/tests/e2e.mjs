// End-to-end test of the console against a live pxb-server (or dev-server.mjs in front of
// `pxb demo`). Environment:
//   PXB_CONSOLE_URL          the CONSOLE line: <origin>/#/signin?code=<one-time code> (required)
//   PXB_CONSOLE_URL2         a second one-time code URL (for "the tab survives a new login")
//   PXB_CONSOLE_URL3         a third one (for "the time bracket is back to 24h in a new session")
//   PXB_TOKEN                without URL2/URL3: the development token, to get fresh codes from
//                            the server (`POST /console/code`)
//   PXB_CONSOLE_SCREENSHOTS  a folder: a PNG of each screen is saved there
//   PXB_CHROMIUM             the browser (default /usr/bin/chromium)
// Run: node --test tests/
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const axeSource = await readFile(require.resolve('axe-core/axe.min.js'), 'utf8');

const URL1 = process.env.PXB_CONSOLE_URL;
const TOKEN = process.env.PXB_TOKEN;
/**
 * The n-th sign-in URL: PXB_CONSOLE_URL<n>, or with the development token (PXB_TOKEN) a fresh
 * one-time code from the server (`POST /console/code`); undefined when neither is at hand.
 */
async function signInUrl(n) {
  const given = process.env[`PXB_CONSOLE_URL${n}`];
  if (given) return given;
  if (!TOKEN) return undefined;
  const r = await fetch(`${origin}/console/code`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } });
  if (r.status !== 201 && r.status !== 200) return undefined;
  const b = await r.json();
  return b.urlPath ? origin + b.urlPath : `${origin}/#/signin?code=${encodeURIComponent(b.code)}`;
}
const SHOTS = process.env.PXB_CONSOLE_SCREENSHOTS;
const ORG = process.env.PXB_CONSOLE_ORG ?? 'demo';
const RUN = Math.random().toString(36).slice(2, 8);

if (!URL1) {
  console.error('PXB_CONSOLE_URL is not set: give the CONSOLE line of `pxb demo` (or of dev-server.mjs)');
  process.exit(1);
}
const origin = new URL(URL1).origin;

let browser, context, page;
const cspViolations = [];
const pageErrors = [];

async function until(what, f, timeout = 30000, every = 500) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

const tid = (id) => `[data-testid="${id}"]`;

async function shot(name) {
  if (!SHOTS) return;
  await mkdir(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

/** axe-core on the page: no serious or critical violations. */
async function accessible(screen) {
  await page.evaluate(axeSource);
  const violations = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) }));
  });
  const bad = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(bad, [], `${screen}: axe found serious/critical violations:\n${JSON.stringify(bad, null, 2)}`);
}

async function accessible2(p, screen) {
  await p.evaluate(axeSource);
  const v = await p.evaluate(async () => (await axe.run(document, { resultTypes: ['violations'] })).violations.map((x) => ({ id: x.id, impact: x.impact })));
  assert.deepEqual(v.filter((x) => x.impact === 'serious' || x.impact === 'critical'), [], `${screen}: axe violations`);
}

async function go(hash, ready) {
  await page.evaluate((h) => (location.hash = h), hash);
  await page.waitForSelector(tid(ready));
}

async function signInWith(url) {
  await page.goto(url);
  await page.waitForSelector(tid('fleet-page'), { timeout: 30000 });
  const u = new URL(page.url());
  assert.equal(u.hash, '#/fleet', 'the one-time code leaves the address bar');
  assert.ok(!page.url().includes('code='), 'no code in the URL after sign-in');
  await page.waitForSelector(tid('user'));
}

describe('pxb console', { timeout: 15 * 60_000 }, () => {
  before(async () => {
    browser = await chromium.launch({
      executablePath: process.env.PXB_CHROMIUM ?? '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
    context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin });
    page = await context.newPage();
    page.on('console', (m) => {
      if (/Content Security Policy|Refused to/i.test(m.text())) cspViolations.push(m.text());
    });
    page.on('pageerror', (e) => pageErrors.push(e.message));
  });

  after(async () => {
    await browser?.close();
  });

  test('first load is small, hashed and free of inline code', async () => {
    const r = await fetch(origin + '/');
    assert.equal(r.status, 200);
    const html = await r.text();
    const csp = r.headers.get('content-security-policy') ?? '';
    assert.match(csp, /script-src 'self'/, 'index.html is served with the CSP');
    assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/i, 'no inline script');
    assert.doesNotMatch(html, /<style/i, 'no inline style element');
    assert.doesNotMatch(html, /\sstyle=/i, 'no style attribute');
    const assets = [...html.matchAll(/(?:src|href)="(\/assets\/app-[0-9a-f]{8,}\.(?:js|css))"/g)].map((m) => m[1]);
    assert.equal(assets.filter((a) => a.endsWith('.js')).length, 1, 'one hashed script');
    assert.equal(assets.filter((a) => a.endsWith('.css')).length, 1, 'one hashed style sheet');
    let total = gzipSync(Buffer.from(html)).length;
    for (const a of assets) {
      const res = await fetch(origin + a);
      assert.equal(res.status, 200, a);
      const body = Buffer.from(await res.arrayBuffer());
      assert.ok(body.length > 1000, `${a} has content`);
      total += gzipSync(body).length;
    }
    console.log(`first load: ${total} bytes gzip`);
    assert.ok(total < 300 * 1024, `first load ${total} B gzip is under 300 KB`);
  });

  test('signs in with the one-time code; the dashboard shows an unreachable cluster with its reason', async () => {
    await signInWith(URL1);
    const unreachable = await until('an Unreachable count', async () => {
      const n = Number(await page.getAttribute(tid('fleet-count-Unreachable'), 'data-count'));
      return n >= 1 ? n : 0;
    });
    assert.ok(unreachable >= 1);
    const total = Number(await page.textContent(tid('fleet-total')));
    assert.ok(total >= unreachable, 'the total counts every cluster');
    const row = page.locator(`${tid('fleet-list-row')}:has([data-state="Unreachable"])`).first();
    await row.waitFor();
    const cells = await row.locator('[role=cell]').allTextContents();
    const reason = cells[3];
    assert.ok(reason && reason !== '—' && reason.length > 5, `an unreachable cluster has a reason (${reason})`);
    assert.equal(await page.locator(tid('fleet-org-row')).count() >= 1, true, 'counts per org');
    await shot('fleet');
    await accessible('fleet');
  });

  const discovery = `e2e-${RUN}`;
  test('creates a discovery through the form and lists it', async () => {
    await page.click(tid('nav-onboarding'));
    await page.waitForSelector(tid('onboarding-page'));
    await page.waitForSelector(tid('discoveries-table'));
    // The demo's garden has a second project, `staging` (3 shoots), that nobody discovers yet,
    // with a garden credential of the same name.
    await page.fill(tid('discovery-id'), discovery);
    await page.fill(tid('discovery-project'), 'staging');
    await page.fill(tid('discovery-credential'), 'staging');
    await page.fill(tid('discovery-interval'), '30');
    await page.click(tid('discovery-submit'));
    const row = page.locator(`${tid('discovery-row')}[data-id="${discovery}"]`);
    await row.waitFor({ timeout: 15000 });
    assert.ok((await row.textContent()).includes('staging'), 'project and garden credential are shown');
    // Starting, then Running with the shoots it found (the list refreshes by itself). A discovery
    // is Running as soon as it started, before its first listing counted the shoots (0 until then).
    await until(
      'the new discovery to run',
      async () => (await row.locator(tid('discovery-state')).getAttribute('data-state')) === 'Running',
      90000,
      1000,
    );
    await until('the new discovery to count its 3 shoots', async () => /Running · 3 shoots/.test(await row.textContent()), 30000, 1000);
    assert.match(await row.textContent(), /Running · 3 shoots/);
    // The demo's own discovery runs and found its shoots, eligible or not with the reason.
    const demoRow = page.locator(`${tid('discovery-row')}[data-id="demo"]`);
    assert.match(await demoRow.textContent(), /Running · \d+ shoots/);
    await page.waitForSelector(tid('shoots-row'));
    assert.ok((await page.locator(`${tid('shoots')}`).textContent()).includes('Not eligible'), 'ineligible shoots carry a reason');
    await shot('onboarding');
    await accessible('onboarding');
  });

  const fileLoc = `e2e-file-${RUN}`;
  test('creates a location by label through the form; its per-cluster validation rows appear', async () => {
    await page.click(tid('nav-locations'));
    await page.waitForSelector(tid('locations-page'));
    await page.click(tid('location-new'));
    await page.fill(tid('location-name'), fileLoc);
    await page.selectOption(tid('location-provider'), 'file');
    await page.fill(tid('location-container'), `/tmp/pxb-console-e2e-${RUN}`);
    await page.check(tid('location-assign-labels'));
    await page.fill(tid('location-labels'), 'shoot.gardener.cloud/status=healthy');
    await page.click(tid('location-submit'));
    await page.waitForSelector(tid('location-detail'));
    await until('validation rows', async () => (await page.locator(tid('location-status-row')).count()) > 0, 60000);
    const phases = await page.locator(`${tid('location-status-row')} ${tid('validation-phase')}`).evaluateAll((els) => els.map((e) => e.getAttribute('data-state')));
    assert.ok(phases.length > 0 && phases.every((p) => ['Pending', 'Requested', 'Valid', 'Invalid', 'Stalled'].includes(p)), `validation phases ${phases}`);
    // The agents answer: at least one cluster reports Valid.
    await until('a Valid cluster', async () => (await page.locator(`${tid('location-status-row')} [data-state="Valid"]`).count()) > 0, 90000);
    // Validate again and see the request go through.
    await page.click(tid('location-validate'));
    await until('validation answered again', async () => (await page.locator(`${tid('location-status-row')} [data-state="Valid"]`).count()) > 0, 60000);
    await shot('location-status');
    await accessible('location status');
    await page.click(tid('nav-locations'));
    const row = page.locator(`${tid('location-row')}[data-name="${fileLoc}"]`);
    await row.waitFor();
    assert.match(await row.textContent(), /shoot\.gardener\.cloud\/status=healthy/);
    await shot('locations');
    await accessible('locations');
  });

  const wiLoc = `e2e-wi-${RUN}`;
  test('a federated location shows its failed step and the Workload Identity commands', async () => {
    await page.click(tid('location-new'));
    await page.fill(tid('location-name'), wiLoc);
    await page.selectOption(tid('location-mode'), 'federated');
    await page.selectOption(tid('location-provider'), 'azure');
    await page.fill(tid('location-account'), 'e2econsole');
    await page.fill(tid('location-container'), 'backups');
    await page.fill(tid('location-client-id'), '00000000-0000-0000-0000-0000000000e2');
    await page.check(tid('location-assign-names'));
    await page.fill(tid('location-names'), 'shoot-00001, shoot-00002');
    await page.click(tid('location-submit'));
    await page.waitForSelector(tid('location-detail'));
    await until('two validation rows', async () => (await page.locator(tid('location-status-row')).count()) === 2, 60000);
    // No storage account answers here: each agent reports the step that failed.
    const step = await until(
      'a failed validation step',
      async () => {
        const l = page.locator(tid('failed-step')).first();
        return (await l.count()) ? (await l.textContent()).trim() : '';
      },
      120000,
      1000,
    );
    assert.ok(step.length > 0, 'the failed step is named');
    await page.click(tid('wi-help-link'));
    await page.waitForSelector(tid('wi-help-page'));
    await until('two clusters', async () => (await page.locator(tid('wi-item')).count()) === 2);
    assert.equal(await page.textContent(tid('wi-subject')), 'system:serviceaccount:pxb-system:pxb-agent');
    assert.equal(await page.textContent(tid('wi-audience')), 'api://AzureADTokenExchange');
    await page.fill(tid('wi-group'), 'tenant-rg');
    const item = page.locator(`${tid('wi-item')}[data-cluster="shoot-00001"]`);
    const issuer = (await item.locator(tid('wi-issuer')).textContent()).trim();
    assert.match(issuer, /^https:\/\//, 'the shoot publishes its issuer');
    const cmd = await item.locator(tid('wi-command')).textContent();
    for (const part of ['az identity federated-credential create', '--name shoot-00001', '--identity-name pxb-agent', '--resource-group tenant-rg', `--issuer ${issuer}`, '--subject system:serviceaccount:pxb-system:pxb-agent', '--audiences api://AzureADTokenExchange']) {
      assert.ok(cmd.includes(part), `the command has ${part}:\n${cmd}`);
    }
    // The same commands as the command line's `pxb clusters federation` prints for the cluster.
    if (TOKEN) {
      const { execFileSync } = await import('node:child_process');
      const cli = process.env.PXB_CLI ?? path.resolve('../target/debug/pxb');
      const script = execFileSync(cli, ['clusters', 'federation', 'shoot-00001', '--location', wiLoc, '-g', 'tenant-rg', '--server', origin, '--org', ORG, '--token', TOKEN], { encoding: 'utf8' });
      // Commands compared with their continuation lines joined (each side wraps its own way).
      const commands = (text) => text.replace(/ \\\n\s+/g, ' ').split('\n').filter((l) => l && !l.startsWith('#'));
      const fromCli = commands(script);
      const shown = [...commands(cmd), ...commands(await page.textContent(tid('wi-identity-commands')))];
      for (const c of shown) assert.ok(fromCli.includes(c), `the CLI prints ${c}:\n${script}`);
      assert.deepEqual([...fromCli].sort(), [...new Set(shown)].sort(), 'the console shows every command the CLI prints');
    } else {
      console.log('# skipped comparing with `pxb clusters federation`: PXB_TOKEN is not set');
    }
    await item.locator(tid('wi-copy')).click();
    const copied = await page.evaluate(() => navigator.clipboard.readText());
    assert.equal(copied, cmd, 'Copy puts the command on the clipboard');
    await shot('wi-help');
    await accessible('wi-help');
  });

  let backupId;
  test('backs up a namespace and shows it in the namespace tab with its detail', async () => {
    await page.click(tid('nav-backups'));
    await page.waitForSelector(tid('backups-page'));
    if ((await page.getAttribute(tid('tab-namespaces'), 'aria-selected')) !== 'true') {
      await Promise.all([page.waitForResponse((r) => r.url().includes('/v1/me/preferences') && r.request().method() === 'PUT'), page.click(tid('tab-namespaces'))]);
    }
    await page.click(tid('backup-new'));
    await page.fill(tid('backup-clusters'), 'shoot-00001');
    await page.fill(tid('backup-namespaces'), 'shop');
    await page.selectOption(tid('backup-location'), 'primary');
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith(`/v1/orgs/${ORG}/backups`) && r.request().method() === 'POST'),
      page.click(tid('backup-submit')),
    ]);
    assert.equal(resp.status(), 202);
    backupId = (await resp.json()).items[0].id;
    const row = page.locator(`${tid('backup-row')}[data-id="${backupId}"]`);
    await row.waitFor({ timeout: 20000 });
    await until('the backup to succeed', async () => (await row.getAttribute('data-phase')) === 'Success', 120000, 1000);
    await shot('backups');
    await accessible('backups');
    await row.locator('a').first().click();
    await page.waitForSelector(tid('backup-detail'));
    await page.waitForSelector(`${tid('backup-phase')}[data-state="Success"]`);
    assert.ok(Number(await page.textContent(tid('backup-objects'))) > 0, 'the backup holds objects');
    // The demo's namespaces have no persistent volumes: the detail says so (rather than nothing).
    assert.equal(await page.textContent(tid('backup-no-volumes')), 'No persistent volume was backed up with it.');
    await page.waitForSelector(tid('backup-verify'));
    await accessible('backup detail');
  });

  test('restores through the wizard with a namespace mapping and follows it to success', async () => {
    assert.ok(backupId, 'a backup from the previous step');
    const target = `shop-e2e-${RUN}`;
    await page.click(tid('backup-restore'));
    await page.waitForSelector(tid('restore-wizard'));
    assert.equal(await page.inputValue(tid('restore-backup')), backupId);
    await page.waitForSelector(tid('restore-backup-summary'));
    await page.click(tid('restore-next-1'));
    await page.click(tid('mapping-add'));
    await page.fill(tid('mapping-from'), 'shop');
    await page.fill(tid('mapping-to'), target);
    await page.click(tid('restore-next-2'));
    await page.waitForSelector(tid('restore-step-3'));
    assert.equal(await page.textContent(tid('restore-review-mapping')), `shop → ${target}`);
    await shot('restore-wizard');
    await accessible('restore wizard');
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith(`/v1/orgs/${ORG}/restores`) && r.request().method() === 'POST'),
      page.click(tid('restore-submit')),
    ]);
    assert.equal(resp.status(), 202);
    const sent = JSON.parse(resp.request().postData());
    assert.deepEqual(sent.namespaceMapping, { shop: target });
    await page.waitForSelector(tid('restore-progress'));
    const phase = await until(
      'a final phase',
      async () => {
        const p = await page.getAttribute(tid('restore-phase'), 'data-state');
        return ['Success', 'PartialSuccess', 'Failed', 'Stalled'].includes(p) ? p : '';
      },
      120000,
      1000,
    );
    assert.equal(phase, 'Success', `the restore ended ${phase}: ${await page.textContent(tid('restore-progress'))}`);
    assert.equal(await page.textContent(tid('restore-mapping-shown')), `shop → ${target}`);
    const counts = await page.textContent(tid('restore-counts'));
    assert.match(counts, /\d+ of \d+ objects · [1-9]\d* created · 0 replaced/, counts);
    assert.equal(sent.existingResourcePolicy, undefined, 'retain is the default and not sent');
    await shot('restore-progress');
    await accessible('restore progress');
  });

  test('restores the same backup again with "replace": the objects that exist are replaced', async () => {
    const target = `shop-e2e-${RUN}`;
    await go(`#/orgs/${ORG}/backups/${backupId}`, 'backup-detail');
    await page.click(tid('backup-restore'));
    await page.waitForSelector(tid('restore-backup-summary'));
    await page.click(tid('restore-next-1'));
    await page.click(tid('mapping-add'));
    await page.fill(tid('mapping-from'), 'shop');
    await page.fill(tid('mapping-to'), target);
    await page.check(tid('restore-replace'));
    await page.click(tid('restore-next-2'));
    assert.equal(await page.textContent(tid('restore-review-policy')), 'replaced');
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith(`/v1/orgs/${ORG}/restores`) && r.request().method() === 'POST'),
      page.click(tid('restore-submit')),
    ]);
    assert.equal(resp.status(), 202);
    const rec = await resp.json();
    assert.equal(rec.existingResourcePolicy, 'Replace', 'the server keeps the policy with the restore');
    await page.waitForSelector(tid('restore-progress'));
    await until('a final phase', async () => ['Success', 'PartialSuccess', 'Failed'].includes(await page.getAttribute(tid('restore-phase'), 'data-state')), 120000, 1000);
    const counts = await page.textContent(tid('restore-counts'));
    assert.match(counts, / 0 created · [1-9]\d* replaced · \d+ skipped · 0 failed/, `the objects existed and were replaced: ${counts}`);
  });

  const schedule = `e2e-${RUN}`;
  test('creates, pauses and lists a schedule', async () => {
    await page.click(tid('nav-schedules'));
    await page.waitForSelector(tid('schedules-page'));
    await page.click(tid('schedule-new'));
    await page.fill(tid('schedule-name'), schedule);
    await page.fill(tid('schedule-namespaces'), 'shop');
    await page.selectOption(tid('schedule-location'), 'primary');
    await page.selectOption(tid('schedule-kind'), 'daily');
    await page.fill(tid('schedule-at'), '03:30');
    await page.fill(tid('schedule-retain'), '5');
    await page.check(tid('schedule-assign-names'));
    await page.fill(tid('schedule-names'), 'shoot-00001');
    await page.check(tid('schedule-paused'));
    await page.click(tid('schedule-submit'));
    const row = page.locator(`${tid('schedule-row')}[data-id="${schedule}"]`);
    await row.waitFor({ timeout: 15000 });
    assert.match(await row.textContent(), /Daily at 03:30/);
    assert.match(await row.textContent(), /Paused/);
    await row.locator(tid('schedule-toggle')).click();
    await until('the schedule to resume', async () => /Active/.test(await row.textContent()));
    await row.locator(tid('schedule-toggle')).click();
    await until('the schedule to pause', async () => /Paused/.test(await row.textContent()));
    // The policy editor: every 30 minutes, keep 3.
    await row.locator(tid('schedule-edit')).click();
    await page.waitForSelector(tid('schedule-policy-form'));
    assert.equal(await page.inputValue(tid('policy-retain')), '5', 'the editor starts from the policy');
    await page.selectOption(tid('policy-kind'), 'interval');
    await page.fill(tid('policy-minutes'), '30');
    await page.fill(tid('policy-retain'), '3');
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith(`/v1/orgs/${ORG}/schedules/${schedule}`) && r.request().method() === 'PUT'),
      page.click(tid('schedule-policy-submit')),
    ]);
    assert.equal(resp.status(), 200);
    await until('the new policy in the list', async () => /Every 30 min/.test(await row.textContent()));
    assert.match(await row.textContent(), /Paused/, 'a policy change keeps the schedule paused');
    assert.equal((await row.locator('td.num').first().textContent()).trim(), '3');
    await shot('schedules');
    await accessible('schedules');
  });

  test('deletes what the test created', async () => {
    await page.click(tid('nav-schedules'));
    const srow = page.locator(`${tid('schedule-row')}[data-id="${schedule}"]`);
    await srow.locator(tid('schedule-delete')).click();
    await srow.locator(tid('schedule-delete-confirm')).click();
    await until('the schedule to go', async () => (await srow.count()) === 0);
    for (const name of [wiLoc, fileLoc]) {
      await go(`#/orgs/${ORG}/locations/${name}`, 'location-detail');
      await page.click(tid('location-delete'));
      await page.click(tid('location-delete-confirm'));
      await page.waitForSelector(tid('locations-page'));
      await until(`location ${name} to go`, async () => (await page.locator(`${tid('location-row')}[data-name="${name}"]`).count()) === 0);
    }
    await page.click(tid('nav-onboarding'));
    const drow = page.locator(`${tid('discovery-row')}[data-id="${discovery}"]`);
    await drow.waitFor();
    await drow.locator(tid('discovery-delete')).click();
    await drow.locator(tid('discovery-delete-confirm')).click();
    await until('the discovery to go', async () => (await drow.count()) === 0);
  });

  test('the VM tab survives a reload and a new sign-in', async (t) => {
    const URL2 = await signInUrl(2);
    await page.click(tid('nav-backups'));
    await page.waitForSelector(tid('backups-page'));
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.url().includes('/v1/me/preferences') && r.request().method() === 'PUT'),
      page.click(tid('tab-vms')),
    ]);
    assert.equal(resp.status(), 200);
    assert.equal((await resp.json()).tab, 'vms');
    assert.equal(await page.getAttribute(tid('tab-vms'), 'aria-selected'), 'true');
    if (!URL2) {
      // Without a second code the session goes on (the next test needs one).
      t.skip('PXB_CONSOLE_URL2 (or PXB_TOKEN for a fresh code) is not set: skipping the reload and the second sign-in');
      return;
    }
    await page.reload();
    // Tokens live in memory only: a reload shows the sign-in page.
    await page.waitForSelector(tid('signin-page'));
    await signInWith(URL2);
    const [listed] = await Promise.all([
      page.waitForResponse((r) => r.url().includes(`/v1/orgs/${ORG}/backups?`) && r.request().method() === 'GET'),
      go(`#/orgs/${ORG}/backups`, 'backups-page'),
    ]);
    assert.equal(await page.getAttribute(tid('tab-vms'), 'aria-selected'), 'true', 'the VM tab is still selected');
    assert.equal(new URL(listed.url()).searchParams.get('view'), 'vms', 'the list is fetched for virtual machines');
  });

  test('the time bracket lasts for one session: 7d, sign out, sign in, 24h', async (t) => {
    const URL3 = await signInUrl(3);
    await page.waitForSelector(tid('backups-page'));
    const [resp, listed] = await Promise.all([
      page.waitForResponse((r) => r.url().includes('/v1/me/preferences') && r.request().method() === 'PUT'),
      page.waitForResponse((r) => r.url().includes(`/v1/orgs/${ORG}/backups?`) && r.url().includes('bracket=7d')),
      page.selectOption(tid('bracket-select'), '7d'),
    ]);
    assert.equal((await resp.json()).timeBracket.kind, '7d');
    assert.equal(listed.status(), 200, 'the list is fetched with the bracket');
    if (!URL3) {
      // Leave the user's tab as it was before the test.
      await Promise.all([
        page.waitForResponse((r) => r.url().includes('/v1/me/preferences') && r.request().method() === 'PUT'),
        page.click(tid('tab-namespaces')),
      ]);
    }
    await page.click(tid('signout'));
    await page.waitForSelector(tid('signin-page'));
    if (!URL3) {
      t.skip('PXB_CONSOLE_URL3 (or PXB_TOKEN for a fresh code) is not set: skipping the sign-in after sign-out');
      return;
    }
    await signInWith(URL3);
    await go(`#/orgs/${ORG}/backups`, 'backups-page');
    assert.equal(await page.inputValue(tid('bracket-select')), '24h', 'a new session starts with the last 24 hours');
    assert.equal(await page.getAttribute(tid('tab-vms'), 'aria-selected'), 'true', 'the tab is kept across logins');
    // Leave the user's tab as it was before the test.
    await Promise.all([
      page.waitForResponse((r) => r.url().includes('/v1/me/preferences') && r.request().method() === 'PUT'),
      page.click(tid('tab-namespaces')),
    ]);
    await accessible('sign-in round trip');
  });

  test('a viewer sees no buttons it cannot use, and a 403 reads "Not allowed" (stubbed API)', async () => {
    // The API is stubbed here, to reach every screen with fixed data; the next tests sign a real
    // viewer in through the stand-in Entra ID.
    const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 } });
    const p = await ctx.newPage();
    p.on('pageerror', (e) => pageErrors.push(e.message));
    const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
    const loc = { id: 'l1', name: 'primary', provider: 'file', container: '/backups', mode: 'federated', hasCredential: false, active: true, clusters: { all: true, names: [], labels: {} }, sync: false, createdAt: now };
    const fixtures = {
      'GET /v1/whoami': { subject: 'viewer', name: 'A viewer', providerAdmin: false, orgs: { [ORG]: 'viewer' } },
      'GET /v1/me/preferences': { tab: 'namespaces', timeBracket: { kind: '24h' } },
      'GET /v1/fleet/status': { generatedAt: now, counts: { Ready: 1 }, items: [] },
      [`GET /v1/orgs/${ORG}/discoveries`]: { items: [{ org: ORG, id: 'd1', project: 'p1', credential: 'c1', intervalSecs: 60, createdAt: now, status: { state: 'Running', since: now, shoots: 1 } }] },
      [`GET /v1/orgs/${ORG}/clusters`]: { items: [] },
      [`GET /v1/orgs/${ORG}/locations`]: { items: [loc] },
      [`GET /v1/orgs/${ORG}/locations/primary`]: loc,
      [`GET /v1/orgs/${ORG}/locations/primary/status`]: { items: [{ org: ORG, id: 'l1/c1', location: 'l1', cluster: 'c1', clusterName: 'shoot-a', validation: { phase: 'Valid', request: 0 } }] },
      [`GET /v1/orgs/${ORG}/backups`]: { items: [{ org: ORG, id: 'b1', cluster: 'c1', clusterName: 'shoot-a', location: 'l1', locationName: 'primary', namespaces: ['shop'], phase: 'Success', createdMs: Date.now(), objects: 3, view: 'namespaces', missingObjects: 0, bytes: 0, storedBytes: 10, virtualMachines: 0, synced: false }] },
      [`GET /v1/orgs/${ORG}/restores`]: { items: [] },
    };
    await p.route((u) => u.pathname.startsWith('/v1/') || u.pathname === '/console/session', async (route) => {
      const req = route.request();
      const u = new URL(req.url());
      const k = `${req.method()} ${u.pathname}`;
      if (k === 'POST /console/session') return route.fulfill({ json: { token: 'stub', expiresAt: new Date(Date.now() + 3600e3).toISOString(), subject: 'viewer' } });
      if (k === `GET /v1/orgs/${ORG}/schedules`) return route.fulfill({ status: 403, json: { error: { code: 'forbidden', message: 'the stub says no' } } });
      if (fixtures[k]) return route.fulfill({ json: fixtures[k] });
      return route.fulfill({ status: 404, json: { error: { code: 'not_found', message: k } } });
    });
    await p.goto(`${origin}/#/signin?code=stub`);
    await p.waitForSelector(tid('fleet-page'));
    assert.equal(await p.textContent(tid('user-role')), 'viewer');
    const absent = async (screen, ready, ids) => {
      await p.evaluate((h) => (location.hash = h), screen);
      await p.waitForSelector(tid(ready));
      for (const id of ids) assert.equal(await p.locator(tid(id)).count(), 0, `${screen}: a viewer gets no ${id}`);
    };
    await absent(`#/orgs/${ORG}/onboarding`, 'discovery-row', ['discovery-form', 'discovery-delete']);
    await absent(`#/orgs/${ORG}/locations`, 'location-row', ['location-new']);
    await absent(`#/orgs/${ORG}/locations/primary`, 'location-status-row', ['location-validate', 'location-verify', 'location-delete']);
    assert.equal(await p.locator(`${tid('location-status-row')} button`).count(), 0, 'no Sync button for a viewer');
    await absent(`#/orgs/${ORG}/backups`, 'backup-row', ['backup-new', 'restore-new']);
    assert.equal(await p.locator(`${tid('backup-row')} a.btn`).count(), 0, 'no Restore link for a viewer');
    await absent(`#/orgs/${ORG}/backups/b1`, 'backup-detail', ['backup-restore', 'backup-delete']);
    await p.evaluate((h) => (location.hash = h), `#/orgs/${ORG}/schedules`);
    await p.waitForSelector(tid('schedules-page'));
    const err = await p.waitForSelector(tid('error'));
    assert.equal(await err.textContent(), 'Not allowed: the stub says no');
    assert.equal(await p.locator(tid('schedule-new')).count(), 0);
    // The token lives in memory only: a reload shows the sign-in page.
    await p.reload();
    await p.waitForSelector(tid('signin-page'));
    await accessible2(p, 'sign-in page');
    await ctx.close();
  });

  test('the fleet list stays responsive with 10,000 clusters (stubbed API, server paging)', async () => {
    const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 } });
    const p = await ctx.newPage();
    p.on('pageerror', (e) => pageErrors.push(e.message));
    const N = 10000;
    const all = Array.from({ length: N }, (_, i) => ({
      org: `org-${String(i % 10).padStart(2, '0')}`,
      cluster: `shoot-${String(i).padStart(5, '0')}`,
      id: `id-${i}`,
      state: 'Unreachable',
      message: `blackholed ${i}`,
      locations: { valid: 0, invalid: 0, pending: 1 },
    })).sort((a, b) => (a.org + a.cluster < b.org + b.cluster ? -1 : 1));
    let pages = 0;
    await p.route((u) => u.pathname.startsWith('/v1/') || u.pathname === '/console/session', async (route) => {
      const u = new URL(route.request().url());
      const k = `${route.request().method()} ${u.pathname}`;
      if (k === 'POST /console/session') return route.fulfill({ json: { token: 'stub', expiresAt: new Date(Date.now() + 3600e3).toISOString() } });
      if (k === 'GET /v1/whoami') return route.fulfill({ json: { subject: 'p', providerAdmin: true, orgs: {} } });
      if (k === 'GET /v1/me/preferences') return route.fulfill({ json: { tab: 'namespaces', timeBracket: { kind: '24h' } } });
      if (k === 'GET /v1/fleet/status') {
        const state = u.searchParams.get('state');
        const items = state && state !== 'Unreachable' ? [] : all;
        const limit = Number(u.searchParams.get('limit') ?? 100);
        const after = Number(u.searchParams.get('after') ?? 0);
        if (limit > 1) pages++;
        const page = items.slice(after, after + limit);
        const next = after + limit < items.length ? String(after + limit) : undefined;
        return route.fulfill({ json: { generatedAt: new Date().toISOString(), counts: { Unreachable: N }, items: page, next } });
      }
      return route.fulfill({ status: 404, json: { error: { code: 'not_found', message: k } } });
    });
    await p.goto(`${origin}/#/signin?code=stub`);
    await p.waitForSelector(`${tid('fleet-list')}[data-rows="${N}"]`, { timeout: 30000 });
    assert.ok(pages >= 10, `the list is fetched in server pages (${pages})`);
    const rendered = await p.locator(tid('fleet-list-row')).count();
    assert.ok(rendered > 5 && rendered < 120, `only the visible rows are rendered (${rendered} of ${N})`);
    const t0 = Date.now();
    await p.locator('.vbody').evaluate((el) => (el.scrollTop = el.scrollHeight));
    await p.waitForSelector(`${tid('fleet-list-row')}:has-text("${all[N - 1].cluster}")`);
    const ms = Date.now() - t0;
    assert.ok(ms < 2000, `scrolling to the last of ${N} rows took ${ms} ms`);
    assert.ok((await p.locator(tid('fleet-list-row')).count()) < 120);
    await ctx.close();
  });

  test('OpenID Connect: PKCE redirect, code exchange, silent renewal, sign-out at the issuer (stubbed issuer)', async () => {
    const issuer = 'http://issuer.test';
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const p = await ctx.newPage();
    p.on('pageerror', (e) => pageErrors.push(e.message));
    if (process.env.PXB_CONSOLE_DEBUG) p.on('console', (m) => console.log('browser:', m.text()));
    const seen = { authorize: null, tokens: [], bearers: new Set(), endSession: null };
    // index.html as the server sends it, with the issuer allowed in connect-src.
    await p.route((u) => u.origin === origin && u.pathname === '/', async (route) => {
      const r = await route.fetch();
      const headers = { ...r.headers() };
      headers['content-security-policy'] = headers['content-security-policy'].replace("connect-src 'self'", `connect-src 'self' ${issuer}`);
      return route.fulfill({ response: r, headers });
    });
    await p.route(`${origin}/console/config.json`, (route) => route.fulfill({ json: { issuer, clientId: 'console-client', scopes: ['openid', 'offline_access'] } }));
    await p.route(`${issuer}/**`, async (route) => {
      const req = route.request();
      const u = new URL(req.url());
      const cors = { 'access-control-allow-origin': origin };
      if (u.pathname === '/.well-known/openid-configuration') {
        return route.fulfill({ headers: cors, json: { issuer, authorization_endpoint: `${issuer}/authorize`, token_endpoint: `${issuer}/token`, end_session_endpoint: `${issuer}/logout` } });
      }
      if (u.pathname === '/authorize') {
        seen.authorize = Object.fromEntries(u.searchParams);
        return route.fulfill({ contentType: 'text/html', body: '<p>issuer sign-in page</p>' });
      }
      if (u.pathname === '/token') {
        const form = Object.fromEntries(new URLSearchParams(req.postData()));
        seen.tokens.push(form);
        const n = seen.tokens.length;
        const claims = { iss: issuer, aud: 'console-client', sub: 'oidc-user', nonce: seen.idTokenNonce ?? seen.authorize?.nonce };
        const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
        const idToken = `${b64({ alg: 'RS256', typ: 'JWT' })}.${b64(claims)}.c2ln`;
        return route.fulfill({ headers: cors, json: { access_token: `at-${n}`, token_type: 'Bearer', expires_in: 3, refresh_token: `rt-${n}`, id_token: idToken } });
      }
      if (u.pathname === '/logout') {
        seen.endSession = Object.fromEntries(u.searchParams);
        return route.fulfill({ contentType: 'text/html', body: 'signed out' });
      }
      return route.fulfill({ status: 404, body: '' });
    });
    await p.route(`${origin}/v1/**`, (route) => {
      const req = route.request();
      seen.bearers.add(req.headers()['authorization']);
      const u = new URL(req.url());
      if (u.pathname === '/v1/whoami') return route.fulfill({ json: { subject: 'oidc-user', name: 'OIDC user', providerAdmin: false, orgs: {} } });
      if (u.pathname === '/v1/me/preferences') return route.fulfill({ json: { tab: 'namespaces', timeBracket: { kind: '24h' } } });
      if (u.pathname === '/v1/fleet/status') return route.fulfill({ json: { generatedAt: null, counts: {}, items: [] } });
      if (u.pathname === '/console/session') return route.fulfill({ status: 204 });
      return route.fulfill({ status: 404, json: { error: { code: 'not_found', message: u.pathname } } });
    });
    await p.goto(`${origin}/`);
    await p.waitForSelector(tid('signin-page'));
    await p.click(tid('signin-oidc'));
    await until('the authorization request', async () => seen.authorize, 10000, 100);
    // The browser is at the issuer's page before the test plays the issuer's redirect back.
    await p.waitForURL((u) => u.hostname === 'issuer.test', { waitUntil: 'load' });
    const a = seen.authorize;
    // The issuer signs the user in and redirects back with the code (query response mode).
    await p.goto(`${a.redirect_uri}?code=the-code&state=${encodeURIComponent(a.state)}`);
    await p.waitForSelector(tid('fleet-page'));
    assert.equal(a.response_type, 'code');
    assert.equal(a.client_id, 'console-client');
    assert.equal(a.redirect_uri, `${origin}/`);
    assert.equal(a.scope, 'openid offline_access');
    assert.equal(a.code_challenge_method, 'S256');
    assert.ok(a.state && a.nonce && a.code_challenge && !a.response_mode);
    const t = seen.tokens[0];
    assert.equal(t.grant_type, 'authorization_code');
    assert.equal(t.code, 'the-code');
    assert.equal(t.redirect_uri, `${origin}/`);
    assert.equal(t.client_id, 'console-client');
    const { createHash } = await import('node:crypto');
    assert.equal(createHash('sha256').update(t.code_verifier).digest('base64url'), a.code_challenge, 'the verifier matches the challenge');
    assert.equal(new URL(p.url()).search, '', 'code and state leave the address bar');
    assert.equal(await p.evaluate(() => sessionStorage.length), 0, 'nothing stays in sessionStorage');
    assert.equal(await p.evaluate(() => localStorage.length), 0, 'nothing in localStorage');
    assert.ok(seen.bearers.has('Bearer at-1'), 'the access token is the bearer');
    // expires_in 3 s: renewed with the refresh token before it runs out.
    await until('a renewal', async () => seen.tokens.length >= 2, 10000, 200);
    assert.equal(seen.tokens[1].grant_type, 'refresh_token');
    assert.equal(seen.tokens[1].refresh_token, 'rt-1');
    await p.evaluate(() => (location.hash = '#/fleet?again'));
    await until('a renewed token in use', async () => [...seen.bearers].some((b) => /^Bearer at-([2-9]|\d\d)$/.test(b ?? '')), 15000, 200);
    assert.ok(seen.tokens.slice(1).every((f, i) => f.grant_type === 'refresh_token' && f.refresh_token === `rt-${i + 1}`), 'each renewal uses the latest refresh token');
    await p.click(tid('signout'));
    await until('the end-session redirect', async () => seen.endSession, 10000, 200);
    await p.waitForURL((u) => u.hostname === 'issuer.test', { waitUntil: 'load' });
    assert.equal(seen.endSession.post_logout_redirect_uri, `${origin}/`);

    // Attacks on the callback: an ID token with another nonce, and a response for another state.
    const before = seen.bearers.size;
    seen.idTokenNonce = 'replayed-nonce';
    await p.goto(`${origin}/`);
    await p.waitForSelector(tid('signin-page'));
    seen.authorize = null;
    await p.click(tid('signin-oidc'));
    await until('the authorization request', async () => seen.authorize, 10000, 100);
    // The browser is at the issuer's page before the test plays the issuer's redirect back.
    await p.waitForURL((u) => u.hostname === 'issuer.test', { waitUntil: 'load' });
    await p.goto(`${seen.authorize.redirect_uri}?code=the-code&state=${encodeURIComponent(seen.authorize.state)}`);
    await p.waitForSelector(tid('signin-page'));
    assert.match(await p.textContent(tid('signin-page')), /another nonce/);
    await p.goto(`${origin}/?code=c&state=forged&error=access_denied&error_description=${encodeURIComponent('Call 555 now')}`);
    await p.waitForSelector(tid('signin-page'));
    const text = await p.textContent(tid('signin-page'));
    assert.match(text, /does not belong to this browser tab/);
    assert.ok(!text.includes('Call 555'), 'text from a forged response is not shown');
    assert.equal(seen.bearers.size, before, 'no API call with a refused sign-in');
    await ctx.close();
  });

  /** The stand-in Entra ID's settings (pxb-demo --entra-login), or a clear failure. */
  async function entra() {
    const cfg = await (await fetch(`${origin}/console/config.json`)).json();
    assert.ok(cfg.issuer && cfg.clientId, `the server offers no Entra ID sign-in (${JSON.stringify(cfg)}): run the demo with --entra-login`);
    return cfg;
  }

  /** A fresh browser context that trusts the stand-in issuer's test certificate. */
  async function entraPage() {
    const ctx = await browser.newContext({ viewport: { width: 1440, height: 900 }, ignoreHTTPSErrors: true });
    const p = await ctx.newPage();
    p.on('console', (m) => {
      if (/Content Security Policy|Refused to/i.test(m.text())) cspViolations.push(m.text());
    });
    p.on('pageerror', (e) => pageErrors.push(e.message));
    return { ctx, p };
  }

  test('signs in with Entra ID (authorization code with PKCE, the stand-in issuer) and out at the issuer', async () => {
    const cfg = await entra();
    const issuerOrigin = new URL(cfg.issuer).origin;
    const { ctx, p } = await entraPage();
    const toIssuer = [];
    p.on('request', (r) => {
      if (r.url().startsWith(issuerOrigin)) toIssuer.push({ url: r.url(), method: r.method(), body: r.postData() });
    });
    await p.goto(`${origin}/`);
    await p.waitForSelector(tid('signin-page'));
    await p.click(tid('signin-oidc'));
    await p.waitForSelector(tid('fleet-page'));
    assert.match(await p.textContent(tid('user')), /operator/);
    const auth = toIssuer.find((r) => r.url.includes('/oauth2/v2.0/authorize'));
    assert.ok(auth, 'the browser went to the issuer');
    const a = new URL(auth.url).searchParams;
    assert.equal(a.get('client_id'), cfg.clientId);
    assert.equal(a.get('redirect_uri'), `${origin}/`);
    assert.equal(a.get('code_challenge_method'), 'S256');
    const token = toIssuer.find((r) => r.method === 'POST' && r.url.includes('/oauth2/v2.0/token'));
    assert.ok(token, 'the code was exchanged at the token endpoint');
    const form = new URLSearchParams(token.body);
    assert.equal(form.get('grant_type'), 'authorization_code');
    const { createHash } = await import('node:crypto');
    assert.equal(createHash('sha256').update(form.get('code_verifier')).digest('base64url'), a.get('code_challenge'));
    assert.equal(new URL(p.url()).search, '', 'code and state leave the address bar');
    assert.equal(await p.evaluate(() => sessionStorage.length + localStorage.length), 0, 'no token in web storage');
    await p.waitForSelector(`${tid('fleet-count-Unreachable')}`);
    await p.click(tid('signout'));
    await p.waitForSelector(tid('signin-page'));
    assert.ok(toIssuer.some((r) => r.url.includes('/oauth2/v2.0/logout')), 'signed out at the issuer too');
    assert.equal(new URL(p.url()).origin, origin, 'the issuer sent the browser back to the console');
    await ctx.close();
  });

  test('a viewer of the org (Entra ID, login_hint) sees no buttons it cannot use; a 403 reads "Not allowed"', async () => {
    await entra();
    const { ctx, p } = await entraPage();
    await p.goto(`${origin}/#/signin?login_hint=viewer`);
    await p.waitForSelector(tid('signin-page'));
    await p.click(tid('signin-oidc'));
    await p.waitForSelector(tid('fleet-page'));
    assert.match(await p.textContent(tid('user')), /viewer/);
    assert.equal(await p.textContent(tid('user-role')), 'viewer');
    const absent = async (screen, ready, ids) => {
      await p.evaluate((h) => (location.hash = h), screen);
      await p.waitForSelector(tid(ready));
      for (const id of ids) assert.equal(await p.locator(tid(id)).count(), 0, `${screen}: a viewer gets no ${id}`);
    };
    await absent(`#/orgs/${ORG}/onboarding`, 'discovery-row', ['discovery-form', 'discovery-delete', 'discovery-submit']);
    await absent(`#/orgs/${ORG}/locations`, 'location-row', ['location-new']);
    await absent(`#/orgs/${ORG}/locations/primary`, 'location-status-row', ['location-validate', 'location-verify', 'location-delete']);
    assert.equal(await p.locator(`${tid('location-status-row')} button`).count(), 0, 'no Sync button for a viewer');
    await absent(`#/orgs/${ORG}/backups`, 'backup-row', ['backup-new', 'restore-new']);
    const id = await p.getAttribute(tid('backup-row'), 'data-id');
    await absent(`#/orgs/${ORG}/backups/${id}`, 'backup-detail', ['backup-restore', 'backup-delete']);
    await absent(`#/orgs/${ORG}/schedules`, 'schedules-page', ['schedule-new', 'schedule-toggle', 'schedule-delete']);
    // An org the viewer has no role in: the API's own 403, shown as such.
    await p.evaluate((h) => (location.hash = h), '#/orgs/another-tenant/backups');
    const err = await p.waitForSelector(tid('error'));
    assert.match(await err.textContent(), /^Not allowed: /);
    await ctx.close();
  });

  test('no Content-Security-Policy violations and no page errors', () => {
    assert.deepEqual(cspViolations, []);
    assert.deepEqual(pageErrors, []);
  });
});
