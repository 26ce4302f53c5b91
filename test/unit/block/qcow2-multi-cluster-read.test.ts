// Reads that span several clusters of one cached L2 table take a path of their own in the
// qcow2 driver (no per-cluster objects, clusters adjacent in the file read as one). These
// check it against the data written, over every kind of standard entry, with buffers that
// do not line up with clusters; that a backing file or a compressed cluster inside such a
// read still comes out right; and that a bad entry in the middle fails the whole read, naming
// its guest cluster, before any byte is read.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { openImage, createQcow2, createRaw, BlockError, Qcow2Image } from '../../../src/block/index.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, tmpfsDir, rng, randomBytes, firstDifference } from './helpers.js';

const CLUSTER = 4096;

/** Buffers of uneven sizes covering `length` bytes, and a way to join what was read into them. */
function ragged(length: number): { buffers: Uint8Array[]; joined: () => Uint8Array } {
  const sizes = [1000, 5000, 1, 7000, 2];
  const buffers: Uint8Array[] = [];
  for (let left = length, i = 0; left > 0; i++) {
    const n = Math.min(left, sizes[i % sizes.length]!);
    buffers.push(new Uint8Array(n).fill(0xaa));
    left -= n;
  }
  return { buffers, joined: () => Buffer.concat(buffers) };
}

test('multi-cluster reads: data, zero clusters, holes and clusters far apart in the file', async () => {
  const t = tempDir();
  try {
    const path = t.path('mix.qcow2');
    await createQcow2(path, { size: 64n * BigInt(CLUSTER), clusterSize: CLUSTER });
    const shadow = new Uint8Array(64 * CLUSTER);
    const next = rng(11);
    const img = await openImage(path);
    // Clusters 0-2 and 5 written in an order that leaves 5 away from 2 in the file, 8 after 5.
    for (const [at, len] of [[5 * CLUSTER, CLUSTER], [0, 3 * CLUSTER], [8 * CLUSTER + 100, 2 * CLUSTER]] as const) {
      const data = randomBytes(next, len);
      await img.writev(BigInt(at), [data]);
      shadow.set(data, at);
    }
    // Cluster 1 becomes a zero cluster (the zero flag); 3, 4, 6, 7 stay unallocated.
    await img.writeZeroes(BigInt(CLUSTER), BigInt(CLUSTER), { mayUnmap: false });
    shadow.fill(0, CLUSTER, 2 * CLUSTER);
    await img.flush();
    // Warm the table, then read ranges that start and end inside clusters.
    await img.readv(0n, [new Uint8Array(512)]);
    for (const [at, len] of [[100, 11 * CLUSTER], [CLUSTER - 1, 2], [2 * CLUSTER + 5, 7 * CLUSTER], [0, 64 * CLUSTER]] as const) {
      const r = ragged(len);
      await img.readv(BigInt(at), r.buffers);
      assert.equal(firstDifference(r.joined(), shadow.subarray(at, at + len)), -1, `read at ${at} +${len}`);
    }
    await img.close();
  } finally {
    t.cleanup();
  }
});

test('multi-cluster reads over a backing file and a compressed cluster come out right', async () => {
  const t = tempDir();
  try {
    const base = t.path('base.raw');
    await createRaw(base, { size: 16n * BigInt(CLUSTER) });
    const baseData = randomBytes(rng(5), 16 * CLUSTER);
    writeFileSync(base, baseData);
    const top = t.path('top.qcow2');
    await createQcow2(top, { backingFile: base, backingFormat: 'raw', clusterSize: CLUSTER });
    const img = (await openImage(top)) as Qcow2Image;
    const own = randomBytes(rng(6), CLUSTER);
    await img.writev(BigInt(2 * CLUSTER), [own]);
    const packed = new Uint8Array(CLUSTER).fill(9);
    await img.writeCompressed(BigInt(4 * CLUSTER), packed);
    const expected = Uint8Array.from(baseData);
    expected.set(own, 2 * CLUSTER);
    expected.set(packed, 4 * CLUSTER);
    await img.readv(0n, [new Uint8Array(1)]);
    const r = ragged(8 * CLUSTER);
    await img.readv(0n, r.buffers);
    assert.equal(firstDifference(r.joined(), expected.subarray(0, 8 * CLUSTER)), -1);
    await img.close();
  } finally {
    t.cleanup();
  }
});

