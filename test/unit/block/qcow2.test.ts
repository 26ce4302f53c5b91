import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import {
  openImage, createQcow2, checkQcow2, qcow2Info, Qcow2Image, BlockError, createRaw,
  createQcow2Snapshot, listQcow2Snapshots, applyQcow2Snapshot, deleteQcow2Snapshot, setQcow2Backing, createSnapshot, listSnapshots,
} from '../../../src/block/index.js';
import { tempDir, rng, randomBytes, firstDifference, scatter } from './helpers.js';

async function readAll(filename: string, size: number): Promise<Uint8Array> {
  const img = await openImage(filename, { readOnly: true });
  const out = new Uint8Array(size);
  await img.readv(0n, [out]);
  await img.close();
  return out;
}

async function assertClean(filename: string): Promise<void> {
  const r = await checkQcow2(filename);
  assert.equal(r.corruptions, 0, `corruptions in ${filename}: ${r.messages.slice(0, 5).join('; ')}`);
  assert.equal(r.leaks, 0, `leaks in ${filename}: ${r.messages.slice(0, 5).join('; ')}`);
  assert.equal(r.checkErrors, 0);
}

/** The image reads back as `shadow`, and qcow2's check finds it clean. */
async function assertHolds(filename: string, shadow: Uint8Array, message?: string): Promise<void> {
  assert.equal(firstDifference(await readAll(filename, shadow.length), shadow), -1, message);
  await assertClean(filename);
}

/** Random writes, zeroes and discards through the driver and into a shadow; then compare. */
async function exercise(filename: string, shadow: Uint8Array, seed: number, ops: number, opts: { discards?: boolean } = {}): Promise<void> {
  const next = rng(seed);
  const img = await openImage(filename);
  const size = shadow.length;
  for (let i = 0; i < ops; i++) {
    const off = Math.floor(next() * size);
    const len = Math.min(size - off, 1 + Math.floor(next() * 200000));
    const kind = next();
    if (kind < 0.7) {
      const data = randomBytes(next, len);
      await img.writev(BigInt(off), scatter(data, next));
      shadow.set(data, off);
    } else if (kind < 0.85) {
      await img.writeZeroes(BigInt(off), BigInt(len), { mayUnmap: next() < 0.5 });
      shadow.fill(0, off, off + len);
    } else if (opts.discards !== false) {
      // Discard leaves undefined contents only in whole clusters; zero them in the shadow
      // by reading back what the image now holds there.
      await img.discard(BigInt(off), BigInt(len));
      const back = new Uint8Array(len);
      await img.readv(BigInt(off), [back]);
      for (let k = 0; k < len; k++) assert.ok(back[k] === shadow[off + k] || back[k] === 0, 'discard may only turn data into zeroes');
      shadow.set(back, off);
    }
  }
  await img.close();
}

test('qcow2 round-trips random I/O for every cluster size and refcount width', async () => {
  const t = tempDir();
  try {
    const size = 3 << 20;
    for (const clusterSize of [512, 4096, 65536, 2 * 1024 * 1024]) {
      // Every width at the default cluster size (whole-byte ones take the allocator's
      // byte-wise path, narrower ones the general one); the usual ones at the others.
      for (const refcountBits of clusterSize === 65536 ? [1, 2, 4, 8, 16, 32, 64] : [1, 8, 16, 64]) {
        const f = t.path(`c${clusterSize}-r${refcountBits}.qcow2`);
        await createQcow2(f, { size: BigInt(size), clusterSize, refcountBits });
        const shadow = new Uint8Array(size);
        await exercise(f, shadow, clusterSize + refcountBits, 25);
        const back = await readAll(f, size);
        assert.equal(firstDifference(back, shadow), -1, `${f} reads back what was written`);
        await assertClean(f);
      }
    }
  } finally {
    t.cleanup();
  }
});

