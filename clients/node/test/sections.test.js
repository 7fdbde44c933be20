import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { CheckpointClient, CheckpointError } from '../src/index.js';
import { startSidecar, uniqueRun } from '../test-support/sidecar.js';

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

test('save, load, load all in completion order, cleanup', async () => {
  const run = uniqueRun('sections');
  assert.equal(await client.loadSection('user-1', run, 'summary'), null);
  assert.deepEqual(await client.loadAllSections('user-1', run), {});
  assert.equal(await client.saveSection('user-1', run, 'summary', { text: 'hello', n: 1.5 }), true);
  await client.saveSection('user-1', run, 'data_analysis', ['a', null, true]);
  assert.deepEqual(await client.loadSection('user-1', run, 'summary'), { text: 'hello', n: 1.5 });
  const all = await client.loadAllSections('user-1', run);
  assert.deepEqual(Object.keys(all), ['summary', 'data_analysis']);
  const progress = await client.getProgress('user-1', run);
  assert.deepEqual(progress.completed_sections, ['summary', 'data_analysis']);
  const view = await client.resumeView('user-1', run);
  assert.ok(view.age_seconds >= 0 && view.age_seconds < 60);
  assert.equal(await client.cleanup('user-1', run), true);
  assert.equal(await client.resumeView('user-1', run), null);
});

test('ids with dots, slashes, braces, NUL and non-ASCII reach their own run', async () => {
  const users = ['..', '.', 'a/b', '{tag}', 'nul\u0000x', 'é 🙂', '%2F'];
  for (const user of users) {
    const run = uniqueRun('ids');
    await client.saveSection(user, run, '../section', { user });
    assert.deepEqual(await client.loadSection(user, run, '../section'), { user });
    assert.deepEqual(Object.keys(await client.loadAllSections(user, run)), ['../section']);
    await client.cleanup(user, run);
  }
});

test('errors carry the problem code', async () => {
  await assert.rejects(client.saveSection('u', 'r'.repeat(300), 's', 1), (err) => {
    assert.ok(err instanceof CheckpointError);
    assert.equal(err.code, 'invalid_identifier');
    assert.equal(err.status, 400);
    return true;
  });
  await assert.rejects(client.saveSection('u', uniqueRun('big'), 's', 'x'.repeat(2 * 1024 * 1024)), (err) => {
    assert.equal(err.code, 'section_too_large');
    assert.equal(err.status, 413);
    assert.equal(err.problem.limit, 1024 * 1024);
    return true;
  });
  await assert.rejects(client.request('GET', '/v1/nothing'), { code: 'not_found', status: 404 });
});

test('keep-alive: many calls reuse a few connections', async () => {
  const run = uniqueRun('keepalive');
  await Promise.all(Array.from({ length: 32 }, (_, i) => client.saveSection('u', run, `s${i}`, i)));
  const all = await client.loadAllSections('u', run);
  assert.equal(Object.keys(all).length, 32);
  const sockets = client.transport.stats().idle;
  assert.ok(sockets > 0 && sockets <= 32, `${sockets} free sockets`);
  await client.cleanup('u', run);
});
