// The block layer's own I/O paths, against QEMU's `qemu-img bench` on the same image file:
// 4 KiB scattered reads and writes at queue depth 32 on qcow2 (allocated clusters), and
// sequential 2 MiB writes into a fresh qcow2 (the allocation path `img convert` uses).
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BenchGroup, BenchRow } from '../main.js';
import { createQcow2, openImage } from '../../src/block/index.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const DIR = join(ROOT, '.cache/bench-block');
const SIZE = 512 * 1024 * 1024;
const COUNT = 40000;
/** Alternating runs per row; each side's best counts. */
const RUNS = 3;

function qemuBenchSeconds(args: string[]): number | null {
  const r = spawnSync('qemu-img', ['bench', ...args], { encoding: 'utf8', timeout: 600_000 });
  const m = /Run completed in ([\d.]+) seconds/.exec(r.stdout ?? '');
  return r.status === 0 && m ? Number(m[1]) : null;
}

// Scattered 4 KiB requests, the same walk on both sides: qemu-img bench steps by -S and wraps
// to 0 at the end of the image, so a step of 17 pages (past a 64 KiB cluster) touches a new
// cluster, and often a new L2 table range, with every request.
const STEP = 17 * 4096;

async function scatteredIo(file: string, write: boolean): Promise<number> {
  const img = await openImage(file);
  let next = 0;
  let issued = 0;
  const start = performance.now();
  const worker = async (): Promise<void> => {
    const buf = new Uint8Array(4096).fill(7);
    while (issued < COUNT) {
      issued++;
      const off = BigInt(next);
      next += STEP;
      if (next + 4096 > SIZE) next = 0;
      if (write) await img.writev(off, [buf]);
      else await img.readv(off, [buf]);
    }
  };
  await Promise.all(Array.from({ length: 32 }, worker));
  const seconds = (performance.now() - start) / 1000;
  await img.close();
  return COUNT / seconds;
}

async function sequentialFill(file: string): Promise<number> {
  await createQcow2(file, { size: BigInt(SIZE) });
  const img = await openImage(file);
  const chunk = new Uint8Array(2 << 20);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 31) & 0xff;
  const start = performance.now();
  for (let off = 0; off < SIZE; off += chunk.length) await img.writev(BigInt(off), [chunk]);
  // No flush inside the timing: qemu-img bench in writeback mode does not flush either.
  const seconds = (performance.now() - start) / 1000;
  await img.close();
  return SIZE / 1048576 / seconds;
}

export const group: BenchGroup = {
  title: 'block layer: qcow2 I/O (tsvirt driver vs qemu-img bench)',
  async run(): Promise<BenchRow[]> {
    mkdirSync(DIR, { recursive: true });
    const file = join(DIR, 'bench.qcow2');
    try {
      // The machine is shared and noisy: each row alternates our run and qemu-img's RUNS
      // times and keeps each side's best (qemu's failures count as no figure).
      const best = (xs: Array<number | null>): number | null => (xs.some((x) => x === null) ? null : Math.max(...(xs as number[])));
      const ourSeq: number[] = [];
      const qSeq: Array<number | null> = [];
      for (let i = 0; i < RUNS; i++) {
        rmSync(file, { force: true });
        ourSeq.push(await sequentialFill(file));
        rmSync(file, { force: true });
        spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', file, String(SIZE)]);
        const q = qemuBenchSeconds(['-w', '-t', 'writeback', '-c', String(SIZE / (2 << 20)), '-s', '2M', '-S', '2M', '-d', '1', '-f', 'qcow2', file]);
        qSeq.push(q === null ? null : SIZE / 1048576 / q);
      }
      // Both scattered runs use the image fully allocated by the last sequential pass.
      const walk = ['-c', String(COUNT), '-d', '32', '-s', '4k', '-S', String(STEP), '-f', 'qcow2', file];
      const scattered = async (write: boolean): Promise<[number, number | null]> => {
        const mine: number[] = [];
        const ref: Array<number | null> = [];
        for (let i = 0; i < RUNS; i++) {
          mine.push(await scatteredIo(file, write));
          const q = qemuBenchSeconds([...(write ? ['-w'] : []), '-t', 'writeback', ...walk]);
          ref.push(q === null ? null : COUNT / q);
        }
        return [Math.max(...mine), best(ref)];
      };
      const [ourRead, qRead] = await scattered(false);
      const [ourWrite, qWrite] = await scattered(true);
      return [
        { name: 'sequential 2 MiB writes, allocating', ours: Math.max(...ourSeq), reference: best(qSeq), unit: 'MiB/s', higherIsBetter: true },
        { name: '4 KiB scattered reads, depth 32', ours: ourRead, reference: qRead, unit: 'IOPS', higherIsBetter: true },
        { name: '4 KiB scattered writes, depth 32', ours: ourWrite, reference: qWrite, unit: 'IOPS', higherIsBetter: true },
      ];
    } finally {
      rmSync(DIR, { recursive: true, force: true });
    }
  },
};
