// The backing chain as file names, for output that names the file each extent comes from.
import { dirname, isAbsolute, join } from 'node:path';
import type { BlockDriver } from '../block/driver.js';
import type { Qcow2Image } from '../block/qcow2/image.js';
import { imageInfo } from './info.js';

/**
 * qemu's rule for the "full" backing name it prints: relative to the directory of the image
 * naming it, left relative when that image was named without a directory (the block layer
 * resolves to an absolute path, which is right for opening but not for qemu-identical output).
 */
export function resolveBacking(imageFilename: string, backing: string): string {
  if (isAbsolute(backing) || !imageFilename.includes('/')) return backing;
  return join(dirname(imageFilename), backing);
}

/** One image of a backing chain: its openable path, its format if named, and the name its parent gave it. */
export interface ChainLayer { filename: string; format?: string; nameInParent?: string }

/** [image, its backing, its backing's backing, ...] with how each was named. */
export async function chainLayers(filename: string, format?: string, limit = 64): Promise<ChainLayer[]> {
  const chain: ChainLayer[] = [{ filename, format }];
  while (chain.length < limit) {
    const last = chain[chain.length - 1]!;
    let next: ChainLayer | undefined;
    try {
      const info = await imageInfo(last.filename, last.format);
      if (info.fullBackingFilename !== undefined) {
        next = { filename: info.fullBackingFilename, format: info.backingFormat, nameInParent: info.backingFilename };
      }
    } catch {
      break;
    }
    if (next === undefined) break;
    chain.push(next);
  }
  return chain;
}

/**
 * The layers of an image open with its backing chain, `filename` and `format` as it was
 * opened with: the same as chainLayers() gives, named from the headers read when the chain
 * was opened rather than by reading them again.
 */
export function openChainLayers(top: BlockDriver, filename: string, format?: string): ChainLayer[] {
  const chain: ChainLayer[] = [{ filename, format }];
  let driver: BlockDriver | undefined = top;
  while (driver) {
    const { header, backing } = driver as Partial<Qcow2Image>;
    if (header?.backingFile === undefined || !backing) break;
    const parent = chain[chain.length - 1]!;
    chain.push({ filename: resolveBacking(parent.filename, header.backingFile), format: header.backingFormat, nameInParent: header.backingFile });
    driver = backing;
  }
  return chain;
}

/** [image, its backing, its backing's backing, ...] as openable paths. */
export async function chainFilenames(filename: string, limit = 64): Promise<string[]> {
  return (await chainLayers(filename, undefined, limit)).map((l) => l.filename);
}
