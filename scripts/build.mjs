// `npm run build`: compile with tsc, then generate what the compiled code loads (the config
// validator) and bundle `tsvirt run`'s start-up path (scripts/bundle.mjs). tsc emits even when a file elsewhere has type errors, so the generation runs
// regardless and the build still fails with tsc's status.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import process from 'node:process';
import { fileURLToPath, URL } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
const compiled = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.json', ...process.argv.slice(2)], { cwd: root, stdio: 'inherit' });
const steps = [compiled];
for (const script of ['generate-config-validator.mjs', 'bundle.mjs']) {
  steps.push(spawnSync(process.execPath, [fileURLToPath(new URL(script, import.meta.url))], { cwd: root, stdio: 'inherit' }));
}
process.exit(steps.find((s) => s.status !== 0)?.status ?? (steps.some((s) => s.signal) ? 1 : 0));
