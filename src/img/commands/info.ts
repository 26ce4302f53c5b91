// `tsvirt img info`: format, sizes, backing file, snapshots and qcow2 features of an image
// (and with --backing-chain of every image below it), human or JSON like qemu-img.
import { UsageError, ImgError } from '../errors.js';
import { getopt, Options } from '../getopt.js';
import type { ImgIO } from '../io.js';
import { imageInfo, infoHuman, infoJson, type ImageInfo } from '../info.js';
import { checkFormatName } from '../open.js';
import { qemuJson } from '../qemu-json.js';
import { parseOutputFormat } from './map.js';

export async function info(argv: string[], io: ImgIO): Promise<number> {
  const { options, operands } = getopt(argv, {
    short: 'f:hU',
    long: {
      help: { arg: false, alias: 'h' }, output: { arg: true }, 'backing-chain': { arg: false },
      'force-share': { arg: false, alias: 'U' }, 'image-opts': { arg: false }, object: { arg: true },
    },
  });
  const opts = new Options(options);
  const output = parseOutputFormat(opts.get('output'));
  if (operands.length !== 1) throw new UsageError('Expecting one image file name');
  const filename = operands[0]!;
  checkFormatName(filename, opts.get('f'));
  const chain: ImageInfo[] = [await imageInfo(filename, opts.get('f'))];
  if (opts.has('backing-chain')) {
    const seen = new Set([filename]);
    while (chain[chain.length - 1]!.fullBackingFilename !== undefined) {
      const top = chain[chain.length - 1]!;
      const next = top.fullBackingFilename!;
      if (seen.has(next)) throw new ImgError(`Backing file '${next}' creates an infinite loop.`);
      seen.add(next);
      chain.push(await imageInfo(next, top.backingFormat));
    }
  }
  if (output === 'json') {
    io.out(qemuJson(opts.has('backing-chain') ? chain.map(infoJson) : infoJson(chain[0]!)) + '\n');
  } else {
    io.out(chain.map(infoHuman).join('\n'));
  }
  return 0;
}
