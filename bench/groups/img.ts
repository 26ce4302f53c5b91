// tsvirt img against qemu-img in the same run on the same files: convert (raw->qcow2,
// qcow2->raw, compressed) of a 2 GiB image that is half data, half holes (and raw->qcow2 of
// the same image with its holes written out as zeroes), and of two nearly empty qcow2 images
// (64 GiB without L2 tables, 8 GiB preallocated over holes); and bench of 4 KiB
// scattered reads and writes at queue depth 1 and 32 on qcow2.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, openSync, writeSync, closeSync, ftruncateSync, rmSync, copyFileSync, renameSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BenchGroup, BenchRow } from '../main.js';

const ROOT = fileURLToPath(new URL('../../..', import.meta.url));
const CLI = join(ROOT, 'dist/src/cli/tsvirt.cjs');
const DIR = join(ROOT, '.cache/bench');
const SOURCE = join(DIR, 'img-2g-half.raw');
const SIZE = 2 ** 31;
const STRIPE = 2 ** 21; // each 2 MiB: 1 MiB data, then a 1 MiB hole
/**
 * Alternating runs per row; each side's best counts. The uncompressed converts take a few
 * tenths of a second each and moved by a quarter between runs on a shared machine (the
 * disk's write-back, the other core's work): five runs each settle them. The other rows
 * run longer and keep three. The 2 GiB converts keep eight: on a virtual machine whose host
 * takes back memory the guest has freed (free page reporting), a writer that allocates
 * page cache a few seconds after a delete pays seconds for the host to give it back
 * (qemu-img's raw to qcow2 went from 0.33 s to 2.6 s with a 4 s pause after deleting the
 * previous output); with five runs, a tool could draw that in every slot it had.
 */
const RUNS = 3;
const QUICK_RUNS = 5;
const CONVERT_RUNS = 8;

/** The same stripes with the holes written out as zeroes: convert must find them by reading. */
const DENSE_SOURCE = join(DIR, 'img-2g-half-dense.raw');

/**
 * Builds a source once: every other MiB holds semi-compressible data, the rest are holes
 * (or, `dense`, written zeroes). A copy of the sparse one would not do: copying can fill
 * the holes (an earlier version of this file copied it; a source that came out dense is rebuilt).
 */
function buildSource(file: string, dense: boolean): void {
  if (existsSync(file) && (dense || statSync(file).blocks * 512 < SIZE * 0.75)) return;
  rmSync(file, { force: true });
  mkdirSync(DIR, { recursive: true });
  const fd = openSync(file + '.tmp', 'w');
  ftruncateSync(fd, SIZE);
  const block = Buffer.alloc(STRIPE / 2);
  const zeroes = Buffer.alloc(STRIPE / 2);
  let seed = 12345;
  for (let i = 0; i < block.length; i++) {
    // half of each 4 KiB is pseudo-random, half a repeated byte: compresses about 2:1
    if ((i & 4095) < 2048) {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      block[i] = seed >>> 24;
    } else block[i] = (i >> 12) & 0xff;
  }
  for (let pos = 0; pos < SIZE; pos += STRIPE) {
    block.writeUInt32LE(pos, 0); // no two stripes alike
    writeSync(fd, block, 0, block.length, pos);
    if (dense) writeSync(fd, zeroes, 0, zeroes.length, pos + block.length);
  }
  closeSync(fd);
  renameSync(file + '.tmp', file);
}

/**
 * The tools' environment: this one without NODE_EXTRA_CA_CERTS. Set, it makes every Node.js
 * process read and parse that CA bundle as it starts (Node 20 loads it eagerly), whether or
 * not it ever opens a TLS connection: 30-60 ms added to each `tsvirt img` run on a host that
 * sets it for its own TLS set-up, more than the work of a quick convert. Neither tool uses TLS.
 */
const TOOL_ENV: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => k !== 'NODE_EXTRA_CA_CERTS'));

