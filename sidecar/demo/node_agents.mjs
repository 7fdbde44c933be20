// `checkpoint-sidecar demo --node`: reporting agents in JavaScript, through the HTTP API.
// Each run's first attempt crashes after k sections (k = 1..3), the second resumes from the
// checkpoints and completes. Prints one JSON line with what happened.
//
//   node node_agents.mjs <client module path> <api url> <runs> <session>

const [clientPath, url, runsArg, session] = process.argv.slice(2);
const { CheckpointClient, LeaseHeld } = await import(clientPath);

const SECTIONS = ['summary', 'data_analysis', 'recommendations', 'action_items'];
const client = new CheckpointClient({ url });
const totals = { runs: Number(runsArg), completed: 0, failed: 0, resumed: 0, restored: 0, produced: 0, crashes: 0 };

async function llm(section) {
  await new Promise((resolve) => setTimeout(resolve, 40 + Math.random() * 120));
  return { section, text: `${section} (written by a Node agent)` };
}

async function attempt(user, run, crashAfter) {
  const r = await client.run(user, run, { plan: SECTIONS });
  let done = 0;
  try {
    for (const name of SECTIONS) {
      if (done === crashAfter) throw new Error(`worker crashed after ${done} sections`);
      const fresh = !(name in r.restored);
      await r.step(name, () => llm(name));
      if (fresh) totals.produced += 1;
      done += 1;
    }
  } catch (err) {
    await r.fail().catch(() => {});
    throw err;
  }
  await r.complete();
  return r.result();
}

async function oneRun(i) {
  const user = `node-user-${i % 3}`;
  const run = `${session}-node-report-${String(i).padStart(3, '0')}`;
  for (let n = 1; n <= 4; n += 1) {
    try {
      const result = await attempt(user, run, n === 1 ? 1 + (i % 3) : undefined);
      totals.completed += 1;
      if (result.checkpoints_used) totals.resumed += 1;
      totals.restored += result.resumed_sections;
      return;
    } catch (err) {
      if (err instanceof LeaseHeld) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      } else if (!String(err.message).startsWith('worker crashed')) {
        process.stderr.write(`node agent ${run}: ${err.message}\n`);
      } else {
        totals.crashes += 1;
      }
    }
  }
  totals.failed += 1;
}

try {
  await Promise.all(Array.from({ length: totals.runs }, (_, i) => oneRun(i)));
} finally {
  client.close();
}
process.stdout.write(`${JSON.stringify(totals)}\n`);