/**
 * A 32-cluster image holding `data` (8 clusters) from its start, and the file's bytes with
 * the offsets of its L1 table and of the one L2 table, for tests that corrupt entries.
 */
async function imageOfEightClusters(path: string, data: Uint8Array): Promise<{ bytes: Buffer; l1: number; l2: number }> {
  await createQcow2(path, { size: 32n * BigInt(CLUSTER), clusterSize: CLUSTER });
  const img = await openImage(path);
  await img.writev(0n, [data]);
  await img.close();
  const bytes = readFileSync(path);
  const l1 = Number(bytes.readBigUInt64BE(40));
  return { bytes, l1, l2: Number(bytes.readBigUInt64BE(l1) & 0x00fffffffffffe00n) };
}

test('a bad entry inside a multi-cluster read fails it, naming the guest cluster, before anything is read', async () => {
  const t = tempDir();
  try {
    const path = t.path('bad.qcow2');
    const { bytes: b, l2 } = await imageOfEightClusters(path, randomBytes(rng(7), 8 * CLUSTER));
    b.writeBigUInt64BE((1n << 63n) | (1n << 45n), l2 + 5 * 8); // guest cluster 5: far past the end
    b.writeBigUInt64BE((1n << 63n) | BigInt(l2 + 512), l2 + 6 * 8); // guest cluster 6: not cluster-aligned
    writeFileSync(path, b);
    const bad = await openImage(path, { readOnly: true });
    await bad.readv(0n, [new Uint8Array(1)]); // the table is cached: the multi-cluster path runs
    for (const [at, pattern] of [[0, /guest cluster 5 points past the end of the file/], [6 * CLUSTER, /guest cluster 6 points at unaligned offset/]] as const) {
      const r = ragged(2 * CLUSTER + (at === 0 ? 6 * CLUSTER : 0));
      await assert.rejects(bad.readv(BigInt(at), r.buffers), (err: Error) => {
        assert.ok(err instanceof BlockError && err.message.startsWith(path) && !err.message.includes('\n'), err.message);
        assert.match(err.message, pattern);
        return true;
      });
      assert.ok(r.joined().every((x) => x === 0xaa), 'no byte was read into the buffers');
    }
    await bad.close();
  } finally {
    t.cleanup();
  }
});

test('a read inside one cluster whose table is cached reads no data through a bad entry', async () => {
  const t = tempDir();
  try {
    const path = t.path('single.qcow2');
    const data = randomBytes(rng(9), 8 * CLUSTER);
    const { bytes: b, l1, l2 } = await imageOfEightClusters(path, data);
    const copied = 1n << 63n;
    b.writeBigUInt64BE(copied | (1n << 45n), l2 + 1 * 8); // past the end of the file
    b.writeBigUInt64BE(copied | BigInt(l2 + 512), l2 + 2 * 8); // not cluster-aligned
    b.writeBigUInt64BE(copied | BigInt(l1), l2 + 3 * 8); // onto the L1 table
    b.writeBigUInt64BE(0n, l2 + 4 * 8); // cleared: unallocated
    b.writeBigUInt64BE(copied | (1n << 56n) | b.readBigUInt64BE(l2 + 5 * 8), l2 + 5 * 8); // a reserved bit set
    writeFileSync(path, b);
    const bad = await openImage(path, { readOnly: true });
    await bad.readv(0n, [new Uint8Array(1)]); // the table is cached from here on
    for (const [gc, pattern] of [[1, /guest cluster 1 points past the end of the file/], [2, /guest cluster 2 points at unaligned offset/], [3, /guest cluster 3 points into the header, L1 table or refcount table/]] as const) {
      const buf = new Uint8Array(512).fill(0xaa);
      await assert.rejects(bad.readv(BigInt(gc * CLUSTER + 1024), [buf]), pattern);
      assert.ok(buf.every((x) => x === 0xaa), `cluster ${gc}: no byte was read`);
    }
    const zero = new Uint8Array(512).fill(0xaa);
    await bad.readv(BigInt(4 * CLUSTER), [zero]);
    assert.ok(zero.every((x) => x === 0), 'a cleared entry reads as zeroes');
    // A reserved bit leaves the shortcut to the general lookup, which reads the cluster the
    // entry's offset names (the bit ignored, as the walk always did).
    const reserved = new Uint8Array(512).fill(0xaa);
    await bad.readv(BigInt(5 * CLUSTER), [reserved]);
    assert.deepEqual(reserved, data.subarray(5 * CLUSTER, 5 * CLUSTER + 512));
    await bad.close();
  } finally {
    t.cleanup();
  }
});

