// Creating images of either format from validated creation options.
import { createRaw } from '../block/raw.js';
import { createQcow2 } from '../block/qcow2/create.js';
import { ImgError, oneLine } from './errors.js';
import type { CreateOptions } from './create-options.js';

export async function createImage(filename: string, format: string, size: bigint, options: CreateOptions): Promise<void> {
  try {
    if (format === 'raw') {
      const preallocation = options.preallocation === 'metadata' ? 'off' : options.preallocation;
      await createRaw(filename, { size, preallocation });
      return;
    }
    if (format === 'qcow2') {
      await createQcow2(filename, {
        size, clusterSize: options.clusterSize, compat: options.compat, backingFile: options.backingFile,
        backingFormat: options.backingFormat, preallocation: options.preallocation, lazyRefcounts: options.lazyRefcounts,
        refcountBits: options.refcountBits, extendedL2: options.extendedL2,
      });
      return;
    }
  } catch (err) {
    if (err instanceof ImgError) throw err;
    const reason = oneLine(err);
    throw new ImgError(reason.startsWith(filename) ? reason : `${filename}: ${reason}`);
  }
  throw new ImgError(`${filename}: Unknown file format '${format}'`);
}