test('compat 0.10 and extended L2 images handle zeroes and partial writes', async () => {
  const t = tempDir();
  try {
    const size = 4 << 20;
    for (const [name, opts] of [
      ['v2', { compat: '0.10' as const }],
      ['extl2', { extendedL2: true, clusterSize: 65536 }],
      ['extl2-2m', { extendedL2: true, clusterSize: 2 * 1024 * 1024 }],
      ['lazy', { lazyRefcounts: true }],
    ] as const) {
      const f = t.path(`${name}.qcow2`);
      await createQcow2(f, { size: BigInt(size), ...opts });
      const shadow = new Uint8Array(size);
      await exercise(f, shadow, 99, 40);
      await assertHolds(f, shadow, name);
      const info = await qcow2Info(f);
      assert.equal(info.formatSpecific.compat, name === 'v2' ? '0.10' : '1.1');
      assert.equal(info.formatSpecific.extendedL2, name.startsWith('extl2'));
      assert.equal(info.formatSpecific.lazyRefcounts, name === 'lazy');
    }
  } finally {
    t.cleanup();
  }
});

test('concurrent writes to the same unallocated clusters never corrupt metadata (page cache and O_DIRECT)', async () => {
  const t = tempDir();
  try {
   for (const cache of ['writeback', 'none'] as const) {
    const f = t.path(`c-${cache}.qcow2`);
    const size = 2 << 20;
    await createQcow2(f, { size: BigInt(size), clusterSize: 4096 });
    const img = await openImage(f, { cache });
    const next = rng(7);
    // Non-overlapping byte ranges packed into the same clusters, all issued at once.
    const shadow = new Uint8Array(size);
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < 400; i++) {
      const off = i * 5000 + 17;
      const data = randomBytes(next, 3000);
      shadow.set(data, off);
      jobs.push(img.writev(BigInt(off), [data]));
    }
    await Promise.all(jobs);
    // Reads in flight together with more writes to already allocated clusters.
    const reads: Promise<void>[] = [];
    const more: Promise<void>[] = [];
    for (let i = 0; i < 100; i++) {
      const off = i * 5000 + 3100;
      const data = randomBytes(next, 1000);
      shadow.set(data, off);
      more.push(img.writev(BigInt(off), [data]));
      reads.push(img.readv(BigInt(i * 4096), [new Uint8Array(4096)]));
    }
    await Promise.all([...more, ...reads]);
    await img.close();
    await assertHolds(f, shadow, cache);
   }
  } finally {
    t.cleanup();
  }
});

test('whole-cluster writes into unmapped clusters, racing with each other and with partial writes, over a backing file and zero clusters', async () => {
  const t = tempDir();
  try {
    for (const cache of ['writeback', 'none'] as const) {
      const cs = 4096;
      const size = 256 * cs;
      const base = t.path(`base-${cache}.qcow2`);
      await createQcow2(base, { size: BigInt(size), clusterSize: cs });
      const b = await openImage(base);
      await b.writev(0n, [new Uint8Array(size).fill(0x11)]);
      await b.close();
      const f = t.path(`top-${cache}.qcow2`);
      await createQcow2(f, { size: BigInt(size), clusterSize: cs, backingFile: base, backingFormat: 'qcow2' });
      const img = await openImage(f, { cache });
      const shadow = new Uint8Array(size).fill(0x11);
      // Zero clusters first (flagged entries): a whole write over them takes the general path.
      await img.writeZeroes(BigInt(40 * cs), BigInt(10 * cs));
      shadow.fill(0, 40 * cs, 50 * cs);
      // The L2 table exists and is cached before the race (the quick path needs it).
      await img.writev(BigInt(255 * cs), [new Uint8Array(8).fill(7)]);
      shadow.fill(7, 255 * cs, 255 * cs + 8);
      const next = rng(99);
      const jobs: Promise<void>[] = [];
      for (let c = 0; c + 9 < 255; ) {
        const n = 1 + Math.floor(next() * 8);
        const data = randomBytes(next, n * cs);
        shadow.set(data, c * cs);
        jobs.push(img.writev(BigInt(c * cs), scatter(data, next)));
        // The same run again, at once, with the same bytes: one of the two allocates.
        if (next() < 0.3) jobs.push(img.writev(BigInt(c * cs), [data.slice()]));
        c += n;
        // A partial write into the next cluster, which its backing file must fill around.
        const part = randomBytes(next, 1000);
        shadow.set(part, c * cs + 100);
        jobs.push(img.writev(BigInt(c * cs + 100), [part]));
        c += 1;
      }
      await Promise.all(jobs);
      await img.close();
      await assertHolds(f, shadow, cache);
    }
  } finally {
    t.cleanup();
  }
});