test('reads done on the spot (readvNow) give what readv gives; anything needing more is left to readv', async (t) => {
  const memory = tmpfsDir();
  if (!memory) return t.skip('no memory file system here for reads on the spot');
  const dir = mkdtempSync(join(memory, 'tsvirt-spot-'));
  try {
    const path = join(dir, 'spot.qcow2');
    await createQcow2(path, { size: 64n * BigInt(CLUSTER), clusterSize: CLUSTER });
    const shadow = new Uint8Array(64 * CLUSTER);
    const writer = await openImage(path);
    for (const [at, len] of [[5 * CLUSTER, CLUSTER], [0, 3 * CLUSTER], [8 * CLUSTER + 100, 2 * CLUSTER]] as const) {
      const data = randomBytes(rng(at + 1), len);
      await writer.writev(BigInt(at), [data]);
      shadow.set(data, at);
    }
    await writer.writeZeroes(BigInt(CLUSTER), BigInt(CLUSTER), { mayUnmap: false });
    shadow.fill(0, CLUSTER, 2 * CLUSTER);
    await writer.close();
    const img = (await openImage(path, { memoryIoInline: true })) as Qcow2Image;
    const cold = ragged(CLUSTER);
    assert.equal(img.readvNow(0n, cold.buffers), false, 'the table is not cached yet');
    assert.ok(cold.joined().every((x) => x === 0xaa), 'nothing was read');
    await img.readv(0n, [new Uint8Array(1)]);
    // (Pieces of under 64 bytes are never done on the spot: the file leaves them to its usual path.)
    for (const [at, len] of [[100, 11 * CLUSTER], [CLUSTER - 100, 200], [5 * CLUSTER + 7, 100], [0, 64 * CLUSTER]] as const) {
      const r = ragged(len);
      assert.equal(img.readvNow(BigInt(at), r.buffers), true, `read at ${at} +${len} on the spot`);
      assert.equal(firstDifference(r.joined(), shadow.subarray(at, at + len)), -1, `read at ${at} +${len}`);
    }
    assert.equal(img.readvNow(BigInt(63 * CLUSTER), [new Uint8Array(CLUSTER + 1)]), false, 'past the end of the disk');
    await img.close();
    // A bad entry: not on the spot, buffers untouched, and readv still reports it.
    const { bytes: b, l2 } = await imageOfEightClusters(path, randomBytes(rng(7), 8 * CLUSTER));
    b.writeBigUInt64BE((1n << 63n) | (1n << 45n), l2 + 5 * 8);
    writeFileSync(path, b);
    const bad = (await openImage(path, { readOnly: true, memoryIoInline: true })) as Qcow2Image;
    await bad.readv(0n, [new Uint8Array(1)]);
    const r = ragged(8 * CLUSTER);
    assert.equal(bad.readvNow(0n, r.buffers), false);
    assert.ok(r.joined().every((x) => x === 0xaa), 'no byte was read into the buffers');
    await assert.rejects(bad.readv(0n, r.buffers), /guest cluster 5 points past the end of the file/);
    await bad.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('reads on the spot leave compressed clusters and backing files to readv', async () => {
  const t = tempDir();
  try {
    const base = t.path('base.raw');
    await createRaw(base, { size: 16n * BigInt(CLUSTER) });
    writeFileSync(base, randomBytes(rng(5), 16 * CLUSTER));
    const top = t.path('top.qcow2');
    await createQcow2(top, { backingFile: base, backingFormat: 'raw', clusterSize: CLUSTER });
    const img = (await openImage(top)) as Qcow2Image;
    await img.writev(BigInt(2 * CLUSTER), [randomBytes(rng(6), CLUSTER)]);
    await img.writeCompressed(BigInt(4 * CLUSTER), new Uint8Array(CLUSTER).fill(9));
    await img.readv(0n, [new Uint8Array(1)]);
    for (const at of [0, 4 * CLUSTER]) {
      const r = ragged(CLUSTER);
      assert.equal(img.readvNow(BigInt(at), r.buffers), false, `cluster ${at / CLUSTER}`);
      assert.ok(r.joined().every((x) => x === 0xaa), 'nothing was read');
    }
    await img.close();
  } finally {
    t.cleanup();
  }
});
