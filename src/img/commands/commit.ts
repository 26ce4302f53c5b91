// `tsvirt img commit`: write what an image and the images between it and a base in its
// backing chain hold into that base (by default the immediate backing file), then, unless
// -d or -b, empty the image so it reads through to the updated backing file. As with
// qemu-img, -b implies -d: the images above the base are left as they are (after the commit
// the ones between the top and the base no longer read as they did).
import { realpath } from 'node:fs/promises';
import type { BlockDriver } from '../../block/driver.js';
import { createQcow2 } from '../../block/qcow2/create.js';
import { listQcow2Snapshots } from '../../block/qcow2/api.js';
import { COMPAT_LAZY_REFCOUNTS, INCOMPAT_EXTL2 } from '../../block/qcow2/header.js';
import type { Qcow2Image } from '../../block/qcow2/image.js';
import { ImgError, UsageError } from '../errors.js';
import { getopt, Options } from '../getopt.js';
import type { ImgIO } from '../io.js';
import { openChainLayers, type ChainLayer } from '../chain.js';
import { extents } from '../extents.js';
import { cacheMode, checkFormatName, openForImg } from '../open.js';
import { progressBar } from '../progress.js';
import { parseSize } from '../size.js';

const CHUNK = 1n << 20n;

/** The chain position (1 = the immediate backing file) that -b names, or undefined. */
async function findBase(chain: ChainLayer[], wanted: string): Promise<number | undefined> {
  const real = await realpath(wanted).catch(() => undefined);
  for (let i = 1; i < chain.length; i++) {
    const layer = chain[i]!;
    if (wanted === layer.nameInParent || wanted === layer.filename) return i;
    if (real !== undefined && real === (await realpath(layer.filename).catch(() => undefined))) return i;
  }
  return undefined;
}

/**
 * A rate limit for `bytesPerSecond` (0: none): each call waits until the bytes written before
 * it fit the rate since the first call, then counts `length` more.
 */
function rateLimiter(bytesPerSecond: number): (length: bigint) => Promise<void> {
  if (bytesPerSecond <= 0) return async () => undefined;
  let start: number | undefined;
  let written = 0;
  return async (length) => {
    start ??= performance.now();
    const due = start + (written / bytesPerSecond) * 1000;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    written += Number(length);
  };
}

export async function commit(argv: string[], io: ImgIO): Promise<number> {
  const { options, operands } = getopt(argv, {
    short: 'hf:t:b:dpqr:',
    long: { help: { arg: false, alias: 'h' }, object: { arg: true }, 'image-opts': { arg: false } },
  });
  const opts = new Options(options);
  if (operands.length !== 1) throw new UsageError('Expecting one image file name');
  const filename = operands[0]!;
  checkFormatName(filename, opts.get('f'));
  const rateText = opts.get('r');
  const rate = rateText === undefined ? undefined : parseSize(rateText);
  if (rateText !== undefined && rate === undefined) {
    throw new ImgError('Invalid rate limit specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.');
  }
  // -r: bytes written per second at most (0: no limit, as in qemu-img).
  const throttle = rateLimiter(rate ? Number(rate) : 0);
  const cache = cacheMode(opts.get('t'), 'writeback');
  const quiet = opts.has('q');
  const wanted = opts.get('b');
  // Opened with its whole chain: the extents say which layer holds each byte.
  const top = await openForImg(filename, { format: opts.get('f'), readOnly: true, cache });
  let base: BlockDriver | undefined;
  let header: Qcow2Image['header'] | undefined;
  try {
    header = (top as Partial<Qcow2Image>).header;
    if (!header?.backingFile) throw new ImgError('Image does not have a backing file');
    // Named from the headers the open just read (each layer's backing name and format).
    const chain = openChainLayers(top, filename, top.format);
    const depth = wanted === undefined ? 1 : await findBase(chain, wanted);
    if (depth === undefined || depth >= chain.length) throw new ImgError(`Did not find '${wanted}' in the backing chain of '${filename}'`);
    const target = chain[depth]!;
    base = await openForImg(target.filename, { format: target.format, cache });
    if (base.size() < top.size()) await base.resize(top.size());
    const progress = await progressBar(io, top.size(), opts.has('p') && !quiet);
    // Whatever a layer above the base holds (data, or clusters that read as zeroes) goes
    // down; what the top reads from the base or below is there already.
    for await (const e of extents(top, 0n, top.size(), CHUNK)) {
      if (e.depth < depth) {
        if (e.data) {
          const buf = Buffer.allocUnsafe(Number(e.length));
          await top.readv(e.start, [buf]);
          await throttle(e.length);
          await base.writev(e.start, [buf]);
        } else if (e.present) {
          await throttle(e.length);
          await base.writeZeroes(e.start, e.length);
        }
      }
      progress.add(e.length);
    }
    await base.flush();
    progress.stop();
  } finally {
    await base?.close().catch(() => undefined);
    await top.close().catch(() => undefined);
  }
  if (!quiet) io.out('Image committed.\n');
  if (!opts.has('d') && wanted === undefined && header) {
    // Emptying = a fresh image with the same options and backing file. Internal snapshots
    // would be lost that way, so an image that has some is kept as it is (as with -d).
    if ((await listQcow2Snapshots(filename)).length > 0) {
      io.err(`tsvirt img: ${filename}: not emptied after commit: it has internal snapshots\n`);
      return 0;
    }
    await createQcow2(filename, {
      size: header.size, clusterSize: 1 << header.clusterBits, compat: header.version === 2 ? '0.10' : '1.1',
      backingFile: header.backingFile, backingFormat: header.backingFormat, refcountBits: 1 << header.refcountOrder,
      extendedL2: (header.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n,
      lazyRefcounts: (header.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n,
    });
  }
  return 0;
}
