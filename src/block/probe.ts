// Format probing: qcow2 by its magic number, raw for anything else.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { BlockError } from './errors.js';
import { QCOW2_MAGIC } from './qcow2/header.js';

/** Guess an image's format from its first bytes. */
export async function probeFormat(filename: string): Promise<'raw' | 'qcow2'> {
  let handle;
  try {
    handle = await open(filename, 'r');
  } catch (err) {
    throw new BlockError(filename, `cannot open: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    const magic = new Uint8Array(4);
    const { bytesRead } = await handle.read(magic, 0, 4, 0).catch((err: NodeJS.ErrnoException) => {
      throw new BlockError(filename, `cannot read: ${err.code ?? err.message}`);
    });
    if (bytesRead === 4 && new DataView(magic.buffer).getUint32(0) === QCOW2_MAGIC) return 'qcow2';
    return 'raw';
  } finally {
    await handle.close();
  }
}

/**
 * The format of a regular file from its first bytes, read synchronously; undefined when it
 * is not a regular file or cannot be read (opening it for real reports why).
 */
export function probeRegularFileSync(filename: string): 'raw' | 'qcow2' | undefined {
  let fd: number;
  try {
    fd = openSync(filename, 'r');
  } catch {
    return undefined;
  }
  try {
    if (!fstatSync(fd).isFile()) return undefined;
    const magic = Buffer.alloc(4);
    const n = readSync(fd, magic, 0, 4, 0);
    return n === 4 && magic.readUInt32BE(0) === QCOW2_MAGIC ? 'qcow2' : 'raw';
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}
