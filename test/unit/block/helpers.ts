// Shared by the block tests: temporary directories, a seeded random generator, and a
// shadow copy of the disk that every write also goes to, to compare reads against.
import { mkdtempSync, rmSync, statfsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export { rng } from '../../support/prng.js';

const TMPFS_MAGIC = 0x01021994;

/** Whether `dir` is on tmpfs (false when that cannot be told). */
export function isTmpfs(dir: string): boolean {
  try {
    return statfsSync(dir).type === TMPFS_MAGIC;
  } catch {
    return false;
  }
}

/** A directory on tmpfs for tests of memory-file-system behaviour: /dev/shm on Linux hosts, if it is one. */
export function tmpfsDir(): string | undefined {
  return isTmpfs('/dev/shm') ? '/dev/shm' : undefined;
}

export function tempDir(prefix = 'tsvirt-block-'): { dir: string; path: (name: string) => string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, path: (name) => join(dir, name), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function randomBytes(next: () => number, length: number): Uint8Array {
  const b = new Uint8Array(length);
  for (let i = 0; i < length; i += 4) {
    const v = (next() * 4294967296) >>> 0;
    b[i] = v & 0xff;
    if (i + 1 < length) b[i + 1] = (v >>> 8) & 0xff;
    if (i + 2 < length) b[i + 2] = (v >>> 16) & 0xff;
    if (i + 3 < length) b[i + 3] = v >>> 24;
  }
  return b;
}

/** Index of the first differing byte, or -1. */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/** Split a buffer into uneven scatter-gather pieces. */
export function scatter(buf: Uint8Array, next: () => number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const n = Math.min(buf.length - pos, 1 + Math.floor(next() * 70000));
    out.push(buf.subarray(pos, pos + n));
    pos += n;
  }
  return out;
}
