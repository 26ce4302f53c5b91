import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, loadConfigFile, memoryBytes, parseMemoryOption, validateConfig } from '../../../src/vmm/config.js';
import { formatSize, parseSize } from '../../../src/vmm/size.js';

const oneLine = (fn: () => unknown, pattern: RegExp): void => {
  assert.throws(fn, (err: Error) => {
    assert.ok(err instanceof ConfigError || err.name === 'SizeError', `unexpected ${err.name}`);
    assert.match(err.message, pattern);
    assert.equal(err.message.includes('\n'), false, 'one line');
    return true;
  });
};

test('sizes: binary units, bare numbers in MiB, fractions', () => {
  assert.equal(parseSize('512M'), 512n * 1024n * 1024n);
  assert.equal(parseSize('2G'), 2n * 1024n ** 3n);
  assert.equal(parseSize('2g'), 2n * 1024n ** 3n);
  assert.equal(parseSize('1.5G'), 1536n * 1024n * 1024n);
  assert.equal(parseSize('4096K'), 4n * 1024n * 1024n);
  assert.equal(parseSize('256'), 256n * 1024n * 1024n);
  assert.equal(parseSize('1GiB'), 1024n ** 3n);
  assert.equal(parseSize('100B'), 100n);
  assert.throws(() => parseSize('lots', 'memory size'), /memory size "lots" is not a size/);
  assert.throws(() => parseSize('2X'), /not a size/);
  assert.throws(() => parseSize('1.1B'), /whole number of bytes/);
  assert.equal(formatSize(1536n * 1024n * 1024n), '1536 MiB');
  assert.equal(formatSize(2n * 1024n ** 3n), '2 GiB');
});

test('memory size rules: page multiple and minimum', () => {
  assert.equal(memoryBytes({}), 512n * 1024n * 1024n, 'default 512M');
  assert.equal(memoryBytes({ memory: '1G' }), 1024n ** 3n);
  assert.equal(memoryBytes({ memory: 64 * 1024 * 1024 }), 64n * 1024n * 1024n);
  oneLine(() => memoryBytes({ memory: '1M' }), /below the 16 MiB minimum/);
  oneLine(() => memoryBytes({ memory: 16 * 1024 * 1024 + 1 }), /multiple of the 4 KiB page size/);
});

test('schema: unknown key and bad values give one-line errors naming them', () => {
  oneLine(() => validateConfig({ kernel: 'k', cpu_count: 2 }, 'vm.json'), /^vm\.json: unknown key "cpu_count"$/);
  oneLine(() => validateConfig({ cpus: 0 }, 'vm.json'), /^vm\.json: cpus: must be >= 1$/);
  oneLine(() => validateConfig({ cpus: 256 }), /^config: cpus: must be <= 255$/);
  oneLine(() => validateConfig({ cpus: 1.5 }), /cpus: must be integer/);
  oneLine(() => validateConfig({ memory: 'huge' }), /memory: must be a size such as 512M or 2G/);
  oneLine(() => validateConfig({ memory: '3M' }), /memory: memory size 3M is below/);
  oneLine(() => validateConfig({ console: 'tty' }), /console: must be "stdio", "none", "file:PATH" or "socket:PATH"/);
  oneLine(() => validateConfig({ memoryBackend: 'hugetlbfs:' }), /memoryBackend: must be "memfd" or "hugetlbfs:PATH"/);
  oneLine(() => validateConfig({ noReboot: 'yes' }), /noReboot: must be boolean/);
  oneLine(() => validateConfig({ kernelCache: 'off' }), /kernelCache: must be boolean/);
  oneLine(() => validateConfig({ qmp: ['unix:/x', 3] }), /qmp\.1: must be string/);
  oneLine(() => validateConfig([]), /config: must be object/);
  const ok = validateConfig({ kernel: 'vmlinuz', cpus: 8, memory: '2G', thp: false, console: 'file:/tmp/c', qmp: ['tcp:127.0.0.1:4444'] });
  assert.equal(ok.cpus, 8);
});

test('config files: errors name the file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-config-'));
  const bad = join(dir, 'bad.json');
  writeFileSync(bad, '{"kernel": "k", "colour": "blue"}');
  oneLine(() => loadConfigFile(bad), new RegExp(`^${bad.replace(/[.]/g, '\\.')}: unknown key "colour"$`));
  const broken = join(dir, 'broken.json');
  writeFileSync(broken, '{"kernel": ');
  oneLine(() => loadConfigFile(broken), /broken\.json: not valid JSON/);
  oneLine(() => loadConfigFile(join(dir, 'missing.json')), /missing\.json: cannot read config file: ENOENT/);
  const good = join(dir, 'good.json');
  writeFileSync(good, '{"kernel": "k", "cpus": 2, "memory": "1G"}');
  assert.deepEqual(loadConfigFile(good), { kernel: 'k', cpus: 2, memory: '1G' });
});

test('--memory option: size with thp/ksm switches', () => {
  assert.deepEqual(parseMemoryOption('2G'), { memory: '2G' });
  assert.deepEqual(parseMemoryOption('2G,thp=off,ksm=on'), { memory: '2G', thp: false, ksm: true });
  oneLine(() => parseMemoryOption('2G,lock=on'), /--memory: unknown option "lock"/);
  oneLine(() => parseMemoryOption('2G,thp=maybe'), /--memory: thp must be on or off/);
});
