// `tsvirt img convert`: copy one or more images (concatenated) into a new raw or qcow2 image,
// keeping it sparse: extents the source reports as zero/unallocated are not read, and runs of
// zero bytes at least -S long inside read data are not written.
import type { BlockDriver, BlockStatus } from '../../block/driver.js';
import { uninitializedAlignedBuffer } from '../../block/host-file.js';
import { ImgError, UsageError } from '../errors.js';
import { getopt, Options } from '../getopt.js';
import type { ImgIO } from '../io.js';
import { createImage } from '../create.js';
import { isHelpRequest, joinOptionStrings, optionHelp, parseCreateOptions } from '../create-options.js';
import { forEachChunk, HostHoleFiles, lookThrough, zeroRuns } from '../extents.js';
import { cacheMode, checkFormatName, openForImg } from '../open.js';
import { parseSize } from '../size.js';
import { compressedWriter } from '../compress.js';
import { progressBar } from '../progress.js';
import { convertWritesOnly } from '../io-threads.js';

const CHUNK = 2n << 20n; // the unit of work: qemu-img also copies in 2 MiB pieces
/**
 * How far past a chunk of zeroes one block status question looks for more, at first and at
 * most. It bounds what one question costs: a qcow2 answer walks the entries of the run it
 * reports (data over holes, in a metadata-preallocated image, is one long run until looked
 * through). Each question that finds its whole window zero doubles the next one's, so a
 * long run of zeroes costs a few questions, not one per window.
 */
const LOOKAHEAD = 64n << 20n;
const LOOKAHEAD_MAX = 1n << 30n;
/**
 * Data copied before the command line is told the convert is a bulk copy (ImgIO.bulkCopyOnly).
 * Early enough that the optimizing compiler has not yet taken up the copy loop: the user
 * time of 1 GiB raw to qcow2 stayed at 0.11-0.18 s with the switch here or at the start.
 */
const BULK_COPY_AFTER = 32n << 20n;

/** Several source images read as one disk, laid end to end. */
class Concatenation {
  readonly size: bigint;
  private readonly starts: bigint[] = [];
  constructor(readonly parts: BlockDriver[]) {
    let total = 0n;
    for (const p of parts) {
      this.starts.push(total);
      total += p.size();
    }
    this.size = total;
  }

  /** Splits [offset, offset+length) into per-source pieces. */
  pieces(offset: bigint, length: bigint): Array<{ driver: BlockDriver; at: bigint; length: bigint; into: number }> {
    const out: Array<{ driver: BlockDriver; at: bigint; length: bigint; into: number }> = [];
    let pos = offset;
    const end = offset + length;
    for (let i = 0; i < this.parts.length && pos < end; i++) {
      const start = this.starts[i]!;
      const partEnd = start + this.parts[i]!.size();
      if (pos >= partEnd) continue;
      const n = (end < partEnd ? end : partEnd) - pos;
      out.push({ driver: this.parts[i]!, at: pos - start, length: n, into: Number(pos - offset) });
      pos += n;
    }
    return out;
  }
}

