// Opening images for the img subcommands: block-layer errors become one-line ImgErrors that
// name the file, with qemu-img's exit status.
import { openImage, type BlockDriver, type CacheMode, type OpenOptions } from '../block/driver.js';
import { ImgError, oneLine } from './errors.js';

export const KNOWN_FORMATS = ['raw', 'qcow2'];

export function checkFormatName(filename: string, format: string | undefined): void {
  if (format !== undefined && !KNOWN_FORMATS.includes(format)) {
    throw new ImgError(`${filename}: Unknown file format '${format}'`);
  }
}

/** Opens an image; any failure becomes "Could not open 'FILE': reason". */
export async function openForImg(filename: string, options: OpenOptions = {}): Promise<BlockDriver> {
  checkFormatName(filename, options.format);
  try {
    return await openImage(filename, options);
  } catch (err) {
    const reason = oneLine(err);
    // BlockError already starts with the file name; don't say it twice.
    const stripped = reason.startsWith(`${filename}: `) ? reason.slice(filename.length + 2) : reason;
    throw new ImgError(`Could not open '${filename}': ${stripped}`);
  }
}

/** Runs fn with the image open and always closes it, even when fn throws. */
export async function withImage<T>(filename: string, options: OpenOptions, fn: (d: BlockDriver) => Promise<T>): Promise<T> {
  const driver = await openForImg(filename, options);
  try {
    return await fn(driver);
  } finally {
    await driver.close().catch(() => undefined);
  }
}

const CACHE_MODES = ['none', 'writeback', 'writethrough', 'directsync', 'unsafe'] as const;

/** A -t/-T cache mode, or the default when absent; qemu-img's message for a bad one. */
export function cacheMode(value: string | undefined, fallback: CacheMode): CacheMode {
  if (value === undefined) return fallback;
  if (!(CACHE_MODES as readonly string[]).includes(value)) throw new ImgError(`Invalid cache option: ${value}`);
  return value as CacheMode;
}
