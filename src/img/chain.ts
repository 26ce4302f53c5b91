// The backing chain as file names, for output that names the file each extent comes from.
// Only the three qcow2 header fields that name the backing file are read here.
import { open } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';

const QCOW2_MAGIC = 0x514649fb;

export interface BackingReference { filename: string; format?: string }

/** The backing file name as written in a qcow2 header, or undefined (raw image, no backing). */
export async function readBackingName(filename: string): Promise<string | undefined> {
  const handle = await open(filename, 'r');
  try {
    const header = Buffer.alloc(20);
    const { bytesRead } = await handle.read(header, 0, 20, 0);
    if (bytesRead < 20 || header.readUInt32BE(0) !== QCOW2_MAGIC) return undefined;
    const offset = header.readBigUInt64BE(8);
    const size = header.readUInt32BE(16);
    if (offset === 0n || size === 0 || size > 1023) return undefined;
    const name = Buffer.alloc(size);
    await handle.read(name, 0, size, Number(offset));
    return name.toString('utf8');
  } finally {
    await handle.close();
  }
}

/** qemu's rule: a relative backing name is relative to the directory of the image naming it. */
export function resolveBacking(imageFilename: string, backing: string): string {
  if (isAbsolute(backing) || !imageFilename.includes('/')) return backing;
  return join(dirname(imageFilename), backing);
}

/** [image, its backing, its backing's backing, ...] as openable paths. */
export async function chainFilenames(filename: string, limit = 64): Promise<string[]> {
  const chain = [filename];
  let current = filename;
  while (chain.length < limit) {
    let backing: string | undefined;
    try {
      backing = await readBackingName(current);
    } catch {
      break;
    }
    if (backing === undefined) break;
    current = resolveBacking(current, backing);
    chain.push(current);
  }
  return chain;
}
