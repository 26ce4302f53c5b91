// `tsvirt img bench`: a fixed number of same-sized requests at a fixed queue depth, walking the
// image with a step, like qemu-img bench; prints the same two lines.
import type { CacheMode } from '../../block/driver.js';
import type { IoUring } from '../../kvm/io-uring.js';
import { alignedBuffer, createIoRing } from '../../block/host-file.js';
import { ImgError, UsageError } from '../errors.js';
import { getopt, Options } from '../getopt.js';
import type { ImgIO } from '../io.js';
import { withImage } from '../open.js';
import { AIO_ENGINES, isAioEngine, rerunWithIoSetup } from '../io-threads.js';
import { parseSize } from '../size.js';

const CACHE_MODES = ['none', 'writeback', 'writethrough', 'directsync', 'unsafe'];

function positiveInt(text: string, what: string, max = 2 ** 31 - 1): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < 1 || n > max) throw new ImgError(`Invalid ${what} specified: '${text}'`);
  return n;
}

export async function bench(argv: string[], io: ImgIO): Promise<number> {
  const { options, operands } = getopt(argv, {
    short: 'hc:d:f:ni:o:qs:S:t:wU',
    long: { help: { arg: false, alias: 'h' }, pattern: { arg: true }, 'flush-interval': { arg: true }, 'no-drain': { arg: false }, 'force-share': { arg: false, alias: 'U' }, 'image-opts': { arg: false }, object: { arg: true } },
  });
  const opts = new Options(options);
  // -i: the I/O engine, as in qemu-img (which also has 'native', Linux AIO: not offered here).
  const asked = opts.get('i');
  if (asked !== undefined && !isAioEngine(asked)) {
    throw new ImgError(`Invalid aio option '${asked}': this build offers ${AIO_ENGINES.join(' and ')}`);
  }
  // A kernel without io_uring (or with it switched off) runs the default on the pool; asked
  // for by name, io_uring is an error there.
  const ring = asked !== 'threads' ? createIoRing() : undefined;
  if (asked === 'io_uring' && !ring) throw new ImgError('-i io_uring: this kernel does not offer io_uring to this process');
  const rerun = rerunWithIoSetup(['bench', ...argv], ring ? 'io_uring' : 'threads');
  if (rerun) {
    ring?.close();
    return rerun;
  }
  try {
    return await runBench(opts, operands, io, ring);
  } finally {
    // After an error some requests may still be on their way: the ring then goes with the process.
    if (ring && !ring.busy) ring.close();
  }
}

async function runBench(opts: Options, operands: string[], io: ImgIO, ring: IoUring | undefined): Promise<number> {
  if (operands.length !== 1) throw new UsageError('Expecting one image file name');
  const filename = operands[0]!;
  const count = opts.has('c') ? positiveInt(opts.get('c')!, 'request count') : 75000;
  const depth = opts.has('d') ? positiveInt(opts.get('d')!, 'queue depth', 65536) : 64;
  const sizeValue = opts.has('s') ? parseSize(opts.get('s')!) : 4096n;
  if (sizeValue === undefined || sizeValue <= 0n || sizeValue > 1n << 30n) throw new ImgError(`Invalid buffer size specified: '${opts.get('s')}'`);
  const bufSize = Number(sizeValue);
  const offsetValue = opts.has('o') ? parseSize(opts.get('o')!) : 0n;
  if (offsetValue === undefined) throw new ImgError(`Invalid offset specified: '${opts.get('o')}'`);
  const stepValue = opts.has('S') ? parseSize(opts.get('S')!) : BigInt(bufSize);
  if (stepValue === undefined) throw new ImgError(`Invalid step size specified: '${opts.get('S')}'`);
  const write = opts.has('w');
  let pattern = 0;
  if (opts.has('pattern')) {
    const p = Number(opts.get('pattern'));
    if (!Number.isInteger(p) || p < 0 || p > 255) throw new ImgError(`Invalid pattern byte specified: '${opts.get('pattern')}'`);
    pattern = p;
  }
  let flushInterval = 0;
  if (opts.has('flush-interval')) {
    if (!write) throw new ImgError('--flush-interval is only available in write tests');
    flushInterval = Number(opts.get('flush-interval'));
    if (!Number.isInteger(flushInterval) || flushInterval < 0) throw new ImgError(`Invalid flush interval specified: '${opts.get('flush-interval')}'`);
  }
  const cache = opts.get('t') ?? (opts.has('n') ? 'none' : 'writeback');
  if (!CACHE_MODES.includes(cache)) throw new ImgError(`Invalid cache mode '${cache}'`);
  return withImage(filename, { format: opts.get('f'), readOnly: !write, cache: cache as CacheMode, ring }, async (driver) => {
    const imageSize = driver.size();
    if (offsetValue + BigInt(bufSize) > imageSize) throw new ImgError(`${filename}: Offset and request size do not fit in the image (${imageSize} bytes)`);
    if (!opts.has('q')) {
      io.out(`Sending ${count} ${write ? 'write' : 'read'} requests, ${bufSize} bytes each, ${depth} in parallel `
        + `(starting at offset ${offsetValue}, step size ${stepValue})\n`);
    }
    // One buffer per queue slot, aligned in memory (like qemu-img's) so cache=none (O_DIRECT)
    // can use it with no bounce buffer.
    const buffers = Array.from({ length: Math.min(depth, count) }, () => alignedBuffer(bufSize).fill(pattern));
    // Offsets are walked in numbers (image sizes stay far below 2^53): BigInt arithmetic
    // allocates, and a request's own cost is what this command measures.
    const size = Number(imageSize);
    const step = Number(stepValue % (imageSize === 0n ? 1n : imageSize));
    let nextOffset = Number(offsetValue);
    let issued = 0;
    let sinceFlush = 0;
    const started = process.hrtime.bigint();
    const lane = async (buffer: Buffer): Promise<void> => {
      while (issued < count) {
        issued++;
        const offset = BigInt(nextOffset);
        // qemu-img's walk: the next offset wraps modulo the image size (a prime step thus
        // visits offsets all over the image); a request that then runs past the end fails.
        nextOffset = size === 0 ? 0 : (nextOffset + step) % size;
        if (write) await driver.writev(offset, [buffer]);
        else await driver.readv(offset, [buffer]);
        if (flushInterval > 0 && ++sinceFlush >= flushInterval) {
          sinceFlush = 0;
          await driver.flush();
        }
      }
    };
    await Promise.all(buffers.map(lane));
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    if (!opts.has('q')) io.out(`Run completed in ${seconds.toFixed(3)} seconds.\n`);
    return 0;
  });
}
