// The FFI loaded straight from koffi's native addon must be the very addon (same module
// instance) the koffi package would pick, and the package's own way in must keep working.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { koffi } from '../../../src/kvm/ffi.js';

const FFI_MODULE = new URL('../../../src/kvm/ffi.js', import.meta.url).href;

test('the addon loaded directly is the one the koffi package loads', async () => {
  const fromPackage = (await import('koffi')).default;
  assert.equal(koffi, fromPackage, 'one addon instance, whichever way it came');
  const version = (koffi as unknown as { version: string }).version;
  assert.match(version, /^\d+\.\d+\.\d+/);
  const getpid = koffi.load('libc.so.6').func('int getpid(void)') as () => number;
  assert.equal(getpid(), process.pid);
});

test('with the package forced (TSVIRT_KOFFI_PACKAGE), calls still work', () => {
  const script = `import(${JSON.stringify(FFI_MODULE)}).then(({ koffi }) => {
    const getpid = koffi.load('libc.so.6').func('int getpid(void)');
    process.stdout.write(String(getpid() === process.pid));
  });`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, TSVIRT_KOFFI_PACKAGE: '1' } });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, 'true');
});

test('on glibc x86-64 the direct path is the one taken', { skip: process.arch !== 'x64' || !existsSync('/lib64/ld-linux-x86-64.so.2') }, () => {
  // The addon's own module record is in the require cache under its path, not the package's.
  const script = `import(${JSON.stringify(FFI_MODULE)}).then(() => {
    const keys = Object.keys(require.cache);
    process.stdout.write(JSON.stringify({ addon: keys.some((k) => k.endsWith('/linux_x64/koffi.node')), pkg: keys.some((k) => /koffi\\/index\\.cjs$/.test(k)) }));
  });`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { addon: true, pkg: false });
});
