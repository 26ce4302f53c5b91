// `tsvirt img map`: the image's allocation, extent by extent, in qemu-img's human or JSON format.
import { ImgError, UsageError } from '../errors.js';
import { getopt, Options } from '../getopt.js';
import type { ImgIO } from '../io.js';
import { chainFilenames } from '../chain.js';
import { extents, type Extent } from '../extents.js';
import { withImage } from '../open.js';
import { parseSize } from '../size.js';

export function parseOutputFormat(value: string | undefined): 'human' | 'json' {
  if (value === undefined || value === 'human') return 'human';
  if (value === 'json') return 'json';
  throw new UsageError('--output must be used with human or json as argument.');
}

interface MapEntry { start: bigint; length: bigint; depth: number; present: boolean; zero: boolean; data: boolean; offset?: bigint }

function toEntry(e: Extent): MapEntry {
  const entry: MapEntry = { start: e.start, length: e.length, depth: e.depth, present: e.present, zero: e.zero, data: e.data };
  if (e.hostOffset !== undefined && !e.compressed) entry.offset = e.hostOffset;
  return entry;
}

/** qemu merges neighbours with equal flags and, when mapped, contiguous host offsets. */
function mergeable(a: MapEntry, b: MapEntry): boolean {
  if (a.depth !== b.depth || a.present !== b.present || a.zero !== b.zero || a.data !== b.data) return false;
  if ((a.offset === undefined) !== (b.offset === undefined)) return false;
  return a.offset === undefined || a.offset + a.length === b.offset;
}

export function jsonMapLine(e: MapEntry): string {
  return `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}`
    + (e.offset !== undefined ? `, "offset": ${e.offset}` : '') + '}';
}

/** C's "%#-16x": 0x-prefixed hex except plain "0", left-aligned in 16 columns. */
function hex16(value: bigint): string {
  return (value === 0n ? '0' : `0x${value.toString(16)}`).padEnd(16);
}

export async function map(argv: string[], io: ImgIO): Promise<number> {
  const { options, operands } = getopt(argv, {
    short: 'hf:U',
    long: {
      help: { arg: false, alias: 'h' }, output: { arg: true }, 'force-share': { arg: false, alias: 'U' },
      'start-offset': { arg: true }, 'max-length': { arg: true }, 'image-opts': { arg: false }, object: { arg: true },
    },
  });
  const opts = new Options(options);
  const output = parseOutputFormat(opts.get('output'));
  if (operands.length !== 1) throw new UsageError('Expecting one image file name');
  const filename = operands[0]!;
  const startText = opts.get('start-offset');
  const start = startText === undefined ? 0n : parseSize(startText);
  if (start === undefined) throw new ImgError(`Invalid start offset specified: '${startText}'`);
  const lengthText = opts.get('max-length');
  const maxLength = lengthText === undefined ? undefined : parseSize(lengthText);
  if (lengthText !== undefined && maxLength === undefined) throw new ImgError(`Invalid max length specified: '${lengthText}'`);
  const chain = output === 'human' ? await chainFilenames(filename) : [];
  return withImage(filename, { readOnly: true, format: opts.get('f') }, async (driver) => {
    const size = driver.size();
    const end = maxLength === undefined || start + maxLength > size ? size : start + maxLength;
    const entries: MapEntry[] = [];
    for await (const e of extents(driver, start < size ? start : size, end, 1n << 30n, { hostHoles: true })) {
      const entry = toEntry(e);
      const last = entries[entries.length - 1];
      if (last && mergeable(last, entry)) last.length += entry.length;
      else entries.push(entry);
    }
    if (output === 'json') {
      io.out('[' + entries.map(jsonMapLine).join(',\n') + ']\n');
    } else {
      let text = 'Offset          Length          Mapped to       File\n';
      for (const e of entries) {
        if (!e.data || e.zero || e.offset === undefined) continue;
        text += `${hex16(e.start)}${hex16(e.length)}${hex16(e.offset)}${chain[e.depth] ?? filename}\n`;
      }
      io.out(text);
    }
    return 0;
  });
}
