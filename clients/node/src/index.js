// checkpoint-sidecar-client: checkpoints through the sidecar's HTTP API, no dependencies.
//
// Mirrors the Python library: client.run(user, run, {plan}) acquires the run's lease and
// restores its sections in one round trip, step(name, produce) returns the restored section or
// produces and saves it (fenced), complete() deletes the run's checkpoints, fail() keeps them
// for the next attempt. The lease is renewed by an unref'd timer while the run is open.
//
// Transport (src/transport.js): by default a lean keep-alive HTTP/1.1 client over node:net
// (node:tls for https URLs, also to a Unix socket); `transport: 'http'` selects node:http(s)
// with a keep-alive agent instead. Not fetch: it cannot reach a Unix socket and re-parses the
// URL, turning an id of ".." into a dot segment. Ids are percent-encoded path segments.

import { NodeHttpTransport, SocketTransport, checkRequest } from './transport.js';

export const DEFAULT_URL = 'http://127.0.0.1:9465';

/** An error answered by the sidecar: `code` is the problem's stable code. */
export class CheckpointError extends Error {
  constructor(problem, status, retryAfterS) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.name = 'CheckpointError';
    this.code = problem.code || 'http_error';
    this.status = status;
    this.problem = problem;
    this.retryAfterS = retryAfterS;
  }
}

/** 409 lease_held: another attempt holds the run; retry after `retryAfterS` seconds. */
export class LeaseHeld extends CheckpointError {
  constructor(...args) { super(...args); this.name = 'LeaseHeld'; }
}

/** 409 lease_lost: another attempt took the run over; this attempt must stop. */
export class LeaseLost extends CheckpointError {
  constructor(...args) { super(...args); this.name = 'LeaseLost'; }
}

const ERROR_CLASSES = { lease_held: LeaseHeld, lease_lost: LeaseLost };

