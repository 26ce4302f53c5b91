// An uncompressed convert whose sources are read through their mappings (raw files, qcow2
// ones without a backing file) leaves the thread pool only its output's writes, and the command line then gives the pool a
// single thread (no writer spinning on the output's inode lock). Any other convert, and the
// library entry point, leave the pool as it is.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createQcow2 } from '../../../src/block/qcow2/create.js';
import { convertWritesOnly } from '../../../src/img/io-threads.js';
import { BufferIO } from '../../../src/img/io.js';
import { RecordingIO } from './recording-io.js';
import { runImg } from '../../../src/img/main.js';


test('convertWritesOnly: raw or stand-alone qcow2 regular-file sources, uncompressed, through the page cache on both sides', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-pool-'));
  try {
    const raw = join(dir, 'a.raw');
    writeFileSync(raw, Buffer.alloc(1 << 20, 1));
    const qcow2 = join(dir, 'a.qcow2');
    await createQcow2(qcow2, { size: 1n << 20n });
    const overlay = join(dir, 'overlay.qcow2');
    await createQcow2(overlay, { size: 1n << 20n, backingFile: qcow2, backingFormat: 'qcow2' });
    const plain = { sources: [raw, raw], sourceFormat: undefined, sourceCache: 'writeback' as const, targetCache: 'unsafe' as const, compress: false };
    assert.equal(convertWritesOnly(plain), true);
    assert.equal(convertWritesOnly({ ...plain, sourceFormat: 'raw', targetCache: 'writeback' }), true);
    assert.equal(convertWritesOnly({ ...plain, compress: true }), false, 'compressed');
    assert.equal(convertWritesOnly({ ...plain, sources: [raw, qcow2] }), true, 'a qcow2 source of its own');
    assert.equal(convertWritesOnly({ ...plain, sources: [raw, overlay] }), false, 'a qcow2 source with a backing file');
    assert.equal(convertWritesOnly({ ...plain, sources: [overlay], sourceFormat: 'raw' }), true, 'the same read as raw');
    assert.equal(convertWritesOnly({ ...plain, sourceFormat: 'qcow2' }), false, 'raw files read as qcow2');
    assert.equal(convertWritesOnly({ ...plain, targetCache: 'none' }), false, 'O_DIRECT output');
    assert.equal(convertWritesOnly({ ...plain, targetCache: 'writethrough' }), false, 'O_DSYNC output');
    assert.equal(convertWritesOnly({ ...plain, sourceCache: 'none' }), false, 'O_DIRECT source: no mapping');
    assert.equal(convertWritesOnly({ ...plain, sources: [join(dir, 'missing.raw')] }), false, 'a source that cannot be opened');
    assert.equal(convertWritesOnly({ ...plain, sources: [dir] }), false, 'not a regular file');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('convert asks for the one-thread pool only when its pool work is the output\'s writes', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-pool-'));
  try {
    const raw = join(dir, 'a.raw');
    writeFileSync(raw, Buffer.alloc(1 << 20, 1));
    const plain = new RecordingIO();
    assert.equal(await runImg(['convert', '-O', 'qcow2', raw, join(dir, 'b.qcow2')], plain), 0, plain.stderr);
    assert.equal(plain.writesOnly, 1);
    const compressed = new RecordingIO();
    assert.equal(await runImg(['convert', '-c', '-O', 'qcow2', raw, join(dir, 'c.qcow2')], compressed), 0, compressed.stderr);
    assert.equal(compressed.writesOnly, 0);
    const fromQcow2 = new RecordingIO();
    assert.equal(await runImg(['convert', '-O', 'raw', join(dir, 'b.qcow2'), join(dir, 'd.raw')], fromQcow2), 0, fromQcow2.stderr);
    assert.equal(fromQcow2.writesOnly, 1);
    const overlay = join(dir, 'overlay.qcow2');
    await createQcow2(overlay, { size: 1n << 20n, backingFile: join(dir, 'b.qcow2'), backingFormat: 'qcow2' });
    const fromOverlay = new RecordingIO();
    assert.equal(await runImg(['convert', '-O', 'raw', overlay, join(dir, 'e.raw')], fromOverlay), 0, fromOverlay.stderr);
    assert.equal(fromOverlay.writesOnly, 0, 'its backing file is read on the pool');
    // The library's own IO has no hook: converting through it changes nothing process-wide.
    assert.equal((new BufferIO() as { writesOnlyOnPool?: unknown }).writesOnlyOnPool, undefined);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('from the command line, such a convert runs with one pool thread; others (a backing file to read), or a size given at start, keep four', async (t) => {
  // Without a current bundle the command line goes through Node's ES module loader, which
  // starts the pool itself before any command runs.
  const { freshBundle } = createRequire(import.meta.url)(fileURLToPath(new URL('../../../src/vmm/bundles.cjs', import.meta.url))) as typeof import('../../../src/vmm/bundles.cjs');
  if (!freshBundle('img.bundle.cjs')) {
    t.skip('no current img bundle in this build');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-pool-'));
  try {
    const raw = join(dir, 'a.raw');
    writeFileSync(raw, Buffer.alloc(4 << 20, 1));
    const qcow2 = join(dir, 'a.qcow2');
    await createQcow2(qcow2, { size: 4n << 20n });
    const overlay = join(dir, 'overlay.qcow2');
    await createQcow2(overlay, { size: 4n << 20n, backingFile: qcow2, backingFormat: 'qcow2' });
    // Counts the process's threads as it exits, when its pool has done all its work.
    const preload = join(dir, 'count-threads.cjs');
    writeFileSync(preload, "process.on('exit', () => { const fs = require('fs'); fs.writeSync(2, 'threads=' + fs.readdirSync('/proc/self/task').length + '\\n'); });\n");
    const cli = fileURLToPath(new URL('../../../src/cli/tsvirt.cjs', import.meta.url));
    const threads = (source: string, env: NodeJS.ProcessEnv = {}): number => {
      const childEnv: NodeJS.ProcessEnv = { ...process.env, NODE_OPTIONS: `--require ${preload}`, ...env };
      if (!('UV_THREADPOOL_SIZE' in env)) delete childEnv.UV_THREADPOOL_SIZE;
      const r = spawnSync(process.execPath, [cli, 'img', 'convert', '-O', 'raw', source, join(dir, 'out.raw')], { encoding: 'utf8', env: childEnv });
      assert.equal(r.status, 0, r.stderr);
      const m = /threads=(\d+)/.exec(r.stderr);
      assert.ok(m, r.stderr);
      return Number(m[1]);
    };
    const usual = threads(overlay);
    // libuv's default pool has four threads: three fewer with one.
    assert.equal(threads(raw), usual - 3);
    assert.equal(threads(qcow2), usual - 3);
    assert.equal(threads(raw, { UV_THREADPOOL_SIZE: '4' }), usual, 'a size the process was started with stands');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