test('partial writes into unmapped clusters without a backing file: zeroes around them, in new space and in freed clusters, under concurrency', async () => {
  const t = tempDir();
  try {
    for (const cache of ['writeback', 'none'] as const) {
      const cs = 4096;
      const size = 512 * cs;
      const f = t.path(`partial-${cache}.qcow2`);
      await createQcow2(f, { size: BigInt(size), clusterSize: cs });
      const img = await openImage(f, { cache });
      const shadow = new Uint8Array(size);
      const next = rng(1234);
      // Clusters freed inside the file: once the first reservation of new space is used up,
      // allocations reuse them, and their old bytes must not show through around a
      // partial write.
      const old = randomBytes(next, 240 * cs);
      await img.writev(BigInt(256 * cs), [old]);
      await img.discard(BigInt(256 * cs), BigInt(240 * cs));
      await img.flush(); // freed clusters become free for allocation once flushed
      await img.writev(BigInt(511 * cs), [new Uint8Array(8).fill(7)]); // the table is cached
      shadow.fill(7, 511 * cs, 511 * cs + 8);
      for (const round of [0, 1]) {
        const jobs: Promise<void>[] = [];
        // Pieces that start and end inside clusters, neighbours sharing a cluster, all at once.
        for (let pos = round * 100 * cs + 100; pos < (round + 1) * 100 * cs;) {
          const len = 1 + Math.floor(next() * 3 * cs);
          const end = Math.min(pos + len, (round + 1) * 100 * cs);
          const data = randomBytes(next, end - pos);
          shadow.set(data, pos);
          jobs.push(img.writev(BigInt(pos), scatter(data, next)));
          pos = end + Math.floor(next() * 200);
        }
        await Promise.all(jobs);
      }
      // A sequential writer: each piece starts in the cluster the last one ended in.
      for (let pos = 200 * cs + 50; pos < 300 * cs;) {
        const end = Math.min(pos + 1 + Math.floor(next() * 3 * cs), 300 * cs);
        const data = randomBytes(next, end - pos);
        shadow.set(data, pos);
        await img.writev(BigInt(pos), scatter(data, next));
        pos = end;
      }
      await img.close();
      await assertHolds(f, shadow, cache);
    }
  } finally {
    t.cleanup();
  }
});

test('allocating writes in flight while a discard and a snapshot run: the data, the snapshot and the refcounts stay right', async () => {
  const t = tempDir();
  try {
    for (const cache of ['writeback', 'none'] as const) {
      const f = t.path(`x-${cache}.qcow2`);
      const size = 4 << 20;
      await createQcow2(f, { size: BigInt(size), clusterSize: 4096 });
      const img = (await openImage(f, { cache })) as Qcow2Image;
      const next = rng(11);
      const shadow = new Uint8Array(size);
      const first = randomBytes(next, 1 << 20);
      await img.writev(0n, [first]);
      shadow.set(first);
      // New clusters in [2 MiB, 4 MiB) are being written while [0, 512 KiB) is discarded
      // and a snapshot is taken: both must wait for the writes already issued.
      const jobs: Promise<unknown>[] = [];
      for (let i = 0; i < 200; i++) {
        const off = (2 << 20) + i * 9000;
        const data = randomBytes(next, 4096);
        shadow.set(data, off);
        jobs.push(img.writev(BigInt(off), [data]));
        if (i === 50) {
          jobs.push(img.discard(0n, 512n * 1024n));
          shadow.fill(0, 0, 512 * 1024);
        }
        if (i === 120) jobs.push(createSnapshot(img, 'mid'));
      }
      await Promise.all(jobs);
      const back = new Uint8Array(size);
      await img.readv(0n, [back]);
      assert.equal(firstDifference(back, shadow), -1, cache);
      assert.deepEqual((await listSnapshots(img)).map((s) => s.name), ['mid']);
      await img.close();
      await assertHolds(f, shadow, cache);
    }
  } finally {
    t.cleanup();
  }
});

