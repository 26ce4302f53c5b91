// The backing chain as file names, for output that names the file each extent comes from.
import { dirname, isAbsolute, join } from 'node:path';
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

/** [image, its backing, its backing's backing, ...] as openable paths. */
export async function chainFilenames(filename: string, limit = 64): Promise<string[]> {
  const chain = [filename];
  let format: string | undefined;
  while (chain.length < limit) {
    let next: string | undefined;
    try {
      const info = await imageInfo(chain[chain.length - 1]!, format);
      next = info.fullBackingFilename;
      format = info.backingFormat;
    } catch {
      break;
    }
    if (next === undefined) break;
    chain.push(next);
  }
  return chain;
}
