// `tsvirt img commit`: write what an image holds into its backing file, then (unless -d)
// empty the image so it reads through to the updated backing file.
import type { BlockDriver } from '../../block/driver.js';
import { createQcow2 } from '../../block/qcow2/create.js';
import { listQcow2Snapshots } from '../../block/qcow2/api.js';
import { COMPAT_LAZY_REFCOUNTS, INCOMPAT_EXTL2 } from '../../block/qcow2/header.js';
import type { Qcow2Image } from '../../block/qcow2/image.js';
import { ImgError, UsageError } from '../errors.js';
import { getopt, Options } from '../getopt.js';
import type { ImgIO } from '../io.js';
import { resolveBacking } from '../chain.js';
import { extents } from '../extents.js';
import { checkFormatName, openForImg } from '../open.js';

const CHUNK = 1n << 20n;

export async function commit(argv: string[], io: ImgIO): Promise<number> {
  const { options, operands } = getopt(argv, {
    short: 'hf:t:b:dpqr:',
    long: { help: { arg: false, alias: 'h' }, object: { arg: true }, 'image-opts': { arg: false } },
  });
  const opts = new Options(options);
  if (operands.length !== 1) throw new UsageError('Expecting one image file name');
  const filename = operands[0]!;
  checkFormatName(filename, opts.get('f'));
  // Opened without its chain: what matters is what this image itself holds.
  const top = await openForImg(filename, { format: opts.get('f'), backing: false });
  let base: BlockDriver | undefined;
  let header: Qcow2Image['header'] | undefined;
  try {
    header = (top as Partial<Qcow2Image>).header;
    if (!header?.backingFile) throw new ImgError('Image does not have a backing file');
    const basePath = resolveBacking(filename, header.backingFile);
    const wanted = opts.get('b');
    if (wanted !== undefined && wanted !== header.backingFile && wanted !== basePath) {
      throw new ImgError(`Did not find '${wanted}' in the backing chain of '${filename}' (only the immediate backing file can be committed into)`);
    }
    base = await openForImg(basePath, { format: header.backingFormat });
    if (base.size() < top.size()) await base.resize(top.size());
    const zeroCluster = async (offset: bigint): Promise<boolean> => {
      const q = top as Partial<Qcow2Image>;
      if (typeof q.lookup !== 'function' || q.clusterSize === undefined) return false;
      return (await q.lookup(Number(offset / BigInt(q.clusterSize)))).kind === 'zero';
    };
    for await (const e of extents(top, 0n, top.size(), CHUNK)) {
      if (e.data) {
        const buf = Buffer.allocUnsafe(Number(e.length));
        await top.readv(e.start, [buf]);
        await base.writev(e.start, [buf]);
      } else if (e.zero && (await zeroCluster(e.start))) {
        await base.writeZeroes(e.start, e.length);
      }
    }
    await base.flush();
  } finally {
    await base?.close().catch(() => undefined);
    await top.close().catch(() => undefined);
  }
  if (!opts.has('q')) io.out('Image committed.\n');
  if (!opts.has('d') && header) {
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