test('backing chains: copy-on-write, depth in block status, raw backing, loops refused', async () => {
  const t = tempDir();
  try {
    const size = 1 << 20;
    const base = t.path('base.raw');
    await createRaw(base, { size: BigInt(size) });
    const baseData = randomBytes(rng(1), size);
    writeFileSync(base, baseData);
    const mid = t.path('mid.qcow2');
    await createQcow2(mid, { backingFile: 'base.raw', backingFormat: 'raw', clusterSize: 4096 });
    const top = t.path('top.qcow2');
    await createQcow2(top, { backingFile: mid, clusterSize: 65536 });
    const shadow = baseData.slice();
    let img = await openImage(mid);
    const m = randomBytes(rng(2), 10000);
    await img.writev(5000n, [m]);
    shadow.set(m, 5000);
    await img.close();
    img = await openImage(top);
    assert.equal(img.size(), BigInt(size));
    const tdata = randomBytes(rng(3), 300);
    await img.writev(70000n, [tdata]);
    shadow.set(tdata, 70000);
    const st0 = await img.blockStatus(0n, 4096n);
    assert.equal(st0.depth, 2, 'first cluster comes from the raw base');
    const st1 = await img.blockStatus(8192n, 4096n);
    assert.equal(st1.depth, 1, 'mid layer wrote this cluster');
    const st2 = await img.blockStatus(65536n, 65536n);
    assert.equal(st2.depth, 0);
    assert.equal(st2.data, true);
    await img.close();
    await assertHolds(top, shadow);
    await assertClean(mid);
    // Point the base layer back at the top: a loop.
    const loopA = t.path('a.qcow2');
    const loopB = t.path('b.qcow2');
    await createQcow2(loopA, { size: 65536n });
    await createQcow2(loopB, { size: 65536n, backingFile: loopA });
    await setQcow2Backing(loopA, loopB, 'qcow2');
    await assert.rejects(openImage(loopB), (err: Error) => err instanceof BlockError && /loops/.test(err.message) && err.message.includes('a.qcow2') && err.message.includes('b.qcow2'));
    await assert.rejects(openImage(t.path('none.qcow2')), BlockError);
    await createQcow2(t.path('orphan.qcow2'), { size: 65536n, backingFile: 'base.raw' });
    writeFileSync(base, '');
    await assert.rejects(createQcow2(t.path('x.qcow2'), { backingFile: 'missing.qcow2' }), /missing\.qcow2/);
  } finally {
    t.cleanup();
  }
});

