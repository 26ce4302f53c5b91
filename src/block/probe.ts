// Format probing: qcow2 by its magic number, raw for anything else.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { BlockError } from './errors.js';
import { QCOW2_MAGIC } from './qcow2/header.js';

/** The format the first `bytesRead` bytes of a file (at least its first four) say it has. */
function formatOf(head: Uint8Array, bytesRead: number): 'raw' | 'qcow2' {
  return bytesRead >= 4 && new DataView(head.buffer, head.byteOffset, 4).getUint32(0) === QCOW2_MAGIC ? 'qcow2' : 'raw';
}

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
    return formatOf(magic, bytesRead);
  } finally {
    await handle.close();
  }
}

/**
 * The format of a regular file from its first bytes, read synchronously, and for qcow2
 * whether its header names a backing file; undefined when it is not a regular file or
 * cannot be read (opening it for real reports why).
 */
export function probeRegularFileSync(filename: string): { format: 'raw' | 'qcow2'; backing: boolean } | undefined {
  let fd: number;
  try {
    fd = openSync(filename, 'r');
  } catch {
    return undefined;
  }
  try {
    if (!fstatSync(fd).isFile()) return undefined;
    // The magic, the version and the backing file's offset in the header (0: none).
    const head = Buffer.alloc(16);
    const n = readSync(fd, head, 0, 16, 0);
    if (formatOf(head, n) === 'raw') return { format: 'raw', backing: false };
    return { format: 'qcow2', backing: n < 16 || head.readBigUInt64BE(8) !== 0n };
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}
