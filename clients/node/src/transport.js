// The client's transports: how one HTTP/1.1 request reaches the sidecar and its response comes
// back as {status, headers, body (Buffer)}. Errors that are not HTTP answers (refused, reset,
// timed out, closed) reject with an Error carrying a Node-style `code`.
//
// SocketTransport (the default) is a lean keep-alive HTTP/1.1 client over node:net (node:tls
// for https URLs, a Unix socket for unix: URLs): a pool of at most `maxSockets` connections, one
// request in flight per connection (no pipelining), a request written in one write, the
// response parsed from the bytes as they come (status line, headers, content-length or
// chunked, connection: close). Node's http module (the old transport, NodeHttpTransport, kept
// selectable) costs ~80 µs more per request on this path: its request and response objects,
// streams and header bookkeeping, which a small fixed API does not need.

import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const BAD_VALUE = /[^\t\x20-\x7e]/; // control characters (CR, LF: injection) and non-ASCII
const BAD_TARGET = /[^\x21-\x7e]/; // a request target is printable ASCII, no spaces
const MAX_HEAD = 64 * 1024; // a response head longer than this is not the sidecar's
const STATUS_LINE = /^HTTP\/1\.([01]) (\d{3})(?: |$)/;
const CRLF = Buffer.from('\r\n');
const HEAD_END = Buffer.from('\r\n\r\n');

function fail(message, code, cause) {
  const err = new Error(message, cause ? { cause } : undefined);
  err.code = code;
  return err;
}

/** Method, target and extra headers checked as Node's http checks them (no header injection). */
export function checkRequest(method, path, headers) {
  if (!TOKEN.test(method)) throw Object.assign(new TypeError(`invalid HTTP method ${JSON.stringify(method)}`), { code: 'ERR_INVALID_HTTP_TOKEN' });
  if (typeof path !== 'string' || path[0] !== '/' || BAD_TARGET.test(path)) {
    throw Object.assign(new TypeError(`the request path must be printable ASCII starting with "/" (percent-encode the rest): ${JSON.stringify(path)}`), { code: 'ERR_UNESCAPED_CHARACTERS' });
  }
  for (const name in headers) {
    if (!TOKEN.test(name)) throw Object.assign(new TypeError(`invalid header name ${JSON.stringify(name)}`), { code: 'ERR_INVALID_HTTP_TOKEN' });
    if (BAD_VALUE.test(String(headers[name]))) throw Object.assign(new TypeError(`invalid character in header ${name}`), { code: 'ERR_INVALID_CHAR' });
  }
}

// ---------------------------------------------------------------------------------------------
// The lean transport

/** One request on its way: what to write, where its answer goes, its state. */
class Exchange {
  constructor(pool, method, bytes, resolve, reject, retryable) {
    this.pool = pool;
    this.method = method;
    this.bytes = bytes; // the whole request (head + body) as one string
    this.resolve = resolve;
    this.reject = reject;
    this.retryable = retryable;
    this.conn = null;
    this.reused = false; // written on a connection that had sat idle in the pool
    this.gotBytes = false; // any byte of the response arrived
    this.done = false;
    this.timer = null;
  }
}

/**
 * One keep-alive connection and the parser of the response in flight on it. Response bytes
 * are only ever those of the one request in flight: anything left after a complete response,
 * or arriving while the connection is idle, ends the connection (the sidecar never pipelines).
 */
class Connection {
  constructor(pool, socket) {
    this.pool = pool;
    this.socket = socket;
    this.exchange = null;
    this.responses = 0; // complete responses read on this connection
    this.idleSince = 0;
    this.closed = false;
    this.error = null;
    this._reset();
    socket.setNoDelay(true);
    socket.on('data', (chunk) => this._data(chunk));
    socket.on('end', () => this._end());
    socket.on('error', (err) => { this.error ??= err; });
    socket.on('close', () => this._closed());
  }

  _reset() {
    this.state = 0; // 0 head, 1 content-length body, 2 chunked body, 3 body until close
    this.buf = null; // bytes not parsed yet
    this.status = 0;
    this.headers = null;
    this.keepAlive = true;
    this.remaining = 0; // body bytes (or the current chunk's bytes) still to come
    this.chunkState = 0; // chunked: 0 size line, 1 data, 2 CRLF after data, 3 trailers
    this.parts = [];
  }

