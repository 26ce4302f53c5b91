// LZ4 in the "legacy" frame format, the format of a bzImage's payload when the kernel was
// built with CONFIG_KERNEL_LZ4: a 4-byte magic, then blocks of at most 8 MiB of output, each
// a 4-byte little-endian compressed length and one LZ4 block. The kernel's build appends the
// uncompressed length after the last block. Written from the LZ4 block format description:
// a block is a run of sequences, each a token (literal length, match length), the literals,
// and a 2-byte offset back into the output to copy the match from.

import { u32 } from './le-bytes.js';

export const LZ4_LEGACY_MAGIC = 0x184c2102;
const MIN_MATCH = 4;

/** Compressed data that does not decode; the message says where. */
export class Lz4Error extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'Lz4Error';
  }
}

/**
 * Decodes a legacy LZ4 stream into `out` (which must be large enough: the caller knows the
 * length from the kernel's appended size) and returns the number of bytes decoded. Bytes of
 * `out` past that count may have been written too (see decodeBlock): a caller that expects
 * a length checks the count, as unpackPayload does. Input after the last whole block (the
 * appended size) is ignored, as the kernel's decoder does.
 */
export function lz4LegacyDecode(src: Uint8Array, out: Uint8Array): number {
  if (src.length < 4 || u32(src, 0) !== LZ4_LEGACY_MAGIC) throw new Lz4Error('not an LZ4 legacy stream (bad magic)');
  let ip = 4;
  let op = 0;
  while (ip + 4 <= src.length) {
    const blockSize = u32(src, ip);
    // A second stream may follow (concatenated frames); anything that is not a whole block ends the data.
    if (blockSize === LZ4_LEGACY_MAGIC) {
      ip += 4;
      continue;
    }
    if (blockSize === 0 || ip + 4 + blockSize > src.length) break;
    ip += 4;
    op = decodeBlock(src, ip, ip + blockSize, out, op);
    ip += blockSize;
  }
  return op;
}

/** Where the last lengthExtension() stopped reading (a second result, without an allocation per call). */
let extensionEnd = 0;

/**
 * The bytes a length of 15 in a token continues with, summed: each byte of 255 means another
 * follows. Reads from `ip`, and leaves the position after them in extensionEnd.
 */
function lengthExtension(src: Uint8Array, ip: number, end: number, blockStart: number, what: 'literal' | 'match'): number {
  let sum = 0;
  let b: number;
  do {
    if (ip >= end) throw new Lz4Error(`LZ4 block at input offset ${blockStart} ends inside a ${what} length`);
    b = src[ip++]!;
    sum += b;
  } while (b === 255);
  extensionEnd = ip;
  return sum;
}

/**
 * One LZ4 block from src[start, end) into out at `op`; returns the new output position.
 *
 * Short literal runs and short matches are copied eight bytes at a time, through DataViews,
 * and may write up to 15 bytes past their own end ("wild" copies, as LZ4's reference
 * decoder does). That is safe because bytes past the current output position are never
 * read (a match reads only behind it) and are written again, in order, by what follows; the
 * copies stay inside `out`, and a stream that stops short of `out`'s end is an error the
 * caller reports. Near either buffer's end, and for overlapping matches closer than eight
 * bytes, the copies go byte by byte.
 */
function decodeBlock(src: Uint8Array, start: number, end: number, out: Uint8Array, op: number): number {
  const blockStart = op;
  const outEnd = out.length;
  const input = new DataView(src.buffer, src.byteOffset, src.length);
  const output = new DataView(out.buffer, out.byteOffset, out.length);
  let ip = start;
  for (;;) {
    const token = src[ip++]!;
    let literals = token >>> 4;
    if (literals === 15) {
      literals += lengthExtension(src, ip, end, start, 'literal');
      ip = extensionEnd;
    }
    if (ip + literals > end) throw new Lz4Error(`LZ4 block at input offset ${start}: literals run past the block's end`);
    if (op + literals > outEnd) throw new Lz4Error(`LZ4 stream decodes to more than the ${outEnd} bytes expected`);
    if (literals <= 16 && ip + 16 <= end && op + 16 <= outEnd) {
      output.setUint32(op, input.getUint32(ip, true), true);
      output.setUint32(op + 4, input.getUint32(ip + 4, true), true);
      if (literals > 8) {
        output.setUint32(op + 8, input.getUint32(ip + 8, true), true);
        output.setUint32(op + 12, input.getUint32(ip + 12, true), true);
      }
    } else if (literals < 32) {
      // Short runs by hand: a typed-array call costs more than copying a few bytes.
      for (let i = 0; i < literals; i++) out[op + i] = src[ip + i]!;
    } else {
      out.set(src.subarray(ip, ip + literals), op);
    }
    ip += literals;
    op += literals;
    if (ip >= end) break; // the last sequence has literals only
    if (ip + 2 > end) throw new Lz4Error(`LZ4 block at input offset ${start} ends inside a match offset`);
    const offset = src[ip]! | (src[ip + 1]! << 8);
    ip += 2;
    // Legacy blocks are independent: a match reaches back only into its own block's output.
    if (offset === 0 || offset > op - blockStart) {
      throw new Lz4Error(`LZ4 block at input offset ${start}: match offset ${offset} points before the block's output`);
    }
    let length = token & 15;
    if (length === 15) {
      length += lengthExtension(src, ip, end, start, 'match');
      ip = extensionEnd;
    }
    length += MIN_MATCH;
    if (op + length > outEnd) throw new Lz4Error(`LZ4 stream decodes to more than the ${outEnd} bytes expected`);
    let from = op - offset;
    if (offset >= 8 && length <= 32 && op + 32 <= outEnd) {
      // Each eight bytes read lie wholly behind the eight being written (offset >= 8).
      for (let i = 0; i < length; i += 8) {
        output.setUint32(op + i, output.getUint32(from + i, true), true);
        output.setUint32(op + i + 4, output.getUint32(from + i + 4, true), true);
      }
      op += length;
    } else if (length < 32) {
      // Byte by byte, in order: also right when the match overlaps what it writes.
      for (let i = 0; i < length; i++) out[op++] = out[from++]!;
    } else if (offset >= length) {
      out.copyWithin(op, from, from + length);
      op += length;
    } else {
      // A long overlapping match repeats the last `offset` bytes (long runs of zeroes, the
      // kernel's padding): one period, then the copy doubles itself.
      out.copyWithin(op, from, op);
      for (let done = offset; done < length;) {
        const n = Math.min(done, length - done);
        out.copyWithin(op + done, op, op + n);
        done += n;
      }
      op += length;
    }
  }
  return op;
}
