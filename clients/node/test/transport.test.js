// The default transport (keep-alive HTTP/1.1 over node:net / node:tls): the connection pool,
// response parsing, timeouts, retries and close(), against the sidecar and against real
// servers started here for what the sidecar never does (see test-support/servers.js).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { CheckpointClient, CheckpointError, LeaseHeld } from '../src/index.js';
import { startSidecar, uniqueRun } from '../test-support/sidecar.js';
import { TLS, closed, nodeServer, response, scriptedServer, trickle } from '../test-support/servers.js';

const INDEX = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/index.js');
let sidecar;

before(async () => {
  sidecar = await startSidecar();
});

after(async () => {
  await sidecar?.stop();
});

/** Resolves when `cond()` holds (checked every 5 ms); rejects after 10 s. */
async function until(cond) {
  for (let waited = 0; !cond(); waited += 5) {
    if (waited > 10000) throw new Error(`never true: ${cond}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** A server and a client to it for one test; both closed at the end. */
async function withScripted(answer, options, fn) {
  const server = await scriptedServer(answer);
  const client = new CheckpointClient({ url: server.url, ...options });
  try {
    await fn(server, client);
  } finally {
    client.close();
    await server.close();
  }
}

test('32 requests in flight over maxSockets 4: the cap holds, the rest wait, all are saved', async () => {
  const client = new CheckpointClient({ url: sidecar.url, maxSockets: 4 });
  try {
    const run = uniqueRun('cap');
    const saves = Array.from({ length: 32 }, (_, i) => client.saveSection('u', run, `s${i}`, { i }));
    assert.deepEqual(client.transport.stats(), { open: 4, idle: 0, waiting: 28 });
    assert.deepEqual(await Promise.all(saves), Array(32).fill(true));
    assert.deepEqual(client.transport.stats(), { open: 4, idle: 4, waiting: 0 });
    const all = await client.loadAllSections('u', run);
    assert.deepEqual(Object.keys(all), Array.from({ length: 32 }, (_, i) => `s${i}`));
    await client.cleanup('u', run);
  } finally {
    client.close();
  }
});

test("transport: 'http' (node:http with a keep-alive agent) is still there and answers the same", async () => {
  const client = new CheckpointClient({ url: sidecar.url, transport: 'http' });
  try {
    assert.equal(client.transport.kind, 'http');
    const run = uniqueRun('http-transport');
    await client.saveSection('u', run, 'summary', { text: 'é 🙂' });
    assert.deepEqual(await client.loadSection('u', run, 'summary'), { text: 'é 🙂' });
    assert.deepEqual(Object.keys((await client.resumeView('u', run)).sections), ['summary']);
    const first = await client.run('u', run);
    await assert.rejects(client.run('u', run), LeaseHeld);
    await first.complete();
    assert.equal(await client.resumeView('u', run), null);
    assert.ok(client.transport.stats().idle > 0);
  } finally {
    client.close();
  }
  assert.throws(() => new CheckpointClient({ url: sidecar.url, transport: 'fetch' }), TypeError);
});

test('a chunked answer in single bytes, with chunk extensions and trailers; the connection is reused', async () => {
  const body = JSON.stringify({ text: 'ünïcode 🙂 split anywhere', list: [1, 2, 3] });
  const bytes = Buffer.from(body);
  const chunks = [bytes.subarray(0, 7), bytes.subarray(7, 20), bytes.subarray(20)];
  const chunked = Buffer.concat([
    Buffer.from('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n'),
    ...chunks.flatMap((c, i) => [Buffer.from(`${c.length.toString(16)}${i === 1 ? ';name=value' : ''}\r\n`), c, Buffer.from('\r\n')]),
    Buffer.from('0\r\nX-Trailer: yes\r\n\r\n'),
  ]);
  await withScripted((req) => {
    if (req.n === 1) trickle(req.socket, chunked);
    else req.socket.write(response(200, { n: req.n }));
  }, {}, async (server, client) => {
    assert.deepEqual((await client.request('GET', '/chunked')).body, JSON.parse(body));
    assert.deepEqual((await client.request('GET', '/next')).body, { n: 2 });
    assert.equal(server.sockets.length, 1);
  });
});

test('a content-length answer split into single bytes (head and body) arrives whole', async () => {
  const big = { text: 'x'.repeat(300), n: 1 };
  await withScripted((req) => trickle(req.socket, response(200, big, 'X-Many: a\r\nX-Many: b\r\n')), {}, async (server, client) => {
    assert.deepEqual((await client.request('GET', '/a')).body, big);
    assert.deepEqual((await client.request('PUT', '/b', { body: [1] })).body, big);
    assert.equal(server.sockets.length, 1);
    assert.equal(server.requests[1].body, '[1]');
  });
});

test('bytes past the end of an answer end the connection: two answers never mix', async () => {
  await withScripted((req) => {
    if (req.path === '/twice') req.socket.write(response(200, { answer: 1 }) + response(200, { answer: 'stray' }));
    else req.socket.write(response(200, { path: req.path }));
  }, {}, async (server, client) => {
    assert.deepEqual((await client.request('GET', '/twice')).body, { answer: 1 });
    assert.deepEqual((await client.request('GET', '/after')).body, { path: '/after' });
    assert.equal(server.sockets.length, 2); // the stray answer's connection was not reused
    assert.deepEqual(server.requests.map((r) => r.connection), [0, 1]);
  });
});

test('connection: close, a body ended by the close, and a 100 Continue before the answer', async () => {
  await withScripted((req) => {
    if (req.path === '/close') {
      req.socket.end(response(200, { closing: true }, 'Connection: close\r\n'));
    } else if (req.path === '/until-close') {
      req.socket.end('HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{"unframed": true}');
    } else {
      req.socket.write(`HTTP/1.1 100 Continue\r\n\r\n${response(409, { code: 'lease_held', detail: 'held' }, 'Retry-After: 7\r\n')}`);
    }
  }, {}, async (server, client) => {
    assert.deepEqual((await client.request('GET', '/close')).body, { closing: true });
    assert.deepEqual((await client.request('GET', '/until-close')).body, { unframed: true });
    await assert.rejects(client.request('POST', '/lease'), (err) => {
      assert.ok(err instanceof LeaseHeld);
      assert.equal(err.code, 'lease_held');
      assert.equal(err.retryAfterS, 7);
      return true;
    });
    assert.equal(server.sockets.length, 3);
  });
});

test('an answer that is not HTTP rejects, and its connection is ended', async () => {
  await withScripted((req) => {
    if (req.path === '/garbage') req.socket.write('SMTP ready\r\n\r\n');
    else if (req.path === '/bad-length') req.socket.write('HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\nx');
    else req.socket.write(response(200, { ok: true }));
  }, {}, async (server, client) => {
    await assert.rejects(client.request('GET', '/garbage'), { code: 'HPE_INVALID_CONSTANT' });
    await assert.rejects(client.request('GET', '/bad-length'), { code: 'HPE_INVALID_CONTENT_LENGTH' });
    assert.deepEqual((await client.request('GET', '/ok')).body, { ok: true });
    assert.equal(server.sockets.length, 3);
    await Promise.all(server.sockets.slice(0, 2).map(closed));
  });
});

test('timeoutMs: an unanswered request rejects with ETIMEDOUT and its connection is ended, never reused', async () => {
  await withScripted((req) => {
    if (req.path !== '/silent') req.socket.write(response(200, { path: req.path }));
  }, { timeoutMs: 150 }, async (server, client) => {
    assert.deepEqual((await client.request('GET', '/first')).body, { path: '/first' });
    await assert.rejects(client.request('GET', '/silent'), (err) => {
      assert.equal(err.code, 'ETIMEDOUT');
      assert.ok(!(err instanceof CheckpointError));
      return true;
    });
    await closed(server.sockets[0]); // the client ended the connection with a reply in flight
    assert.deepEqual((await client.request('GET', '/later')).body, { path: '/later' });
    assert.equal(server.sockets.length, 2);
    assert.deepEqual(server.requests.map((r) => [r.path, r.connection]), [['/first', 0], ['/silent', 0], ['/later', 1]]);
  });
});

test('a connection the server closes while idle is discarded; the next request opens another', async () => {
  const server = await nodeServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ url: req.url }));
  }, { keepAliveTimeout: 50 });
  const client = new CheckpointClient({ url: server.url });
  try {
    assert.deepEqual((await client.request('GET', '/one')).body, { url: '/one' });
    assert.equal(client.transport.stats().idle, 1);
    await closed(server.sockets[0]); // the server's keep-alive timeout
    await until(() => client.transport.stats().open === 0); // its FIN seen: discarded
    assert.deepEqual(client.transport.stats(), { open: 0, idle: 0, waiting: 0 });
    assert.deepEqual((await client.request('GET', '/two')).body, { url: '/two' });
    assert.equal(server.sockets.length, 2);
  } finally {
    client.close();
    await server.close();
  }
});

test('a request on a kept connection the server closes unanswered is sent again once on a new one; a POST is not', async () => {
  // the server ends each connection on its second request without answering: what a request
  // meets when it is written just as the server's keep-alive timeout closes the connection
  const abort = (req) => (req.path.includes('rst') ? req.socket.resetAndDestroy() : req.socket.destroy());
  await withScripted((req) => {
    if (req.n >= 2) abort(req);
    else req.socket.write(response(200, { path: req.path, connection: req.connection }));
  }, {}, async (server, client) => {
    await client.request('GET', '/open');
    assert.deepEqual((await client.request('PUT', '/save', { body: { v: 1 } })).body, { path: '/save', connection: 1 });
    assert.deepEqual((await client.request('DELETE', '/rst')).body, { path: '/rst', connection: 2 });
    assert.deepEqual((await client.request('GET', '/read')).body, { path: '/read', connection: 3 });
    await assert.rejects(client.request('POST', '/lease', { body: {} }), { code: 'ECONNRESET' });
    assert.deepEqual(server.requests.map((r) => `${r.method} ${r.path} ${r.connection}`), [
      'GET /open 0', 'PUT /save 0', 'PUT /save 1', 'DELETE /rst 1', 'DELETE /rst 2',
      'GET /read 2', 'GET /read 3', 'POST /lease 3',
    ]);
  });
  // on a new connection (nothing reused) there is no second try
  await withScripted(abort, {}, async (server, client) => {
    await assert.rejects(client.request('GET', '/x'), { code: 'ECONNRESET' });
    assert.equal(server.requests.length, 1);
  });
});

test('close() ends every connection, rejects what is in flight and later calls; no handle keeps Node alive', async () => {
  const client = new CheckpointClient({ url: sidecar.url });
  const run = uniqueRun('close');
  await Promise.all([0, 1, 2].map((i) => client.saveSection('u', run, `s${i}`, i)));
  assert.equal(client.transport.stats().idle, 3);
  const inFlight = client.resumeView('u', run);
  client.close();
  await assert.rejects(inFlight, { code: 'ERR_CLIENT_CLOSED' });
  await assert.rejects(client.loadSection('u', run, 's0'), { code: 'ERR_CLIENT_CLOSED' });
  assert.deepEqual(client.transport.stats(), { open: 0, idle: 0, waiting: 0 });
  // a process whose client is closed exits by itself; so does one that forgot close(): idle
  // keep-alive connections are unref'd (busy ones are not)
  for (const closing of ['client.close();', '']) {
    const script = `
      import { CheckpointClient } from ${JSON.stringify(INDEX)};
      const client = new CheckpointClient({ url: ${JSON.stringify(sidecar.url)} });
      await client.saveSection('u', ${JSON.stringify(run)}, 's', 1);
      const open = client.transport.stats().open;
      ${closing}
      console.log(JSON.stringify({ open, after: client.transport.stats().open }));
      process.on('exit', () => console.log('exit'));`;
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30000 });
    assert.equal(child.status, 0, `${closing || 'no close()'}: ${child.stderr} ${child.error ?? ''}`);
    const [line, exit] = child.stdout.trim().split('\n');
    assert.deepEqual(JSON.parse(line), { open: 1, after: closing ? 0 : 1 });
    assert.equal(exit, 'exit');
  }
  const last = new CheckpointClient({ url: sidecar.url });
  await last.cleanup('u', run);
  last.close();
});

test('header values with CR, LF or non-ASCII, and unescaped paths, are refused before anything is sent', async () => {
  await withScripted((req) => req.socket.write(response(200, {})), {}, async (server, client) => {
    await assert.rejects(client.saveSection('u', 'r', 's', 1, { owner: 'o\r\nx-evil: 1', fencingToken: 1 }), { code: 'ERR_INVALID_CHAR' });
    await assert.rejects(client.request('GET', '/a b'), { code: 'ERR_UNESCAPED_CHARACTERS' });
    await assert.rejects(client.request('GET', '/x', { headers: { 'bad name': 'v' } }), { code: 'ERR_INVALID_HTTP_TOKEN' });
    assert.equal(server.requests.length, 0);
  });
  assert.throws(() => new CheckpointClient({ url: 'http://127.0.0.1:1', token: 'a\nb' }), { code: 'ERR_INVALID_CHAR' });
});

test('https through node:tls (tls.ca trusts the test certificate), both transports, one kept connection each', async () => {
  const server = await nodeServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ method: req.method, body: body ? JSON.parse(body) : null, alpn: req.socket.alpnProtocol || null }));
    });
  }, { tls: true });
  try {
    for (const transport of ['socket', 'http']) {
      const client = new CheckpointClient({ url: server.url, transport, tls: { ca: TLS.cert } });
      try {
        for (let i = 0; i < 3; i += 1) {
          const { body } = await client.request('PUT', `/s${i}`, { body: { i } });
          assert.deepEqual({ method: body.method, body: body.body }, { method: 'PUT', body: { i } });
        }
      } finally {
        client.close();
      }
      const untrusted = new CheckpointClient({ url: server.url, transport });
      await assert.rejects(untrusted.request('GET', '/'), (err) => !(err instanceof CheckpointError) && /self[- ]signed|certificate/i.test(err.message));
      untrusted.close();
    }
    assert.equal(server.sockets.length, 2); // one kept connection per trusted client
  } finally {
    await server.close();
  }
});

test('unix: URLs reach a server on a Unix socket', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ckpt-node-'));
  const server = await nodeServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ url: req.url, host: req.headers.host }));
  }, { path: path.join(dir, 'api.sock') });
  const client = new CheckpointClient({ url: server.url });
  try {
    assert.deepEqual((await client.request('GET', '/v1/x')).body, { url: '/v1/x', host: 'localhost' });
    assert.deepEqual((await client.request('GET', '/v1/y')).body, { url: '/v1/y', host: 'localhost' });
    assert.equal(server.sockets.length, 1);
  } finally {
    client.close();
    await server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