  /** Write `exchange`'s request on this connection. */
  send(exchange, reused) {
    this.exchange = exchange;
    exchange.conn = this;
    exchange.reused = reused;
    this._reset();
    this.socket.write(exchange.bytes);
  }

  _data(chunk) {
    const ex = this.exchange;
    if (ex === null) { // the server wrote while nothing was asked: not a connection to reuse
      this.destroy();
      return;
    }
    ex.gotBytes = true;
    this.buf = this.buf === null ? chunk : Buffer.concat([this.buf, chunk]);
    try {
      this._parse();
    } catch (err) {
      this._fail(err, false);
    }
  }

  _parse() {
    for (;;) {
      const buf = this.buf;
      if (buf === null || buf.length === 0) return;
      if (this.state === 0) {
        const end = buf.indexOf(HEAD_END);
        if (end < 0) {
          if (buf.length > MAX_HEAD) throw fail('the response head is too long', 'HPE_HEADER_OVERFLOW');
          return;
        }
        this.buf = buf.subarray(end + 4);
        if (this._head(buf.latin1Slice(0, end))) continue; // 1xx: the real head follows
        if (this.state === -1) return; // finished (no body)
      } else if (this.state === 1) {
        if (buf.length >= this.remaining) {
          this.parts.push(buf.subarray(0, this.remaining));
          this.buf = buf.subarray(this.remaining);
          this.remaining = 0;
          this._finish();
          return;
        }
        this.parts.push(buf);
        this.remaining -= buf.length;
        this.buf = null;
        return;
      } else if (this.state === 2) {
        if (!this._chunked()) return;
      } else if (this.state === 3) {
        this.parts.push(buf);
        this.buf = null;
        return;
      } else {
        return;
      }
    }
  }

  /** Parse a response head; true when it was an interim (1xx) response to skip. */
  _head(text) {
    const lines = text.split('\r\n');
    const m = STATUS_LINE.exec(lines[0]);
    if (m === null) throw fail(`not an HTTP/1.x response: ${JSON.stringify(lines[0].slice(0, 80))}`, 'HPE_INVALID_CONSTANT');
    const status = Number(m[2]);
    const headers = {};
    for (let i = 1; i < lines.length; i += 1) {
      const line = lines[i];
      const colon = line.indexOf(':');
      if (colon <= 0) throw fail(`a malformed response header line: ${JSON.stringify(line.slice(0, 80))}`, 'HPE_INVALID_HEADER_TOKEN');
      const name = line.slice(0, colon).trim().toLowerCase();
      const value = line.slice(colon + 1).trim();
      headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
    }
    if (status < 200) {
      if (status === 101) throw fail('the server switched protocols', 'HPE_UNEXPECTED_UPGRADE');
      return true; // 100 Continue, 103 Early Hints: the final response follows
    }
    this.status = status;
    this.headers = headers;
    const connection = (headers.connection ?? '').toLowerCase();
    this.keepAlive = m[1] === '1' ? !/(^|[\s,])close($|[\s,])/.test(connection) : /(^|[\s,])keep-alive($|[\s,])/.test(connection);
    const te = headers['transfer-encoding'];
    const cl = headers['content-length'];
    if (this.exchange.method === 'HEAD' || status === 204 || status === 304) {
      this._finish();
    } else if (te !== undefined) {
      if (/(^|,)\s*chunked\s*$/i.test(te)) {
        this.state = 2;
        this.chunkState = 0;
      } else {
        this.state = 3; // another coding: the body ends with the connection
        this.keepAlive = false;
      }
    } else if (cl !== undefined) {
      const sizes = new Set(cl.split(',').map((s) => s.trim()));
      const size = sizes.size === 1 ? [...sizes][0] : '';
      if (!/^\d{1,15}$/.test(size)) throw fail(`a malformed content-length: ${JSON.stringify(cl)}`, 'HPE_INVALID_CONTENT_LENGTH');
      this.remaining = Number(size);
      this.state = 1;
      if (this.remaining === 0) this._finish();
    } else {
      this.state = 3; // no framing: the body ends with the connection
      this.keepAlive = false;
    }
    return false;
  }

