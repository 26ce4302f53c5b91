import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { openImage, createQcow2, checkQcow2, BlockError, Qcow2Image, createQcow2Snapshot, qcow2Info } from '../../../src/block/index.js';
import { tempDir, rng, randomBytes } from './helpers.js';

/** A small image with data, a compressed cluster and a snapshot: many structures to break. */
async function makeVictim(path: string): Promise<void> {
  await createQcow2(path, { size: 1n << 20n, clusterSize: 4096 });
  const img = (await openImage(path)) as Qcow2Image;
  const next = rng(3);
  await img.writev(0n, [randomBytes(next, 20000)]);
  await img.writev(300000n, [randomBytes(next, 9000)]);
  const z = new Uint8Array(4096).fill(7);
  await img.writeCompressed(4096n * 100n, z);
  await img.close();
  await createQcow2Snapshot(path, 'snap');
  const again = await openImage(path);
  await again.writev(5000n, [randomBytes(next, 3000)]);
  await again.close();
}

function patch(path: string, edit: (b: Buffer) => void): void {
  const b = readFileSync(path);
  edit(b);
  writeFileSync(path, b);
}

async function expectOneLineError(p: Promise<unknown>, pattern: RegExp, path: string): Promise<void> {
  await assert.rejects(p, (err: Error) => {
    assert.ok(err instanceof BlockError, `expected BlockError, got ${err.name}: ${err.message}`);
    assert.ok(!err.message.includes('\n'), 'one line');
    assert.ok(err.message.startsWith(path), `names the file: ${err.message}`);
    assert.match(err.message, pattern);
    return true;
  });
}