test('snapshots: create, list, apply and delete keep data and refcounts right', async () => {
  const t = tempDir();
  try {
    const f = t.path('s.qcow2');
    const size = 2 << 20;
    await createQcow2(f, { size: BigInt(size), clusterSize: 4096 });
    const shadow0 = new Uint8Array(size);
    await exercise(f, shadow0, 11, 20);
    await createQcow2Snapshot(f, 'first');
    const shadow1 = shadow0.slice();
    await exercise(f, shadow1, 12, 20);
    await assertClean(f);
    await createQcow2Snapshot(f, 'second');
    const shadow2 = shadow1.slice();
    await exercise(f, shadow2, 13, 10);
    const list = await listQcow2Snapshots(f);
    assert.deepEqual(list.map((s) => [s.id, s.name]), [['1', 'first'], ['2', 'second']]);
    assert.equal(list[0].diskSize, BigInt(size));
    await assert.rejects(createQcow2Snapshot(f, 'first'), /already exists/);
    await assertClean(f);
    assert.equal(firstDifference(await readAll(f, size), shadow2), -1);
    await applyQcow2Snapshot(f, 'first');
    await assertHolds(f, shadow0, 'reverted to the first snapshot');
    await deleteQcow2Snapshot(f, '1');
    await assertClean(f);
    await applyQcow2Snapshot(f, 'second');
    assert.equal(firstDifference(await readAll(f, size), shadow1), -1, 'reverted to the second snapshot');
    await exercise(f, shadow1, 14, 10);
    await deleteQcow2Snapshot(f, 'second');
    await assertHolds(f, shadow1);
    await assert.rejects(deleteQcow2Snapshot(f, 'nope'), /no snapshot with id or name 'nope'/);
    assert.deepEqual(await listQcow2Snapshots(f), []);
  } finally {
    t.cleanup();
  }
});

test('compressed clusters are written packed and read back', async () => {
  const t = tempDir();
  try {
    const f = t.path('z.qcow2');
    const cs = 65536;
    const size = 16 * cs;
    await createQcow2(f, { size: BigInt(size), clusterSize: cs });
    const img = (await openImage(f)) as Qcow2Image;
    const shadow = new Uint8Array(size);
    const next = rng(5);
    for (let c = 0; c < 16; c++) {
      const data = new Uint8Array(cs);
      // Compressible: runs of a few random values; cluster 3 is incompressible noise.
      if (c === 3) data.set(randomBytes(next, cs));
      else for (let i = 0; i < cs; i += 512) data.fill(Math.floor(next() * 256), i, i + 512);
      await img.writeCompressed(BigInt(c * cs), data);
      shadow.set(data, c * cs);
    }
    const st = await img.blockStatus(0n, BigInt(cs));
    assert.equal(st.compressed, true);
    // Overwrite part of a compressed cluster: it becomes a normal cluster.
    const patch = randomBytes(next, 1000);
    await img.writev(BigInt(5 * cs + 100), [patch]);
    shadow.set(patch, 5 * cs + 100);
    await img.close();
    assert.equal(firstDifference(await readAll(f, size), shadow), -1);
    const r = await checkQcow2(f);
    assert.equal(r.corruptions + r.leaks, 0, r.messages.join('; '));
    assert.equal(r.compressedClusters, 14);
  } finally {
    t.cleanup();
  }
});

test('resize grows and shrinks; preallocation modes allocate everything', async () => {
  const t = tempDir();
  try {
    const f = t.path('r.qcow2');
    await createQcow2(f, { size: 1n << 20n, clusterSize: 512 });
    const img = await openImage(f);
    const data = randomBytes(rng(8), 4096);
    await img.writev(1040000n, [data.subarray(0, 8576)]);
    await img.resize(64n << 20n);
    await img.writev(60n << 20n, [data]);
    const back = new Uint8Array(4096);
    await img.readv(60n << 20n, [back]);
    assert.equal(firstDifference(back, data), -1);
    await img.resize(1000448n);
    assert.equal(img.size(), 1000448n);
    await assert.rejects(img.readv(1000447n, [new Uint8Array(2)]), /beyond the disk size/);
    await img.close();
    await assertClean(f);
    for (const mode of ['metadata', 'falloc', 'full'] as const) {
      const p = t.path(`p-${mode}.qcow2`);
      await createQcow2(p, { size: 3n << 20n, preallocation: mode, clusterSize: 65536 });
      const r = await checkQcow2(p);
      assert.equal(r.allocatedClusters, 48, mode);
      assert.equal(r.corruptions + r.leaks, 0);
      assert.equal(firstDifference(await readAll(p, 3 << 20), new Uint8Array(3 << 20)), -1, `${mode} reads zeroes`);
    }
  } finally {
    t.cleanup();
  }
});

