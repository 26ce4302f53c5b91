import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import {
  openImage, createQcow2, checkQcow2, qcow2Info, Qcow2Image, createQcow2Snapshot, applyQcow2Snapshot,
  listQcow2Snapshots, deleteQcow2Snapshot, setQcow2Backing, parseHeader, type CreateQcow2Options,
} from '../../../src/block/index.js';
import { tempDir, rng, randomBytes, firstDifference, scatter } from '../../unit/block/helpers.js';
import { haveQemuImg, qemuImg, qemuIo, qemuCheck, qemuContents } from './qemu.js';

const skip = haveQemuImg ? false : 'qemu-img is not installed';

async function readAll(filename: string): Promise<Uint8Array> {
  const img = await openImage(filename, { readOnly: true });
  const out = new Uint8Array(Number(img.size()));
  await img.readv(0n, [out]);
  await img.close();
  return out;
}

function assertQemuClean(file: string): void {
  const r = qemuCheck(file);
  assert.equal(r['check-errors'], 0, `${file}: check errors`);
  assert.equal(r.corruptions ?? 0, 0, `${file}: qemu-img check finds corruptions`);
  assert.equal(r.leaks ?? 0, 0, `${file}: qemu-img check finds leaks`);
}

/** Random writes/zeroes/discards through our driver, mirrored into the shadow. */
async function scribble(filename: string, shadow: Uint8Array, seed: number, ops: number): Promise<void> {
  const next = rng(seed);
  const img = await openImage(filename);
  for (let i = 0; i < ops; i++) {
    const off = Math.floor(next() * shadow.length);
    const len = Math.min(shadow.length - off, 1 + Math.floor(next() * 150000));
    const k = next();
    if (k < 0.75) {
      const data = randomBytes(next, len);
      await img.writev(BigInt(off), scatter(data, next));
      shadow.set(data, off);
    } else if (k < 0.9) {
      await img.writeZeroes(BigInt(off), BigInt(len), { mayUnmap: next() < 0.5 });
      shadow.fill(0, off, off + len);
    } else {
      await img.discard(BigInt(off), BigInt(len));
      const back = new Uint8Array(len);
      await img.readv(BigInt(off), [back]);
      shadow.set(back, off);
    }
  }
  await img.close();
}

test('images we create and write pass qemu-img check and read identically in QEMU', { skip }, async () => {
  const t = tempDir();
  try {
    const size = 3 << 20;
    const variants: Array<[string, CreateQcow2Options]> = [
      ['c512', { clusterSize: 512 }],
      ['c4k-r1', { clusterSize: 4096, refcountBits: 1 }],
      ['c64k-r64', { refcountBits: 64 }],
      ['c2m-r8', { clusterSize: 2 * 1024 * 1024, refcountBits: 8 }],
      ['v2', { compat: '0.10' }],
      ['extl2', { extendedL2: true, clusterSize: 32768 }],
      ['lazy', { lazyRefcounts: true, refcountBits: 2 }],
      ['prealloc', { preallocation: 'metadata', clusterSize: 16384 }],
      ['falloc', { preallocation: 'falloc' }],
      // 512-byte clusters with 64-bit refcounts: one refcount cluster covers 32 KiB, so
      // filling the disk moves the refcount table several times.
      ['grow-reftable', { clusterSize: 512, refcountBits: 64 }],
    ];
    for (const [name, opts] of variants) {
      const f = t.path(`${name}.qcow2`);
      await createQcow2(f, { size: BigInt(size), ...opts });
      const shadow = new Uint8Array(size);
      if (name === 'grow-reftable') {
        const img = await openImage(f);
        const fill = randomBytes(rng(77), size);
        for (let off = 0; off < size; off += 65536) await img.writev(BigInt(off), [fill.subarray(off, off + 65536)]);
        await img.close();
        shadow.set(fill);
      }
      await scribble(f, shadow, name.length * 31, 30);
      assertQemuClean(f);
      assert.equal(firstDifference(qemuContents(f, t.path('out.raw')), shadow), -1, `${name}: QEMU reads what we wrote`);
      const info = JSON.parse(qemuImg('info', '--output=json', f)) as { 'format-specific': { data: Record<string, unknown> }; 'cluster-size': number };
      const ours = await qcow2Info(f);
      assert.equal(info['cluster-size'], ours.clusterSize);
      assert.equal(info['format-specific'].data.compat, ours.formatSpecific.compat);
      if (ours.formatSpecific.compat === '1.1') {
        assert.equal(info['format-specific'].data['refcount-bits'], ours.formatSpecific.refcountBits);
        assert.equal(info['format-specific'].data['extended-l2'], ours.formatSpecific.extendedL2);
        assert.equal(info['format-specific'].data['lazy-refcounts'], ours.formatSpecific.lazyRefcounts);
      }
      // Our check agrees with QEMU's on the numbers qemu-img prints.
      const q = qemuCheck(f);
      const r = await checkQcow2(f);
      assert.equal(r.allocatedClusters, q['allocated-clusters'] ?? 0, `${name}: allocated clusters`);
      assert.equal(r.totalClusters, q['total-clusters'], `${name}: total clusters`);
      assert.equal(r.fragmentedClusters, q['fragmented-clusters'] ?? 0, `${name}: fragmented clusters`);
      assert.equal(Number(r.imageEndOffset), q['image-end-offset'], `${name}: image end offset`);
    }
  } finally {
    t.cleanup();
  }
});

