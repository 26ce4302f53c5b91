// Compressed output for `convert -c`: whole clusters go to the qcow2 driver's compressed-write
// entry point. Clusters that are entirely zero are skipped where the image already reads as
// zero, and written as zeroes where it does not.
import type { BlockDriver } from '../block/driver.js';
import { ImgError } from './errors.js';
import { isZero } from './extents.js';

/** What a driver that can store compressed clusters offers beyond BlockDriver. */
interface CompressingDriver extends BlockDriver {
  readonly clusterSize: number;
  writeCompressed(offset: bigint, cluster: Uint8Array): Promise<void>;
}

function canCompress(driver: BlockDriver): driver is CompressingDriver {
  const d = driver as Partial<CompressingDriver>;
  return typeof d.writeCompressed === 'function' && typeof d.clusterSize === 'number';
}

export interface CompressedWriter {
  /** Data at a cluster-aligned offset (whole clusters, except at the end of the disk). */
  write(offset: bigint, data: Buffer): Promise<void>;
  finish(): Promise<void>;
}

/**
 * `zeroesNeeded`: the target does not read as zero (a backing file, or an existing image), so
 * all-zero clusters are written as zeroes instead of being left out.
 */
export async function compressedWriter(driver: BlockDriver, options: { zeroesNeeded?: boolean } = {}): Promise<CompressedWriter> {
  if (!canCompress(driver)) throw new ImgError(`${driver.filename}: Compression not supported for this file format`);
  const cluster = driver.clusterSize;
  return {
    async write(offset, data) {
      if (offset % BigInt(cluster) !== 0n) {
        throw new ImgError(`${driver.filename}: compressed write at ${offset} is not cluster aligned`);
      }
      for (let pos = 0; pos < data.length; pos += cluster) {
        const end = Math.min(data.length, pos + cluster);
        if (isZero(data, pos, end)) {
          if (options.zeroesNeeded) await driver.writeZeroes(offset + BigInt(pos), BigInt(end - pos), { mayUnmap: true });
          continue;
        }
        let piece = data.subarray(pos, end);
        if (piece.length < cluster) {
          // The last cluster of a disk whose size is not a cluster multiple: pad with zeroes.
          const padded = Buffer.alloc(cluster);
          piece.copy(padded);
          piece = padded;
        }
        await driver.writeCompressed(offset + BigInt(pos), piece);
      }
    },
    async finish() {
      await driver.flush();
    },
  };
}
