// Walking an image's allocation map: the shared core of map, compare, convert, rebase and commit.
import type { BlockDriver, BlockStatus } from '../block/driver.js';
import { HostHoles } from './host-holes.js';

/** Allocation status extended with qemu's "present" (allocated somewhere in the chain). */
export interface Extent extends BlockStatus {
  start: bigint;
  present: boolean;
}

/**
 * Whether the extent is allocated in some layer of the chain. Drivers may say so directly
 * (`allocated`); otherwise data, or a zero extent that has host storage, or that the driver
 * attributes to a layer other than "fell off the chain", counts as present.
 */
interface ClusterLookup {
  clusterSize: number;
  extendedL2?: boolean;
  subclusterSize?: number;
  lookup(gc: number): Promise<{ kind: string; offset: number; allocMask: number; zeroMask: number }>;
  backing?: BlockDriver;
}

/** The driver `depth` levels down the backing chain, if the drivers expose their backing. */
function layer(driver: BlockDriver, depth: number): BlockDriver | undefined {
  let d: BlockDriver | undefined = driver;
  for (let i = 0; i < depth && d; i++) d = (d as Partial<ClusterLookup>).backing;
  return d;
}

/**
 * The block layer's status does not tell a qcow2 zero cluster (allocated, reads as zero) from
 * an unallocated one, nor report subclusters of extended L2 images; qemu calls the first
 * "present" and gives unallocated subclusters of a host cluster an offset. Ask the layer's
 * cluster map directly. Returns the refined extent (possibly shorter).
 */
async function refineZero(driver: BlockDriver, status: BlockStatus, offset: bigint, length: bigint): Promise<{ present: boolean; length: bigint; hostOffset?: bigint }> {
  const d = layer(driver, status.depth) as Partial<ClusterLookup> | undefined;
  if (!d || typeof d.lookup !== 'function' || typeof d.clusterSize !== 'number') return { present: false, length };
  const cs = BigInt(d.clusterSize);
  const gc = offset / cs;
  const entry = await d.lookup(Number(gc));
  const inCluster = offset - gc * cs;
  if (!d.extendedL2 || !d.subclusterSize) {
    const hostOffset = entry.kind === 'zero' && entry.offset ? BigInt(entry.offset) + inCluster : undefined;
    return { present: entry.kind === 'zero', length, hostOffset };
  }
  const sub = BigInt(d.subclusterSize);
  const first = Number(inCluster / sub);
  const bit = (mask: number, i: number): number => (mask >>> i) & 1;
  const zero = bit(entry.zeroMask, first);
  let last = first + 1;
  while (last < 32 && bit(entry.zeroMask, last) === zero && bit(entry.allocMask, last) === 0) last++;
  const runEnd = gc * cs + BigInt(last) * sub;
  const hostOffset = entry.offset ? BigInt(entry.offset) + inCluster : undefined;
  return { present: zero === 1, length: runEnd - offset < length ? runEnd - offset : length, hostOffset };
}

function isPresent(status: BlockStatus): boolean {
  const extra = status as BlockStatus & { allocated?: boolean; present?: boolean };
  if (typeof extra.present === 'boolean') return extra.present;
  if (typeof extra.allocated === 'boolean') return extra.allocated;
  return status.data || status.hostOffset !== undefined;
}

/** Yields the allocation extents of [start, end) in order, each no longer than maxLength. */
export async function* extents(driver: BlockDriver, start = 0n, end = driver.size(), maxLength = 1n << 30n,
  options: { hostHoles?: boolean } = {}): AsyncGenerator<Extent> {
  const holes = new HostHoleFiles();
  try {
    yield* walk(driver, start, end, maxLength, options.hostHoles ? holes : undefined);
  } finally {
    holes.close();
  }
}

async function* walk(driver: BlockDriver, start: bigint, end: bigint, maxLength: bigint, holes: HostHoleFiles | undefined): AsyncGenerator<Extent> {
  let offset = start;
  while (offset < end) {
    const want = end - offset < maxLength ? end - offset : maxLength;
    const status = await driver.blockStatus(offset, want);
    let length = status.length > want ? want : status.length;
    if (holes) length = lookThrough(driver, status, length, holes);
    if (length <= 0n) length = want; // a driver that cannot tell: treat the rest as one extent
    if (driver.format === 'raw') {
      // A raw image is its own host file: every byte is "allocated" and maps 1:1, holes included.
      yield { ...status, length, start: offset, present: true, hostOffset: offset };
    } else {
      let present = isPresent(status);
      let hostOffset = status.hostOffset;
      if (!present && status.zero && !status.data) {
        const refined = await refineZero(driver, status, offset, length);
        present = refined.present;
        length = refined.length;
        hostOffset ??= refined.hostOffset;
      }
      yield { ...status, length, start: offset, present, hostOffset };
    }
    offset += length;
  }
}

/** Host files opened to ask where their holes are, by file name (see lookThrough). */
export class HostHoleFiles {
  private readonly files = new Map<string, HostHoles>();

  get(filename: string): HostHoles {
    let h = this.files.get(filename);
    if (!h) this.files.set(filename, (h = new HostHoles(filename)));
    return h;
  }

  close(): void {
    for (const h of this.files.values()) h.close();
    this.files.clear();
  }
}

/**
 * Like qemu, looks through a format layer's data extent to its host file: data over a hole
 * in the file (preallocation=metadata) reads as zeroes, so the status is marked zero. Returns
 * the extent's length, shortened to where the file changes between hole and data.
 */