test('our backing chains, snapshots and compressed clusters are what QEMU sees', { skip }, async () => {
  const t = tempDir();
  try {
    const size = 2 << 20;
    const base = t.path('base.qcow2');
    await createQcow2(base, { size: BigInt(size), clusterSize: 4096 });
    const shadow = new Uint8Array(size);
    await scribble(base, shadow, 1, 20);
    const top = t.path('top.qcow2');
    await createQcow2(top, { backingFile: 'base.qcow2', backingFormat: 'qcow2', clusterSize: 65536 });
    await scribble(top, shadow, 2, 20);
    assertQemuClean(top);
    assert.equal(firstDifference(qemuContents(top, t.path('o.raw')), shadow), -1, 'QEMU follows our backing chain');

    // Snapshots: ours applied by QEMU.
    const s = t.path('snap.qcow2');
    await createQcow2(s, { size: BigInt(size), clusterSize: 8192 });
    const s0 = new Uint8Array(size);
    await scribble(s, s0, 3, 15);
    await createQcow2Snapshot(s, 'before');
    const s1 = s0.slice();
    await scribble(s, s1, 4, 15);
    assertQemuClean(s);
    assert.match(qemuImg('snapshot', '-l', s), /before/);
    assert.equal(firstDifference(qemuContents(s, t.path('o.raw'), ['-l', 'snapshot.name=before']), s0), -1, 'QEMU reads our snapshot');
    const copy = t.path('snap-copy.qcow2');
    copyFileSync(s, copy);
    qemuImg('snapshot', '-a', 'before', copy);
    assertQemuClean(copy);
    assert.equal(firstDifference(await readAll(copy), s0), -1);
    await deleteQcow2Snapshot(s, 'before');
    assertQemuClean(s);
    assert.equal(firstDifference(qemuContents(s, t.path('o.raw')), s1), -1);

    // Compressed clusters written by us, read by QEMU.
    const z = t.path('z.qcow2');
    await createQcow2(z, { size: BigInt(size), clusterSize: 65536 });
    const img = (await openImage(z)) as Qcow2Image;
    const zs = new Uint8Array(size);
    const next = rng(9);
    for (let c = 0; c < size / 65536; c += 2) {
      const d = new Uint8Array(65536);
      for (let i = 0; i < d.length; i += 256) d.fill(Math.floor(next() * 4), i, i + 256);
      await img.writeCompressed(BigInt(c * 65536), d);
      zs.set(d, c * 65536);
    }
    await img.close();
    assertQemuClean(z);
    assert.ok((qemuCheck(z)['compressed-clusters'] ?? 0) > 0);
    assert.equal(firstDifference(qemuContents(z, t.path('o.raw')), zs), -1, 'QEMU inflates our compressed clusters');
  } finally {
    t.cleanup();
  }
});

