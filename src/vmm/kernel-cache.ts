// Unpacked bzImage payloads, kept between runs (see arch/x86/kernel-payload.ts for why the
// VMM unpacks the kernel at all). The first boot of a kernel unpacks it and writes its entry
// on the thread pool while the kernel boots (unpackedKernelFor); later boots read it from
// there. Unpacking takes longer than the guest's own decompressor (JavaScript against the
// guest's native code), but a kernel the VMM places also has its lock prefixes elided on one
// CPU (arch/x86/smp-locks.ts), which saves the guest far more under nested virtualization.
//
// An entry is named by the kernel file's identity: its device, inode, size and change time
// (no hash: node:crypto costs tens of milliseconds to load in a nested start-up). Any rewrite
// of the kernel changes the change time, so a stale entry is never used. Entries are written
// under a temporary name and renamed, so a reader never sees half of one. The cache keeps the
// most recently unpacked kernels (KERNEL_CACHE_ENTRIES). Where it cannot be written, nothing
// is unpacked and the guest decompresses its kernel as usual.
import {
  accessSync, closeSync, constants, existsSync, fstatSync, mkdirSync, openSync, readdirSync, readSync, renameSync, rmSync, statSync,
} from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { open as openFile } from 'node:fs/promises';
import { threadId } from 'node:worker_threads';
import { bzImagePayload, canUnpack, payloadCompression, unpackedLength, unpackPayload } from '../arch/x86/kernel-payload.js';
import { elfSegmentPlacements, type KernelImage, kernelImageOf } from '../arch/x86/linux-loader.js';
import type { GuestMemory } from '../memory/guest-memory.js';
import { seekDataOrHole } from '../kvm/libc.js';
import { readFully } from './file-preload.js';

export interface UnpackedKernel {
  /** The ELF kernel and its relocation table: in memory when fresh, else read from the entry. */
  readonly image: KernelImage;
  /** Whether this run unpacked it (false: it came from the cache). */
  readonly fresh: boolean;
  /**
   * Starts reading the kernel's segments into guest memory on the thread pool, while the
   * rest of the machine is built (a cached entry; a fresh one is in memory already). The
   * loader's copies of those ranges then find them under way and do nothing. The memory must
   * read as zero (a new machine's): the entry's holes, its zero pages, are not read.
   */
  prefetch(memory: GuestMemory): void;
  /** Resolves once the reads prefetch() started are done; rejects, naming the entry, if one failed. */
  settled(): Promise<void>;
  /** Closes a cached entry (a no-op for a fresh one); call it after settled(). */
  release(): void;
  /** A fresh one: resolves once its cache entry is written (or could not be: nothing is reported). */
  readonly stored?: Promise<void>;
}

/** Where unpacked kernels are kept: $TSVIRT_CACHE (the same variable moves the lab's images), else the user's cache directory. */
export function kernelCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const base = env.TSVIRT_CACHE ?? join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'tsvirt');
  return join(base, 'kernels');
}

/** The cache file for the kernel at `path` as it is now. */
function entryPath(dir: string, path: string): string {
  const st = statSync(path, { bigint: true });
  return join(dir, `${st.dev.toString(16)}-${st.ino.toString(16)}-${st.size.toString(16)}-${st.ctimeNs.toString(16)}.vmlinux`);
}

/**
 * Creates `dir` and its missing parents, one at a time; false when it cannot be made or
 * written. (Node's recursive mkdir never returns for a path inside /proc.)
 */
