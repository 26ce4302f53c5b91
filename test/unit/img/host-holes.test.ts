// Looking through a qcow2 data extent to its host file: clusters of a metadata-preallocated
// image sit over holes and read as zeroes, so their status becomes zero (convert then skips
// reading them, as qemu-img does); once written, the same clusters are plain data again. A
// file that cannot say where its holes are is all data.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createQcow2, openImage } from '../../../src/block/index.js';
import { HostHoleFiles, lookThrough } from '../../../src/img/extents.js';
import { HostHoles } from '../../../src/img/host-holes.js';

const MiB = 1 << 20;

test('data over a hole in the host file is marked zero; written data is not', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-holes-'));
  const holes = new HostHoleFiles();
  try {
    const file = join(dir, 'pre.qcow2');
    await createQcow2(file, { size: BigInt(4 * MiB), preallocation: 'metadata' });
    const img = await openImage(file);
    await img.writev(BigInt(MiB), [new Uint8Array(64 * 1024).fill(9)]);
    const look = async (offset: number, length: number) => {
      const status = await img.blockStatus(BigInt(offset), BigInt(length));
      assert.equal(status.data, true, `preallocated clusters at ${offset} report data`);
      const seen = lookThrough(img, status, status.length, holes);
      return { length: Number(seen), zero: status.zero };
    };
    // The hole ends where the written cluster's host range starts (clusters are laid out in order).
    assert.deepEqual(await look(0, 4 * MiB), { length: MiB, zero: true });
    assert.deepEqual(await look(MiB, 64 * 1024), { length: 64 * 1024, zero: false });
    assert.deepEqual(await look(MiB + 64 * 1024, MiB), { length: MiB, zero: true });
    await img.close();
  } finally {
    holes.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a file whose holes cannot be asked about counts as data, never as zeroes', () => {
  // seq_file (procfs) refuses SEEK_DATA with EINVAL: nothing is known, so nothing may be skipped.
  const h = new HostHoles('/proc/self/status');
  try {
    assert.deepEqual(h.probe(0n, 100n), { hole: false, length: 100n });
  } finally {
    h.close();
  }
});