test('a dirty image has its refcounts rebuilt when opened read-write; repair fixes leaks and corruption', async () => {
  const t = tempDir();
  try {
    const f = t.path('d.qcow2');
    await createQcow2(f, { size: 1n << 20n, clusterSize: 4096, lazyRefcounts: true });
    const shadow = new Uint8Array(1 << 20);
    await exercise(f, shadow, 21, 10, { discards: false });
    // Wipe the refcount block and set the dirty bit, as a crash with lazy refcounts could.
    const bytes = readFileSync(f);
    const reftable = Number(bytes.readBigUInt64BE(48));
    const block = Number(bytes.readBigUInt64BE(reftable));
    bytes.fill(0, block + 16, block + 4096);
    bytes.writeBigUInt64BE(bytes.readBigUInt64BE(72) | 1n, 72);
    writeFileSync(f, bytes);
    const dirty = await checkQcow2(f);
    assert.ok(dirty.corruptions > 0, 'wiped refcounts are corruption');
    const img = await openImage(f);
    await img.close();
    await assertClean(f);
    assert.equal((await qcow2Info(f)).formatSpecific.dirtyFlag, false);
    assert.equal(firstDifference(await readAll(f, 1 << 20), shadow), -1);
    // Leak: raise a refcount; check sees it, repair 'leaks' fixes it.
    const b2 = readFileSync(f);
    const rt = Number(b2.readBigUInt64BE(48));
    const blk = Number(b2.readBigUInt64BE(rt));
    b2.writeUInt16BE(b2.readUInt16BE(blk) + 1, blk);
    writeFileSync(f, b2);
    const leaky = await checkQcow2(f);
    assert.equal(leaky.leaks, 1);
    assert.equal(leaky.corruptions, 0);
    const fixed = await checkQcow2(f, { repair: 'leaks' });
    assert.equal(fixed.leaksFixed, 1);
    assert.equal(fixed.leaks, 0);
    // Corruption: drop a refcount to zero; repair 'all' rebuilds the refcounts.
    const b3 = readFileSync(f);
    const rt3 = Number(b3.readBigUInt64BE(48));
    const blk3 = Number(b3.readBigUInt64BE(rt3));
    b3.writeUInt16BE(0, blk3 + 2 * 10);
    writeFileSync(f, b3);
    const bad = await checkQcow2(f);
    assert.ok(bad.corruptions >= 1, bad.messages.join('; '));
    const rep = await checkQcow2(f, { repair: 'all' });
    assert.ok(rep.corruptionsFixed >= 1);
    assert.equal(rep.corruptions, 0, rep.messages.join('; '));
    assert.equal(rep.leaks, 0, rep.messages.join('; '));
    assert.equal(firstDifference(await readAll(f, 1 << 20), shadow), -1);
  } finally {
    t.cleanup();
  }
});

test('bad requests and options get one-line errors naming the file', async () => {
  const t = tempDir();
  try {
    const f = t.path('e.qcow2');
    await assert.rejects(createQcow2(f, { size: 1n << 20n, clusterSize: 1000 }), /e\.qcow2: cluster size 1000/);
    await assert.rejects(createQcow2(f, { size: 1n << 20n, compat: '0.10', refcountBits: 8 }), /16-bit refcounts/);
    await assert.rejects(createQcow2(f, { size: 1n << 20n, extendedL2: true, clusterSize: 4096 }), /16 KiB/);
    await assert.rejects(createQcow2(f, { size: 1n << 20n, compat: '0.10', lazyRefcounts: true }), /compat=1.1/);
    await assert.rejects(createQcow2(f, {}), /no size/);
    await createQcow2(f, { size: 1n << 20n });
    const ro = await openImage(f, { readOnly: true });
    await assert.rejects(ro.writev(0n, [new Uint8Array(1)]), /e\.qcow2: write refused: image is open read-only/);
    await assert.rejects(ro.readv(1n << 20n, [new Uint8Array(1)]), /e\.qcow2: read of 1 bytes at offset 1048576 is beyond/);
    await ro.close();
    await assert.rejects(openImage(f, { format: 'vmdk' }), /unknown image format 'vmdk'/);
    const img = (await openImage(f)) as Qcow2Image;
    await assert.rejects(img.writeCompressed(100n, new Uint8Array(65536)), /whole aligned cluster/);
    await img.close();
    for (const err of [BlockError]) assert.equal(typeof err, 'function');
  } finally {
    t.cleanup();
  }
});

