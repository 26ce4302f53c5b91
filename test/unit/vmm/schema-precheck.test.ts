import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import { surelyValid } from '../../../src/vmm/schema-precheck.js';
import { machineConfigSchema } from '../../../src/vmm/config.js';

// Values of every kind for every key: right and wrong types, edge lengths, patterns that
// almost match, numbers at and beyond the bounds, control characters, astral characters.
const CANDIDATES: unknown[] = [
  '', 'x', 'vmlinuz', '512M', '2G', ' 1.5 g ', '1GiB', '12Q', 'hugetlbfs:', 'hugetlbfs:/dev/hugepages', 'memfd',
  'memfd2', 'file:/tmp/c', 'file:', 'stdio', 'none', 'socket:/run/s', 'tty', 'serial', 'virtio', 'host',
  'rate=1/1', '\u0001name', 'na\u001fme', '\u{1F600}', 0, 1, 1.5, 8, 255, 256, -1, 2 ** 40, true, false, null,
  [], ['a'], [''], [1], ['unix:/x', 3], {}, { a: 1 },
];

function configs(): unknown[] {
  const keys = Object.keys(machineConfigSchema.properties);
  const out: unknown[] = [{}, [], 'string', 7, null, { unknownKey: 1 }, { kernel: 'k', cpu_count: 2 }];
  for (const key of keys) {
    for (const value of CANDIDATES) out.push({ kernel: 'vmlinuz', [key]: value });
  }
  out.push({ kernel: 'vmlinuz', cpus: 8, memory: '2G', thp: false, ksm: true, console: 'file:/tmp/c', qmp: ['tcp:127.0.0.1:4444'] });
  return out;
}

test('the pre-check never accepts a config ajv rejects', () => {
  const validate = new Ajv({ allErrors: true, strict: true }).compile(machineConfigSchema);
  let accepted = 0;
  for (const config of configs()) {
    if (!surelyValid(machineConfigSchema, config)) continue;
    accepted++;
    assert.equal(validate(config), true, `pre-check accepted ${JSON.stringify(config)}, ajv rejects it`);
  }
  assert.ok(accepted > 50, `only ${accepted} configs passed the pre-check`);
});

test('the pre-check accepts what tsvirt run usually gets', () => {
  const typical = [
    { kernel: 'vmlinuz', initrd: 'initrd.gz', append: 'console=ttyS0 quiet', memory: '256M', cpus: 1, console: 'stdio' },
    { kernel: 'vmlinuz', memory: '2G', thp: false, ksm: false, memoryBackend: 'hugetlbfs:/dev/hugepages', cpu: 'host' },
    { kernel: 'k', disks: ['disk.qcow2,format=qcow2'], channels: ['name=a,path=/run/a'], rng: true, consoleDevice: 'virtio' },
    { kernel: 'k', memory: 1073741824, noReboot: true, name: 'vm 1', qmp: ['unix:/run/q,server=on,wait=off'] },
  ];
  for (const config of typical) assert.equal(surelyValid(machineConfigSchema, config), true, JSON.stringify(config));
});

test('the pre-check declines keywords and forms it does not know', () => {
  assert.equal(surelyValid({ type: 'string', format: 'email' }, 'a@b'), false);
  assert.equal(surelyValid({ type: ['string', 'null'] }, 'a'), false);
  assert.equal(surelyValid({ type: 'object', additionalProperties: { type: 'string' } }, { a: 'b' }), false);
  assert.equal(surelyValid({ enum: [{ a: 1 }] }, { a: 1 }), false);
  assert.equal(surelyValid({ type: 'string', minLength: 2 }, '\u{1F600}'), false, 'one code point, two UTF-16 units');
});

test('a valid config is checked without loading ajv; an invalid one loads it for the message', () => {
  const config = fileURLToPath(new URL('../../../src/vmm/config.js', import.meta.url));
  const probe = (value: unknown): { ajvLoaded: boolean; error: string | null } => {
    const script = `
      import { createRequire } from 'node:module';
      const { validateConfig } = await import(${JSON.stringify(config)});
      let error = null;
      try { validateConfig(${JSON.stringify(value)}); } catch (err) { error = err.message; }
      const cache = createRequire(import.meta.url).cache;
      const ajvLoaded = Object.keys(cache).some((path) => path.includes('/node_modules/ajv/'));
      process.stdout.write(JSON.stringify({ ajvLoaded, error }));`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout) as { ajvLoaded: boolean; error: string | null };
  };
  assert.deepEqual(probe({ kernel: 'vmlinuz', memory: '256M', cpus: 2 }), { ajvLoaded: false, error: null });
  assert.deepEqual(probe({ kernel: 'vmlinuz', cpus: 0 }), { ajvLoaded: true, error: 'config: cpus: must be >= 1' });
});
