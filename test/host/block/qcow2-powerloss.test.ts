// Power loss, simulated: every write the driver issues is recorded together with its
// barriers (fdatasync). A disk that loses power keeps everything before the last completed
// barrier, and any subset of what came after it. Images rebuilt that way, at many cut points
// and with many subsets, must never be corrupt for qemu-img check (leaks are allowed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { openImage, createQcow2, Qcow2Image } from '../../../src/block/index.js';
import { tempDir, rng, randomBytes } from '../../unit/block/helpers.js';
import { haveQemuImg, qemuCheck } from './qemu.js';

type Entry = { kind: 'write'; offset: number; data: Uint8Array } | { kind: 'truncate'; length: number } | { kind: 'barrier' };

test('power loss between barriers leaves no corruption', { skip: haveQemuImg ? false : 'qemu-img is not installed', timeout: 300_000 }, async () => {
  const t = tempDir();
  try {
    for (const [name, clusterSize] of [['c4k', 4096], ['c64k', 65536]] as const) {
      const f = t.path(`${name}.qcow2`);
      const size = 2 << 20;
      await createQcow2(f, { size: BigInt(size), clusterSize });
      const initial = new Uint8Array(readFileSync(f));
      const img = (await openImage(f)) as Qcow2Image;
      const log: Entry[] = [];
      // Record at the file layer, below the driver; the writes still happen.
      const file = img.file;
      const writev = file.writev.bind(file);
      file.writev = async (offset, buffers) => {
        const total = buffers.reduce((n, b) => n + b.length, 0);
        const data = new Uint8Array(total);
        let at = 0;
        for (const b of buffers) {
          data.set(b, at);
          at += b.length;
        }
        log.push({ kind: 'write', offset: Number(offset), data });
        return writev(offset, buffers);
      };
      const truncate = file.truncate.bind(file);
      file.truncate = async (length) => {
        log.push({ kind: 'truncate', length: Number(length) });
        return truncate(length);
      };
      const barrier = file.barrier.bind(file);
      file.barrier = async () => {
        await barrier();
        log.push({ kind: 'barrier' });
      };
      const flush = file.flush.bind(file);
      file.flush = async () => {
        await flush();
        log.push({ kind: 'barrier' });
      };
      const next = rng(clusterSize);
      for (let i = 0; i < 60; i++) {
        const off = Math.floor(next() * size);
        const len = Math.min(size - off, 1 + Math.floor(next() * 150000));
        const k = next();
        if (k < 0.7) await img.writev(BigInt(off), [randomBytes(next, len)]);
        else if (k < 0.85) await img.writeZeroes(BigInt(off), BigInt(len), { mayUnmap: next() < 0.5 });
        else await img.discard(BigInt(off), BigInt(len));
        if (i % 10 === 9) await img.flush();
      }
      await img.close();
      assert.ok(log.filter((e) => e.kind === 'barrier').length > 5, 'the driver issues barriers');

      const pick = rng(clusterSize + 1);
      const crashed = t.path(`${name}-crashed.qcow2`);
      for (let trial = 0; trial < 80; trial++) {
        const cut = Math.floor(pick() * log.length);
        let lastBarrier = -1;
        for (let i = 0; i < cut; i++) if (log[i].kind === 'barrier') lastBarrier = i;
        let image = Buffer.from(initial);
        const apply = (e: Entry): void => {
          if (e.kind === 'truncate') {
            const resized = Buffer.alloc(e.length);
            image.copy(resized, 0, 0, Math.min(e.length, image.length));
            image = resized;
            return;
          }
          if (e.kind !== 'write') return;
          if (e.offset + e.data.length > image.length) {
            const grown = Buffer.alloc(e.offset + e.data.length);
            image.copy(grown);
            image = grown;
          }
          image.set(e.data, e.offset);
        };
        for (let i = 0; i <= lastBarrier; i++) apply(log[i]);
        // After the barrier: the disk kept an arbitrary subset of the writes.
        for (let i = lastBarrier + 1; i < cut; i++) if (pick() < 0.5) apply(log[i]);
        writeFileSync(crashed, image);
        const q = qemuCheck(crashed);
        assert.equal(q.corruptions ?? 0, 0, `${name} trial ${trial}: cut at ${cut}/${log.length} after barrier ${lastBarrier} is corrupt`);
        assert.equal(q['check-errors'], 0);
      }
    }
  } finally {
    t.cleanup();
  }
});
