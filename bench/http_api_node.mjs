// The Node half of bench/http_api.py: the same save and resume-view calls through the HTTP
// API with the Node client (keep-alive), timed per call; then saves from 32 concurrent
// requests for a fixed time. Prints one JSON line: latencies in µs and saves/s.
//
//   node bench/http_api_node.mjs <api url> <user> <run> <iterations> <content json> <seconds> <concurrency>

import { CheckpointClient } from '../clients/node/src/index.js';

const [url, user, run, iterations, contentJson, seconds, concurrency] = process.argv.slice(2);
const content = JSON.parse(contentJson);
const n = Number(iterations);
const client = new CheckpointClient({ url, maxSockets: Number(concurrency) });

async function timed(call) {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i += 1) {
    const t0 = process.hrtime.bigint();
    await call(i);
    out[i] = Number(process.hrtime.bigint() - t0) / 1000;
  }
  return Array.from(out);
}

async function throughput() {
  const deadline = performance.now() + Number(seconds) * 1000;
  let saves = 0;
  let errors = 0;
  const worker = async (w) => {
    let i = 0;
    while (performance.now() < deadline) {
      try {
        await client.saveSection(user, `${run}-tp-${w}`, `s${i % 4}`, content);
        saves += 1;
      } catch {
        errors += 1;
      }
      i += 1;
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: Number(concurrency) }, (_, w) => worker(w)));
  const elapsed = (performance.now() - started) / 1000;
  for (let w = 0; w < Number(concurrency); w += 1) await client.cleanup(user, `${run}-tp-${w}`).catch(() => {});
  return { saves, errors, seconds: elapsed, saves_per_s: saves / elapsed };
}

const sections = ['summary', 'data_analysis', 'recommendations', 'action_items'];
await timed((i) => client.saveSection(user, run, sections[i % 4], content)); // warm-up
const save = await timed((i) => client.saveSection(user, run, sections[i % 4], content));
const view = await timed(() => client.resumeView(user, run));
const tp = Number(seconds) > 0 ? await throughput() : null;
client.close();
process.stdout.write(`${JSON.stringify({ save_us: save, view_us: view, throughput: tp })}\n`);