function timed(command: string, args: string[]): number {
  // The previous run's output is still being written back to disk: left alone, that
  // write-back lands in this run's time (qemu-img's best raw->qcow2 once took 1.5 s against
  // 0.3 s on a quiet disk). Flushed first, untimed, for both sides alike.
  spawnSync('sync', [], { timeout: 300_000 });
  const start = process.hrtime.bigint();
  const r = spawnSync(command, args, { encoding: 'utf8', timeout: 900_000, env: TOOL_ENV });
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  if (r.status !== 0) throw new Error(`${command} ${args.join(' ')} failed: ${r.stderr}`);
  return seconds;
}

/** Runs a bench command and returns the "Run completed in N seconds" figure. */
function benchSeconds(command: string, args: string[]): number {
  const r = spawnSync(command, args, { encoding: 'utf8', timeout: 900_000, env: TOOL_ENV });
  if (r.status !== 0) throw new Error(`${command} ${args.join(' ')} failed: ${r.stderr}`);
  const m = /Run completed in ([\d.]+) seconds/.exec(r.stdout);
  if (!m) throw new Error(`no timing in: ${r.stdout}`);
  return Number(m[1]);
}

const ours = (args: string[]): [string, string[]] => [process.execPath, [CLI, 'img', ...args]];
const theirs = (args: string[]): [string, string[]] => ['qemu-img', args];

