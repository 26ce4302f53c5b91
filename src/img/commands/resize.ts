// `tsvirt img resize`: change the virtual size, absolutely or by +/- a delta; shrinking needs --shrink.
import { ImgError, UsageError } from '../errors.js';
import { getopt, Options } from '../getopt.js';
import type { ImgIO } from '../io.js';
import { withImage } from '../open.js';
import { parseSize } from '../size.js';

export async function resize(argv: string[], io: ImgIO): Promise<number> {
  // "-1G" would look like an option: qemu-img also takes a last argument of that shape as the size.
  const args = [...argv];
  let sizeArg: string | undefined;
  if (args.length > 0 && /^-\d/.test(args[args.length - 1]!)) sizeArg = args.pop();
  const { options, operands } = getopt(args, {
    short: 'hf:qU',
    long: { help: { arg: false, alias: 'h' }, shrink: { arg: false }, preallocation: { arg: true }, object: { arg: true }, 'image-opts': { arg: false } },
  });
  if (sizeArg !== undefined) operands.push(sizeArg);
  const opts = new Options(options);
  if (operands.length !== 2) throw new UsageError('Expecting image file name and size');
  const [filename, sizeText] = operands as [string, string];
  const prealloc = opts.get('preallocation');
  if (prealloc !== undefined && prealloc !== 'off') throw new ImgError(`${filename}: Unsupported preallocation mode '${prealloc}'`);
  const sign = sizeText[0] === '+' || sizeText[0] === '-' ? sizeText[0] : '';
  const amount = parseSize(sign ? sizeText.slice(1) : sizeText);
  if (amount === undefined) {
    throw new ImgError("Parameter 'size' expects a non-negative number below 2^64. Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta- and exabytes, respectively.");
  }
  return withImage(filename, { format: opts.get('f') }, async (driver) => {
    const current = driver.size();
    const target = sign === '+' ? current + amount : sign === '-' ? current - amount : amount;
    if (target <= 0n) throw new ImgError('New image size must be positive');
    if (target < current && !opts.has('shrink')) {
      throw new ImgError('Use the --shrink option to perform a shrink operation.');
    }
    try {
      await driver.resize(target);
      await driver.flush();
    } catch (err) {
      throw new ImgError(`${filename}: ${err instanceof Error ? err.message.replace(`${filename}: `, '') : String(err)}`);
    }
    if (!opts.has('q')) io.out('Image resized.\n');
    return 0;
  });
}