/** A path segment: every byte but A-Z a-z 0-9 - _ ~ percent-encoded, dots too ("." / ".."). */
export function encodeSegment(id) {
  if (typeof id !== 'string') throw new TypeError(`ids are strings, got ${typeof id}`);
  return encodeURIComponent(id).replace(/[.!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

const IDEMPOTENT = new Set(['GET', 'HEAD', 'PUT', 'DELETE', 'OPTIONS']);
const TRANSPORTS = { socket: SocketTransport, http: NodeHttpTransport };

export class CheckpointClient {
  /**
   * @param {object} [options]
   * @param {string} [options.url]  http(s)://host:port or unix:/path/to.sock
   *   (default: $CHECKPOINT_SIDECAR_URL, else http://127.0.0.1:9465)
   * @param {string} [options.token]  bearer token (default: $CHECKPOINT_SIDECAR_TOKEN)
   * @param {number} [options.timeoutMs]  per request, from the call to the whole answer (default
   *   10000); a request that runs out of it rejects with code ETIMEDOUT and its connection ends
   * @param {number} [options.maxSockets]  keep-alive connections at most (default 64); more
   *   requests at once wait for one
   * @param {'socket'|'http'} [options.transport]  'socket' (default): the lean HTTP/1.1 client
   *   over node:net / node:tls; 'http': node:http(s) with a keep-alive agent
   * @param {object} [options.tls]  https only: node:tls options (ca, cert, key, ...)
   */
  constructor(options = {}) {
    const url = options.url ?? process.env.CHECKPOINT_SIDECAR_URL ?? DEFAULT_URL;
    this.url = url;
    this.token = options.token ?? process.env.CHECKPOINT_SIDECAR_TOKEN;
    this.timeoutMs = options.timeoutMs ?? 10000;
    let target;
    if (url.startsWith('unix:')) {
      target = { path: url.slice(5) };
      this._host = 'localhost';
      this._base = '';
    } else {
      const parsed = new URL(url);
      if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new TypeError(`the sidecar URL must be http(s): or unix:, got ${url}`);
      const secure = parsed.protocol === 'https:';
      target = { host: parsed.hostname.replace(/^\[|\]$/g, ''), port: Number(parsed.port || (secure ? 443 : 80)), secure };
      this._host = parsed.host; // host[:port] as the URL spells it (IPv6 in brackets)
      this._base = parsed.pathname.replace(/\/$/, '');
    }
    const auth = this.token ? { authorization: `Bearer ${this.token}` } : {};
    checkRequest('GET', '/', auth); // a token with CR/LF would inject headers
    this._auth = this.token ? `authorization: Bearer ${this.token}\r\n` : '';
    const kind = options.transport ?? 'socket';
    const Transport = TRANSPORTS[kind];
    if (Transport === undefined) throw new TypeError(`transport is 'socket' or 'http', got ${JSON.stringify(kind)}`);
    /** The transport: `kind` ('socket' or 'http') and `stats()` ({open, idle, waiting}). */
    this.transport = new Transport(target, { maxSockets: options.maxSockets ?? 64, timeoutMs: this.timeoutMs, tls: options.tls });
    this.agent = this.transport.agent; // the keep-alive agent of the 'http' transport
  }

  /** End the keep-alive connections (the client is unusable afterwards; requests in flight reject). */
  close() {
    this.transport.close();
  }

  _path(user, run, tail = '') {
    return `${this._base}/v1/runs/${encodeSegment(user)}/${encodeSegment(run)}${tail}`;
  }

  /** One request; resolves {status, body (parsed JSON or null)}, rejects with CheckpointError. */
  async request(method, path, { body, headers = {}, retry = true } = {}) {
    checkRequest(method, path, headers);
    const payload = body === undefined ? undefined : JSON.stringify(body);
    // a keep-alive connection the server closed while it sat idle: the transport replays the
    // request once on a new connection, for idempotent methods only (never the lease acquire)
    const retryable = retry && IDEMPOTENT.has(method);
    let res;
    if (this.transport.kind === 'socket') {
      let head = `${method} ${path} HTTP/1.1\r\nhost: ${this._host}\r\n${this._auth}`;
      for (const name in headers) head += `${name}: ${headers[name]}\r\n`;
      if (payload !== undefined) head += `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(payload)}\r\n`;
      else if (method === 'PUT' || method === 'POST') head += 'content-length: 0\r\n';
      res = await this.transport.send(method, head, payload, retryable);
    } else {
      const head = { ...headers };
      if (payload !== undefined) {
        head['content-type'] = 'application/json';
        head['content-length'] = Buffer.byteLength(payload);
      }
      if (this.token) head.authorization = `Bearer ${this.token}`;
      res = await this.transport.request(method, path, head, payload, retryable);
    }
    const text = res.body.length > 0 ? res.body.toString('utf8') : '';
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = { detail: text.slice(0, 200) };
    }
    if (res.status >= 400) {
      const problem = parsed && typeof parsed === 'object' ? parsed : {};
      const wait = Number(res.headers['retry-after']);
      const Cls = ERROR_CLASSES[problem.code] ?? CheckpointError;
      throw new Cls(problem, res.status, Number.isFinite(wait) ? wait : undefined);
    }
    return { status: res.status, body: parsed };
  }

  /** Save one section (any JSON value). Resolves true once Redis confirmed it. */
  async saveSection(user, run, section, content, lease) {
    const headers = lease ? { 'checkpoint-owner': lease.owner, 'checkpoint-fence': String(lease.fencingToken) } : {};
    await this.request('PUT', this._path(user, run, `/sections/${encodeSegment(section)}`), { body: content === undefined ? null : content, headers });
    return true;
  }

  /** The section's content, or null when it was never saved (or expired). */
  async loadSection(user, run, section) {
    try {
      return (await this.request('GET', this._path(user, run, `/sections/${encodeSegment(section)}`))).body;
    } catch (err) {
      if (err.code === 'section_not_found') return null;
      throw err;
    }
  }

  /** {sections (completion order), progress, age_seconds}, or null without checkpoints. */
  async resumeView(user, run) {
    try {
      return (await this.request('GET', this._path(user, run))).body;
    } catch (err) {
      if (err.code === 'run_not_found') return null;
      throw err;
    }
  }

  /** Every section, {name: content} in completion order ({} without checkpoints). */
  async loadAllSections(user, run) {
    return (await this.resumeView(user, run))?.sections ?? {};
  }

  /** The seed's progress shape, or null without checkpoints. */
  async getProgress(user, run) {
    return (await this.resumeView(user, run))?.progress ?? null;
  }

  /** Delete every checkpoint of the run. */
  async cleanup(user, run) {
    await this.request('DELETE', this._path(user, run));
    return true;
  }

  /** Acquire the run's lease and restore it: {owner, fencingToken, leaseTtlMs, resumed, restored, remaining}. */
  async acquire(user, run, { plan } = {}) {
    const { body } = await this.request('POST', this._path(user, run, '/lease'), { body: plan ? { plan } : {}, retry: false });
    return {
      owner: body.owner,
      fencingToken: body.fencing_token,
      leaseTtlMs: body.lease_ttl_ms,
      resumed: body.resumed,
      restored: body.restored,
      remaining: body.remaining,
    };
  }

  _leaseHeaders(lease) {
    return { 'checkpoint-owner': lease.owner, 'checkpoint-fence': String(lease.fencingToken) };
  }

  async renew(user, run, lease) {
    await this.request('PUT', this._path(user, run, '/lease'), { headers: this._leaseHeaders(lease) });
  }

  /** outcome "completed" (fenced cleanup) or "failed" (release, keep checkpoints). */
  async release(user, run, lease, outcome) {
    await this.request('DELETE', this._path(user, run, `/lease?outcome=${outcome}`), { headers: this._leaseHeaders(lease) });
  }

  /**
   * Start an attempt at a run: acquire + restore in one round trip, lease renewed until
   * complete() or fail(). Rejects with LeaseHeld when another attempt holds the run.
   */
  async run(user, run, { plan, renewEveryMs } = {}) {
    const lease = await this.acquire(user, run, { plan });
    return new ResumableRun(this, user, run, lease, plan ?? [], renewEveryMs ?? Math.max(50, Math.floor(lease.leaseTtlMs / 3)));
  }

  /** run(), then fn(run); complete() when fn resolves, fail() (and rethrow) when it throws. */
  async withRun(user, run, options, fn) {
    const attempt = await this.run(user, run, options);
    let result;
    try {
      result = await fn(attempt);
    } catch (err) {
      await attempt.fail().catch(() => {});
      throw err;
    }
    await attempt.complete();
    return result;
  }
}

/** One attempt at a run (see CheckpointClient.run). */
export class ResumableRun {
  constructor(client, user, run, lease, plan, renewEveryMs) {
    this.client = client;
    this.user = user;
    this.runId = run;
    this.lease = lease;
    this.plan = plan;
    this.resumed = lease.resumed;
    this.restored = lease.restored;
    this.report = {};
    this.renewals = 0;
    this.lost = null;
    this.finished = false;
    this._timer = setInterval(() => this._renew(), renewEveryMs);
    this._timer.unref();
  }

  get owner() { return this.lease.owner; }
  get fencingToken() { return this.lease.fencingToken; }

  /** Plan sections neither restored nor produced yet, in plan order. */
  get remaining() {
    return this.plan.filter((s) => !(s in this.restored) && !(s in this.report));
  }

  async _renew() {
    if (this.finished || this.lost) return;
    try {
      await this.client.renew(this.user, this.runId, this.lease);
      this.renewals += 1;
    } catch (err) {
      if (err instanceof LeaseLost) {
        this.lost = err;
        this._stop();
      } // an outage: the next renewal tries again; saves still carry the fence
    }
  }

  _stop() {
    clearInterval(this._timer);
  }

  /** The restored content of `name`, or `await produce()` saved under the lease and returned. */
  async step(name, produce) {
    if (name in this.restored) {
      this.report[name] = this.restored[name];
      return this.restored[name];
    }
    if (name in this.report) return this.report[name];
    if (this.lost) throw this.lost;
    const value = await produce();
    try {
      await this.client.saveSection(this.user, this.runId, name, value, this.lease);
    } catch (err) {
      if (err instanceof LeaseLost) {
        this.lost = err;
        this._stop();
      }
      throw err;
    }
    this.report[name] = value;
    return value;
  }

  /** Success: delete the run's checkpoints (fenced) and release the lease. */
  async complete() {
    this._stop();
    this.finished = true;
    await this.client.release(this.user, this.runId, this.lease, 'completed');
  }

  /** Failure: release the lease, keep the checkpoints for the next attempt. */
  async fail() {
    this._stop();
    this.finished = true;
    await this.client.release(this.user, this.runId, this.lease, 'failed');
  }

  /** The seed's result: {success, report, checkpoints_used, resumed_sections}. */
  result() {
    const order = (s) => (this.plan.indexOf(s) + 1 || Infinity);
    const report = Object.fromEntries(Object.entries(this.report).sort(([a], [b]) => order(a) - order(b)));
    return {
      success: this.finished && !this.lost,
      report,
      checkpoints_used: this.resumed,
      resumed_sections: Object.keys(this.report).filter((s) => s in this.restored).length,
    };
  }
}