function qemuWrites(file: string, size: number, seed: number): void {
  const next = rng(seed);
  const cmds: string[] = [];
  for (let i = 0; i < 25; i++) {
    const off = Math.floor((next() * size) / 512) * 512;
    const len = Math.max(512, Math.min(size - off, Math.floor((next() * 131072) / 512) * 512));
    const k = next();
    if (k < 0.7) cmds.push(`write -P ${Math.floor(next() * 255) + 1} ${off} ${len}`);
    else if (k < 0.85) cmds.push(`write -z ${off} ${len}`);
    else cmds.push(`discard ${off} ${len}`);
  }
  qemuIo(file, ...cmds);
}

test('images qemu-img makes with each option read identically and stay clean after our writes', { skip }, async () => {
  const t = tempDir();
  try {
    const size = 4 << 20;
    const variants: Array<[string, string]> = [
      ['c512', 'cluster_size=512'],
      ['c2m', 'cluster_size=2M'],
      ['c16k-extl2', 'cluster_size=16k,extended_l2=on'],
      ['c64k-extl2', 'extended_l2=on'],
      ['v2', 'compat=0.10'],
      ['r1', 'refcount_bits=1,cluster_size=4k'],
      ['r64', 'refcount_bits=64'],
      ['lazy', 'lazy_refcounts=on'],
      ['prealloc-meta', 'preallocation=metadata'],
      ['prealloc-full', 'preallocation=full,cluster_size=128k'],
    ];
    for (const [name, opts] of variants) {
      const f = t.path(`${name}.qcow2`);
      qemuImg('create', '-q', '-f', 'qcow2', '-o', opts, f, String(size));
      qemuWrites(f, size, name.length);
      const theirs = qemuContents(f, t.path('o.raw'));
      assert.equal(firstDifference(await readAll(f), theirs), -1, `${name}: we read what QEMU wrote`);
      const shadow = theirs.slice();
      await scribble(f, shadow, name.length + 100, 25);
      assertQemuClean(f);
      assert.equal(firstDifference(qemuContents(f, t.path('o.raw')), shadow), -1, `${name}: QEMU reads what we wrote`);
    }
  } finally {
    t.cleanup();
  }
});

