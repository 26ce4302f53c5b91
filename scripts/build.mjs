// `npm run build`: compile with tsc, then generate what the compiled code loads (the config
// validator). tsc emits even when a file elsewhere has type errors, so the generation runs
// regardless and the build still fails with tsc's status.
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import process from 'node:process';
import { fileURLToPath, URL } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
const compiled = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.json', ...process.argv.slice(2)], { cwd: root, stdio: 'inherit' });
const generated = spawnSync(process.execPath, [fileURLToPath(new URL('generate-config-validator.mjs', import.meta.url))], { cwd: root, stdio: 'inherit' });
process.exit(compiled.status || generated.status || (compiled.signal || generated.signal ? 1 : 0));