  /** Consume chunked-body bytes; true when the response finished and bytes remain. */
  _chunked() {
    for (;;) {
      const buf = this.buf;
      if (buf === null || buf.length === 0) return false;
      if (this.chunkState === 0 || this.chunkState === 3) {
        const eol = buf.indexOf(CRLF);
        if (eol < 0) {
          if (buf.length > MAX_HEAD) throw fail('a chunk size or trailer line is too long', 'HPE_CHUNK_EXTENSIONS_OVERFLOW');
          return false;
        }
        const line = buf.latin1Slice(0, eol);
        this.buf = buf.subarray(eol + 2);
        if (this.chunkState === 3) {
          if (line === '') { // the empty line after the trailers: done
            this._finish();
            return false;
          }
          continue; // a trailer field: ignored
        }
        const hex = line.split(';', 1)[0].trim();
        if (!/^[0-9a-fA-F]{1,12}$/.test(hex)) throw fail(`a malformed chunk size: ${JSON.stringify(line.slice(0, 40))}`, 'HPE_INVALID_CHUNK_SIZE');
        this.remaining = parseInt(hex, 16);
        this.chunkState = this.remaining === 0 ? 3 : 1;
      } else if (this.chunkState === 1) {
        const take = Math.min(this.remaining, buf.length);
        this.parts.push(buf.subarray(0, take));
        this.buf = buf.subarray(take);
        this.remaining -= take;
        if (this.remaining === 0) this.chunkState = 2;
      } else { // the CRLF after a chunk's data
        if (buf.length < 2) return false;
        if (buf[0] !== 13 || buf[1] !== 10) throw fail('a chunk does not end with CRLF', 'HPE_STRICT');
        this.buf = buf.subarray(2);
        this.chunkState = 0;
      }
    }
  }

  /** The response is complete: hand the connection back (or end it), then answer. */
  _finish() {
    const ex = this.exchange;
    const parts = this.parts;
    const body = parts.length === 1 ? parts[0] : Buffer.concat(parts);
    const response = { status: this.status, headers: this.headers, body };
    const leftover = this.buf !== null && this.buf.length > 0; // bytes nobody asked for
    this.state = -1;
    this.exchange = null;
    this.responses += 1;
    // a request still being written when its answer came (a refused large body) may leave
    // body bytes the server has not read: such a connection is not reused
    const reusable = this.keepAlive && !leftover && this.socket.writableLength === 0;
    this._reset();
    this.state = -1;
    if (reusable) this.pool._release(this);
    else this.destroy();
    ex.pool._settle(ex, null, response);
  }

  _end() {
    const ex = this.exchange;
    if (ex !== null && this.state === 3) {
      this._finish(); // the body ended with the connection, as announced
      return;
    }
    this.destroy();
  }

  _closed() {
    if (this.closed) return;
    this.closed = true;
    this.pool._forget(this);
    const ex = this.exchange;
    if (ex !== null) {
      const cause = this.error;
      const err = ex.gotBytes
        ? fail('the connection closed in the middle of the response', 'ECONNRESET', cause)
        : cause ?? fail('the server closed the connection before answering (socket hang up)', 'ECONNRESET');
      this._fail(err, true);
    }
  }

  /** End this connection and fail the request in flight, if any, with `err`. */
  _fail(err, mayRetry) {
    const ex = this.exchange;
    this.exchange = null;
    this.destroy();
    if (ex !== null) ex.pool._failed(ex, err, mayRetry);
  }

  destroy() {
    if (!this.socket.destroyed) this.socket.destroy();
    if (!this.closed) { // 'close' comes later; forget the connection now
      this.pool._forget(this);
    }
  }
}