test('extended L2: a small write allocates only the subclusters it touches', async () => {
  const t = tempDir();
  try {
    const base = t.path('base.raw');
    const baseData = randomBytes(rng(31), 1 << 20);
    await createRaw(base, { size: 1n << 20n });
    writeFileSync(base, baseData);
    const f = t.path('sub.qcow2');
    await createQcow2(f, { backingFile: 'base.raw', backingFormat: 'raw', extendedL2: true, clusterSize: 65536 });
    const img = await openImage(f);
    const patchData = randomBytes(rng(32), 100);
    await img.writev(5000n, [patchData]);
    const expected = baseData.slice();
    expected.set(patchData, 5000);
    // Subclusters are 2 KiB: bytes 5000..5099 live in subcluster 2 (4096..6143).
    const before = await img.blockStatus(0n, 65536n);
    assert.equal(before.depth, 1);
    assert.equal(before.length, 4096n);
    const own = await img.blockStatus(4096n, 61440n);
    assert.equal(own.depth, 0);
    assert.equal(own.length, 2048n);
    const after = await img.blockStatus(6144n, 59392n);
    assert.equal(after.depth, 1);
    // A second write into another subcluster of the same cluster, and one spanning both.
    const more = randomBytes(rng(33), 3000);
    await img.writev(30000n, [more]);
    expected.set(more, 30000);
    await img.writeZeroes(40960n, 4096n);
    expected.fill(0, 40960, 45056);
    const back = new Uint8Array(1 << 20);
    await img.readv(0n, [back]);
    assert.equal(firstDifference(back, expected), -1);
    await img.close();
    await assertClean(f);
    const r = await checkQcow2(f);
    assert.equal(r.allocatedClusters, 1);
  } finally {
    t.cleanup();
  }
});

test('discards, zeroes and writes racing on the same clusters leave consistent metadata', async () => {
  const t = tempDir();
  try {
    const f = t.path('race.qcow2');
    const cs = 4096;
    const size = 64 * cs;
    await createQcow2(f, { size: BigInt(size), clusterSize: cs });
    const img = await openImage(f);
    const next = rng(77);
    for (let round = 0; round < 20; round++) {
      const jobs: Promise<void>[] = [];
      for (let k = 0; k < 30; k++) {
        const c = Math.floor(next() * 60);
        const r = next();
        if (r < 0.6) jobs.push(img.writev(BigInt(c * cs + Math.floor(next() * 1000)), [randomBytes(next, 1 + Math.floor(next() * 3 * cs))]));
        else if (r < 0.8) jobs.push(img.discard(BigInt(c * cs), BigInt(cs * (1 + Math.floor(next() * 3)))));
        else jobs.push(img.writeZeroes(BigInt(c * cs), BigInt(cs * 2), { mayUnmap: true }));
      }
      await Promise.all(jobs);
    }
    // After the storm, writes of known data must read back exactly (no cluster is shared by two mappings).
    const shadow = randomBytes(next, size);
    await img.writev(0n, [shadow]);
    const back = new Uint8Array(size);
    await img.readv(0n, [back]);
    assert.equal(firstDifference(back, shadow), -1);
    await img.close();
    await assertClean(f);
  } finally {
    t.cleanup();
  }
});