test('QEMU backing chains, snapshots and compression (zlib, zstd) read identically', { skip }, async () => {
  const t = tempDir();
  try {
    const size = 4 << 20;
    const raw = t.path('src.raw');
    const data = new Uint8Array(size);
    const next = rng(42);
    for (let i = 0; i < size; i += 1024) data.fill(Math.floor(next() * 8), i, i + 1024);
    data.set(randomBytes(next, 200000), 1000000);
    writeFileSync(raw, data);
    for (const [name, opts] of [['zlib', 'cluster_size=64k'], ['zstd', 'compression_type=zstd'], ['zlib-4k', 'cluster_size=4k'], ['zstd-2m', 'compression_type=zstd,cluster_size=2M']]) {
      const f = t.path(`${name}.qcow2`);
      qemuImg('convert', '-c', '-O', 'qcow2', '-o', opts, raw, f);
      assert.ok((qemuCheck(f)['compressed-clusters'] ?? 0) > 0, `${name} has compressed clusters`);
      assert.equal(firstDifference(await readAll(f), data), -1, `${name}: compressed clusters read back`);
      const st = await (async () => {
        const img = await openImage(f, { readOnly: true });
        const s = await img.blockStatus(0n, 65536n);
        await img.close();
        return s;
      })();
      assert.equal(st.compressed, true);
      const shadow = data.slice();
      await scribble(f, shadow, 7, 20);
      assertQemuClean(f);
      assert.equal(firstDifference(qemuContents(f, t.path('o.raw')), shadow), -1, `${name}: QEMU reads our writes over compressed clusters`);
      const r = await checkQcow2(f);
      const q = qemuCheck(f);
      assert.equal(r.compressedClusters, q['compressed-clusters'] ?? 0);
    }

    // A three-deep chain with a raw base, made by qemu-img.
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'src.raw', '-F', 'raw', t.path('l1.qcow2'));
    qemuIo(t.path('l1.qcow2'), 'write -P 7 100k 300k');
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'l1.qcow2', '-F', 'qcow2', '-o', 'cluster_size=4k', t.path('l2.qcow2'));
    qemuIo(t.path('l2.qcow2'), 'write -P 9 250k 10k', 'write -z 1M 64k');
    const chain = qemuContents(t.path('l2.qcow2'), t.path('o.raw'));
    assert.equal(firstDifference(await readAll(t.path('l2.qcow2')), chain), -1, 'backing chain reads');
    const shadow = chain.slice();
    await scribble(t.path('l2.qcow2'), shadow, 8, 20);
    assertQemuClean(t.path('l2.qcow2'));
    assert.equal(firstDifference(qemuContents(t.path('l2.qcow2'), t.path('o.raw')), shadow), -1);

    // Snapshots made by QEMU: we list, apply and delete them.
    const s = t.path('s.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', s, String(size));
    qemuIo(s, 'write -P 1 0 1M');
    qemuImg('snapshot', '-c', 'one', s);
    qemuIo(s, 'write -P 2 512k 1M');
    qemuImg('snapshot', '-c', 'two', s);
    qemuIo(s, 'write -P 3 0 64k');
    const snaps = await listQcow2Snapshots(s);
    assert.deepEqual(snaps.map((x) => x.name), ['one', 'two']);
    const one = qemuContents(s, t.path('o.raw'), ['-l', 'snapshot.name=one']);
    await applyQcow2Snapshot(s, 'one');
    assert.equal(firstDifference(await readAll(s), one), -1);
    assertQemuClean(s);
    await deleteQcow2Snapshot(s, 'two');
    assertQemuClean(s);
    assert.equal(firstDifference(qemuContents(s, t.path('o.raw')), one), -1);
  } finally {
    t.cleanup();
  }
});

test('a QEMU image left dirty with lazy refcounts is repaired when we open it read-write', { skip }, async () => {
  const t = tempDir();
  try {
    const f = t.path('lazy.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on,cluster_size=4k', f, '4M');
    // qemu-io's abort kills QEMU mid-run: refcounts are not written back, the dirty bit stays.
    spawnSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 5 0 1M', '-c', 'write -P 6 2M 300k', '-c', 'abort', f], { timeout: 60_000 });
    assert.equal((await qcow2Info(f)).formatSpecific.dirtyFlag, true);
    const expected = new Uint8Array(4 << 20);
    expected.fill(5, 0, 1 << 20);
    expected.fill(6, 2 << 20, (2 << 20) + 300 * 1024);
    assert.equal(firstDifference(await readAll(f), expected), -1, 'read-only open reads the data of a dirty image');
    const img = await openImage(f);
    await img.writev(3n << 20n, [new Uint8Array(5000).fill(7)]);
    expected.fill(7, 3 << 20, (3 << 20) + 5000);
    await img.close();
    assert.equal((await qcow2Info(f)).formatSpecific.dirtyFlag, false);
    assertQemuClean(f);
    assert.equal(firstDifference(qemuContents(f, t.path('o.raw')), expected), -1);
  } finally {
    t.cleanup();
  }
});

test('unknown header extensions survive a header rewrite', { skip }, async () => {
  const t = tempDir();
  try {
    const f = t.path('ext.qcow2');
    await createQcow2(f, { size: 1n << 20n });
    const b = readFileSync(f);
    const at = b.readUInt32BE(100);
    assert.equal(b.readUInt32BE(at), 0, 'no extensions yet');
    b.writeUInt32BE(0x12345678, at);
    b.writeUInt32BE(5, at + 4);
    b.write('hello', at + 8);
    writeFileSync(f, b);
    await createQcow2(t.path('base.qcow2'), { size: 1n << 20n });
    await setQcow2Backing(f, 'base.qcow2', 'qcow2');
    const h = parseHeader(f, new Uint8Array(readFileSync(f).subarray(0, 65536)), BigInt(readFileSync(f).length));
    assert.equal(h.backingFile, 'base.qcow2');
    assert.equal(h.backingFormat, 'qcow2');
    assert.deepEqual(h.unknownExtensions.map((e) => [e.type, Buffer.from(e.data).toString()]), [[0x12345678, 'hello']]);
    const info = JSON.parse(qemuImg('info', '--output=json', f)) as { 'backing-filename': string; 'backing-filename-format': string };
    assert.equal(info['backing-filename'], 'base.qcow2');
    assert.equal(info['backing-filename-format'], 'qcow2');
    assertQemuClean(f);
  } finally {
    t.cleanup();
  }
});

