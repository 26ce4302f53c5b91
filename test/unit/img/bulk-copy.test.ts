// An uncompressed convert run from the command line turns V8's optimizing compiler off (its
// background compilations cost a short copy more than they save) once it has copied some
// data (32 MiB); a compressed one, a nearly empty one, and the library entry point leave the
// process's settings alone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runImg } from '../../../src/img/main.js';
import { BufferIO } from '../../../src/img/io.js';
import { RecordingIO } from './recording-io.js';

/** More data than a convert copies before it asks for the bulk-copy set-up. */
const BULK_SOURCE_BYTES = 40 << 20;


test('convert asks for the bulk-copy set-up once it has copied enough data, unless it compresses', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-bulk-'));
  try {
    const source = join(dir, 'src.raw');
    writeFileSync(source, Buffer.alloc(BULK_SOURCE_BYTES, 7));
    const plain = new RecordingIO();
    assert.equal(await runImg(['convert', '-f', 'raw', '-O', 'qcow2', source, join(dir, 'a.qcow2')], plain), 0, plain.stderr);
    assert.equal(plain.bulkCopies, 1);
    // A small copy never gets there: it would pay for the switch and gain nothing.
    const small = join(dir, 'small.raw');
    writeFileSync(small, Buffer.alloc(1 << 20, 7));
    const quick = new RecordingIO();
    assert.equal(await runImg(['convert', '-f', 'raw', '-O', 'qcow2', small, join(dir, 'c.qcow2')], quick), 0, quick.stderr);
    assert.equal(quick.bulkCopies, 0);
    const compressed = new RecordingIO();
    assert.equal(await runImg(['convert', '-c', '-f', 'raw', '-O', 'qcow2', source, join(dir, 'b.qcow2')], compressed), 0, compressed.stderr);
    assert.equal(compressed.bulkCopies, 0);
    // The library's own IO has no hook: converting through it changes nothing process-wide.
    assert.equal((new BufferIO() as { bulkCopyOnly?: unknown }).bulkCopyOnly, undefined);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the command line\'s bulk-copy set-up keeps V8 from optimizing functions', () => {
  const io = fileURLToPath(new URL('../../../src/img/io.js', import.meta.url));
  // %GetOptimizationStatus bit 4 (16): the function runs optimized code.
  const probe = (hook: boolean, restored = false): number => {
    const script = `import { processIO, restoreCompilerFlags } from ${JSON.stringify(io)};
      ${hook ? 'processIO.bulkCopyOnly();' : ''}
      ${restored ? 'restoreCompilerFlags();' : ''}
      function hot(x) { return x * 2 + 1; }
      %PrepareFunctionForOptimization(hot); hot(1); hot(2);
      %OptimizeFunctionOnNextCall(hot); hot(3);
      console.log(%GetOptimizationStatus(hot));`;
    const r = spawnSync(process.execPath, ['--allow-natives-syntax', '--input-type=module', '-e', script], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return Number(r.stdout.trim());
  };
  assert.notEqual(probe(false) & 16, 0, 'control: without the hook the function is optimized');
  assert.equal(probe(true) & 16, 0);
  assert.notEqual(probe(true, true) & 16, 0, 'restoreCompilerFlags puts the optimizer back');
});

// V8 refuses a code cache made under other flags than the running ones: a cache written while
// the optimizer was off would be refused, and written again, by every convert after it.
test('an uncompressed convert from the command line keeps the code cache it wrote', (t) => {
  const dist = fileURLToPath(new URL('../../../', import.meta.url));
  const bundle = join(dist, 'src/vmm/img.bundle.cjs');
  if (!existsSync(bundle)) {
    t.skip('no img bundle in this build');
    return;
  }
  const { codeCacheFile } = createRequire(import.meta.url)(join(dist, 'src/vmm/bundles.cjs')) as typeof import('../../../src/vmm/bundles.cjs');
  const cache = codeCacheFile(bundle, 'convert');
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-bulk-cache-'));
  try {
    const source = join(dir, 'src.raw');
    // Enough data that the convert switches the optimizer off before the cache is written.
    writeFileSync(source, Buffer.alloc(BULK_SOURCE_BYTES, 7));
    const convert = (): void => {
      rmSync(join(dir, 'out.qcow2'), { force: true });
      const r = spawnSync(process.execPath, [join(dist, 'src/cli/tsvirt.cjs'), 'img', 'convert', '-f', 'raw', '-O', 'qcow2', source, join(dir, 'out.qcow2')], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
    };
    convert(); // writes the cache if no earlier run did
    convert();
    const before = statSync(cache);
    convert();
    const after = statSync(cache);
    // A cache written again is a new file (written aside, then renamed over the old one).
    assert.deepEqual([after.ino, after.mtimeMs], [before.ino, before.mtimeMs]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
