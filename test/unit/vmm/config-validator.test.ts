import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import { createRequire } from 'node:module';
import { GENERATED_VALIDATOR_PATH, machineConfigSchema, schemaValidator } from '../../../src/vmm/config.js';

// Values of every kind for every key: right and wrong types, edge lengths, patterns that
// almost match, numbers at and beyond the bounds, control characters, astral characters.
const CANDIDATES: unknown[] = [
  '', 'x', 'vmlinuz', '512M', '2G', ' 1.5 g ', '1GiB', '12Q', 'hugetlbfs:', 'hugetlbfs:/dev/hugepages', 'memfd',
  'memfd2', 'file:/tmp/c', 'file:', 'stdio', 'none', 'socket:/run/s', 'tty', 'serial', 'virtio', 'host',
  'rate=1/1', '\u0001name', 'na\u001fme', '\u{1F600}', 0, 1, 1.5, 8, 255, 256, -1, 2 ** 40, true, false, null,
  [], ['a'], [''], [1], ['unix:/x', 3], {}, { a: 1 },
];

function configs(): unknown[] {
  const out: unknown[] = [{}, [], 'string', 7, null, { unknownKey: 1 }, { kernel: 'k', cpu_count: 2 }, { a: 1, b: 2, cpus: 0 }];
  for (const key of Object.keys(machineConfigSchema.properties)) {
    for (const value of CANDIDATES) out.push({ kernel: 'vmlinuz', [key]: value });
  }
  out.push({ kernel: 'vmlinuz', cpus: 8, memory: '2G', thp: false, ksm: true, console: 'file:/tmp/c', qmp: ['tcp:127.0.0.1:4444'] });
  return out;
}

test('the build generated the validator from the current schema', () => {
  const generated = createRequire(import.meta.url)(GENERATED_VALIDATOR_PATH) as { schemaJson: string; validate: unknown };
  assert.equal(generated.schemaJson, JSON.stringify(machineConfigSchema), 'run npm run build: the generated validator is stale');
  assert.equal(schemaValidator(), generated.validate, 'config.ts uses the generated validator');
});

test('the generated validator gives ajv\'s verdict and errors for every config', () => {
  const compiled = new Ajv({ allErrors: true, strict: true }).compile(machineConfigSchema);
  const generated = schemaValidator();
  let rejected = 0;
  for (const config of configs()) {
    const verdict = generated(config);
    assert.equal(verdict, compiled(config), JSON.stringify(config));
    assert.deepEqual(generated.errors ?? null, compiled.errors ?? null, JSON.stringify(config));
    if (!verdict) rejected++;
  }
  assert.ok(rejected > 100, `only ${rejected} configs rejected`);
});

test('configs are checked, and bad ones worded, without loading the schema compiler', () => {
  const config = fileURLToPath(new URL('../../../src/vmm/config.js', import.meta.url));
  const probe = (value: unknown): { compilerLoaded: boolean; error: string | null } => {
    const script = `
      import { createRequire } from 'node:module';
      const { validateConfig } = await import(${JSON.stringify(config)});
      let error = null;
      try { validateConfig(${JSON.stringify(value)}, 'vm.json'); } catch (err) { error = err.message; }
      const cache = createRequire(import.meta.url).cache;
      const compilerLoaded = Object.keys(cache).some((path) => /node_modules[/]ajv[/]dist[/](ajv|core|compile)/.test(path));
      process.stdout.write(JSON.stringify({ compilerLoaded, error }));`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout) as { compilerLoaded: boolean; error: string | null };
  };
  assert.deepEqual(probe({ kernel: 'vmlinuz', memory: '256M', cpus: 2 }), { compilerLoaded: false, error: null });
  assert.deepEqual(probe({ kernel: 'vmlinuz', cpus: 0 }), { compilerLoaded: false, error: 'vm.json: cpus: must be >= 1' });
  assert.deepEqual(probe({ kernel: 'vmlinuz', disk: ['a'] }), { compilerLoaded: false, error: 'vm.json: unknown key "disk"' });
  assert.deepEqual(probe({ name: '\u0007' }), { compilerLoaded: false, error: 'vm.json: name: must be printable text' });
});
