// The Node half of bench/http_api.py: the same save and resume-view calls through the HTTP
// API with the Node client (keep-alive), timed per call, for each transport in the same
// process, alternating call by call (pair i: the transports in the given order when i is even,
// reversed when odd, so neither always goes first); then saves from `concurrency` concurrent
// requests for a fixed time, per transport. Prints one JSON line: latencies in µs (with the
// position of each call in its pair) and saves/s.
//
//   node bench/http_api_node.mjs <api url> <user> <run> <iterations> <content json> <seconds>
//        <concurrency> [transports, default "socket"]

import { CheckpointClient } from '../clients/node/src/index.js';

const [url, user, run, iterations, contentJson, seconds, concurrency, transportList = 'socket'] = process.argv.slice(2);
const content = JSON.parse(contentJson);
const n = Number(iterations);
const kinds = transportList.split(',');
const clients = kinds.map((transport) => new CheckpointClient({ url, maxSockets: Number(concurrency), transport }));

/** n rounds of call(client, i) on every client, the order flipping every round. */
async function timed(call) {
  const out = kinds.map(() => ({ us: new Float64Array(n), first: new Uint8Array(n) }));
  for (let i = 0; i < n; i += 1) {
    for (let k = 0; k < kinds.length; k += 1) {
      const c = i % 2 === 0 ? k : kinds.length - 1 - k;
      const t0 = process.hrtime.bigint();
      await call(clients[c], i);
      out[c].us[i] = Number(process.hrtime.bigint() - t0) / 1000;
      out[c].first[i] = k === 0 ? 1 : 0;
    }
  }
  return out.map(({ us, first }) => ({ us: Array.from(us), first: Array.from(first) }));
}

async function throughput(client) {
  const deadline = performance.now() + Number(seconds) * 1000;
  let saves = 0;
  let errors = 0;
  const errorCodes = {}; // the problem code (or Node's error code) of each failed save
  const worker = async (w) => {
    let i = 0;
    while (performance.now() < deadline) {
      try {
        await client.saveSection(user, `${run}-tp-${w}`, `s${i % 4}`, content);
        saves += 1;
      } catch (err) {
        errors += 1;
        const code = String(err?.code ?? err?.name ?? 'unknown');
        errorCodes[code] = (errorCodes[code] ?? 0) + 1;
      }
      i += 1;
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: Number(concurrency) }, (_, w) => worker(w)));
  const elapsed = (performance.now() - started) / 1000;
  const { open } = client.transport.stats();
  for (let w = 0; w < Number(concurrency); w += 1) await client.cleanup(user, `${run}-tp-${w}`).catch(() => {});
  return { saves, errors, error_codes: errorCodes, seconds: elapsed, saves_per_s: saves / elapsed, connections: open };
}

const sections = ['summary', 'data_analysis', 'recommendations', 'action_items'];
const save = (client, i) => client.saveSection(user, run, sections[i % 4], content);
const view = (client) => client.resumeView(user, run);
await timed(save); // warm-up
const saves = await timed(save);
const views = await timed(view);
const result = { transports: {} };
for (let c = 0; c < kinds.length; c += 1) {
  const tp = Number(seconds) > 0 ? await throughput(clients[c]) : null;
  result.transports[kinds[c]] = {
    save_us: saves[c].us, save_first: saves[c].first, view_us: views[c].us, view_first: views[c].first, throughput: tp,
  };
}
for (const client of clients) client.close();
// the first transport's figures also at the top level (what the report's "api" column shows)
Object.assign(result, { save_us: saves[0].us, view_us: views[0].us, throughput: result.transports[kinds[0]].throughput });
process.stdout.write(`${JSON.stringify(result)}\n`);
