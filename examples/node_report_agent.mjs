#!/usr/bin/env node
// The seed's reporting agent in JavaScript, through the sidecar's HTTP API: four sections,
// each an (simulated) LLM call, checkpointed as it finishes. The first attempt crashes after
// two sections; the second resumes from the checkpoints and pays only for the last two.
//
//   checkpoint-sidecar serve &          # API on http://127.0.0.1:9465
//   node examples/node_report_agent.mjs [user] [run]
//
// CHECKPOINT_SIDECAR_URL / CHECKPOINT_SIDECAR_TOKEN point it elsewhere.

import { CheckpointClient, LeaseHeld } from '../clients/node/src/index.js';

const SECTIONS = ['summary', 'data_analysis', 'recommendations', 'action_items'];

class WorkerCrash extends Error {}

async function llm(section, topic) {
  await new Promise((resolve) => setTimeout(resolve, 50 + Math.random() * 100)); // the LLM call
  return { section, topic, text: `${section.replace('_', ' ')} of ${topic}`, tokens: 120 + section.length };
}

function emitThinking(message) {
  console.log(`  thinking: ${message}`);
}

/** One attempt at the report; `crashAfter` sections in, the worker dies (if given). */
export async function writeReport(client, user, run, { topic = 'Q3 sales', crashAfter } = {}) {
  const attempt = await client.run(user, run, { plan: SECTIONS });
  if (attempt.resumed) {
    emitThinking(`Resumed from ${Object.keys(attempt.restored).length} checkpoints...`);
  }
  try {
    let done = 0;
    for (const name of SECTIONS) {
      if (crashAfter !== undefined && done === crashAfter) throw new WorkerCrash(`worker crashed after ${done} sections`);
      const restored = name in attempt.restored;
      await attempt.step(name, () => llm(name, topic));
      emitThinking(`${name}: ${restored ? 'restored from checkpoint' : 'generated and checkpointed'}`);
      done += 1;
    }
  } catch (err) {
    await attempt.fail(); // keep the checkpoints for the next attempt
    throw err;
  }
  await attempt.complete(); // success: the run's checkpoints are deleted
  return attempt.result();
}

async function main() {
  const user = process.argv[2] ?? 'user-42';
  const run = process.argv[3] ?? `report-${Date.now()}`;
  const client = new CheckpointClient();
  try {
    console.log(`attempt 1 (${user}/${run}) via ${client.url}`);
    try {
      await writeReport(client, user, run, { crashAfter: 2 });
    } catch (err) {
      if (!(err instanceof WorkerCrash)) throw err;
      console.log(`attempt 1 failed: ${err.message}`);
    }
    for (let attempt = 2; ; attempt += 1) {
      console.log(`attempt ${attempt}`);
      try {
        const result = await writeReport(client, user, run);
        console.log(JSON.stringify({ success: result.success, checkpoints_used: result.checkpoints_used, resumed_sections: result.resumed_sections, sections: Object.keys(result.report) }));
        return;
      } catch (err) {
        if (!(err instanceof LeaseHeld)) throw err;
        await new Promise((resolve) => setTimeout(resolve, (err.retryAfterS ?? 1) * 1000));
      }
    }
  } finally {
    client.close();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((err) => {
    console.error(`${err.name}: ${err.message}${err.code ? ` (${err.code})` : ''}`);
    process.exitCode = 1;
  });
}