function makeWritableDir(dir: string): boolean {
  const missing: string[] = [];
  for (let d = dir; !existsSync(d); d = dirname(d)) {
    if (missing.length > 64 || dirname(d) === d) return false;
    missing.unshift(d);
  }
  try {
    for (const d of missing) mkdirSync(d);
    accessSync(dir, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** How old a temporary file of the cache must be before pruning takes it for abandoned. */
const STALE_TEMPORARY_MS = 3_600_000;

/** How many unpacked kernels the cache keeps (some 50 MB each): the most recently unpacked. */
export const KERNEL_CACHE_ENTRIES = 8;

/** Removes the oldest entries beyond KERNEL_CACHE_ENTRIES, never `keep` (the one just written). */
function pruneEntries(dir: string, keep: string): void {
  // Temporaries of fills cut short (the process ended first) go once they are an hour old.
  for (const name of readdirSync(dir).filter((n) => n.endsWith('.tmp'))) {
    const path = join(dir, name);
    if ((statSync(path, { throwIfNoEntry: false })?.mtimeMs ?? Infinity) < Date.now() - STALE_TEMPORARY_MS) rmSync(path, { force: true });
  }
  const entries = readdirSync(dir).filter((n) => n.endsWith('.vmlinux')).map((n) => join(dir, n))
    .map((path) => ({ path, mtime: statSync(path, { throwIfNoEntry: false })?.mtimeMs ?? 0 }))
    .sort((a, b) => b.mtime - a.mtime);
  for (const { path } of entries.slice(KERNEL_CACHE_ENTRIES)) if (path !== keep) rmSync(path, { force: true });
}

const PAGE = 4096;
const ZERO_PAGE = Buffer.alloc(PAGE);
/** The prefetch reads a segment in pieces of this size, so that the pool's threads share a large one. */
const PREFETCH_PIECE = 4 << 20;

/**
 * Writes `bytes` to a new `file`, leaving its all-zero pages out as holes: a third of a
 * kernel's pages are zero (.bss, .brk, its scratch area), which the cache then neither
 * stores nor reads back into a new machine's RAM (which is zero already).
 */
async function writeSparse(file: string, bytes: Uint8Array): Promise<void> {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  const handle = await openFile(file, 'w');
  try {
    await handle.truncate(b.length);
    for (const [at, end] of nonZeroRuns(b)) {
      for (let done = at; done < end;) done += (await handle.write(b, done, end - done, done)).bytesWritten;
    }
  } finally {
    await handle.close();
  }
}

/** The [start, end) stretches of whole pages (the last one may be short) that are not all zero. */
function nonZeroRuns(b: Buffer): [number, number][] {
  const zero = (at: number): boolean => b.compare(ZERO_PAGE, 0, Math.min(PAGE, b.length - at), at, Math.min(at + PAGE, b.length)) === 0;
  const runs: [number, number][] = [];
  for (let at = 0; at < b.length;) {
    while (at < b.length && zero(at)) at += PAGE;
    let end = at;
    while (end < b.length && !zero(end)) end += PAGE;
    end = Math.min(end, b.length);
    if (end > at) runs.push([at, end]);
    at = end;
  }
  return runs;
}

/** The stretches of [offset, offset+length) of `fd` that hold data (all of it where the file system cannot tell). */
function dataRuns(fd: number, offset: number, length: number): [number, number][] {
  const end = offset + length;
  const runs: [number, number][] = [];
  for (let at = offset; at < end;) {
    const data = seekDataOrHole(fd, BigInt(at), 'data');
    if (data === -2n) return [...runs, [at, end]];
    if (data === -1n || data >= BigInt(end)) break;
    const hole = seekDataOrHole(fd, data, 'hole');
    const stop = hole < 0n || hole > BigInt(end) ? end : Number(hole);
    runs.push([Number(data), stop]);
    at = stop;
  }
  return runs;
}

/** Opens a cache entry; undefined when it is missing or not an ELF file. */
function openEntry(file: string): UnpackedKernel | undefined {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch {
    return undefined;
  }
  const size = fstatSync(fd).size;
  const readBytes = (offset: number, length: number): Uint8Array => {
    const out = new Uint8Array(length);
    if (readSync(fd, out, 0, length, offset) !== length) throw new Error(`kernel cache entry ${file}: cut short at ${offset}+${length}`);
    return out;
  };
  if (size < 64 || !isElf(readBytes(0, 4))) {
    closeSync(fd);
    return undefined;
  }
  let open = true;
  /** Reads under way, by guest-memory view: what the loader's copyTo() then skips. */
  const underWay: { into: Uint8Array; offset: number }[] = [];
  const reads: Promise<void>[] = [];
  const image: KernelImage = {
    length: size,
    read: readBytes,
    // Straight from the page cache into guest memory, in one system call per segment.
    copyTo: (into, offset) => {
      if (underWay.some((r) => r.offset === offset && r.into.buffer === into.buffer && r.into.byteOffset === into.byteOffset && r.into.length === into.length)) return;
      for (let done = 0; done < into.length;) {
        const n = readSync(fd, into, done, into.length - done, offset + done);
        if (n === 0) throw new Error(`kernel cache entry ${file}: cut short at ${offset + done}`);
        done += n;
      }
    },
  };
  return {
    fresh: false,
    image,
    prefetch: (memory) => {
      for (const { offset, paddr, length } of elfSegmentPlacements(image)) {
        const into = memory.sliceInside(paddr, length);
        if (!into) continue; // the loader reports a segment outside RAM
        underWay.push({ into, offset });
        for (const [start, stop] of dataRuns(fd, offset, length)) {
          for (let at = start; at < stop; at += PREFETCH_PIECE) {
            const piece = into.subarray(at - offset, Math.min(stop, at + PREFETCH_PIECE) - offset);
            reads.push(readFully(fd, piece, at).then(
              (n) => { if (n < piece.length) throw new Error(`kernel cache entry ${file}: cut short at ${at + n}`); },
              (err: Error) => { throw new Error(`kernel cache entry ${file}: ${err.message}`); },
            ));
          }
        }
      }
    },
    settled: async () => {
      await Promise.all(reads);
    },
    release: () => {
      if (open) closeSync(fd);
      open = false;
    },
  };
}

function isElf(b: Uint8Array): boolean {
  return b[0] === 0x7f && b[1] === 0x45 && b[2] === 0x4c && b[3] === 0x46;
}

/** The payload of `kernel` when this VMM unpacks its compression, else undefined (left to the guest). */
function unpackablePayload(kernel: Uint8Array): Uint8Array | undefined {
  const payload = bzImagePayload(kernel);
  return payload && canUnpack(payloadCompression(payload)) ? payload : undefined;
}

/**
 * The unpacked payload of the bzImage `kernel` (read from `path`) when the cache holds it;
 * undefined otherwise. An entry cut short (a full disk, a crash while another process wrote
 * it) does not count: the trailer's length must match.
 */
export function cachedKernelFor(path: string, kernel: Uint8Array, dir = kernelCacheDir()): UnpackedKernel | undefined {
  const payload = unpackablePayload(kernel);
  if (!payload) return undefined;
  const cached = openEntry(entryPath(dir, path));
  if (cached && cached.image.length === unpackedLength(payload)) return cached;
  cached?.release();
  return undefined;
}

/** A temporary name for an entry being written: unique to this writer, in this process and thread. */
let writers = 0;
function temporaryFor(file: string): string {
  return `${file}.${process.pid}-${threadId}-${++writers}.tmp`;
}

/** Writes a fresh entry on the thread pool; a failure (a full disk, say) leaves it to the next boot. */
async function storeEntry(dir: string, file: string, bytes: Uint8Array): Promise<void> {
  const temporary = temporaryFor(file);
  try {
    await writeSparse(temporary, bytes);
    renameSync(temporary, file);
    pruneEntries(dir, file);
  } catch {
    rmSync(temporary, { force: true });
  }
}

/**
 * The unpacked payload of the bzImage `kernel` (read from `path`): from the cache, or
 * unpacked now (0.06 s on a host that runs guests natively, 0.7 s under nested
 * virtualization, against 0.45 s for the guest's own decompressor), its entry then written
 * on the thread pool while the kernel boots (`stored`). Undefined when the payload is
 * compressed in a way this VMM does not unpack, or the cache directory cannot be written:
 * the guest then decompresses it. Throws KernelPayloadError when the payload does not decode.
 */
export function unpackedKernelFor(path: string, kernel: Uint8Array, dir = kernelCacheDir()): UnpackedKernel | undefined {
  const cached = cachedKernelFor(path, kernel, dir);
  if (cached) return cached;
  const payload = unpackablePayload(kernel);
  if (!payload || !makeWritableDir(dir)) return undefined;
  const bytes = unpackPayload(payload);
  return {
    image: kernelImageOf(bytes), fresh: true, prefetch: () => undefined, settled: async () => undefined, release: () => undefined,
    stored: storeEntry(dir, entryPath(dir, path), bytes),
  };
}
