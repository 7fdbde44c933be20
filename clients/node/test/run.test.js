import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { CheckpointClient, LeaseHeld, LeaseLost } from '../src/index.js';
import { startSidecar, uniqueRun } from '../test-support/sidecar.js';

const SECTIONS = ['summary', 'data_analysis', 'recommendations', 'action_items'];
let sidecar;
let client;

before(async () => {
  sidecar = await startSidecar();
  client = new CheckpointClient({ url: sidecar.url });
});

after(async () => {
  client?.close();
  await sidecar?.stop();
});

class Crash extends Error {}

test('a crashed attempt resumes: restored sections are not produced again', async () => {
  const run = uniqueRun('resume');
  const produced = [];
  const produce = (name) => () => {
    produced.push(name);
    return { section: name, words: name.length };
  };
  const first = await client.run('user-1', run, { plan: SECTIONS });
  assert.equal(first.resumed, false);
  assert.deepEqual(first.remaining, SECTIONS);
  await first.step('summary', produce('summary'));
  await first.step('data_analysis', produce('data_analysis'));
  await first.fail(); // the worker "crashed": checkpoints kept, lease released

  const second = await client.run('user-1', run, { plan: SECTIONS });
  assert.equal(second.resumed, true);
  assert.deepEqual(Object.keys(second.restored), ['summary', 'data_analysis']);
  assert.deepEqual(second.remaining, ['recommendations', 'action_items']);
  assert.ok(second.fencingToken > first.fencingToken);
  for (const name of SECTIONS) await second.step(name, produce(name));
  await second.complete();
  assert.deepEqual(produced, SECTIONS); // each section paid for once
  const result = second.result();
  assert.equal(result.success, true);
  assert.equal(result.resumed_sections, 2);
  assert.deepEqual(Object.keys(result.report), SECTIONS);
  assert.equal(await client.resumeView('user-1', run), null); // completed: cleaned up
});

test('withRun completes on success and keeps checkpoints on a throw', async () => {
  const run = uniqueRun('withrun');
  await assert.rejects(
    client.withRun('u', run, { plan: SECTIONS }, async (r) => {
      await r.step('summary', () => 'one');
      throw new Crash('boom');
    }),
    Crash,
  );
  assert.deepEqual(await client.loadAllSections('u', run), { summary: 'one' });
  const report = await client.withRun('u', run, { plan: SECTIONS }, async (r) => {
    for (const name of SECTIONS) await r.step(name, () => `${name}!`);
    return r.result().report;
  });
  assert.equal(report.summary, 'one');
  assert.equal(await client.resumeView('u', run), null);
});

test('a second attempt gets LeaseHeld with Retry-After while the first holds the run', async () => {
  const run = uniqueRun('held');
  const first = await client.run('u', run);
  await assert.rejects(client.run('u', run), (err) => {
    assert.ok(err instanceof LeaseHeld);
    assert.equal(err.code, 'lease_held');
    assert.equal(err.status, 409);
    assert.ok(err.retryAfterS >= 1);
    return true;
  });
  await first.fail();
  const second = await client.run('u', run);
  await second.complete();
});

test('a stale attempt (a fence from another attempt) gets LeaseLost and writes nothing', async () => {
  const run = uniqueRun('fenced');
  const stale = await client.run('u', run, { plan: SECTIONS });
  await stale.step('summary', () => 'by the first attempt');
  await client.release('u', run, stale.lease, 'failed'); // as if its lease had expired
  const current = await client.run('u', run, { plan: SECTIONS });
  await assert.rejects(stale.step('data_analysis', () => 'late write'), LeaseLost);
  await assert.rejects(client.saveSection('u', run, 'summary', 'overwrite', stale.lease), { code: 'lease_lost' });
  await assert.rejects(client.renew('u', run, stale.lease), { code: 'lease_lost' });
  await assert.rejects(stale.complete(), { code: 'lease_lost' });
  assert.deepEqual(await client.loadAllSections('u', run), { summary: 'by the first attempt' });
  await current.complete();
});

test('the lease is renewed by a timer that does not keep the process alive', async () => {
  const run = uniqueRun('renew');
  const attempt = await client.run('u', run, { renewEveryMs: 20 });
  assert.equal(attempt._timer.hasRef(), false);
  await new Promise((resolve) => setTimeout(resolve, 150));
  assert.ok(attempt.renewals >= 2, `${attempt.renewals} renewals`);
  assert.equal(attempt.lost, null);
  await attempt.complete();
});
