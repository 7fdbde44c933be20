// Real servers for the transport's tests, for what the sidecar never does on its own: answers
// split into single bytes, chunked bodies, connection: close, a connection closed unanswered,
// no answer at all. `scriptedServer` is a TCP server that reads each request (head and
// content-length body) and lets the test write the answer's bytes exactly; the others are
// node:http / node:https servers. Each records its connections, so tests can tell a reused
// connection from a new one.
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const TLS_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'tls');

/** The self-signed certificate (CN=localhost, SAN localhost and 127.0.0.1) and its key. */
export const TLS = {
  cert: fs.readFileSync(path.join(TLS_DIR, 'localhost.crt')),
  key: fs.readFileSync(path.join(TLS_DIR, 'localhost.key')),
};

function listening(server, address = { host: '127.0.0.1', port: 0 }) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(address, () => resolve(server.address()));
  });
}

/**
 * A TCP server calling `answer(request)` for each request it reads: request = {socket, method,
 * path, headers (lower-cased), body, connection (its index, from 0), n (the request's number on
 * its connection, from 1)}. Answers are written by the test (`socket.write`, `trickle`).
 */
export async function scriptedServer(answer) {
  const sockets = [];
  const requests = [];
  const server = net.createServer((socket) => {
    const connection = sockets.length;
    sockets.push(socket);
    socket.setNoDelay(true);
    socket.on('error', () => {});
    let buf = Buffer.alloc(0);
    let n = 0;
    socket.on('data', (data) => {
      buf = Buffer.concat([buf, data]);
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const [line, ...fields] = buf.subarray(0, end).toString('latin1').split('\r\n');
        const headers = Object.fromEntries(fields.map((f) => {
          const colon = f.indexOf(':');
          return [f.slice(0, colon).trim().toLowerCase(), f.slice(colon + 1).trim()];
        }));
        const length = Number(headers['content-length'] ?? 0);
        if (buf.length < end + 4 + length) return;
        const body = buf.subarray(end + 4, end + 4 + length).toString('utf8');
        buf = buf.subarray(end + 4 + length);
        const [method, target] = line.split(' ');
        n += 1;
        const request = { socket, method, path: target, headers, body, connection, n };
        requests.push(request);
        answer(request);
      }
    });
  });
  const { port } = await listening(server);
  return {
    url: `http://127.0.0.1:${port}`,
    sockets,
    requests,
    close: () => new Promise((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(resolve);
    }),
  };
}

/** A complete answer with a content-length body. */
export function response(status, body, extra = '') {
  const text = body === undefined ? '' : JSON.stringify(body);
  return `HTTP/1.1 ${status} X\r\ncontent-type: application/json\r\n${extra}content-length: ${Buffer.byteLength(text)}\r\n\r\n${text}`;
}

/** Write `bytes` `size` bytes at a time, pausing between writes: each its own TCP segment. */
export async function trickle(socket, bytes, size = 1) {
  const data = Buffer.from(bytes);
  for (let i = 0; i < data.length; i += size) {
    socket.write(data.subarray(i, i + size));
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
}

/** A node:http(s) server (`tls`: https with the test certificate), or on a Unix socket (`path`). */
export async function nodeServer(handler, { tls = false, keepAliveTimeout, path: socketPath } = {}) {
  const server = tls ? https.createServer({ ...TLS }, handler) : http.createServer(handler);
  if (keepAliveTimeout !== undefined) server.keepAliveTimeout = keepAliveTimeout;
  const sockets = [];
  server.on(tls ? 'secureConnection' : 'connection', (socket) => sockets.push(socket));
  const address = await listening(server, socketPath ? { path: socketPath } : undefined);
  const url = socketPath ? `unix:${socketPath}` : `${tls ? 'https' : 'http'}://localhost:${address.port}`;
  return {
    url,
    sockets,
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(resolve);
    }),
  };
}

/** Resolves once `socket` has closed (at once when it already has). */
export function closed(socket) {
  return socket.destroyed && socket.closed ? Promise.resolve() : new Promise((resolve) => socket.once('close', resolve));
}
