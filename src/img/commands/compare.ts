// `tsvirt img compare`: are two images' guest-visible contents the same? Exit 0 identical,
// 1 different (with the first differing 512-byte sector's offset, as qemu-img says it), 2 error.
import type { BlockDriver } from '../../block/driver.js';
import { ImgError } from '../errors.js';
import { getopt, Options } from '../getopt.js';
import type { ImgIO } from '../io.js';
import { extents, isZero, readRange } from '../extents.js';
import { openForImg } from '../open.js';

const SECTOR = 512n;
const CHUNK = 1n << 20n;

/** Offset of the first differing byte rounded down to its sector, or undefined if equal. */
function firstDifference(a: Uint8Array, b: Uint8Array, base: bigint): bigint | undefined {
  if (Buffer.compare(a, b) === 0) return undefined;
  // Narrow down in 64 KiB steps with native compares, then bytewise.
  let pos = 0;
  const step = 65536;
  while (pos < a.length && Buffer.compare(a.subarray(pos, pos + step), b.subarray(pos, pos + step)) === 0) pos += step;
  while (a[pos] === b[pos]) pos++;
  return ((base + BigInt(pos)) / SECTOR) * SECTOR;
}

/** First non-zero sector of driver in [from, to), or undefined. */
async function firstNonZero(driver: BlockDriver, from: bigint, to: bigint): Promise<bigint | undefined> {
  for await (const e of extents(driver, from, to, CHUNK)) {
    if (!e.data && e.zero) continue;
    const buf = await readRange(driver, e.start, Number(e.length));
    if (!isZero(buf)) {
      let pos = 0;
      while (buf[pos] === 0) pos++;
      return ((e.start + BigInt(pos)) / SECTOR) * SECTOR;
    }
  }
  return undefined;
}

export async function compare(argv: string[], io: ImgIO): Promise<number> {
  const { options, operands } = getopt(argv, {
    short: 'hf:F:T:pqsU',
    long: { help: { arg: false, alias: 'h' }, 'force-share': { arg: false, alias: 'U' }, object: { arg: true }, 'image-opts': { arg: false } },
  });
  const opts = new Options(options);
  if (operands.length !== 2) throw new ImgError('Expecting two image file names');
  const [file1, file2] = operands as [string, string];
  const quiet = opts.has('q');
  const strict = opts.has('s');
  const say = (text: string): void => {
    if (!quiet) io.out(text);
  };
  // Errors (unopenable images, I/O errors) are exit status 2 for compare, unlike other commands.
  let a: BlockDriver | undefined;
  let b: BlockDriver | undefined;
  try {
    a = await openForImg(file1, { readOnly: true, format: opts.get('f') });
    b = await openForImg(file2, { readOnly: true, format: opts.get('F') });
    const sizeA = a.size();
    const sizeB = b.size();
    const common = sizeA < sizeB ? sizeA : sizeB;
    if (strict && sizeA !== sizeB) {
      say('Strict mode: Image size mismatch!\n');
      return 1;
    }
    for (let offset = 0n; offset < common;) {
      const sa = await a.blockStatus(offset, common - offset < CHUNK ? common - offset : CHUNK);
      const sb = await b.blockStatus(offset, common - offset < CHUNK ? common - offset : CHUNK);
      let length = sa.length < sb.length ? sa.length : sb.length;
      if (length <= 0n) length = common - offset < CHUNK ? common - offset : CHUNK;
      const zeroA = !sa.data && sa.zero;
      const zeroB = !sb.data && sb.zero;
      if (strict && (sa.data !== sb.data || zeroA !== zeroB)) {
        say(`Strict mode: Offset ${offset} block status mismatch!\n`);
        return 1;
      }
      if (!(zeroA && zeroB)) {
        const bufA = zeroA ? Buffer.alloc(Number(length)) : await readRange(a, offset, Number(length));
        const bufB = zeroB ? Buffer.alloc(Number(length)) : await readRange(b, offset, Number(length));
        const diff = firstDifference(bufA, bufB, offset);
        if (diff !== undefined) {
          say(`Content mismatch at offset ${diff}!\n`);
          return 1;
        }
      }
      offset += length;
    }
    if (sizeA !== sizeB) {
      // The longer image must read as zeroes past the shorter one's end.
      say('Warning: Image size mismatch!\n');
      const longer = sizeA > sizeB ? a : b;
      const diff = await firstNonZero(longer, common, longer.size());
      if (diff !== undefined) {
        say(`Content mismatch at offset ${diff}!\n`);
        return 1;
      }
    }
    say('Images are identical.\n');
    return 0;
  } catch (err) {
    if (err instanceof ImgError) throw new ImgError(err.message, 2);
    throw new ImgError(err instanceof Error ? err.message : String(err), 2);
  } finally {
    await a?.close().catch(() => undefined);
    await b?.close().catch(() => undefined);
  }
}
