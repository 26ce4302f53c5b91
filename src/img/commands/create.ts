// `tsvirt img create`: a new raw or qcow2 image, optionally on a backing file; prints qemu-img's
// "Formatting ..." line.
import { ImgError, UsageError } from '../errors.js';
import { getopt, Options } from '../getopt.js';
import type { ImgIO } from '../io.js';
import { createImage } from '../create.js';
import { isHelpRequest, joinOptionStrings, optionHelp, parseCreateOptions, type CreateOptions } from '../create-options.js';
import { checkFormatName, withImage } from '../open.js';
import { resolveBacking } from '../chain.js';
import { parseImageSize } from '../size.js';

export function formattingLine(filename: string, format: string, size: bigint, o: CreateOptions): string {
  const parts = [`Formatting '${filename}', fmt=${format}`];
  if (format === 'qcow2') {
    parts.push(`cluster_size=${o.clusterSize ?? 65536}`);
    if (o.compat === '0.10') parts.push('compat=0.10');
    if (o.backingFile !== undefined) parts.push(`backing_file=${o.backingFile}`);
    if (o.backingFormat !== undefined) parts.push(`backing_fmt=${o.backingFormat}`);
    if (o.preallocation !== undefined) parts.push(`preallocation=${o.preallocation}`);
    parts.push(`extended_l2=${o.extendedL2 ? 'on' : 'off'}`, 'compression_type=zlib', `size=${size}`,
      `lazy_refcounts=${o.lazyRefcounts ? 'on' : 'off'}`, `refcount_bits=${o.refcountBits ?? 16}`);
  } else {
    if (o.preallocation !== undefined) parts.push(`preallocation=${o.preallocation}`);
    parts.push(`size=${size}`);
  }
  return parts.join(' ') + '\n';
}

export async function create(argv: string[], io: ImgIO): Promise<number> {
  const { options, operands } = getopt(argv, {
    short: 'F:b:f:ho:qu',
    long: { help: { arg: false, alias: 'h' }, object: { arg: true } },
  });
  const opts = new Options(options);
  const format = opts.get('f') ?? 'raw';
  if (isHelpRequest(opts.all('o'))) {
    checkFormatName('create', format);
    io.out(optionHelp(format));
    return 0;
  }
  if (operands.length < 1) throw new UsageError('Expecting image file name');
  if (operands.length > 2) throw new UsageError(`Unexpected argument: ${operands[2]}`);
  const filename = operands[0]!;
  checkFormatName(filename, format);
  const o = parseCreateOptions(filename, format, joinOptionStrings(opts.all('o')));
  if (opts.has('b')) o.backingFile = opts.get('b');
  if (opts.has('F')) o.backingFormat = opts.get('F');
  let size = operands[1] !== undefined ? parseImageSize(operands[1]) : o.size;
  if (o.backingFile !== undefined && o.backingFile !== '') {
    if (format !== 'qcow2') throw new ImgError(`${filename}: Backing file not supported for file format '${format}'`);
    if (o.backingFormat === undefined) throw new ImgError(`${filename}: Backing file specified without backing format`);
    checkFormatName(filename, o.backingFormat);
    // qemu-img opens the backing file to validate it and, without a size, to take its size.
    const path = resolveBacking(filename, o.backingFile);
    const backingSize = opts.has('u') && size !== undefined ? size : await withImage(path, { readOnly: true, format: o.backingFormat, backing: false }, async (d) => d.size())
      .catch((err: unknown) => { throw new ImgError(`${filename}: ${err instanceof Error ? err.message : String(err)}; could not open backing image`); });
    size ??= backingSize;
  } else if (o.backingFile === '') {
    o.backingFile = undefined;
  }
  if (size === undefined) throw new ImgError(`${filename}: Image creation needs a size parameter`);
  if (!opts.has('q')) io.out(formattingLine(filename, format, size, o));
  await createImage(filename, format, size, o);
  return 0;
}