export function lookThrough(driver: BlockDriver, status: BlockStatus, length: bigint, holes: HostHoleFiles): bigint {
  if (driver.format === 'raw' || !status.data || status.compressed || status.hostOffset === undefined || length <= 0n) return length;
  const file = layer(driver, status.depth)?.filename;
  if (file === undefined) return length;
  const probe = holes.get(file).probe(status.hostOffset, length);
  if (probe.hole) status.zero = true;
  return probe.length;
}

/** A Buffer view of the same bytes (Buffer's range compare is what the zero tests need). */
function asBuffer(buf: Uint8Array): Buffer {
  return Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.length);
}

/**
 * True when bytes [from, to) of b are all zero. Data is told apart at once by a few sampled
 * bytes, without a native call. Otherwise one memcmp of the range against itself shifted by
 * 8 bytes (equal, with 8 leading zeroes, means all zero): it reads the bytes once and
 * allocates nothing, where slicing the range and comparing it with a zero page cost two
 * views per call, which at 4 KiB granularity made most of convert's garbage.
 */
function rangeIsZero(b: Buffer, from: number, to: number): boolean {
  if (to <= from) return true;
  if (b[from] !== 0 || b[to - 1] !== 0 || b[(from + to) >>> 1] !== 0) return false;
  const head = Math.min(to, from + 8);
  for (let i = from + 1; i < head; i++) if (b[i] !== 0) return false;
  return to - from <= 8 || b.compare(b, from, to - 8, from + 8, to) === 0;
}

/** True when every byte of buf[from, to) is zero. */
export function isZero(buf: Uint8Array, from = 0, to = buf.length): boolean {
  return rangeIsZero(asBuffer(buf), from, to);
}

/** A stretch of a buffer that is either all zero or holds data. */
export interface ZeroRun {
  start: number;
  end: number;
  zero: boolean;
}

/**
 * Where a run of data blocks that goes on at `pos` (a block boundary) ends: the start of the
 * first all-zero block from there, or the buffer's end. A block whose first byte is not zero
 * is data without a call: a loop over first bytes took the data half of a convert's 2 MiB
 * chunks from 17 to 4 ms per GiB of data (interpreted, as an uncompressed convert runs) on
 * the main thread, against one rangeIsZero call per block. (A search for a block's worth of
 * zero bytes, Buffer.indexOf, was slower than either: it stops at every zero byte.)
 */
function dataRunEnd(b: Buffer, pos: number, block: number): number {
  const len = b.length;
  for (;;) {
    while (pos < len && b[pos] !== 0) pos += block;
    if (pos >= len) return len;
    if (rangeIsZero(b, pos, Math.min(len, pos + block))) return pos;
    pos += block;
  }
}

/**
 * Splits buf into alternating runs of all-zero and data blocks of `block` bytes (counted from
 * the buffer's start; the last one may be shorter). A zero run is followed with doubling
 * spans, so a long one costs a few memcmp calls rather than one per block.
 */
export function zeroRuns(buf: Uint8Array, block: number): ZeroRun[] {
  if (!Number.isInteger(block) || block <= 0) throw new RangeError(`zero-detection block size must be a positive integer, not ${block}`);
  const b = asBuffer(buf);
  const len = b.length;
  const runs: ZeroRun[] = [];
  let pos = 0;
  while (pos < len) {
    const start = pos;
    const zero = rangeIsZero(b, pos, Math.min(len, pos + block));
    pos = Math.min(len, pos + block);
    if (zero) {
      let span = 2 * block;
      while (pos < len) {
        const stop = Math.min(len, pos + span);
        if (rangeIsZero(b, pos, stop)) {
          pos = stop;
          span *= 2;
        } else if (stop - pos <= block) {
          break; // the very next block holds data
        } else {
          span = block; // data somewhere in there: go on block by block
        }
      }
    } else {
      pos = dataRunEnd(b, pos, block);
    }
    runs.push({ start, end: pos, zero });
  }
  return runs;
}

/** Reads [offset, offset+length) of driver into a fresh buffer. */
export async function readRange(driver: BlockDriver, offset: bigint, length: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  await driver.readv(offset, [buf]);
  return buf;
}

/**
 * Runs `worker` over [0, total) in chunks with up to `parallel` chunks in flight: the I/O depth
 * is what makes a convert of a sparse image fast, not CPU. A worker may answer with an offset
 * up to which it knows there is nothing to do (a long run of zeroes after its chunk): chunks
 * before it that no lane has taken yet are then skipped, and `skipped` hears of their length.
 */
export async function forEachChunk(total: bigint, chunk: bigint, parallel: number,
  worker: (offset: bigint, length: bigint) => Promise<bigint | void>,
  skipped?: (length: bigint) => void): Promise<void> {
  let next = 0n;
  let failure: unknown;
  const lane = async (): Promise<void> => {
    while (failure === undefined && next < total) {
      const offset = next;
      const length = total - offset < chunk ? total - offset : chunk;
      next += length;
      try {
        const idleUntil = await worker(offset, length);
        // Whole chunks only, so that chunks keep their alignment.
        const skipTo = idleUntil === undefined ? next : (idleUntil >= total ? total : idleUntil - (idleUntil % chunk));
        if (skipTo > next) {
          skipped?.(skipTo - next);
          next = skipTo;
        }
      } catch (err) {
        failure ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, parallel) }, lane));
  if (failure !== undefined) throw failure;
}