test('hostile headers and tables are refused with a one-line error naming the file', async () => {
  const t = tempDir();
  try {
    const good = t.path('good.qcow2');
    await makeVictim(good);
    const cases: Array<[string, (b: Buffer) => void, RegExp]> = [
      ['bad version', (b) => b.writeUInt32BE(7, 4), /unsupported qcow2 version 7/],
      ['cluster bits', (b) => b.writeUInt32BE(40, 20), /cluster_bits 40 out of range/],
      ['encrypted', (b) => b.writeUInt32BE(1, 32), /encrypted/],
      ['absurd size', (b) => b.writeBigUInt64BE(1n << 63n, 24), /virtual size .* too large/],
      ['L1 too small', (b) => b.writeUInt32BE(0, 36), /too small for the virtual size/],
      ['L1 too large', (b) => b.writeUInt32BE(0x7fffffff, 36), /L1 table of 2147483647 entries is too large/],
      ['L1 past EOF', (b) => b.writeBigUInt64BE(1n << 40n, 40), /L1 table at offset .* extends past the end of the file/],
      ['L1 unaligned', (b) => b.writeBigUInt64BE(b.readBigUInt64BE(40) + 8n, 40), /L1 table offset .* is not cluster-aligned/],
      ['L1 on header', (b) => b.writeBigUInt64BE(0n, 40), /L1 table overlaps the header/],
      ['L1 on refcount table', (b) => b.writeBigUInt64BE(b.readBigUInt64BE(48), 40), /L1 table overlaps the refcount table/],
      ['refcount table past EOF', (b) => b.writeBigUInt64BE(1n << 44n, 48), /refcount table at offset .* extends past the end/],
      ['refcount table empty', (b) => b.writeUInt32BE(0, 56), /refcount table is empty/],
      ['refcount table huge', (b) => b.writeUInt32BE(1 << 30, 56), /refcount table of .* clusters is too large/],
      ['refcount order', (b) => b.writeUInt32BE(9, 96), /refcount_order 9 out of range/],
      ['header length', (b) => b.writeUInt32BE(50, 100), /header_length 50 is below/],
      ['unknown incompatible feature', (b) => b.writeBigUInt64BE(1n << 10n, 72), /unsupported incompatible qcow2 feature\(s\): bit 10/],
      ['external data file', (b) => b.writeBigUInt64BE(1n << 2n, 72), /external data file/],
      ['too many snapshots', (b) => b.writeUInt32BE(1 << 20, 60), /1048576 snapshots/],
      ['L1 entry past EOF', (b) => b.writeBigUInt64BE((1n << 63n) | (1n << 40n), Number(b.readBigUInt64BE(40))), /L1 entry 0 points past the end of the file/],
      ['refcount block unaligned', (b) => b.writeBigUInt64BE(b.readBigUInt64BE(Number(b.readBigUInt64BE(48))) + 512n, Number(b.readBigUInt64BE(48))), /refcount block 0 offset .* is not cluster-aligned/],
      ['refcount block past EOF', (b) => b.writeBigUInt64BE(1n << 40n, Number(b.readBigUInt64BE(48))), /refcount block 0 at .* lies past the end of the file/],
      ['refcount block on the table', (b) => b.writeBigUInt64BE(b.readBigUInt64BE(48), Number(b.readBigUInt64BE(48))), /refcount block 0 overlaps the refcount table/],
      ['L1 entry on the refcount table', (b) => b.writeBigUInt64BE((1n << 63n) | b.readBigUInt64BE(48), Number(b.readBigUInt64BE(40))), /L1 entry 0 points into the header, L1 table or refcount table/],
      ['L1 entry on header', (b) => b.writeBigUInt64BE(1n << 63n | 0n, Number(b.readBigUInt64BE(40))) , /./],
    ];
    for (const [name, edit, pattern] of cases) {
      const f = t.path(`${name.replace(/ /g, '-')}.qcow2`);
      writeFileSync(f, readFileSync(good));
      patch(f, edit);
      if (name === 'L1 entry on header') {
        // A zeroed L1 entry is legal: the cluster range just reads as unallocated.
        const img = await openImage(f, { readOnly: true });
        await img.readv(0n, [new Uint8Array(65536)]);
        await img.close();
        continue;
      }
      await expectOneLineError(openImage(f, { readOnly: true }), pattern, f);
    }

    // A named unknown feature is reported by its name from the feature table.
    const named = t.path('named.qcow2');
    writeFileSync(named, readFileSync(good));
    patch(named, (b) => {
      const at = b.readUInt32BE(100);
      b.writeUInt32BE(0x6803f857, at);
      b.writeUInt32BE(48, at + 4);
      b.fill(0, at + 8, at + 56 + 8);
      b[at + 8] = 0;
      b[at + 9] = 12;
      b.write('frobnication', at + 10);
      b.writeBigUInt64BE(1n << 12n, 72);
    });
    await expectOneLineError(openImage(named, { readOnly: true }), /frobnication/, named);

    // Truncated files.
    const trunc = t.path('trunc.qcow2');
    writeFileSync(trunc, readFileSync(good).subarray(0, 50));
    await expectOneLineError(openImage(trunc, { format: 'qcow2' }), /truncated qcow2 header/, trunc);
    writeFileSync(trunc, readFileSync(good));
    truncateSync(trunc, 4096 + 100);
    await expectOneLineError(openImage(trunc), /past the end of the file/, trunc);
    writeFileSync(t.path('empty.qcow2'), '');
    await expectOneLineError(openImage(t.path('empty.qcow2'), { format: 'qcow2' }), /truncated/, t.path('empty.qcow2'));

    // An L2 entry pointing past the end of the file fails the read that meets it.
    const l2bad = t.path('l2bad.qcow2');
    writeFileSync(l2bad, readFileSync(good));
    patch(l2bad, (b) => {
      const l1 = Number(b.readBigUInt64BE(40));
      const l2 = Number(b.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
      b.writeBigUInt64BE((1n << 63n) | (1n << 45n), l2);
    });
    const img = await openImage(l2bad, { readOnly: true });
    await expectOneLineError(img.readv(0n, [new Uint8Array(512)]), /guest cluster 0 points past the end of the file/, l2bad);
    await img.close();
    // An L2 entry aimed at the L1 table: a write there would destroy metadata.
    patch(l2bad, (b) => {
      const l1 = Number(b.readBigUInt64BE(40));
      const l2 = Number(b.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
      b.writeBigUInt64BE((1n << 63n) | BigInt(l1), l2);
    });
    const rw = await openImage(l2bad);
    await expectOneLineError(rw.writev(0n, [new Uint8Array(512)]), /points into the header, L1 table or refcount table/, l2bad);
    await rw.close();

    // A compressed cluster whose bytes are garbage.
    const zbad = t.path('zbad.qcow2');
    writeFileSync(zbad, readFileSync(good));
    const zimg = (await openImage(zbad, { readOnly: true })) as Qcow2Image;
    const st = await zimg.blockStatus(409600n, 4096n);
    await zimg.close();
    assert.equal(st.compressed, true);
    patch(zbad, (b) => b.fill(0xff, Number(st.hostOffset), Number(st.hostOffset) + 64));
    const z2 = await openImage(zbad, { readOnly: true });
    await expectOneLineError(z2.readv(409600n, [new Uint8Array(4096)]), /does not decompress/, zbad);
    await z2.close();

    // A corrupt-marked image opens read-only only.
    const corrupt = t.path('corrupt.qcow2');
    writeFileSync(corrupt, readFileSync(good));
    patch(corrupt, (b) => b.writeBigUInt64BE(1n << 1n, 72));
    await expectOneLineError(openImage(corrupt), /marked corrupt/, corrupt);
    assert.equal((await qcow2Info(corrupt)).formatSpecific.corrupt, true);
    (await openImage(corrupt, { readOnly: true })).close();
  } finally {
    t.cleanup();
  }
});

const FIELDS: Array<[number, number]> = [
  [4, 4], [8, 8], [16, 4], [20, 4], [24, 8], [32, 4], [36, 4], [40, 8], [48, 8], [56, 4], [60, 4], [64, 8],
  [72, 8], [80, 8], [88, 8], [96, 4], [100, 4], [104, 1],
];

test('fuzz: mutated headers and tables never crash, hang or give anything but a BlockError', async () => {
  const t = tempDir();
  try {
    const good = t.path('good.qcow2');
    await makeVictim(good);
    const pristine = readFileSync(good);
    const l1 = Number(pristine.readBigUInt64BE(40));
    const reftable = Number(pristine.readBigUInt64BE(48));
    const refblock = Number(pristine.readBigUInt64BE(reftable));
    const l2 = Number(pristine.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
    const snaps = Number(pristine.readBigUInt64BE(64));
    const tables = [l1, reftable, refblock, l2, snaps];
    const next = rng(20261125);
    const f = t.path('fuzz.qcow2');
    let opened = 0;
    let refused = 0;
    const problems: string[] = [];
    for (let iter = 0; iter < 300; iter++) {
      const b = Buffer.from(pristine);
      const mutations = 1 + Math.floor(next() * 3);
      for (let m = 0; m < mutations; m++) {
        const pick = next();
        if (pick < 0.5) {
          const [at, len] = FIELDS[Math.floor(next() * FIELDS.length)];
          const mode = next();
          for (let k = 0; k < len; k++) {
            if (mode < 0.3) b[at + k] = 0xff;
            else if (mode < 0.5) b[at + k] = 0;
            else if (mode < 0.8) b[at + k] = Math.floor(next() * 256);
            else if (k === len - 1) b[at + k] ^= 1 << Math.floor(next() * 8);
          }
        } else {
          const base = tables[Math.floor(next() * tables.length)];
          const at = base + Math.floor(next() * 64) * 8;
          if (at + 8 <= b.length) {
            const mode = next();
            if (mode < 0.4) b.writeBigUInt64BE(BigInt(Math.floor(next() * 2 ** 32)) << BigInt(Math.floor(next() * 32)), at);
            else if (mode < 0.7) b[at + Math.floor(next() * 8)] ^= 1 << Math.floor(next() * 8);
            else b.writeBigUInt64BE(0xffffffffffffffffn, at);
          }
        }
      }
      writeFileSync(f, b);
      // Resolves true on success, false on a proper BlockError; anything else is recorded.
      const guard = async (what: string, p: Promise<unknown>): Promise<boolean> => {
        try {
          await p;
          return true;
        } catch (err) {
          if (!(err instanceof BlockError) || err.message.includes('\n')) problems.push(`iteration ${iter} ${what}: ${(err as Error).stack}`);
          return false;
        }
      };
      let img;
      const readOnly = next() < 0.5;
      if (!(await guard('open', (async () => { img = await openImage(f, { format: 'qcow2', readOnly }); })()))) {
        refused++;
        continue;
      }
      opened++;
      const disk = img as unknown as Qcow2Image;
      const size = disk.size();
      const chunk = 65536n;
      // Read the first MiB and a few random spots: bounded work whatever the size says.
      for (let off = 0n; off < size && off < 1n << 20n; off += chunk) {
        const n = size - off < chunk ? size - off : chunk;
        await guard('read', disk.readv(off, [new Uint8Array(Number(n))]));
      }
      if (size > 0n) {
        await guard('status', disk.blockStatus(0n, size < chunk ? size : chunk));
        if (!disk.readOnly) await guard('write', disk.writev(size / 2n, [new Uint8Array(Number(size - size / 2n < 5000n ? size - size / 2n : 5000n)).fill(1)]));
      }
      await guard('close', disk.close());
      await guard('check', checkQcow2(f));
    }
    assert.deepEqual(problems.slice(0, 3), []);
    assert.ok(opened > 20, `some mutations leave a usable image (${opened})`);
    assert.ok(refused > 20, `some mutations are refused (${refused})`);
  } finally {
    t.cleanup();
  }
});

test('check reports a broken refcount table entry and a full repair rebuilds the refcounts', async () => {
  const t = tempDir();
  try {
    const f = t.path('broken-reftable.qcow2');
    await makeVictim(f);
    const before = new Uint8Array(1 << 20);
    const img0 = await openImage(f, { readOnly: true });
    await img0.readv(0n, [before]);
    await img0.close();
    patch(f, (b) => {
      const rt = Number(b.readBigUInt64BE(48));
      b.writeBigUInt64BE(b.readBigUInt64BE(rt) + 512n, rt);
    });
    await assert.rejects(openImage(f), /refcount block 0 offset .* is not cluster-aligned/);
    const r = await checkQcow2(f);
    assert.ok(r.corruptions > 0, 'the misaligned block is reported');
    const fixed = await checkQcow2(f, { repair: 'all' });
    assert.equal(fixed.corruptions, 0, fixed.messages.slice(0, 3).join('; '));
    assert.equal(fixed.leaks, 0, fixed.messages.slice(0, 3).join('; '));
    const img = await openImage(f);
    const after = new Uint8Array(1 << 20);
    await img.readv(0n, [after]);
    await img.writev(600000n, [new Uint8Array(9000).fill(4)]);
    await img.close();
    assert.deepEqual(after, before, 'data survives the repair');
    const again = await checkQcow2(f);
    assert.equal(again.corruptions + again.leaks, 0);
  } finally {
    t.cleanup();
  }
});
