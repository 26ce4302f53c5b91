// `tsvirt img measure`: how large a file converting an image (or creating one of --size) needs,
// computed with the same layout arithmetic as qemu's qcow2 driver so the numbers agree exactly.
import { ImgError, UsageError } from '../errors.js';
import { getopt, Options } from '../getopt.js';
import type { ImgIO } from '../io.js';
import { joinOptionStrings, parseCreateOptions } from '../create-options.js';
import { withImage, checkFormatName } from '../open.js';
import { parseSize } from '../size.js';
import { extents } from '../extents.js';
import { imageInfo } from '../info.js';
import { qemuJson } from '../qemu-json.js';
import { parseOutputFormat } from './map.js';

const divUp = (a: bigint, b: bigint): bigint => (a + b - 1n) / b;
const roundUp = (a: bigint, b: bigint): bigint => divUp(a, b) * b;

/** Refcount table + blocks needed to count `clusters` clusters, including themselves (fixed point). */
export function refcountMetadataSize(clusters: bigint, clusterSize: bigint, refcountBits: bigint): bigint {
  const blocksPerTableCluster = clusterSize / 8n;
  const refcountsPerBlock = (clusterSize * 8n) / refcountBits;
  let table = 0n;
  let blocks = 0n;
  let n = 0n;
  let last: bigint;
  do {
    last = n;
    blocks = divUp(clusters + table + blocks, refcountsPerBlock);
    table = divUp(blocks, blocksPerTableCluster);
    n = clusters + blocks + table;
  } while (n !== last);
  return (blocks + table) * clusterSize;
}

/** Size of a fully preallocated qcow2 image of `virtualSize`: header, L1, L2, refcounts and data. */
export function qcow2FullSize(virtualSize: bigint, clusterSize: bigint, refcountBits: bigint, extendedL2: boolean): bigint {
  const aligned = roundUp(virtualSize, clusterSize);
  const l2Entry = extendedL2 ? 16n : 8n;
  let meta = clusterSize; // header
  const l2Entries = roundUp(aligned / clusterSize, clusterSize / l2Entry);
  meta += l2Entries * l2Entry;
  const l1Entries = roundUp((l2Entries * l2Entry) / clusterSize, clusterSize / 8n);
  meta += l1Entries * 8n;
  meta += refcountMetadataSize((meta + aligned) / clusterSize, clusterSize, refcountBits);
  return meta + aligned;
}

export async function measure(argv: string[], io: ImgIO): Promise<number> {
  const { options, operands } = getopt(argv, {
    short: 'hf:O:o:l:U',
    long: { help: { arg: false, alias: 'h' }, output: { arg: true }, size: { arg: true }, 'force-share': { arg: false, alias: 'U' }, object: { arg: true }, 'image-opts': { arg: false } },
  });
  const opts = new Options(options);
  const output = parseOutputFormat(opts.get('output'));
  const sizeText = opts.get('size');
  if (sizeText !== undefined && operands.length > 0) throw new UsageError('--size N cannot be used together with a filename.');
  if (sizeText === undefined && operands.length === 0) throw new UsageError('Either --size N or one filename must be specified.');
  if (operands.length > 1) throw new UsageError('At most one filename argument is allowed.');
  const outFormat = opts.get('O') ?? 'raw';
  checkFormatName('measure', outFormat);
  const create = parseCreateOptions(operands[0] ?? 'measure', outFormat, joinOptionStrings(opts.all('o')));
  const clusterSize = BigInt(create.clusterSize ?? 65536);
  const prealloc = create.preallocation ?? 'off';

  let virtualSize: bigint;
  let required = 0n; // data bytes the output needs, cluster-rounded for qcow2
  let bitmaps = false;
  if (sizeText !== undefined) {
    const size = parseSize(sizeText);
    if (size === undefined) throw new ImgError(`Invalid image size specified: '${sizeText}'`);
    virtualSize = size;
  } else {
    const filename = operands[0]!;
    [virtualSize, required, bitmaps] = await withImage(filename, { readOnly: true, format: opts.get('f') }, async (d) => {
      let used = 0n;
      const granule = outFormat === 'qcow2' ? clusterSize : 512n;
      let countedTo = 0n; // clusters already counted, so neighbouring extents don't count one twice
      for await (const e of extents(d, 0n, d.size(), 1n << 30n, { hostHoles: true })) {
        if (e.zero) continue; // zero clusters and data over host holes need no data clusters
        if (!e.present && !e.data) continue;
        const from = e.start / granule * granule > countedTo ? (e.start / granule) * granule : countedTo;
        const to = roundUp(e.start + e.length, granule);
        if (to > from) used += to - from;
        if (to > countedTo) countedTo = to;
      }
      // Bitmap space is reported only when both the source and the output can hold bitmaps (qcow2 v3).
      const sourceV3 = d.format === 'qcow2' && (await imageInfo(filename)).formatSpecific?.compat === '1.1';
      return [d.size(), used, sourceV3 && outFormat === 'qcow2' && create.compat !== '0.10'] as [bigint, bigint, boolean];
    });
  }

  let fullyAllocated: bigint;
  if (outFormat === 'qcow2') {
    const aligned = roundUp(virtualSize, clusterSize);
    fullyAllocated = qcow2FullSize(aligned, clusterSize, BigInt(create.refcountBits ?? 16), create.extendedL2 ?? false);
    if (prealloc === 'full' || prealloc === 'falloc') required = aligned;
    required = fullyAllocated - aligned + required;
  } else {
    fullyAllocated = roundUp(virtualSize, 512n);
    // qemu's raw driver does not look at the source's allocation: a raw copy may need it all.
    required = fullyAllocated;
  }
  if (output === 'json') {
    io.out(qemuJson({ required, 'fully-allocated': fullyAllocated, bitmaps: bitmaps ? 0 : undefined }) + '\n');
  } else {
    io.out(`required size: ${required}\nfully allocated size: ${fullyAllocated}\n${bitmaps ? 'bitmaps size: 0\n' : ''}`);
  }
  return 0;
}