export async function convert(argv: string[], io: ImgIO): Promise<number> {
  const { options, operands } = getopt(argv, {
    short: 'hf:O:B:Cco:l:S:pt:T:qnm:WUr:F:',
    long: {
      help: { arg: false, alias: 'h' }, 'target-is-zero': { arg: false }, 'force-share': { arg: false, alias: 'U' },
      object: { arg: true }, 'image-opts': { arg: false }, 'target-image-opts': { arg: false }, salvage: { arg: false },
      bitmaps: { arg: false }, 'skip-broken-bitmaps': { arg: false },
    },
  });
  const opts = new Options(options);
  const outFormat = opts.get('O') ?? 'raw';
  const optionText = joinOptionStrings(opts.all('o'));
  if (isHelpRequest(opts.all('o'))) {
    checkFormatName('convert', outFormat);
    io.out(optionHelp(outFormat));
    return 0;
  }
  if (operands.length < 2) throw new UsageError('Must specify image file name');
  const target = operands[operands.length - 1]!;
  const sources = operands.slice(0, -1);
  checkFormatName(target, outFormat);
  // Accepted by qemu-img but not implemented here: refuse rather than silently ignore.
  if (opts.has('l')) throw new ImgError('-l (converting from an internal snapshot) is not supported; apply the snapshot to a copy first');
  if (opts.has('bitmaps')) throw new ImgError('--bitmaps is not supported: persistent dirty bitmaps are not implemented');
  const noCreate = opts.has('n');
  const compress = opts.has('c');
  const quiet = opts.has('q');
  const sparseText = opts.get('S');
  let sparse = 4096;
  if (sparseText !== undefined) {
    const s = parseSize(sparseText);
    if (s === undefined || s % 512n !== 0n || s > 16n << 20n) {
      throw new ImgError('Invalid buffer size for sparse output specified. Valid sizes are multiples of 512 up to 16MiB');
    }
    sparse = Number(s);
  }
  const parallelText = opts.get('m');
  const parallel = parallelText === undefined ? 8 : Number(parallelText);
  if (!Number.isInteger(parallel) || parallel < 1 || parallel > 16) throw new ImgError('Invalid number of coroutines. Allowed number of coroutines is between 1 and 16');
  if (compress && outFormat !== 'qcow2') throw new ImgError(`${target}: Compression not supported for this file format`);
  if (noCreate && optionText !== '') throw new ImgError('-o has no effect when skipping image creation');
  const backingFile = opts.get('B');
  const createOptions = noCreate ? {} : parseCreateOptions(target, outFormat, optionText);
  if (backingFile !== undefined) {
    if (outFormat !== 'qcow2') throw new ImgError(`${target}: Backing file not supported for file format '${outFormat}'`);
    createOptions.backingFile = backingFile;
    createOptions.backingFormat = opts.get('F') ?? createOptions.backingFormat;
  }

  // Like qemu-img: the new image is written without flushes (cache=unsafe) unless -t says otherwise.
  const targetCache = cacheMode(opts.get('t'), 'unsafe');
  const sourceCache = cacheMode(opts.get('T'), 'writeback');
  // Asked before any file is opened: the thread pool's size is fixed by its first request.
  if (io.writesOnlyOnPool && convertWritesOnly({ sources, sourceFormat: opts.get('f'), sourceCache, targetCache, compress })) io.writesOnlyOnPool();
  const drivers: BlockDriver[] = [];
  const hostHoles = new HostHoleFiles();
  let out: BlockDriver | undefined;
  try {
    for (const s of sources) drivers.push(await openForImg(s, { readOnly: true, format: opts.get('f'), cache: sourceCache }));
    const source = new Concatenation(drivers);
    const size = source.size;
    if (!noCreate) await createImage(target, outFormat, createOptions.size ?? size, createOptions);
    out = await openForImg(target, { format: outFormat, backing: false, cache: targetCache });
    if (noCreate && out.size() < size) throw new ImgError(`${target}: Target image is smaller than the source (${out.size()} < ${size} bytes)`);
    // A freshly created image without backing file reads as zeroes: skipping zero data is
    // enough. (The backing file may come from -B or from -o backing_file=.)
    const targetIsZero = opts.has('target-is-zero') || (!noCreate && createOptions.backingFile === undefined
      && createOptions.preallocation !== 'full' && createOptions.preallocation !== 'falloc');
    const writer = compress ? await compressedWriter(out, { zeroesNeeded: !targetIsZero }) : undefined;
    const progress = await progressBar(io, size, opts.has('p') && !quiet);
    const output = out;
    const pool: Buffer[] = [];
    let copiedBytes = 0n;
    /** The last run of zeroes block status reported past a chunk (see zeroesUntil). */
    let knownZeroes = { start: 0n, end: 0n };
    let lookahead = LOOKAHEAD;
    /** The zeroesUntil question being answered: the lanes ask one at a time. */
    let zeroesAsked: Promise<unknown> = Promise.resolve();
    await forEachChunk(size, CHUNK, parallel, async (offset, length) => {
      if (writer) {
        // Compressed clusters are written whole: gather the chunk, zero-filled where the
        // source has holes; the writer leaves all-zero clusters out, or writes them as zeroes
        // into a target that does not read as zero.
        const buf = Buffer.alloc(Number(length));
        let anyData = false;
        for (const piece of source.pieces(offset, length)) {
          anyData = (await readDataInto(piece.driver, piece.at, piece.length, buf, piece.into)) || anyData;
        }
        if (anyData) await writer.write(offset, buf);
        else if (!targetIsZero) await output.writeZeroes(offset, length, { mayUnmap: true });
        progress.add(length);
        return anyData || !targetIsZero ? undefined : zeroesUntil(offset + length);
      }
      let allZero = true;
      for (const piece of source.pieces(offset, length)) {
        allZero = (await copyPiece(piece.driver, piece.at, piece.length, output, offset + BigInt(piece.into))) && allZero;
      }
      progress.add(length);
      // Zeroes need no writes into a target that reads as zero: a long run of them is skipped.
      return allZero && targetIsZero && sparse !== 0 ? zeroesUntil(offset + length) : undefined;
    }, (length) => progress.add(length));

    /**
     * Where the run of zeroes in the source that starts at `from` ends, looking at most
     * `lookahead` ahead (each question then costs a bounded walk of the source's tables).
     * The lanes finish neighbouring chunks at about the same time: asked one at a time, the
     * run the first of them finds answers the others, which would each walk the same entries.
     */
    function zeroesUntil(from: bigint): Promise<bigint | undefined> {
      const answer = zeroesAsked.then(() => askZeroesUntil(from));
      zeroesAsked = answer.catch(() => undefined);
      return answer;
    }

    async function askZeroesUntil(from: bigint): Promise<bigint | undefined> {
      if (from >= size) return undefined;
      if (from >= knownZeroes.start && from < knownZeroes.end) return knownZeroes.end;
      const window = size - from < lookahead ? size - from : lookahead;
      const [piece] = source.pieces(from, window);
      const status = await piece!.driver.blockStatus(piece!.at, piece!.length);
      const length = extentLength(piece!.driver, status, piece!.length);
      if (!status.zero) {
        lookahead = LOOKAHEAD;
        return undefined;
      }
      lookahead = length === window && lookahead < LOOKAHEAD_MAX ? lookahead * 2n : LOOKAHEAD;
      knownZeroes = { start: from, end: from + length };
      return knownZeroes.end;
    }

    /**
     * How much of the `left` bytes `status` answers for, after looking through to the host
     * file, where data over a hole becomes known zeroes (a metadata-preallocated qcow2).
     */
    function extentLength(from: BlockDriver, status: BlockStatus, left: bigint): bigint {
      const n = status.length > 0n && status.length < left ? status.length : left;
      const seen = lookThrough(from, status, n, hostHoles);
      return seen > 0n ? seen : n;
    }

    /**
     * The extents of [at, at+length) of `from`, in order: where each starts (counted from
     * `at`), how long it is, and whether it is known to read as zeroes.
     */
    async function* extentsOf(from: BlockDriver, at: bigint, length: bigint): AsyncGenerator<{ pos: bigint; n: bigint; zero: boolean }> {
      for (let pos = 0n; pos < length;) {
        const status = await from.blockStatus(at + pos, length - pos);
        const n = extentLength(from, status, length - pos);
        yield { pos, n, zero: status.zero };
        pos += n;
      }
    }

    /** Reads only the data extents of [at, at+length) into buf at `into`; true if there were any. */
    async function readDataInto(from: BlockDriver, at: bigint, length: bigint, buf: Buffer, into: number): Promise<boolean> {
      let any = false;
      for await (const { pos, n, zero } of extentsOf(from, at, length)) {
        if (zero) continue;
        const start = into + Number(pos);
        await from.readv(at + pos, [buf.subarray(start, start + Number(n))]);
        any = true;
      }
      return any;
    }

    /** Copies [at, at+length) of `from` to `dest`; true when the source reported it all as zeroes. */
    async function copyPiece(from: BlockDriver, at: bigint, length: bigint, to: BlockDriver, dest: bigint): Promise<boolean> {
      let allZero = true;
      for await (const { pos, n, zero } of extentsOf(from, at, length)) {
        // Known zeroes are not read, even where a source also reports data (allocated, but
        // over a hole in its file): like qemu-img, zero wins over data.
        if (zero && sparse !== 0) {
          if (!targetIsZero) await to.writeZeroes(dest + pos, n, { mayUnmap: true });
        } else if (zero) {
          // -S 0: the output is to be fully allocated, so zeroes are written as data.
          const zeroes = Buffer.alloc(Number(n < 1n << 20n ? n : 1n << 20n));
          for (let done = 0n; done < n; done += BigInt(zeroes.length)) {
            const k = n - done < BigInt(zeroes.length) ? Number(n - done) : zeroes.length;
            await to.writev(dest + pos + done, [zeroes.subarray(0, k)]);
          }
        } else {
          // Said once the copy has met some data, not at start: a convert of a nearly empty
          // image would pay for the switch (loading node:v8, 2.5 ms) and gain nothing from it.
          if (copiedBytes < BULK_COPY_AFTER && copiedBytes + n >= BULK_COPY_AFTER) io.bulkCopyOnly?.();
          copiedBytes += n;
          await copyData(from, at + pos, n, to, dest + pos);
        }
        allZero &&= zero;
      }
      return allZero;
    }

    /** Copies the data at `at` of `from` to `dest`, leaving out runs of zeroes (writeSparse). */
    async function copyData(from: BlockDriver, at: bigint, n: bigint, to: BlockDriver, dest: bigint): Promise<void> {
      // A source open read-only offers its page cache's own bytes (a raw file's, a qcow2
      // file's data clusters): scanned and written from there, they are not first copied
      // into a buffer. A convert of 2 GiB, half of it
      // written zeroes, went from 0.43-0.44 s to 0.37 s (qemu-img: 0.40-0.44 s).
      const mapped = from.mapForRead?.(at, n);
      // Each run is scanned for zeroes on its own: its blocks must line up with the output's.
      if (mapped && (sparse === 0 || mapped.runs.every((r) => r.at % sparse === 0))) {
        try {
          for (const run of mapped.runs) await writeSparse(to, dest + BigInt(run.at), run.bytes);
        } finally {
          mapped.release();
        }
        return;
      }
      mapped?.release();
      // Reuse chunk buffers: fresh 2 MiB allocations cost page faults on every chunk. Each
      // starts on a page: the kernel's copies into and out of a buffer that malloc placed
      // 16 bytes past one took 2.5 times as long (raw->qcow2 of 1 GiB: 0.40 s of system
      // time against 0.30 s, and 0.31-0.55 s against 0.26-0.33 s in all). Not zero-filled:
      // the read below fills what the write takes.
      const whole = pool.pop() ?? uninitializedAlignedBuffer(Number(CHUNK));
      try {
        const buf = whole.subarray(0, Number(n));
        await from.readv(at, [buf]);
        await writeSparse(to, dest, buf);
      } finally {
        pool.push(whole);
      }
    }

    /** Writes buf, leaving out runs of zeroes at least `sparse` bytes long (aligned to it). */
    async function writeSparse(to: BlockDriver, dest: bigint, buf: Buffer): Promise<void> {
      if (sparse === 0) {
        await to.writev(dest, [buf]);
        return;
      }
      for (const run of zeroRuns(buf, sparse)) {
        if (run.zero) {
          if (!targetIsZero) await to.writeZeroes(dest + BigInt(run.start), BigInt(run.end - run.start), { mayUnmap: true });
        } else {
          await to.writev(dest + BigInt(run.start), [buf.subarray(run.start, run.end)]);
        }
      }
    }

    if (writer) await writer.finish();
    await out.flush();
    progress.stop();
    return 0;
  } finally {
    hostHoles.close();
    for (const d of drivers) await d.close().catch(() => undefined);
    await out?.close().catch(() => undefined);
  }
}
