// The sidecar the tests talk to: $CHECKPOINT_SIDECAR_URL when the caller started one (the
// pytest wrapper does, over a private Valkey), else one started here with an embedded Valkey
// (`python -m sidecar serve --embedded`, Python from $PYTHON, default python3).
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

export async function startSidecar() {
  if (process.env.CHECKPOINT_SIDECAR_URL) {
    return { url: process.env.CHECKPOINT_SIDECAR_URL, stop: async () => {} };
  }
  const python = process.env.PYTHON ?? 'python3';
  const child = spawn(python, ['-m', 'sidecar', 'serve', '--embedded', '--port', '0', '--api-port', '0'], {
    cwd: ROOT,
    env: { ...process.env, PYTHONPATH: ROOT },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const url = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`no "api" line from the sidecar: ${out}`)), 30000);
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const match = out.match(/^api (\S+) \(/m);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
    child.on('exit', (code) => reject(new Error(`sidecar exited with ${code}: ${out}`)));
  });
  child.stdout.resume();
  return {
    url,
    stop: () => new Promise((resolve) => {
      child.on('exit', resolve);
      child.kill('SIGTERM');
    }),
  };
}

/** A fresh run id per test, so tests never share keys. */
export function uniqueRun(label) {
  return `${label}-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
}