async function run(): Promise<BenchRow[]> {
  buildSource(SOURCE, false);
  buildSource(DENSE_SOURCE, true);
  const rows: BenchRow[] = [];
  const out = (name: string): string => join(DIR, name);
  // The machine is shared and noisy (other work can take both cores for seconds): every row
  // alternates our run and qemu-img's several times (QUICK_RUNS or RUNS) and keeps each side's best.
  const convertRow = (name: string, args: (dst: string) => string[], dstExt: string, runs = QUICK_RUNS): void => {
    let mine = Infinity;
    let ref = Infinity;
    for (let i = 0; i < runs; i++) {
      rmSync(out(`ours.${dstExt}`), { force: true });
      rmSync(out(`theirs.${dstExt}`), { force: true });
      // Each side goes first every other time: the first run after the deletes above can
      // pay for their discards (the host file system's `discard` option).
      const runOurs = (): void => { mine = Math.min(mine, timed(...ours(args(out(`ours.${dstExt}`))))); };
      const runTheirs = (): void => { ref = Math.min(ref, timed(...theirs(args(out(`theirs.${dstExt}`))))); };
      if (i % 2 === 0) {
        runOurs();
        runTheirs();
      } else {
        runTheirs();
        runOurs();
      }
    }
    rmSync(out(`ours.${dstExt}`), { force: true });
    rows.push({ name, ours: mine, reference: ref, unit: 's', higherIsBetter: false });
  };
  // Zeroes read from the file and skipped: the zero detection's cost shows here.
  convertRow('convert raw->qcow2 (2 GiB, half zeroes written out)', (dst) => ['convert', '-f', 'raw', '-O', 'qcow2', DENSE_SOURCE, dst], 'qcow2', CONVERT_RUNS);
  convertRow('convert raw->qcow2 (2 GiB, half holes)', (dst) => ['convert', '-f', 'raw', '-O', 'qcow2', SOURCE, dst], 'qcow2', CONVERT_RUNS);
  const qcow2 = out('theirs.qcow2'); // qemu-img's own output is the common qcow2 source
  convertRow('convert qcow2->raw', (dst) => ['convert', '-f', 'qcow2', '-O', 'raw', qcow2, dst], 'raw', CONVERT_RUNS);
  rmSync(out('theirs.raw'), { force: true });
  // A large image that is nearly empty: what counts is how fast each tool finds the little
  // data there is (block status over whole L2 tables, and over a preallocated one's holes).
  const sparseQcow2 = out('sparse-64g.qcow2');
  const preallocQcow2 = out('prealloc-8g.qcow2');
  for (const [file, options] of [[sparseQcow2, []], [preallocQcow2, ['-o', 'preallocation=metadata']]] as const) {
    rmSync(file, { force: true });
    const size = file === sparseQcow2 ? '64G' : '8G';
    const made = spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', ...options, file, size], { encoding: 'utf8' });
    const written = spawnSync('qemu-io', ['-c', 'write -P 5 3G 1M', file], { encoding: 'utf8' });
    if (made.status !== 0 || written.status !== 0) throw new Error(`${file}: ${made.stderr}${written.stderr}`);
  }
  convertRow('convert qcow2->raw (64 GiB, 1 MiB of data)', (dst) => ['convert', '-f', 'qcow2', '-O', 'raw', sparseQcow2, dst], 's.raw');
  convertRow('convert qcow2->qcow2 (8 GiB preallocation=metadata, 1 MiB of data)', (dst) => ['convert', '-f', 'qcow2', '-O', 'qcow2', preallocQcow2, dst], 'p.qcow2');
  for (const f of [sparseQcow2, preallocQcow2, out('theirs.s.raw'), out('theirs.p.qcow2')]) rmSync(f, { force: true });
  // Compressing 1 GiB takes seconds on each side: noise matters less, two runs do.
  convertRow('convert -c raw->qcow2 (compressed)', (dst) => ['convert', '-c', '-f', 'raw', '-O', 'qcow2', SOURCE, dst], 'c.qcow2', 2);
  rmSync(out('theirs.c.qcow2'), { force: true });

  // Scattered 4 KiB requests: a step of 7919 pages (prime) walks the whole image in a
  // cache-unfriendly order, which is as close to random as qemu-img bench gets.
  const step = String(4096 * 7919);
  // Each side's default engine (tsvirt: io_uring; qemu-img: its thread pool), then both on
  // io_uring (-i io_uring), qemu-img's fastest engine here.
  for (const engine of [[], ['-i', 'io_uring']]) for (const write of [false, true]) {
    for (const depth of [1, 32]) {
      const count = depth === 1 ? '20000' : '50000';
      const args = (file: string): string[] => ['bench', '-f', 'qcow2', '-c', count, '-d', String(depth), '-s', '4k', '-S', step, '-t', 'none', ...engine, ...(write ? ['-w'] : []), file];
      // Reads leave the image as it was: both sides read qemu-img's output directly. Writes
      // allocate, so each run starts from a fresh copy of it.
      const mineFile = write ? out('bench-ours.qcow2') : qcow2;
      const refFile = write ? out('bench-theirs.qcow2') : qcow2;
      let mine = Infinity;
      let ref = Infinity;
      for (let i = 0; i < RUNS; i++) {
        if (write) {
          copyFileSync(qcow2, mineFile);
          copyFileSync(qcow2, refFile);
        }
        // The fresh copies (2 GiB of dirty pages) are written back first, untimed: left
        // alone, their write-back competes with whichever side runs first.
        if (write) spawnSync('sync', [], { timeout: 300_000 });
        mine = Math.min(mine, benchSeconds(...ours(args(mineFile))));
        if (write) spawnSync('sync', [], { timeout: 300_000 });
        ref = Math.min(ref, benchSeconds(...theirs(args(refFile))));
      }
      const ops = Number(count);
      rows.push({ name: `bench 4k ${write ? 'write' : 'read'} qd${depth} (cache=none${engine.length ? ', both -i io_uring' : ''})`, ours: ops / mine, reference: ops / ref, unit: 'IOPS', higherIsBetter: true });
      if (write) {
        rmSync(mineFile, { force: true });
        rmSync(refFile, { force: true });
      }
    }
  }
  rmSync(qcow2, { force: true });
  return rows;
}

export const group: BenchGroup = { title: 'tsvirt img vs qemu-img', run };
