// `tsvirt img rebase`: point an image at a new backing file. Safe mode first copies into the
// image every cluster whose content would change (old chain != new backing); -u only rewrites
// the header.
import type { BlockDriver } from '../../block/driver.js';
import { setQcow2Backing } from '../../block/qcow2/api.js';
import { probeFormat } from '../../block/probe.js';
import { ImgError, UsageError, oneLine } from '../errors.js';
import { getopt, Options } from '../getopt.js';
import type { ImgIO } from '../io.js';
import { resolveBacking } from '../chain.js';
import { extents } from '../extents.js';
import { checkFormatName, openForImg } from '../open.js';

const CHUNK = 1n << 20n;

async function changeBacking(filename: string, backing: string | undefined, format: string | undefined): Promise<void> {
  try {
    await setQcow2Backing(filename, backing, format);
  } catch (err) {
    throw new ImgError(`Could not change the backing file to '${backing ?? ''}': ${oneLine(err)}`);
  }
}

/** Reads [offset, offset+n) of `driver`, zero past its end (a shorter backing file reads as zeroes). */
async function readPadded(driver: BlockDriver | undefined, offset: bigint, n: number): Promise<Buffer> {
  const buf = Buffer.alloc(n);
  if (!driver || offset >= driver.size()) return buf;
  const avail = driver.size() - offset < BigInt(n) ? Number(driver.size() - offset) : n;
  await driver.readv(offset, [buf.subarray(0, avail)]);
  return buf;
}

export async function rebase(argv: string[], _io: ImgIO): Promise<number> {
  const { options, operands } = getopt(argv, {
    short: 'hf:F:b:uqpt:T:cU',
    long: { help: { arg: false, alias: 'h' }, 'force-share': { arg: false, alias: 'U' }, object: { arg: true }, 'image-opts': { arg: false } },
  });
  const opts = new Options(options);
  if (operands.length !== 1) throw new UsageError('Expecting one image file name');
  const filename = operands[0]!;
  const unsafe = opts.has('u');
  if (!opts.has('b') && !unsafe) throw new UsageError('Must specify backing file (-b) or use unsafe mode (-u)');
  const backingName = opts.get('b') || undefined; // -b '' removes the backing file
  checkFormatName(filename, opts.get('f'));
  let backingFormat = opts.get('F');
  checkFormatName(backingName ?? filename, backingFormat);
  const format = opts.get('f') ?? (await probeFormat(filename).catch((err: unknown) => {
    throw new ImgError(`Could not open '${filename}': ${oneLine(err).replace(`${filename}: `, '')}`);
  }));
  if (format !== 'qcow2') throw new ImgError(`${filename}: Could not change the backing file: the image format '${format}' has no backing file`);
  if (unsafe) {
    if (backingName && backingFormat === undefined) throw new ImgError(`Could not change the backing file to '${backingName}': backing format must be specified`);
    await changeBacking(filename, backingName, backingFormat);
    return 0;
  }
  const newPath = backingName === undefined ? undefined : resolveBacking(filename, backingName);
  let newBacking: BlockDriver | undefined;
  if (newPath !== undefined) {
    try {
      backingFormat ??= await probeFormat(newPath);
      newBacking = await openForImg(newPath, { readOnly: true, format: backingFormat });
    } catch (err) {
      throw new ImgError(`Could not open new backing file '${backingName}': ${oneLine(err)}`);
    }
  }
  const image = await openForImg(filename, { format: 'qcow2' });
  try {
    // Only extents the image does not hold itself can change meaning; copy those that differ.
    for await (const e of extents(image, 0n, image.size(), CHUNK)) {
      if (e.depth === 0 && e.present) continue;
      for (let pos = e.start; pos < e.start + e.length; pos += CHUNK) {
        const n = Number(e.start + e.length - pos < CHUNK ? e.start + e.length - pos : CHUNK);
        const old = await readPadded(image, pos, n);
        const now = await readPadded(newBacking, pos, n);
        if (Buffer.compare(old, now) !== 0) await image.writev(pos, [old]);
      }
    }
    await image.flush();
  } finally {
    await image.close().catch(() => undefined);
    await newBacking?.close().catch(() => undefined);
  }
  await changeBacking(filename, backingName, backingName ? backingFormat : undefined);
  return 0;
}