/** The lean transport: a pool of keep-alive connections to one origin. */
export class SocketTransport {
  /**
   * @param {object} target  {path} (Unix socket) or {host, port, secure}
   * @param {object} options  {maxSockets, timeoutMs, idleTimeoutMs, tls}
   */
  constructor(target, { maxSockets = 64, timeoutMs = 10000, idleTimeoutMs = 30000, tls: tlsOptions } = {}) {
    if (!(Number.isInteger(maxSockets) && maxSockets > 0)) throw new RangeError(`maxSockets must be a positive integer, got ${maxSockets}`);
    this.target = target;
    this.maxSockets = maxSockets;
    this.timeoutMs = timeoutMs;
    this.idleTimeoutMs = idleTimeoutMs;
    this.tlsOptions = tlsOptions;
    this.idle = []; // connections waiting for a request, most recently used last
    this.connections = new Set(); // every open connection (busy, idle or connecting)
    this.waiting = []; // exchanges waiting for a connection (maxSockets reached)
    this.closed = false;
  }

  get kind() { return 'socket'; }

  /** How many connections are open, and how many of them idle. */
  stats() {
    return { open: this.connections.size, idle: this.idle.length, waiting: this.waiting.length };
  }

  /**
   * One request: `head` is the request head without its final CRLF, `payload` the body text
   * (its content-length is in `head`). Resolves {status, headers, body}.
   */
  send(method, head, payload, retryable) {
    return new Promise((resolve, reject) => {
      if (this.closed) {
        reject(fail('the client is closed', 'ERR_CLIENT_CLOSED'));
        return;
      }
      const bytes = payload === undefined ? `${head}\r\n` : `${head}\r\n${payload}`;
      const ex = new Exchange(this, method, bytes, resolve, reject, retryable);
      if (this.timeoutMs > 0 && Number.isFinite(this.timeoutMs)) {
        ex.timer = setTimeout(() => this._timeout(ex), this.timeoutMs);
      }
      this._dispatch(ex, false);
    });
  }

  _dispatch(ex, fresh) {
    if (!fresh) {
      const now = this.idle.length > 0 ? performance.now() : 0;
      while (this.idle.length > 0) {
        const conn = this.idle.pop();
        if (now - conn.idleSince > this.idleTimeoutMs) { // idle too long: it may be closing
          conn.destroy();
          continue;
        }
        conn.socket.ref();
        conn.send(ex, true);
        return;
      }
    }
    if (this.connections.size < this.maxSockets) {
      this._connect().send(ex, false);
      return;
    }
    if (fresh && this.idle.length > 0) { // the retry wants a new connection: make room
      this._drop(this.idle.shift());
      this._connect().send(ex, false);
      return;
    }
    ex.fresh = fresh;
    this.waiting.push(ex);
  }

  _connect() {
    const t = this.target;
    let socket;
    if (t.path !== undefined) {
      socket = net.connect({ path: t.path });
    } else if (t.secure) {
      socket = tls.connect({
        host: t.host, port: t.port, servername: net.isIP(t.host) ? undefined : t.host,
        ALPNProtocols: ['http/1.1'], ...this.tlsOptions,
      });
    } else {
      socket = net.connect({ host: t.host, port: t.port });
    }
    const conn = new Connection(this, socket);
    this.connections.add(conn);
    return conn;
  }

  /** A connection whose response is complete and that may be reused. */
  _release(conn) {
    if (this.closed) {
      conn.destroy();
      return;
    }
    const next = this.waiting.shift();
    if (next !== undefined) {
      if (next.fresh) {
        this._drop(conn);
        this._connect().send(next, false);
      } else {
        conn.send(next, true);
      }
      return;
    }
    conn.idleSince = performance.now();
    conn.socket.unref(); // an idle connection does not keep the process alive
    this.idle.push(conn);
  }

  /** End `conn` to open another in its place (no waiting request takes its room). */
  _drop(conn) {
    this.connections.delete(conn);
    conn.destroy();
  }

  /** A connection that ended (either side): room for a waiting request. */
  _forget(conn) {
    if (!this.connections.delete(conn)) return;
    const i = this.idle.indexOf(conn);
    if (i >= 0) this.idle.splice(i, 1);
    if (!this.closed && this.waiting.length > 0 && this.connections.size < this.maxSockets) {
      this._connect().send(this.waiting.shift(), false);
    }
  }