test('resizing (growing the L1 table, shrinking) keeps the image valid for QEMU', { skip }, async () => {
  const t = tempDir();
  try {
    const f = t.path('grow.qcow2');
    await createQcow2(f, { size: 1n << 20n, clusterSize: 512 });
    const img = await openImage(f);
    const a = randomBytes(rng(1), 300000);
    await img.writev(500000n, [a]);
    await img.resize(64n << 20n);
    const b = randomBytes(rng(2), 70000);
    await img.writev(60n << 20n, [b]);
    await img.close();
    assertQemuClean(f);
    const info = JSON.parse(qemuImg('info', '--output=json', f)) as { 'virtual-size': number };
    assert.equal(info['virtual-size'], 64 << 20);
    const expected = new Uint8Array(64 << 20);
    expected.set(a, 500000);
    expected.set(b, 60 << 20);
    assert.equal(firstDifference(qemuContents(f, t.path('o.raw')), expected), -1);
    const shrink = await openImage(f);
    await assert.rejects(shrink.resize(700000n), /grow\.qcow2: new size 700000 is not a multiple of 512/);
    await shrink.resize(700416n);
    await shrink.close();
    assertQemuClean(f);
    assert.equal(firstDifference(qemuContents(f, t.path('o.raw')), expected.subarray(0, 700416)), -1);
    // QEMU resizes too; we follow.
    qemuImg('resize', f, '5M');
    const grown = await readAll(f);
    assert.equal(grown.length, 5 << 20);
    assert.equal(firstDifference(grown.subarray(0, 700416), expected.subarray(0, 700416)), -1);
  } finally {
    t.cleanup();
  }
});

test('clusters past 2 GiB and 4 GiB into the file: what we write QEMU reads, and what QEMU writes we read', { skip }, async () => {
  // Offsets whose low 32 bits have bit 31 set once came out negative (a signed bitwise AND).
  // Metadata preallocation places every cluster up front, so a sparse 6 GiB file has them.
  const t = tempDir();
  try {
    const ours = t.path('ours.qcow2');
    await createQcow2(ours, { size: 6n << 30n, preallocation: 'metadata' });
    const spots = [1n << 30n, 5n << 29n, 9n << 29n, (6n << 30n) - 65536n];
    const img = await openImage(ours);
    for (const [i, at] of spots.entries()) await img.writev(at, [new Uint8Array(65536).fill(0x41 + i)]);
    await img.close();
    assertQemuClean(ours);
    for (const [i, at] of spots.entries()) {
      assert.match(qemuIo(ours, `read -P ${0x41 + i} ${at} 65536`), /read 65536\/65536 bytes/, `QEMU reads ours at ${at}`);
    }
    const theirs = t.path('theirs.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', theirs, '6G');
    for (const [i, at] of spots.entries()) qemuIo(theirs, `write -P ${0x61 + i} ${at} 65536`);
    const back = await openImage(theirs, { readOnly: true });
    for (const [i, at] of spots.entries()) {
      const out = new Uint8Array(65536);
      await back.readv(at, [out]);
      assert.ok(out.every((x) => x === 0x61 + i), `we read QEMU's at ${at}`);
    }
    await back.close();
    const r = await checkQcow2(theirs);
    assert.equal(r.corruptions + r.leaks + r.checkErrors, 0, r.messages.slice(0, 3).join('; '));
  } finally {
    t.cleanup();
  }
});
