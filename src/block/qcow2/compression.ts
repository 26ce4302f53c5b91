// Compressed clusters: deflate (raw, no zlib header) or zstd, as the header's compression
// type says. Decompression must yield exactly one cluster; anything else is corruption.
import { createRequire } from 'node:module';
import { BlockError } from '../errors.js';

// fzstd and node:zlib are loaded on the first compressed cluster: most images have none,
// and every `tsvirt img` command would otherwise pay for loading them at start (about 2 ms
// each, of a start-up of about 40 ms).
const requireHere = createRequire(import.meta.url);
let zstd: typeof import('fzstd') | undefined;
let zlibModule: typeof import('node:zlib') | undefined;
const zlib = (): typeof import('node:zlib') => (zlibModule ??= requireHere('node:zlib') as typeof import('node:zlib'));

export function decompressCluster(filename: string, type: number, input: Uint8Array, clusterSize: number, hostOffset: number): Uint8Array {
  let out: Uint8Array;
  try {
    if (type === 0) {
      // The stored bytes run to a sector boundary, so trailing garbage after the stream is normal.
      out = zlib().inflateRawSync(input, { finishFlush: zlib().constants.Z_SYNC_FLUSH, maxOutputLength: clusterSize });
    } else {
      // The stored bytes run to a sector boundary and may hold the start of the next
      // compressed cluster after this frame: decompress exactly one frame.
      zstd ??= requireHere('fzstd') as typeof import('fzstd');
      out = zstd.decompress(input.subarray(0, zstdFrameLength(input)));
    }
  } catch (err) {
    if (err instanceof BlockError) throw err;
    throw new BlockError(filename, `compressed cluster at host offset 0x${hostOffset.toString(16)} does not decompress: ${(err as Error).message}`);
  }
  if (out.length < clusterSize) {
    throw new BlockError(filename, `compressed cluster at host offset 0x${hostOffset.toString(16)} decompresses to ${out.length} bytes, not ${clusterSize}`);
  }
  return out.subarray(0, clusterSize);
}

/**
 * Deflate a cluster; undefined when compression would not save space. Runs on the thread
 * pool, so several clusters compress at once while the main thread goes on.
 */
export function compressCluster(data: Uint8Array): Promise<Uint8Array | undefined> {
  return new Promise((resolve, reject) => {
    zlib().deflateRaw(data, { level: 6 }, (err, out) => {
      if (err) reject(err);
      else resolve(out.length < data.length - 512 ? out : undefined);
    });
  });
}

/** Length of the zstd frame at the start of `buf`, from its frame and block headers. */
export function zstdFrameLength(buf: Uint8Array): number {
  const need = (n: number): void => {
    if (n > buf.length) throw new Error('truncated zstd frame');
  };
  need(6);
  const magic = (buf[0] | (buf[1] << 8) | (buf[2] << 16) | (buf[3] << 24)) >>> 0;
  if (magic !== 0xfd2fb528) throw new Error('no zstd frame magic');
  const fhd = buf[4];
  const singleSegment = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  const dictBytes = [0, 1, 2, 4][fhd & 3];
  const fcsFlag = fhd >> 6;
  const fcsBytes = fcsFlag === 0 ? singleSegment : [0, 2, 4, 8][fcsFlag];
  let pos = 5 + (singleSegment ? 0 : 1) + dictBytes + fcsBytes;
  for (;;) {
    need(pos + 3);
    const header = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16);
    const last = header & 1;
    const type = (header >> 1) & 3;
    const size = header >>> 3;
    if (type === 3) throw new Error('reserved zstd block type');
    pos += 3 + (type === 1 ? 1 : size);
    need(pos);
    if (last) break;
  }
  pos += checksum ? 4 : 0;
  need(pos);
  return pos;
}
