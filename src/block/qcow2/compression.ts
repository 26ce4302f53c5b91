// Compressed clusters: deflate (raw, no zlib header) or zstd, as the header's compression
// type says. Decompression must yield exactly one cluster; anything else is corruption.
import { deflateRawSync, inflateRawSync, constants as zlibConstants } from 'node:zlib';
import { Decompress as ZstdDecompress } from 'fzstd';
import { BlockError } from '../errors.js';

export function decompressCluster(filename: string, type: number, input: Uint8Array, clusterSize: number, hostOffset: number): Uint8Array {
  let out: Uint8Array;
  try {
    if (type === 0) {
      // The stored bytes run to a sector boundary, so trailing garbage after the stream is normal.
      out = inflateRawSync(input, { finishFlush: zlibConstants.Z_SYNC_FLUSH, maxOutputLength: clusterSize });
    } else {
      const chunks: Uint8Array[] = [];
      let total = 0;
      const stream = new ZstdDecompress((chunk) => {
        chunks.push(chunk);
        total += chunk.length;
      });
      // Feed the frame(s) in pieces and stop as soon as one cluster is out: the padding
      // after the last frame is not a frame.
      for (let at = 0; at < input.length && total < clusterSize; at += 4096) {
        stream.push(input.subarray(at, Math.min(input.length, at + 4096)), at + 4096 >= input.length);
      }
      out = new Uint8Array(total);
      let pos = 0;
      for (const c of chunks) {
        out.set(c, pos);
        pos += c.length;
      }
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

/** Deflate a cluster; undefined when compression would not save space. */
export function compressCluster(data: Uint8Array): Uint8Array | undefined {
  const out = deflateRawSync(data, { level: 6 });
  return out.length < data.length - 512 ? out : undefined;
}