  /**
   * A request failed on its connection (which is gone). Retried once, on a new connection,
   * when it met a keep-alive connection the server had closed while it sat idle: the request
   * had been written on a connection taken from the pool and not one byte of an answer came
   * before the close or reset. A server closes an idle connection only between requests (a
   * keep-alive timeout; uvicorn's never cuts a request it has read), so that request was not
   * processed. The one case where it could have been, the server process dying after reading
   * it, is why only idempotent methods are retried (GET, PUT, DELETE: a save writes the same
   * bytes again, a renew extends again, a cleanup deletes nothing more; never POST, the lease
   * acquire, which a replay would answer lease_held). In that same rare case a replayed lease
   * release would answer lease_lost (the lease is already gone): an error, never a wrong write.
   */
  _failed(ex, err, mayRetry) {
    if (ex.done) return;
    if (mayRetry && ex.retryable && ex.reused && !ex.gotBytes && !this.closed
        && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) {
      ex.retryable = false;
      ex.reused = false;
      ex.conn = null;
      this._dispatch(ex, true);
      return;
    }
    this._settle(ex, err, null);
  }

  _timeout(ex) {
    if (ex.done) return;
    const err = fail(`no answer within ${this.timeoutMs} ms`, 'ETIMEDOUT');
    const conn = ex.conn;
    if (conn !== null && conn.exchange === ex) {
      conn.exchange = null;
      conn.destroy(); // never reused with an answer still on its way
    } else {
      const i = this.waiting.indexOf(ex);
      if (i >= 0) this.waiting.splice(i, 1);
    }
    this._settle(ex, err, null);
  }

  _settle(ex, err, response) {
    if (ex.done) return;
    ex.done = true;
    if (ex.timer !== null) clearTimeout(ex.timer);
    if (err === null) ex.resolve(response);
    else ex.reject(err);
  }

  /** End every connection; requests in flight or waiting reject. */
  close() {
    this.closed = true;
    const err = fail('the client was closed', 'ERR_CLIENT_CLOSED');
    for (const ex of this.waiting.splice(0)) this._settle(ex, err, null);
    for (const conn of [...this.connections]) {
      const ex = conn.exchange;
      conn.exchange = null;
      conn.destroy();
      if (ex !== null) this._settle(ex, err, null);
    }
    this.idle.length = 0;
  }
}

// ---------------------------------------------------------------------------------------------
// node:http / node:https (the transport before SocketTransport; `transport: 'http'`)

export class NodeHttpTransport {
  constructor(target, { maxSockets = 64, timeoutMs = 10000, tls: tlsOptions } = {}) {
    this.timeoutMs = timeoutMs;
    if (target.path !== undefined) {
      this.module = http;
      this.target = { socketPath: target.path };
    } else {
      this.module = target.secure ? https : http;
      this.target = { hostname: target.host, port: target.port };
    }
    this.agent = new this.module.Agent({ keepAlive: true, maxSockets, timeout: 30000, ...(target.secure ? tlsOptions : {}) });
  }

  get kind() { return 'http'; }

  stats() {
    const count = (sockets) => Object.values(sockets).reduce((n, list) => n + list.length, 0);
    const idle = count(this.agent.freeSockets);
    return { open: idle + count(this.agent.sockets), idle, waiting: count(this.agent.requests) };
  }

  /** One request: `headers` an object, `payload` a string or undefined. */
  request(method, path, headers, payload, retryable) {
    return new Promise((resolve, reject) => {
      const req = this.module.request({ ...this.target, agent: this.agent, method, path, headers }, (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
      });
      req.setTimeout(this.timeoutMs, () => req.destroy(fail(`no answer within ${this.timeoutMs} ms`, 'ETIMEDOUT')));
      req.on('error', (err) => {
        // a keep-alive connection the server closed while idle: replay once what may be
        // replayed (see SocketTransport._failed)
        if (retryable && req.reusedSocket && (err.code === 'ECONNRESET' || err.code === 'EPIPE')) {
          resolve(this.request(method, path, headers, payload, false));
        } else {
          reject(err);
        }
      });
      req.end(payload);
    });
  }

  close() {
    this.agent.destroy();
  }
}
