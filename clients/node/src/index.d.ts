// Types of checkpoint-sidecar-client (hand-written; the package is plain ESM JavaScript).

import type { ConnectionOptions } from 'node:tls';

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Stable problem codes of the API (branch on these, never on messages). */
export type ProblemCode =
  | 'invalid_identifier' | 'invalid_body' | 'invalid_request' | 'unauthorized'
  | 'not_found' | 'run_not_found' | 'section_not_found' | 'method_not_allowed'
  | 'lease_held' | 'lease_lost' | 'section_too_large' | 'internal_error'
  | 'unavailable' | 'budget_exceeded';

/** RFC 9457 problem details as the sidecar answers them. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  code: ProblemCode;
  detail: string;
  /** section_too_large: max_section_bytes */
  limit?: number;
}

export const DEFAULT_URL: string;

export class CheckpointError extends Error {
  /** The problem's stable code (or "http_error" when the answer was not a problem). */
  code: ProblemCode | 'http_error';
  status: number;
  problem: Partial<Problem>;
  /** Seconds from Retry-After (lease_held, unavailable). */
  retryAfterS?: number;
}
export class LeaseHeld extends CheckpointError {}
export class LeaseLost extends CheckpointError {}

export interface ClientOptions {
  /** http(s)://host:port or unix:/path/to.sock (default $CHECKPOINT_SIDECAR_URL, else http://127.0.0.1:9465) */
  url?: string;
  /** Bearer token (default $CHECKPOINT_SIDECAR_TOKEN) */
  token?: string;
  /** Per request, from the call to the whole answer, default 10000; then it rejects with
   *  code ETIMEDOUT and its connection is ended */
  timeoutMs?: number;
  /** Keep-alive connections at most, default 64; more requests at once wait for one */
  maxSockets?: number;
  /** 'socket' (default): keep-alive HTTP/1.1 over node:net / node:tls; 'http': node:http(s)
   *  with a keep-alive agent */
  transport?: 'socket' | 'http';
  /** https only: node:tls options (ca, cert, key, ...) */
  tls?: ConnectionOptions;
}

/** The connections of a client's transport. */
export interface TransportStats {
  /** Open connections (busy, idle or connecting), at most maxSockets */
  open: number;
  /** Kept-alive connections waiting for a request */
  idle: number;
  /** Requests waiting for a connection */
  waiting: number;
}

export interface Transport {
  readonly kind: 'socket' | 'http';
  stats(): TransportStats;
}

export interface Progress {
  completed_sections: string[];
  in_progress: string | null;
  total_sections: number;
  last_update: string | null;
}

export interface ResumeView {
  /** name -> content, in completion order */
  sections: Record<string, Json>;
  progress: Progress;
  age_seconds: number | null;
}

export interface Lease {
  owner: string;
  fencingToken: number;
  leaseTtlMs: number;
  resumed: boolean;
  restored: Record<string, Json>;
  remaining: string[];
}

export interface RunOptions {
  /** Section names in order: `remaining` and the report follow it. */
  plan?: string[];
  /** Lease renewal interval (default lease TTL / 3). */
  renewEveryMs?: number;
}

export interface RunResult {
  success: boolean;
  report: Record<string, Json>;
  checkpoints_used: boolean;
  resumed_sections: number;
}

export class ResumableRun {
  readonly resumed: boolean;
  readonly restored: Record<string, Json>;
  readonly report: Record<string, Json>;
  readonly renewals: number;
  readonly lost: LeaseLost | null;
  readonly owner: string;
  readonly fencingToken: number;
  /** Plan sections neither restored nor produced yet. */
  readonly remaining: string[];
  /** The restored content of `name`, or `await produce()` saved under the lease. */
  step<T extends Json>(name: string, produce: () => T | Promise<T>): Promise<T>;
  /** Success: delete the run's checkpoints (fenced), release the lease. */
  complete(): Promise<void>;
  /** Failure: release the lease, keep the checkpoints for the next attempt. */
  fail(): Promise<void>;
  result(): RunResult;
}

export function encodeSegment(id: string): string;

export class CheckpointClient {
  constructor(options?: ClientOptions);
  readonly url: string;
  readonly transport: Transport;
  /** End every connection: requests in flight and later calls reject (code ERR_CLIENT_CLOSED
   *  with the 'socket' transport). Idle connections never keep the process alive. */
  close(): void;
  saveSection(user: string, run: string, section: string, content: Json,
              lease?: Pick<Lease, 'owner' | 'fencingToken'>): Promise<true>;
  loadSection<T extends Json = Json>(user: string, run: string, section: string): Promise<T | null>;
  loadAllSections(user: string, run: string): Promise<Record<string, Json>>;
  resumeView(user: string, run: string): Promise<ResumeView | null>;
  getProgress(user: string, run: string): Promise<Progress | null>;
  cleanup(user: string, run: string): Promise<true>;
  acquire(user: string, run: string, options?: { plan?: string[] }): Promise<Lease>;
  renew(user: string, run: string, lease: Pick<Lease, 'owner' | 'fencingToken'>): Promise<void>;
  release(user: string, run: string, lease: Pick<Lease, 'owner' | 'fencingToken'>,
          outcome: 'completed' | 'failed'): Promise<void>;
  run(user: string, run: string, options?: RunOptions): Promise<ResumableRun>;
  withRun<T>(user: string, run: string, options: RunOptions | undefined,
             fn: (run: ResumableRun) => Promise<T>): Promise<T>;
  request(method: string, path: string,
          options?: { body?: Json; headers?: Record<string, string>; retry?: boolean }): Promise<{ status: number; body: Json }>;
}
