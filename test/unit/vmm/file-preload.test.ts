// The kernel and initrd reads that `tsvirt run` starts before the VMM has loaded.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { preloadFile, takePreloadedFile } from '../../../src/vmm/file-preload.js';

test('a preloaded file is handed out once, whole', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-preload-'));
  try {
    const path = join(dir, 'kernel');
    const content = Buffer.alloc(3 << 20);
    for (let i = 0; i < content.length; i += 4096) content.writeUInt32LE(i, i);
    writeFileSync(path, content);
    preloadFile(path);
    preloadFile(path); // a second start is the same read
    const read = takePreloadedFile(path);
    assert.ok(read, 'the read was started');
    assert.deepEqual(Buffer.from(await read), content);
    assert.equal(takePreloadedFile(path), undefined, 'handed out once');
    const empty = join(dir, 'empty');
    writeFileSync(empty, '');
    preloadFile(empty);
    assert.equal((await takePreloadedFile(empty)!).length, 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a preloaded file that cannot be read rejects with its error code when taken, and is harmless when not', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-preload-'));
  try {
    preloadFile(join(dir, 'absent'));
    await assert.rejects(takePreloadedFile(join(dir, 'absent'))!, { code: 'ENOENT' });
    preloadFile(dir);
    await assert.rejects(takePreloadedFile(dir)!, { code: 'EISDIR' });
    // Never taken: its rejection must not surface as an unhandled one (which fails this file).
    preloadFile(join(dir, 'never-taken'));
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(takePreloadedFile(join(dir, 'unknown')), undefined);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
