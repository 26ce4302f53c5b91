// The qcow2 block driver: maps guest offsets through the L1/L2 tables to host clusters,
// allocates clusters on first write (copying unwritten parts from the backing file),
// and keeps refcounts exact so the image is consistent at every point.
//
// Concurrency: reads, and writes to clusters this image already owns exclusively
// (L2 entry with the COPIED flag), go straight to the file in parallel. Anything that
// changes metadata (allocation, copy-on-write, discard, zeroing, resizing, snapshots) runs
// under one metadata lock and re-reads the mapping once it holds the lock.
//
// Crash safety: metadata reaches the file in dependency order (refcount of a new cluster ->
// its data -> the L2 entry -> the L1 entry; old clusters are released only after nothing
// points at them), so a killed process leaves at worst leaked clusters. Where a page cache
// could reorder writes, new L2 entries wait in memory and go out in batches behind one
// barrier (see writeBackTables); elsewhere everything is written through at once.
import { realpath } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { BlockError } from '../errors.js';
import { HostFile } from '../host-file.js';
import { RawDriver } from '../raw.js';
import { probeFormat } from '../probe.js';
import type { BlockDriver, BlockStatus, BlockTopology, CacheMode, MappedRange, OpenOptions } from '../driver.js';
import type { MappedBytes } from '../leased-mapping.js';
import {
  COMPAT_LAZY_REFCOUNTS, HEADER_FIELD, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, INCOMPAT_EXTL2,
  MAX_L1_BYTES, parseHeader, serializeHeader, type Qcow2Header,
} from './header.js';
import { Refcounts } from './refcounts.js';
import { decodeL2, makeCompressedEntry, makeEntry, readU32, readU64Parts, writeEntry, writeU64Parts, offsetOf, COMPRESSED_HI, COPIED_HI, ZERO_LO, type L2Entry } from './entries.js';
import { compressCluster, decompressCluster } from './compression.js';
import { L2Cache, type CachedTable } from './l2-cache.js';

/** A settled promise, for requests answered on the spot (a fill), without allocating one each time. */
const RESOLVED: Promise<void> = Promise.resolve();

const ALL_SUBCLUSTERS = 0xffffffff;
const DEFAULT_L2_CACHE = 1 << 20;

export interface Qcow2OpenOptions extends OpenOptions {
  /** Real paths of the images that opened this one as their backing file (loop detection). */
  chain?: string[];
}

/** The entry of a cluster whose L2 table does not exist: all zero bits, unallocated. */
const NO_ENTRY = new Uint8Array(16);

/** A small async mutex: run() calls execute one at a time, in order. */
export class Mutex {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.tail.then(fn, fn);
    this.tail = result.catch(() => undefined);
    return result;
  }
}

/** The bytes [from, from+length) of a scatter-gather list, as a new list of views. */
export function sliceVectors(buffers: Uint8Array[], from: number, length: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let pos = 0;
  for (const b of buffers) {
    const end = pos + b.length;
    if (end > from && pos < from + length) {
      const s = Math.max(from, pos) - pos;
      const e = Math.min(from + length, end) - pos;
      out.push(s === 0 && e === b.length ? b : b.subarray(s, e));
    }
    pos = end;
    if (pos >= from + length) break;
  }
  return out;
}

/**
 * Slices one scatter-gather list front to back. The pieces of a request are taken in order,
 * so each slice starts where the scan already stands, and slicing a whole request costs one
 * pass over its buffers: sliceVectors from the start each time made a write of 256 buffers
 * across 16 clusters cost 16 passes. A slice that starts before the last one scans afresh.
 */
export class VectorCursor {
  /** The first buffer not wholly before the last slice's start, and where it begins. */
  private index = 0;
  private start = 0;

  constructor(private readonly buffers: Uint8Array[]) {}

  /** The bytes [from, from+length), as views. */
  slice(from: number, length: number): Uint8Array[] {
    if (from < this.start) return sliceVectors(this.buffers, from, length);
    const buffers = this.buffers;
    while (this.index < buffers.length && this.start + buffers[this.index].length <= from) {
      this.start += buffers[this.index].length;
      this.index++;
    }
    const out: Uint8Array[] = [];
    const end = from + length;
    for (let i = this.index, pos = this.start; i < buffers.length && pos < end; i++) {
      const b = buffers[i];
      const bEnd = pos + b.length;
      // A buffer the slice covers whole goes as it is: subarray() costs more than the rest
      // of the step, and a guest's request brings hundreds of page-sized buffers.
      if (bEnd > from) out.push(pos >= from && bEnd <= end ? b : b.subarray(Math.max(from, pos) - pos, Math.min(end, bEnd) - pos));
      pos = bEnd;
    }
    return out;
  }
}

function copyInto(dst: Uint8Array[], src: Uint8Array): void {
  let at = 0;
  for (const d of dst) {
    d.set(src.subarray(at, at + d.length));
    at += d.length;
  }
}

function gather(src: Uint8Array[], length: number): Uint8Array {
  if (src.length === 1 && src[0].length === length) return src[0];
  const out = new Uint8Array(length);
  let at = 0;
  for (const s of src) {
    out.set(s, at);
    at += s.length;
  }
  return out;
}

/**
 * Host clusters allocated for a run of guest clusters, not yet written or linked: the first
 * guest cluster, its L2 table and entry index, the first host cluster, how many, the
 * entries they replace, the data writes to make, and what to call once linked.
 */
interface FreshClusters {
  first: number;
  l2: { offset: number; table: CachedTable; index: number };
  host: number;
  n: number;
  olds: L2Entry[];
  writes: Array<{ at: number; bytes: Uint8Array[] }>;
  linked: Promise<void>;
  settle: () => void;
}

/** One cluster's share of a request: where it starts in the request, the cluster, the part of it, its mapping. */
interface ClusterPiece { pos: number; gc: number; inCluster: number; length: number; entry: L2Entry }

/**
 * Gathers the pieces of a request that are contiguous both in the file and in the request
 * into runs, each handed to `issue` as one I/O (host offset, offset in the request, length).
 */
class HostRuns {
  private run: { host: number; from: number; length: number } | undefined;
  constructor(private readonly issue: (host: number, from: number, length: number) => void) {}

  add(host: number, from: number, length: number): void {
    const r = this.run;
    if (r && r.host + r.length === host && r.from + r.length === from) r.length += length;
    else {
      this.flush();
      this.run = { host, from, length };
    }
  }

  flush(): void {
    const r = this.run;
    if (!r) return;
    this.run = undefined;
    this.issue(r.host, r.from, r.length);
  }
}

export class Qcow2Image implements BlockDriver {
  readonly format = 'qcow2';
  readonly clusterSize: number;
  readonly clusterBits: number;
  readonly extendedL2: boolean;
  readonly entryBytes: number;
  readonly l2Entries: number;
  readonly subclusterSize: number;
  l1: Uint8Array;
  readonly lock = new Mutex();
  private readonly l2Cache: L2Cache;
  private lastDecompressed?: { offset: number; data: Uint8Array };
  private closed = false;
  /** Writes between their mapping lookup and the end of their in-place data writes. */
  private inPlaceWriters = 0;
  private drained?: () => void;
  /** Set while an exclusive operation runs: new writes wait for it. */
  private paused?: Promise<void>;

  private constructor(
    readonly file: HostFile,
    public header: Qcow2Header,
    public refcounts: Refcounts,
    l1: Uint8Array,
    public backing: BlockDriver | undefined,
    options: OpenOptions,
  ) {
    this.clusterBits = header.clusterBits;
    this.clusterSize = 1 << header.clusterBits;
    this.extendedL2 = (header.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
    this.entryBytes = this.extendedL2 ? 16 : 8;
    this.l2Entries = this.clusterSize / this.entryBytes;
    this.subclusterSize = this.extendedL2 ? this.clusterSize / 32 : this.clusterSize;
    this.l1 = l1;
    this.l2Cache = new L2Cache(file, this.clusterSize, Math.max(4, Math.floor((options.l2CacheBytes ?? DEFAULT_L2_CACHE) / this.clusterSize)));
  }

  get filename(): string {
    return this.file.filename;
  }

  get readOnly(): boolean {
    return this.file.readOnly;
  }

  static async open(filename: string, options: Qcow2OpenOptions = {}): Promise<Qcow2Image> {
    const file = await HostFile.open(filename, { readOnly: options.readOnly, cache: options.cache, ring: options.ring, memoryIoInline: options.memoryIoInline });
    try {
      return await Qcow2Image.openFile(file, options);
    } catch (err) {
      await file.close().catch(() => undefined);
      throw err;
    }
  }

  private static async openFile(file: HostFile, options: Qcow2OpenOptions): Promise<Qcow2Image> {
    const filename = file.filename;
    const fileLength = await file.length();
    const first = new Uint8Array(Number(fileLength < 2097152n ? fileLength : 2097152n));
    await file.read(0, first);
    let header = parseHeader(filename, first, fileLength);
    const clusterSize = 1 << header.clusterBits;
    if (first.length > clusterSize) header = parseHeader(filename, first.subarray(0, clusterSize), fileLength);
    if (!file.readOnly && header.incompatibleFeatures & INCOMPAT_CORRUPT) {
      throw new BlockError(filename, 'image is marked corrupt; it can only be opened read-only (repair it with check)');
    }
    const l1 = new Uint8Array(header.l1Size * 8);
    await file.read(header.l1TableOffset, l1);
    const refcounts = await Refcounts.load(file, header.clusterBits, header.refcountOrder, Number(header.refcountTableOffset), header.refcountTableClusters, Number(fileLength));
    let backing: BlockDriver | undefined;
    if (header.backingFile && options.backing !== false) {
      backing = await openBacking(filename, header, options);
    }
    const image = new Qcow2Image(file, header, refcounts, l1, backing, options);
    image.validateL1();
    if (!file.readOnly) {
      try {
        await image.prepareForWriting();
      } catch (err) {
        await backing?.close().catch(() => undefined);
        throw err;
      }
    }
    return image;
  }

  /** Every L1 entry must point at an aligned cluster inside the file. */
  private validateL1(): void {
    const fileEnd = this.refcounts.fileEnd;
    for (let i = 0; i < this.header.l1Size; i++) {
      const [hi, lo] = readU64Parts(this.l1, i * 8);
      const off = offsetOf(hi, lo);
      if (off === 0) continue;
      if (off % this.clusterSize !== 0) throw new BlockError(this.filename, `L1 entry ${i} points at unaligned offset 0x${off.toString(16)}`);
      if (off + this.clusterSize > fileEnd) throw new BlockError(this.filename, `L1 entry ${i} points past the end of the file (0x${off.toString(16)})`);
      if (this.overlapsFixedMetadata(off, this.clusterSize)) {
        throw new BlockError(this.filename, `L1 entry ${i} points into the header, L1 table or refcount table (0x${off.toString(16)})`);
      }
    }
  }

  /** Whether [offset, offset+length) touches the header, the L1 table or the refcount table. */
  overlapsFixedMetadata(offset: number, length: number): boolean {
    // Written out, not as a helper closure: every read of a data cluster asks this.
    const end = offset + length;
    if (offset < this.clusterSize) return true;
    const l1 = Number(this.header.l1TableOffset);
    if (this.header.l1Size > 0 && offset < l1 + this.header.l1Size * 8 && l1 < end) return true;
    const rt = this.refcounts.tableOffset;
    return this.refcounts.tableClusters > 0 && offset < rt + this.refcounts.tableClusters * this.clusterSize && rt < end;
  }

  /** Opening read-write: rebuild refcounts of a dirty image, drop autoclear features we do not maintain. */
  private async prepareForWriting(): Promise<void> {
    const h = this.header;
    if (h.version === 3 && h.incompatibleFeatures & INCOMPAT_DIRTY) {
      const { repairOpenImage } = await import('./check.js');
      await repairOpenImage(this);
      await this.setIncompatibleFeatures(h.incompatibleFeatures & ~INCOMPAT_DIRTY);
    }
    if (h.version === 3 && h.autoclearFeatures !== 0n) {
      const buf = new Uint8Array(8);
      await this.file.write(HEADER_FIELD.autoclearFeatures, buf);
      h.autoclearFeatures = 0n;
      await this.file.flush();
    }
    if (h.version === 3 && this.lazyRefcounts) {
      // Lazy refcounts: the image stays marked dirty while it is open, so refcount updates
      // need no ordering barriers against the tables (a crash gets them rebuilt on the next
      // read-write open); close() clears the mark once everything is flushed.
      await this.setIncompatibleFeatures(h.incompatibleFeatures | INCOMPAT_DIRTY);
      this.lazyDirty = true;
      this.refcounts.orderingBarriers = false;
    }
    // Only a page cache (writeback) or a device cache (none) reorders writes: there, new
    // table entries are written back in batches after one barrier (see writeBackTables).
    // 'unsafe' promises nothing before close, so its entries are batched too (one write per
    // table instead of one per request); writethrough modes write every change through.
    this.refcounts.deferredOrdering = this.refcounts.orderingBarriers && (this.file.cache === 'writeback' || this.file.cache === 'none' || this.file.cache === 'unsafe');
  }

  /** Open read-write with lazy refcounts: marked dirty on disk until close. */
  private lazyDirty = false;

  async setIncompatibleFeatures(bits: bigint): Promise<void> {
    const buf = new Uint8Array(8);
    new DataView(buf.buffer).setBigUint64(0, bits);
    await this.file.write(HEADER_FIELD.incompatibleFeatures, buf);
    await this.file.flush();
    this.header.incompatibleFeatures = bits;
  }

  /** Rewrite the whole header cluster (backing file change, extensions...). */
  async rewriteHeader(): Promise<void> {
    await this.file.write(0, serializeHeader(this.filename, this.header));
    await this.file.flush();
  }

  size(): bigint {
    return this.header.size;
  }

  topology(): BlockTopology {
    return {
      logicalBlockSize: 512,
      physicalBlockSize: 512,
      alignmentOffset: 0,
      minimumIoSize: 512,
      optimalIoSize: this.clusterSize,
      discardGranularity: this.clusterSize,
    };
  }

  get lazyRefcounts(): boolean {
    return (this.header.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n;
  }

  // ---- L1 / L2 access --------------------------------------------------------------

  l1Entry(index: number): { offset: number; copied: boolean } {
    if (index >= this.header.l1Size) return { offset: 0, copied: false };
    const [hi, lo] = readU64Parts(this.l1, index * 8);
    return { offset: offsetOf(hi, lo), copied: (hi & COPIED_HI) !== 0 };
  }

  private async setL1Entry(index: number, offset: number, copied: boolean): Promise<void> {
    const [hi, lo] = makeEntry(offset, copied);
    writeU64Parts(this.l1, index * 8, hi, lo);
    await this.file.write(Number(this.header.l1TableOffset) + index * 8, this.l1.slice(index * 8, index * 8 + 8));
  }

  loadL2(offset: number): Promise<CachedTable> {
    return this.l2Cache.get(offset);
  }

  /** The L2 entry mapping guest cluster `gc` (unallocated when its L2 table does not exist). */
  async lookup(gc: number): Promise<L2Entry> {
    const l1i = Math.floor(gc / this.l2Entries);
    const { offset } = this.l1Entry(l1i);
    if (offset === 0) return decodeL2(NO_ENTRY, 0, this.clusterBits, this.extendedL2);
    const t = await this.loadL2(offset);
    const e = decodeL2(t.buf, gc % this.l2Entries, this.clusterBits, this.extendedL2);
    this.validateEntry(gc, e);
    return e;
  }

  /**
   * The L2 entry of guest cluster `gc` when its table is cached (or absent), else undefined:
   * requests that hit the cache go on without an await, so they cost no extra turn of the
   * event loop.
   */
  private lookupCached(gc: number): L2Entry | undefined {
    const { offset } = this.l1Entry(Math.floor(gc / this.l2Entries));
    if (offset === 0) return decodeL2(NO_ENTRY, 0, this.clusterBits, this.extendedL2);
    const t = this.l2Cache.peek(offset);
    if (!t) return undefined;
    const e = decodeL2(t.buf, gc % this.l2Entries, this.clusterBits, this.extendedL2);
    this.validateEntry(gc, e);
    return e;
  }

  private validateEntry(gc: number, e: L2Entry): void {
    const fileEnd = this.refcounts.fileEnd;
    if (e.kind === 'normal' || (e.kind === 'zero' && e.offset !== 0)) {
      this.validateClusterPointer(gc, e.offset);
    } else if (e.kind === 'compressed') {
      if (e.compressedOffset === 0 || e.compressedOffset >= fileEnd) {
        throw new BlockError(this.filename, `compressed cluster of guest cluster ${gc} points past the end of the file (0x${e.compressedOffset.toString(16)})`);
      }
    }
    if (this.extendedL2 && e.kind !== 'compressed' && (e.allocMask & e.zeroMask) !== 0) {
      throw new BlockError(this.filename, `extended L2 entry of guest cluster ${gc} marks subclusters both allocated and zero`);
    }
    if (this.extendedL2 && e.offset === 0 && e.allocMask !== 0) {
      throw new BlockError(this.filename, `extended L2 entry of guest cluster ${gc} has allocated subclusters but no cluster`);
    }
  }

  /** Checks the host cluster an L2 entry of guest cluster `gc` points at (data, or a preallocated zero cluster). */
  private validateClusterPointer(gc: number, offset: number): void {
    const problem = this.clusterPointerProblem(offset);
    if (problem) throw new BlockError(this.filename, `L2 entry of guest cluster ${gc} ${problem}`);
  }

  /** What is wrong with a data cluster at host `offset`, or undefined when it may be one. */
  private clusterPointerProblem(offset: number): string | undefined {
    if (offset % this.clusterSize !== 0) return `points at unaligned offset 0x${offset.toString(16)}`;
    // A cluster may start right at the end of the file: QEMU allocates clusters whose
    // subclusters it has not written yet. Anything further out is a bad pointer.
    if (offset === 0 || offset > Math.ceil(this.refcounts.fileEnd / this.clusterSize) * this.clusterSize) {
      return `points past the end of the file (0x${offset.toString(16)})`;
    }
    if (this.overlapsFixedMetadata(offset, this.clusterSize)) {
      return `points into the header, L1 table or refcount table (0x${offset.toString(16)})`;
    }
    return undefined;
  }

  /**
   * The L2 table for guest cluster `gc`, made writable: allocated if missing, copied if
   * shared with a snapshot. Caller holds the lock.
   */
  private async writableL2(gc: number): Promise<{ offset: number; table: CachedTable; index: number }> {
    const l1i = Math.floor(gc / this.l2Entries);
    const { offset, copied } = this.l1Entry(l1i);
    if (offset !== 0 && copied) return { offset, table: this.l2Cache.peek(offset) ?? await this.loadL2(offset), index: gc % this.l2Entries };
    const fresh = await this.refcounts.allocate(1);
    const buf = new Uint8Array(this.clusterSize);
    if (offset !== 0) buf.set((await this.loadL2(offset)).buf);
    await this.file.write(fresh, buf);
    const table: CachedTable = { buf, pending: 0 };
    this.l2Cache.put(fresh, table);
    // The table's contents must be on disk before the L1 entry that points at it.
    await this.file.barrier();
    await this.setL1Entry(l1i, fresh, true);
    if (offset !== 0) this.pendingReleases.push({ offset, length: this.clusterSize });
    return { offset: fresh, table, index: gc % this.l2Entries };
  }

  /** Write entries [index, index+entries.length) of an L2 table (memory first, then disk). */
  private async setL2Entries(l2: { offset: number; table: CachedTable }, index: number, entries: Array<{ hi: number; lo: number; zeroMask?: number; allocMask?: number }>): Promise<void> {
    const size = this.entryBytes;
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i];
      writeU64Parts(l2.table.buf, (index + i) * size, e.hi, e.lo);
      if (this.extendedL2) writeU64Parts(l2.table.buf, (index + i) * size + 8, e.zeroMask ?? 0, e.allocMask ?? 0);
    }
    await this.storeL2Entries(l2, index, entries.length);
  }

  /**
   * Entries [index, index+count) of an L2 table point at `count` consecutive host clusters
   * from `host`, plainly allocated (what a new run of clusters gets linked with). Written
   * straight into the table: building an entry object per cluster was a noticeable part of
   * a convert's main-thread time.
   */
  private async linkHostRun(l2: { offset: number; table: CachedTable }, index: number, host: number, count: number): Promise<void> {
    const size = this.entryBytes;
    const buf = l2.table.buf;
    for (let k = 0; k < count; k++) {
      writeEntry(buf, (index + k) * size, host + k * this.clusterSize);
      if (this.extendedL2) writeU64Parts(buf, (index + k) * size + 8, 0, ALL_SUBCLUSTERS);
    }
    await this.storeL2Entries(l2, index, count);
  }

  /** Entries [index, index+count) changed in memory: on to the disk, now or with the next write-back. */
  private async storeL2Entries(l2: { offset: number; table: CachedTable }, index: number, count: number): Promise<void> {
    const size = this.entryBytes;
    if (this.refcounts.deferredOrdering) {
      const t = l2.table;
      const from = index * size;
      const to = (index + count) * size;
      t.dirtyFrom = t.dirtyTo ? Math.min(t.dirtyFrom ?? from, from) : from;
      t.dirtyTo = Math.max(t.dirtyTo ?? 0, to);
      this.dirtyTables.set(l2.offset, t);
      if (this.dirtyTables.size > this.l2Cache.capacity / 2) await this.writeBackTables();
      return;
    }
    l2.table.pending++;
    try {
      await this.file.write(l2.offset + index * size, l2.table.buf.slice(index * size, (index + count) * size));
    } finally {
      l2.table.pending--;
    }
  }

  /**
   * L2 tables whose entries changed in memory only. With a page cache between us and the
   * disk, every new entry would otherwise need a barrier (fdatasync) before it is written, to
   * make the refcount and data it points at durable first. Instead, changed entries wait here
   * and go out together after one barrier: at flush, close, snapshot operations, before
   * released clusters are freed, and when too many tables are pinned in the cache. A crash
   * before that loses only writes nobody flushed, and leaves their clusters leaked.
   */
  private readonly dirtyTables = new Map<number, CachedTable>();

  /** Write back the entries changed in memory, after a barrier. Caller holds the lock. */
  private async writeBackTables(): Promise<void> {
    if (this.dirtyTables.size === 0) return;
    await this.file.barrier();
    const tables = [...this.dirtyTables];
    this.dirtyTables.clear();
    await Promise.all(tables.map(async ([offset, t]) => {
      const from = t.dirtyFrom ?? 0;
      const to = t.dirtyTo ?? 0;
      t.dirtyFrom = t.dirtyTo = 0;
      t.pending++;
      try {
        await this.file.write(offset + from, t.buf.slice(from, to));
      } finally {
        t.pending--;
      }
    }));
  }

  /**
   * Drop the reference an old mapping held, once nothing points at it any more. The
   * decrement is deferred until the table changes that unlinked it are durable (a barrier
   * in settleMetadata), so that a power loss can leak the cluster but never leave a
   * reference to a cluster whose refcount already dropped.
   */
  private pendingReleases: Array<{ offset: number; length: number }> = [];

  private async release(e: L2Entry): Promise<void> {
    if (e.kind === 'compressed') this.pendingReleases.push({ offset: e.compressedOffset, length: e.compressedLength });
    else if (e.offset !== 0) this.pendingReleases.push({ offset: e.offset, length: this.clusterSize });
    else return;
    if (this.pendingReleases.length >= 4096) await this.applyReleases();
  }

  private async applyReleases(): Promise<void> {
    // The entries that unlinked the released clusters must be on disk before they are freed.
    await this.writeBackTables();
    if (this.pendingReleases.length === 0) return;
    const list = this.pendingReleases;
    this.pendingReleases = [];
    if (!this.lazyDirty) await this.file.barrier();
    for (const r of list) await this.refcounts.addRange(r.offset, r.length, -1n);
  }

  /**
   * Bring the refcounts exactly in line with the tables: apply deferred releases and
   * return reserved clusters. Caller holds the lock (or has the image to itself).
   */
  async settleMetadata(): Promise<void> {
    if (this.readOnly) return;
    await this.applyReleases();
    await this.refcounts.releaseReserve();
  }

  // ---- reading -----------------------------------------------------------------------

  private checkRange(offset: bigint, length: bigint, what: string): void {
    if (this.closed) throw new BlockError(this.filename, `${what} on a closed image`);
    if (offset < 0n || length < 0n || offset + length > this.header.size) {
      throw new BlockError(this.filename, `${what} of ${length} bytes at offset ${offset} is beyond the disk size ${this.header.size}`);
    }
  }

  // Not an async function: a suspended async call keeps its whole frame alive, hundreds of
  // bytes per request, and the common requests below need no await of their own. So a
  // failure must come back as a rejected promise, never as a throw.
  readv(offset: bigint, buffers: Uint8Array[]): Promise<void> {
    try {
      const length = buffers.length === 1 ? buffers[0]!.length : buffers.reduce((n, b) => n + b.length, 0);
      const start = Number(offset);
      // Checked in numbers first (BigInt arithmetic allocates); the BigInt check words the error.
      if (this.closed || start < 0 || start + length > Number(this.header.size)) this.checkRange(offset, BigInt(length), 'read');
      // The commonest request of all: inside one data cluster whose table is cached. Its host
      // offset comes straight from the table's bytes, with no entry object made.
      const host = this.plainDataCluster(start, length);
      if (host >= 0) return this.file.readv(host + (start % this.clusterSize), buffers);
      // The common small request inside one cluster whose table is cached: one read of the
      // file (or a fill), without the general walk and its bookkeeping.
      const e = this.singleClusterEntry(start, length);
      if (e?.kind === 'normal') return this.file.readv(e.offset + (start % this.clusterSize), buffers);
      if (e && (e.kind === 'zero' || (e.kind === 'unallocated' && !this.backing))) {
        for (const b of buffers) b.fill(0);
        return RESOLVED;
      }
      return this.readFromCachedTable(start, length, buffers) ?? this.readInto(start, length, buffers);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * A read across several clusters of one cached L2 table with standard entries: the shape
   * of a guest's sequential I/O (a 1 MiB request spans 16 clusters of 64 KiB). The entries
   * are read straight from the table, with none of the general walk's per-cluster objects,
   * and clusters that follow each other in the file become one read. Every entry is checked
   * before any I/O starts; undefined (nothing done) when a cluster needs the general path:
   * compressed, or unallocated with a backing file.
   */
  private readFromCachedTable(start: number, length: number, buffers: Uint8Array[]): Promise<void> | undefined {
    const plan = this.cachedTablePlan(start, length);
    if (!plan) return undefined;
    const { reads, zeroes } = plan;
    if (reads.length === 1 && zeroes.length === 0) return this.file.readv(reads[0]!.host, buffers);
    for (const z of zeroes) for (const b of sliceVectors(buffers, z.from, z.length)) b.fill(0);
    return Promise.all(reads.map((r) => this.file.readv(r.host, sliceVectors(buffers, r.from, r.length)))).then(() => undefined);
  }

  /**
   * The bytes of [offset, offset+length) straight from the image file's leased mapping
   * (BlockDriver.mapForRead), a run for each stretch of data clusters that follow each other
   * in the file, when the range is all data clusters of this image whose table is cached;
   * undefined otherwise (read them instead).
   */
  mapForRead(offset: bigint, length: bigint): MappedRange | undefined {
    const start = Number(offset);
    const n = Number(length);
    if (this.closed || n <= 0 || start < 0 || start + n > Number(this.header.size)) return undefined;
    let reads: Array<{ host: number; from: number; length: number }>;
    try {
      const host = this.plainDataCluster(start, n);
      if (host >= 0) {
        reads = [{ host: host + (start % this.clusterSize), from: 0, length: n }];
      } else {
        const plan = this.cachedTablePlan(start, n);
        if (!plan || plan.zeroes.length !== 0) return undefined;
        reads = plan.reads;
      }
    } catch {
      // A bad entry: readv() reports it.
      return undefined;
    }
    const held: MappedBytes[] = [];
    const release = (): void => {
      for (const m of held) m.release();
    };
    for (const r of reads) {
      const mapped = this.file.mapForRead(r.host, r.length);
      if (!mapped) {
        release();
        return undefined;
      }
      held.push(mapped);
    }
    return { runs: held.map((m, i) => ({ at: reads[i]!.from, bytes: m.bytes })), release };
  }

  /**
   * The whole read done on the calling thread, when it needs no more than the cached table
   * and reads the file can do at once (HostFile.readvNow); false, with nothing reported,
   * otherwise: readv() then runs it (again), and reports any error.
   */
  readvNow(offset: bigint, buffers: Uint8Array[]): boolean {
    let length = 0;
    for (const b of buffers) length += b.length;
    const start = Number(offset);
    if (this.closed || start < 0 || start + length > Number(this.header.size)) return false;
    try {
      const host = this.plainDataCluster(start, length);
      if (host >= 0) return this.file.readvNow(host + (start % this.clusterSize), buffers);
      const plan = this.cachedTablePlan(start, length);
      if (!plan) return false;
      for (const r of plan.reads) {
        if (!this.file.readvNow(r.host, plan.reads.length === 1 && plan.zeroes.length === 0 ? buffers : sliceVectors(buffers, r.from, r.length))) return false;
      }
      for (const z of plan.zeroes) for (const b of sliceVectors(buffers, z.from, z.length)) b.fill(0);
      return true;
    } catch {
      // A bad entry: readv() reports it.
      return false;
    }
  }

  /**
   * The host reads and the zero fills of a read within one cached table with standard
   * entries (see readFromCachedTable), every entry checked; undefined when a cluster needs
   * the general path.
   */
  private cachedTablePlan(start: number, length: number): { reads: Array<{ host: number; from: number; length: number }>; zeroes: Array<{ from: number; length: number }> } | undefined {
    if (this.extendedL2 || length === 0) return undefined;
    const cs = this.clusterSize;
    const first = Math.floor(start / cs);
    const last = Math.floor((start + length - 1) / cs);
    const l1Index = Math.floor(first / this.l2Entries);
    if (Math.floor(last / this.l2Entries) !== l1Index) return undefined;
    const { offset: tableOffset } = this.l1Entry(l1Index);
    if (tableOffset === 0) return undefined;
    const table = this.l2Cache.peek(tableOffset)?.buf;
    if (!table) return undefined;
    // Reads are gathered first and issued after the loop: every entry is checked before any I/O.
    const reads: Array<{ host: number; from: number; length: number }> = [];
    const runs = new HostRuns((host, from, n) => reads.push({ host, from, length: n }));
    const zeroes: Array<{ from: number; length: number }> = [];
    let pos = 0;
    for (let gc = first; gc <= last; gc++) {
      const inCluster = gc === first ? start - first * cs : 0;
      const chunk = Math.min(cs - inCluster, length - pos);
      const [hi, lo] = readU64Parts(table, (gc % this.l2Entries) * 8);
      if (hi & COMPRESSED_HI) return undefined;
      const cluster = offsetOf(hi, lo);
      if (cluster === 0 && !(lo & ZERO_LO) && this.backing) return undefined;
      if (cluster !== 0) this.validateClusterPointer(gc, cluster);
      if (cluster === 0 || lo & ZERO_LO) {
        runs.flush();
        zeroes.push({ from: pos, length: chunk });
      } else {
        runs.add(cluster + inCluster, pos, chunk);
      }
      pos += chunk;
    }
    runs.flush();
    return { reads, zeroes };
  }

  /**
   * The host offset of the data cluster holding guest bytes [offset, offset+length) when they
   * lie in one cluster whose standard L2 entry (no flag but COPIED) is in a cached table and
   * points where a data cluster may be; else -1, and the general lookup decides (and reports
   * a bad entry).
   */
  private plainDataCluster(offset: number, length: number): number {
    if (this.extendedL2) return -1;
    const cs = this.clusterSize;
    const gc = Math.floor(offset / cs);
    if (offset - gc * cs + length > cs) return -1;
    const l1i = Math.floor(gc / this.l2Entries);
    if (l1i >= this.header.l1Size) return -1;
    const l2Offset = offsetOf(readU32(this.l1, l1i * 8), readU32(this.l1, l1i * 8 + 4));
    if (l2Offset === 0) return -1;
    const table = this.l2Cache.peek(l2Offset)?.buf;
    if (!table) return -1;
    const at = (gc % this.l2Entries) * 8;
    const hi = readU32(table, at);
    const lo = readU32(table, at + 4);
    // Compressed, zero-flagged or reserved bits set: not plain data.
    if ((hi & ~COPIED_HI & ~0x00ffffff) !== 0 || (lo & 0x1ff) !== 0) return -1;
    const host = offsetOf(hi, lo);
    return host !== 0 && this.clusterPointerProblem(host) === undefined ? host : -1;
  }

  /** The cached L2 entry of the one cluster [offset, offset+length) lies in (standard L2 entries only), else undefined. */
  private singleClusterEntry(offset: number, length: number): L2Entry | undefined {
    if (this.extendedL2) return undefined;
    const gc = Math.floor(offset / this.clusterSize);
    if (offset - gc * this.clusterSize + length > this.clusterSize) return undefined;
    return this.lookupCached(gc);
  }

  private async readCompressed(e: L2Entry): Promise<Uint8Array> {
    if (this.lastDecompressed?.offset === e.compressedOffset) return this.lastDecompressed.data;
    const raw = new Uint8Array(e.compressedLength);
    await this.file.read(e.compressedOffset, raw);
    const data = decompressCluster(this.filename, this.header.compressionType, raw, this.clusterSize, e.compressedOffset);
    this.lastDecompressed = { offset: e.compressedOffset, data };
    return data;
  }

  private async readBacking(guest: number, length: number, dst: Uint8Array[]): Promise<void> {
    const bsize = this.backing ? Number(this.backing.size()) : 0;
    const inside = Math.max(0, Math.min(length, bsize - guest));
    if (inside > 0 && this.backing) await this.backing.readv(BigInt(guest), sliceVectors(dst, 0, inside));
    if (inside < length) for (const d of sliceVectors(dst, inside, length - inside)) d.fill(0);
  }

  /**
   * Call `visit` for each cluster that guest bytes [offset, offset+length) touch, in order,
   * with its L2 entry (looked up without an await when its table is cached).
   */
  private async forEachCluster(offset: number, length: number, visit: (piece: ClusterPiece) => void): Promise<void> {
    const cs = this.clusterSize;
    let pos = 0;
    while (pos < length) {
      const guest = offset + pos;
      const gc = Math.floor(guest / cs);
      const inCluster = guest - gc * cs;
      const chunk = Math.min(length - pos, cs - inCluster);
      visit({ pos, gc, inCluster, length: chunk, entry: this.lookupCached(gc) ?? await this.lookup(gc) });
      pos += chunk;
    }
  }

  /** Read guest bytes [offset, offset+length) into buffers; may run past the virtual size up to the cluster end. */
  private async readInto(offset: number, length: number, buffers: Uint8Array[]): Promise<void> {
    const jobs: Promise<void>[] = [];
    const cursor = new VectorCursor(buffers);
    const runs = new HostRuns((host, from, n) => jobs.push(this.file.readv(host, cursor.slice(from, n))));
    await this.forEachCluster(offset, length, ({ pos, gc, inCluster, length: chunk, entry: e }) => {
      for (const seg of this.segments(e, inCluster, chunk)) {
        const at = pos + (seg.from - inCluster);
        if (seg.source === 'data') {
          runs.add(e.offset + seg.from, at, seg.length);
          continue;
        }
        runs.flush();
        const dst = cursor.slice(at, seg.length);
        if (seg.source === 'zero') for (const d of dst) d.fill(0);
        else if (seg.source === 'backing') jobs.push(this.readBacking(gc * this.clusterSize + seg.from, seg.length, dst));
        else {
          const from = seg.from;
          jobs.push(this.readCompressed(e).then((data) => copyInto(dst, data.subarray(from, from + seg.length))));
        }
      }
    });
    runs.flush();
    await Promise.all(jobs);
  }

  /** Where the bytes [from, from+length) of a cluster come from, in runs of equal source. */
  private segments(e: L2Entry, from: number, length: number): Array<{ from: number; length: number; source: 'data' | 'zero' | 'backing' | 'compressed' }> {
    if (e.kind === 'compressed') return [{ from, length, source: 'compressed' }];
    if (!this.extendedL2) {
      const source = e.kind === 'normal' ? 'data' : e.kind === 'zero' ? 'zero' : 'backing';
      return [{ from, length, source }];
    }
    const out: Array<{ from: number; length: number; source: 'data' | 'zero' | 'backing' | 'compressed' }> = [];
    const sub = this.subclusterSize;
    let pos = from;
    while (pos < from + length) {
      const i = Math.floor(pos / sub);
      const end = Math.min(from + length, (i + 1) * sub);
      const source = e.allocMask & (1 << i) ? 'data' : e.zeroMask & (1 << i) ? 'zero' : 'backing';
      const last = out[out.length - 1];
      if (last && last.source === source) last.length += end - pos;
      else out.push({ from: pos, length: end - pos, source });
      pos = end;
    }
    return out;
  }

  // ---- writing -----------------------------------------------------------------------

  private writable(what: string): void {
    if (this.readOnly) throw new BlockError(this.filename, `${what} refused: image is open read-only`);
  }

  /** Bit mask of the subclusters that bytes [from, from+length) of a cluster touch. */
  private subclusterMask(from: number, length: number): number {
    const s0 = Math.floor(from / this.subclusterSize);
    const s1 = Math.floor((from + length - 1) / this.subclusterSize);
    const upTo = s1 === 31 ? 0xffffffff : (2 ** (s1 + 1)) - 1;
    return (upTo - ((2 ** s0) - 1)) >>> 0;
  }

  /** A write to these bytes of this cluster may go straight to the file, with no metadata change. */
  private directlyWritable(gc: number, e: L2Entry, from: number, length: number): boolean {
    if (e.kind !== 'normal' || !e.copied) return false;
    if (!this.l1Entry(Math.floor(gc / this.l2Entries)).copied) return false;
    if (!this.extendedL2) return true;
    // Every subcluster the write touches must already be allocated.
    const touched = this.subclusterMask(from, length);
    return ((e.allocMask & touched) >>> 0) === touched;
  }

  async writev(offset: bigint, buffers: Uint8Array[]): Promise<void> {
    this.writable('write');
    const length = buffers.reduce((n, b) => n + b.length, 0);
    this.checkRange(offset, BigInt(length), 'write');
    await this.writeFrom(Number(offset), length, buffers);
  }

  /**
   * Run `fn` under the metadata lock with no in-place write in flight and none starting:
   * for operations after which a cluster that was ours alone becomes shared (snapshots) or
   * free (discard, zeroing with unmap, shrinking, compressed overwrite). Without this, a
   * write already on its way to a freed cluster could land after the cluster was handed
   * out again, say as an L2 table.
   */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    // Writers are drained before the lock is taken: an allocating write needs the lock
    // once more to link its clusters, after its data is written.
    return this.exclusiveTurn.run(async () => {
      let release = (): void => undefined;
      this.paused = new Promise<void>((r) => (release = r));
      try {
        while (this.inPlaceWriters > 0) await new Promise<void>((r) => (this.drained = r));
        return await this.lock.run(fn);
      } finally {
        this.paused = undefined;
        release();
      }
    });
  }

  /** Exclusive operations take turns (each pauses the writers while it runs). */
  private readonly exclusiveTurn = new Mutex();

  private async writeFrom(offset: number, length: number, buffers: Uint8Array[]): Promise<void> {
    // A sequential writer's requests meet in a cluster: the last one's final cluster is this
    // one's first, often still being allocated. The general path would wait for it before
    // going on anyway; waiting first lets the quick paths below take the rest in one step.
    const shared = this.allocating.get(Math.floor(offset / this.clusterSize));
    if (shared) await shared;
    while (this.paused) await this.paused;
    // Counted until the whole write is done, allocations included: exclusive operations
    // wait for it.
    this.inPlaceWriters++;
    try {
      const e = this.singleClusterEntry(offset, length);
      const gc = Math.floor(offset / this.clusterSize);
      const inCluster = offset - gc * this.clusterSize;
      // One cluster we own: straight to the file, without the general walk.
      if (e && this.directlyWritable(gc, e, inCluster, length)) return await this.file.writev(e.offset + inCluster, buffers);
      // Clusters nobody has mapped yet: new ones in one step. A write that covers them only
      // in part needs their old contents around it, which are zeroes unless a backing
      // file shows through.
      const clusters = Math.ceil((inCluster + length) / this.clusterSize);
      const whole = inCluster === 0 && length % this.clusterSize === 0;
      if ((whole || !this.backing) && this.unmappedRun(gc, clusters)) {
        const fresh = await this.lock.run(() => this.freshRunStep(gc, clusters, inCluster, length, buffers));
        if (fresh) return await this.fillAndLink(fresh);
      }
      // A sequential writer's next request starts in the cluster its last one ended in,
      // which is ours by now: that head in place, the unmapped clusters after it in one step.
      if (inCluster > 0 && clusters > 1 && await this.headThenUnmapped(gc, clusters, inCluster, length, buffers)) return;
      const slow = await this.writeInPlace(offset, length, buffers);
      if (slow.length > 0) await this.allocatingWrite(slow);
    } finally {
      this.writerDone();
    }
  }

  /** An in-place write finished: wake an exclusive operation waiting for the last one. */
  private writerDone(): void {
    if (--this.inPlaceWriters === 0 && this.drained) {
      const d = this.drained;
      this.drained = undefined;
      d();
    }
  }

  /**
   * The L2 table (and the first cluster's index in it) when guest clusters [gc, gc+n) all
   * have empty entries (no mapping, no flags) in one L2 table that is cached and ours
   * alone, with no allocation of them under way; else undefined. A write into those
   * clusters then needs new clusters, no old ones to free, and copies nothing from
   * elsewhere (where it covers a cluster in part, and no backing file shows through, the
   * rest of that cluster is zeroes).
   */
  private unmappedRun(gc: number, n: number): { offset: number; table: CachedTable; index: number } | undefined {
    if (this.extendedL2) return undefined;
    const index = gc % this.l2Entries;
    if (index + n > this.l2Entries) return undefined;
    const { offset, copied } = this.l1Entry(Math.floor(gc / this.l2Entries));
    if (offset === 0 || !copied) return undefined;
    const table = this.l2Cache.peek(offset);
    if (!table) return undefined;
    const buf = table.buf;
    for (let at = index * 8, end = at + n * 8; at < end; at++) if (buf[at] !== 0) return undefined;
    for (let k = 0; k < n; k++) if (this.allocating.has(gc + k)) return undefined;
    return { offset, table, index };
  }

  /**
   * Under the lock: new host clusters for a write into unmapped guest clusters [gc, gc+n)
   * that starts `inCluster` bytes into the first; the request goes to them as it is, with
   * zeroes around it where it covers a cluster in part and the new space does not read as
   * zeroes already. Undefined when the clusters stopped being unmapped while the lock was
   * awaited (the general path then takes the write).
   */
  private async freshRunStep(gc: number, n: number, inCluster: number, length: number, buffers: Uint8Array[]): Promise<FreshClusters | undefined> {
    const l2 = this.unmappedRun(gc, n);
    if (!l2) return undefined;
    // Pinned in the cache from here until the entries are set (see allocationStep).
    l2.table.pending++;
    let host: number;
    try {
      host = await this.refcounts.allocate(n);
    } catch (err) {
      l2.table.pending--;
      throw err;
    }
    const { linked, settle } = this.claimAllocation(gc, n);
    const tail = n * this.clusterSize - inCluster - length;
    let writes: FreshClusters['writes'];
    if ((inCluster === 0 && tail === 0) || this.refcounts.isUnwritten(host)) {
      writes = [{ at: host + inCluster, bytes: buffers }];
    } else {
      const bytes = [...buffers];
      if (inCluster > 0) bytes.unshift(new Uint8Array(inCluster));
      if (tail > 0) bytes.push(new Uint8Array(tail));
      writes = [{ at: host, bytes }];
    }
    return { first: gc, l2, host, n, olds: [], writes, linked, settle };
  }

  /**
   * A write whose first cluster we own and may write in place, and whose other clusters are
   * all unmapped: both parts go out together. False, with nothing written, when the write
   * is not of that shape.
   */
  private async headThenUnmapped(gc: number, clusters: number, inCluster: number, length: number, buffers: Uint8Array[]): Promise<boolean> {
    const headLength = this.clusterSize - inCluster;
    const restLength = length - headLength;
    const head = this.lookupCached(gc);
    if (!head || !this.directlyWritable(gc, head, inCluster, headLength)) return false;
    if (!(restLength % this.clusterSize === 0 || !this.backing) || !this.unmappedRun(gc + 1, clusters - 1)) return false;
    const cursor = new VectorCursor(buffers);
    const headBuffers = cursor.slice(0, headLength);
    const rest = cursor.slice(headLength, restLength);
    const fresh = await this.lock.run(() => this.freshRunStep(gc + 1, clusters - 1, 0, restLength, rest));
    if (!fresh) return false;
    await Promise.all([this.file.writev(head.offset + inCluster, headBuffers), this.fillAndLink(fresh)]);
    return true;
  }

  /** Write what can go straight to clusters we own; return the pieces that need allocation. */
  private async writeInPlace(offset: number, length: number, buffers: Uint8Array[]): Promise<Array<{ gc: number; inCluster: number; length: number; src: Uint8Array[] }>> {
    const jobs: Promise<void>[] = [];
    const slow: Array<{ gc: number; inCluster: number; length: number; src: Uint8Array[] }> = [];
    const cursor = new VectorCursor(buffers);
    const runs = new HostRuns((host, from, n) => jobs.push(this.file.writev(host, cursor.slice(from, n))));
    await this.forEachCluster(offset, length, ({ pos, gc, inCluster, length: chunk, entry: e }) => {
      if (this.directlyWritable(gc, e, inCluster, chunk)) {
        runs.add(e.offset + inCluster, pos, chunk);
      } else {
        runs.flush();
        slow.push({ gc, inCluster, length: chunk, src: cursor.slice(pos, chunk) });
      }
    });
    runs.flush();
    await Promise.all(jobs);
    return slow;
  }

  /** The full current contents of guest cluster `gc` (for copy-on-write of a partial write). */
  private async clusterContents(gc: number): Promise<Uint8Array> {
    const buf = new Uint8Array(this.clusterSize);
    await this.readInto(gc * this.clusterSize, this.clusterSize, [buf]);
    return buf;
  }

  private async mergedCluster(p: { gc: number; inCluster: number; length: number; src: Uint8Array[] }): Promise<Uint8Array> {
    if (p.inCluster === 0 && p.length === this.clusterSize) return gather(p.src, p.length);
    const buf = await this.clusterContents(p.gc);
    let at = p.inCluster;
    for (const s of p.src) {
      buf.set(s, at);
      at += s.length;
    }
    return buf;
  }

  /**
   * Guest clusters whose new host clusters are being written outside the lock, until their
   * L2 entries are set: other writes to them wait, so that a cluster is allocated once.
   */
  private readonly allocating = new Map<number, Promise<void>>();

  /**
   * Writes that need metadata changes. Each step runs under the lock, except the data writes
   * into newly allocated clusters: those run in parallel with other requests (the clusters
   * are ours, unreferenced, until the step that links them), so allocating writes to
   * different clusters overlap on the device.
   */
  private async allocatingWrite(pieces: Array<{ gc: number; inCluster: number; length: number; src: Uint8Array[] }>): Promise<void> {
    let i = 0;
    while (i < pieces.length) {
      const step = await this.lock.run(() => this.allocationStep(pieces, i));
      if ('wait' in step) {
        await step.wait;
        continue;
      }
      i += step.done;
      if (step.fresh) await this.fillAndLink(step.fresh);
    }
  }

  /**
   * Marks guest clusters [gc, gc+n) as being allocated until `settle` is called: other
   * writes to them wait for `linked` (see `allocating`).
   */
  private claimAllocation(gc: number, n: number): { linked: Promise<void>; settle: () => void } {
    let settle = (): void => undefined;
    const linked = new Promise<void>((r) => (settle = r));
    for (let k = 0; k < n; k++) this.allocating.set(gc + k, linked);
    return { linked, settle };
  }

  /**
   * One step of an allocating write, under the lock: handles pieces[i] (and, for new
   * clusters, a run of consecutive ones) and says how many it took. New clusters come back
   * allocated but not yet written or linked.
   */
  private async allocationStep(pieces: Array<{ gc: number; inCluster: number; length: number; src: Uint8Array[] }>, i: number): Promise<{ wait: Promise<void> } | { done: number; fresh?: FreshClusters }> {
    const p = pieces[i];
    const inFlight = this.allocating.get(p.gc);
    if (inFlight) return { wait: inFlight };
    const e = this.lookupCached(p.gc) ?? await this.lookup(p.gc);
    if (this.directlyWritable(p.gc, e, p.inCluster, p.length)) {
      await this.file.writev(e.offset + p.inCluster, p.src);
      return { done: 1 };
    }
    const l2 = await this.writableL2(p.gc);
    const cur = decodeL2(l2.table.buf, l2.index, this.clusterBits, this.extendedL2);
    if (this.extendedL2 && cur.kind !== 'compressed' && (cur.offset === 0 || cur.copied)) {
      await this.subclusterWrite(l2, cur, p);
      return { done: 1 };
    }
    if ((cur.kind === 'normal' || (cur.kind === 'zero' && cur.offset !== 0)) && cur.copied) {
      // Our own cluster, but partly zero/unallocated subclusters or a preallocated zero
      // cluster: write the whole cluster in place, then mark it plainly allocated.
      const data = await this.mergedCluster(p);
      await this.file.write(cur.offset, data);
      const [hi, lo] = makeEntry(cur.offset, true);
      await this.setL2Entries(l2, l2.index, [{ hi, lo, allocMask: ALL_SUBCLUSTERS, zeroMask: 0 }]);
      return { done: 1 };
    }
    // New clusters for a run of consecutive guest clusters in this L2 table.
    let n = 1;
    while (i + n < pieces.length && pieces[i + n].gc === p.gc + n && l2.index + n < this.l2Entries && !this.allocating.has(p.gc + n)) {
      const ne = decodeL2(l2.table.buf, l2.index + n, this.clusterBits, this.extendedL2);
      if ((ne.kind === 'normal' || (ne.kind === 'zero' && ne.offset !== 0)) && ne.copied) break;
      n++;
    }
    const olds: L2Entry[] = [];
    for (let k = 0; k < n; k++) olds.push(decodeL2(l2.table.buf, l2.index + k, this.clusterBits, this.extendedL2));
    const host = await this.refcounts.allocate(n);
    // Space that was past the end of the file reads as zeroes: a cluster placed there whose
    // old contents were zeroes needs only the request's bytes, not a whole zero-filled cluster.
    const fresh = this.refcounts.isUnwritten(host);
    const writes: Array<{ at: number; bytes: Uint8Array[] }> = [];
    for (let k = 0; k < n; k++) {
      const piece = pieces[i + k];
      const at = host + k * this.clusterSize;
      const wasZero = olds[k].kind === 'zero' || (olds[k].kind === 'unallocated' && !this.backing);
      if (fresh && wasZero) writes.push({ at: at + piece.inCluster, bytes: piece.src });
      else writes.push({ at, bytes: [await this.mergedCluster(piece)] });
    }
    const { linked, settle } = this.claimAllocation(p.gc, n);
    // Pinned in the cache until the entries are set (an evicted table would be reloaded stale).
    l2.table.pending++;
    return { done: n, fresh: { first: p.gc, l2, host, n, olds, writes, linked, settle } };
  }

  /** Write the data of newly allocated clusters (no lock held), then link them under the lock. */
  private async fillAndLink(f: FreshClusters): Promise<void> {
    try {
      // Adjacent pieces go out as one vectored write.
      for (let k = 0; k < f.writes.length; ) {
        const group = [...f.writes[k].bytes];
        let end = f.writes[k].at + f.writes[k].bytes.reduce((a, b) => a + b.length, 0);
        let j = k + 1;
        while (j < f.writes.length && f.writes[j].at === end) {
          group.push(...f.writes[j].bytes);
          end += f.writes[j].bytes.reduce((a, b) => a + b.length, 0);
          j++;
        }
        await this.file.writev(f.writes[k].at, group);
        k = j;
      }
      await this.lock.run(async () => {
        await this.linkHostRun(f.l2, f.l2.index, f.host, f.n);
        for (const old of f.olds) await this.release(old);
      });
    } finally {
      f.l2.table.pending--;
      for (let gc = f.first; gc < f.first + f.n; gc++) if (this.allocating.get(gc) === f.linked) this.allocating.delete(gc);
      f.settle();
    }
  }

  /**
   * Extended L2: write only the subclusters the request touches. Subclusters already
   * allocated get exactly the request's bytes; others are written whole (the rest of each
   * copied from what it reads as now) and then marked allocated. A cluster is allocated
   * if the entry has none yet; its untouched subclusters keep their status. Caller holds the lock.
   */
  private async subclusterWrite(l2: { offset: number; table: CachedTable; index: number }, cur: L2Entry, p: { gc: number; inCluster: number; length: number; src: Uint8Array[] }): Promise<void> {
    const sub = this.subclusterSize;
    const data = gather(p.src, p.length);
    const host = cur.offset !== 0 ? cur.offset : await this.refcounts.allocate(1);
    const allocated = cur.offset !== 0 ? cur.allocMask : 0;
    const writes: Array<{ at: number; bytes: Uint8Array }> = [];
    const end = p.inCluster + p.length;
    for (let s = Math.floor(p.inCluster / sub); s * sub < end; s++) {
      const from = Math.max(p.inCluster, s * sub);
      const to = Math.min(end, (s + 1) * sub);
      const piece = data.subarray(from - p.inCluster, to - p.inCluster);
      if (allocated & (2 ** s)) {
        writes.push({ at: host + from, bytes: piece });
      } else if (to - from === sub) {
        writes.push({ at: host + from, bytes: piece });
      } else {
        const whole = new Uint8Array(sub);
        await this.readInto(p.gc * this.clusterSize + s * sub, sub, [whole]);
        whole.set(piece, from - s * sub);
        writes.push({ at: host + s * sub, bytes: whole });
      }
    }
    // Adjacent pieces go out as one vectored write.
    for (let k = 0; k < writes.length; ) {
      const group = [writes[k].bytes];
      let next = writes[k].at + writes[k].bytes.length;
      let j = k + 1;
      while (j < writes.length && writes[j].at === next) {
        group.push(writes[j].bytes);
        next += writes[j].bytes.length;
        j++;
      }
      await this.file.writev(writes[k].at, group);
      k = j;
    }
    const touched = this.subclusterMask(p.inCluster, p.length);
    const [hi, lo] = makeEntry(host, true);
    await this.setL2Entries(l2, l2.index, [{ hi, lo, allocMask: (allocated | touched) >>> 0, zeroMask: (cur.zeroMask & ~touched) >>> 0 }]);
  }

  /**
   * Store one whole guest cluster compressed (deflate). Falls back to a normal write when the
   * data does not compress. For image conversion: the cluster should not be in use yet.
   */
  async writeCompressed(offset: bigint, data: Uint8Array): Promise<void> {
    this.writable('compressed write');
    if (data.length !== this.clusterSize || offset % BigInt(this.clusterSize) !== 0n) {
      throw new BlockError(this.filename, `compressed writes must be one whole aligned cluster (${this.clusterSize} bytes)`);
    }
    const end = offset + BigInt(data.length) > this.header.size ? this.header.size : offset + BigInt(data.length);
    this.checkRange(offset, end - offset, 'compressed write');
    if (this.header.compressionType !== 0) {
      // Only deflate compression is written; zstd images get plain clusters.
      return this.writeFrom(Number(offset), Number(end - offset), [data.subarray(0, Number(end - offset))]);
    }
    const packed = await compressCluster(data);
    if (!packed) return this.writeFrom(Number(offset), Number(end - offset), [data.subarray(0, Number(end - offset))]);
    const gc = Number(offset) / this.clusterSize;
    await this.exclusive(async () => {
      const l2 = await this.writableL2(gc);
      const old = decodeL2(l2.table.buf, l2.index, this.clusterBits, this.extendedL2);
      const host = await this.placeCompressed(packed.length);
      await this.file.write(host, packed);
      const [hi, lo] = makeCompressedEntry(host, packed.length, this.clusterBits);
      await this.setL2Entries(l2, l2.index, [{ hi, lo, allocMask: 0, zeroMask: 0 }]);
      await this.release(old);
      if (this.lastDecompressed?.offset === host) this.lastDecompressed = undefined;
    });
  }

  /** Compressed data is packed: each new piece goes right after the previous one when it fits. */
  private compressedTail?: { next: number; clusterEnd: number };

  private async placeCompressed(length: number): Promise<number> {
    const t = this.compressedTail;
    if (t && t.next + length <= t.clusterEnd) {
      const host = t.next;
      await this.refcounts.addRange(host, length, 1n);
      t.next = Math.ceil((host + length) / 512) * 512;
      return host;
    }
    const clusters = Math.ceil(length / this.clusterSize);
    const host = await this.refcounts.allocate(clusters);
    const end = host + clusters * this.clusterSize;
    this.compressedTail = { next: Math.ceil((host + length) / 512) * 512, clusterEnd: end };
    return host;
  }

  // ---- discard / zeroes --------------------------------------------------------------

  /** Whole clusters in [offset, offset+length), and the partial head and tail. */
  private split(offset: number, length: number): { head: [number, number]; first: number; count: number; tail: [number, number] } {
    const cs = this.clusterSize;
    const first = Math.ceil(offset / cs);
    const endGuest = offset + length;
    let last = Math.floor(endGuest / cs);
    // The last cluster of the disk counts as whole when the request reaches the disk's end.
    if (endGuest === Number(this.header.size) && endGuest % cs !== 0) last += 1;
    if (last <= first) return { head: [offset, length], first, count: 0, tail: [endGuest, 0] };
    return { head: [offset, first * cs - offset], first, count: last - first, tail: [last * cs, Math.max(0, endGuest - last * cs)] };
  }

  async discard(offset: bigint, length: bigint): Promise<void> {
    this.writable('discard');
    this.checkRange(offset, length, 'discard');
    const { first, count } = this.split(Number(offset), Number(length));
    if (count === 0) return;
    const hasBacking = this.header.backingFile !== undefined;
    await this.exclusive(() => this.rewriteClusters(first, count, () => {
      // With a backing file a discarded cluster must not show the backing data (v3: zero flag).
      if (hasBacking && this.header.version === 3) return this.extendedL2 ? { hi: 0, lo: 0, zeroMask: ALL_SUBCLUSTERS, allocMask: 0 } : { hi: 0, lo: 1 };
      return { hi: 0, lo: 0 };
    }));
  }

  async writeZeroes(offset: bigint, length: bigint, opts: { mayUnmap?: boolean } = {}): Promise<void> {
    this.writable('write-zeroes');
    this.checkRange(offset, length, 'write-zeroes');
    const { head, first, count, tail } = this.split(Number(offset), Number(length));
    const zeroBuffer = async (at: number, n: number): Promise<void> => {
      const z = new Uint8Array(Math.min(n, 1 << 20));
      for (let p = 0; p < n; p += z.length) await this.writeFrom(at + p, Math.min(z.length, n - p), [z.subarray(0, Math.min(z.length, n - p))]);
    };
    if (head[1] > 0) await zeroBuffer(head[0], head[1]);
    if (count > 0) {
      if (this.header.version === 2 && this.header.backingFile !== undefined) {
        await zeroBuffer(first * this.clusterSize, Math.min(count * this.clusterSize, Number(this.header.size) - first * this.clusterSize));
      } else {
        await this.exclusive(() => this.rewriteClusters(first, count, (old) => {
          if (this.header.version === 2) return { hi: 0, lo: 0 };
          if (!opts.mayUnmap && old.copied && (old.kind === 'normal' || (old.kind === 'zero' && old.offset !== 0))) {
            // Keep the allocation (the caller asked not to unmap): a preallocated zero cluster.
            const [hi, lo] = makeEntry(old.offset, true, !this.extendedL2);
            return { hi, lo, zeroMask: ALL_SUBCLUSTERS, allocMask: 0, keep: true };
          }
          return this.extendedL2 ? { hi: 0, lo: 0, zeroMask: ALL_SUBCLUSTERS, allocMask: 0 } : { hi: 0, lo: 1 };
        }));
      }
    }
    if (tail[1] > 0) await zeroBuffer(tail[0], tail[1]);
  }

  /** Replace the entries of whole clusters, releasing what they pointed at. Caller holds the lock. */
  private async rewriteClusters(first: number, count: number, next: (old: L2Entry) => { hi: number; lo: number; zeroMask?: number; allocMask?: number; keep?: boolean }): Promise<void> {
    for (let gc = first; gc < first + count; ) {
      const l1i = Math.floor(gc / this.l2Entries);
      const inTable = Math.min(first + count - gc, this.l2Entries - (gc % this.l2Entries));
      const { offset } = this.l1Entry(l1i);
      if (offset === 0) {
        const sample = next(decodeL2(new Uint8Array(16), 0, this.clusterBits, this.extendedL2));
        if (sample.hi === 0 && sample.lo === 0 && !sample.zeroMask) {
          gc += inTable;
          continue;
        }
      }
      const l2 = await this.writableL2(gc);
      const olds: L2Entry[] = [];
      const entries = [];
      for (let k = 0; k < inTable; k++) {
        const old = decodeL2(l2.table.buf, l2.index + k, this.clusterBits, this.extendedL2);
        const e = next(old);
        if (!e.keep) olds.push(old);
        entries.push(e);
      }
      await this.setL2Entries(l2, l2.index, entries);
      for (const old of olds) await this.release(old);
      gc += inTable;
    }
  }

  // ---- status --------------------------------------------------------------------------

  async blockStatus(offset: bigint, length: bigint): Promise<BlockStatus> {
    this.checkRange(offset, length, 'block status');
    const cs = this.clusterSize;
    const start = Number(offset);
    const end = start + Number(length);
    const classify = (e: L2Entry, inCluster: number): { kind: string; host?: number } => {
      if (e.kind === 'compressed') return { kind: 'compressed' };
      const seg = this.segments(e, inCluster, 1)[0];
      if (seg.source === 'data') return { kind: 'data', host: e.offset + inCluster };
      return { kind: seg.source };
    };
    let pos = start;
    let first: { kind: string; host?: number } | undefined;
    let firstEntry: L2Entry | undefined;
    while (pos < end) {
      const gc = Math.floor(pos / cs);
      const inCluster = pos - gc * cs;
      const emptyTo = first === undefined || first.kind === 'backing' ? this.emptyEntriesEnd(gc, end) : gc;
      if (emptyTo > gc) {
        // A run of unallocated clusters answered in one step (a large empty image would
        // otherwise cost an iteration per cluster). Unallocated reads through to the backing
        // file: the same kind as an unallocated entry.
        first ??= { kind: 'backing' };
        pos = Math.min(end, emptyTo * cs);
        continue;
      }
      const e = this.lookupCached(gc) ?? await this.lookup(gc);
      const c = classify(e, inCluster);
      if (!first) {
        first = c;
        firstEntry = e;
      } else if (c.kind !== first.kind || (c.kind === 'data' && c.host !== (first.host ?? 0) + (pos - start))) break;
      else if (c.kind === 'compressed') break;
      if (c.kind === 'data' && !this.extendedL2) {
        // The entries after it that map the following host clusters, read straight from the table.
        pos = Math.min(end, this.contiguousDataEnd(gc, end, e.offset) * cs);
        continue;
      }
      const step = this.extendedL2 && e.kind !== 'compressed' ? this.subclusterSize - (inCluster % this.subclusterSize) : cs - inCluster;
      pos = Math.min(end, pos + step);
    }
    const len = BigInt(pos - start);
    switch (first?.kind) {
      case 'data':
        return { length: len, data: true, zero: false, depth: 0, hostOffset: BigInt(first.host ?? 0) };
      case 'compressed':
        return { length: len, data: true, zero: false, depth: 0, compressed: true, hostOffset: BigInt(firstEntry?.compressedOffset ?? 0) };
      case 'zero':
        return { length: len, data: false, zero: true, depth: 0 };
      default: {
        if (!this.backing || offset >= this.backing.size()) return { length: len, data: false, zero: true, depth: 0 };
        const inBacking = offset + len > this.backing.size() ? this.backing.size() - offset : len;
        const s = await this.backing.blockStatus(offset, inBacking);
        return { ...s, depth: s.depth + 1 };
      }
    }
  }

  /**
   * The guest cluster where a run of unallocated clusters starting at `gc` ends, within gc's
   * table and before byte `end`: the rest of the span when the table does not exist, else the
   * run of all-zero (standard) entries read from the cached table; `gc` itself when its table
   * is not cached, its entries are extended, or its entry is not all zero.
   */
  private emptyEntriesEnd(gc: number, end: number): number {
    const l1Index = Math.floor(gc / this.l2Entries);
    const last = Math.min((l1Index + 1) * this.l2Entries, Math.ceil(end / this.clusterSize));
    const { offset } = this.l1Entry(l1Index);
    if (offset === 0) return last;
    const table = this.extendedL2 ? undefined : this.l2Cache.peek(offset)?.buf;
    if (!table) return gc;
    let c = gc;
    for (let at = (gc - l1Index * this.l2Entries) * 8; c < last; c++, at += 8) {
      if ((table[at] | table[at + 1] | table[at + 2] | table[at + 3] | table[at + 4] | table[at + 5] | table[at + 6] | table[at + 7]) !== 0) break;
    }
    return c;
  }

  /**
   * Guest cluster `gc` maps host cluster `host` with a standard entry (checked by the caller):
   * the guest cluster where the run of entries after it that map the host clusters after
   * `host` ends, within gc's cached table and before byte `end`. The
   * run's clusters are checked as one range (inside the file, clear of the fixed metadata);
   * if that fails, the run is just gc, and the entry-by-entry walk reports the bad entry.
   */
  private contiguousDataEnd(gc: number, end: number, host: number): number {
    const cs = this.clusterSize;
    const l1Index = Math.floor(gc / this.l2Entries);
    const table = this.l2Cache.peek(this.l1Entry(l1Index).offset)?.buf;
    if (!table) return gc + 1;
    const base = l1Index * this.l2Entries;
    const last = Math.min(base + this.l2Entries, Math.ceil(end / cs));
    let c = gc + 1;
    // Entries are read in place and compared as plain numbers (host offsets stay below 2^53):
    // a short-lived `img` process runs this loop mostly before the JIT optimises it, where a
    // call, a tuple or a division per entry is what it costs (a metadata-preallocated 8 GiB
    // image has 131 072 entries).
    for (let next = host + cs, at = (c - base) * 8; c < last; c++, next += cs, at += 8) {
      // COPIED (the top bit) says nothing about where the data is; any other flag ends the run here.
      const hi = ((table[at]! & 0x7f) << 24) | (table[at + 1]! << 16) | (table[at + 2]! << 8) | table[at + 3]!;
      const lo = ((table[at + 4]! << 24) | (table[at + 5]! << 16) | (table[at + 6]! << 8) | table[at + 7]!) >>> 0;
      if (hi * 0x100000000 + lo !== next) break;
    }
    const runEnd = host + (c - gc) * cs;
    if (runEnd > Math.ceil(this.refcounts.fileEnd / cs) * cs + cs || this.overlapsFixedMetadata(host, runEnd - host)) return gc + 1;
    return c;
  }

  // ---- size, flush, close ---------------------------------------------------------------

  async resize(newSize: bigint): Promise<void> {
    this.writable('resize');
    if (newSize < 0n) throw new BlockError(this.filename, `invalid size ${newSize}`);
    if (newSize % 512n !== 0n) throw new BlockError(this.filename, `new size ${newSize} is not a multiple of 512`);
    await this.exclusive(async () => {
      const cs = BigInt(this.clusterSize);
      const clusters = (newSize + cs - 1n) / cs;
      const l1Needed = Number((clusters + BigInt(this.l2Entries) - 1n) / BigInt(this.l2Entries));
      if (newSize < this.header.size) {
        if (this.header.nbSnapshots > 0) throw new BlockError(this.filename, 'cannot shrink an image that has internal snapshots');
        const firstGone = Number(clusters);
        const oldClusters = Number((this.header.size + cs - 1n) / cs);
        await this.rewriteClusters(firstGone, oldClusters - firstGone, () => ({ hi: 0, lo: 0 }));
      } else if (l1Needed > this.header.l1Size) {
        await this.growL1(l1Needed);
      }
      const buf = new Uint8Array(8);
      new DataView(buf.buffer).setBigUint64(0, newSize);
      await this.file.write(HEADER_FIELD.size, buf);
      await this.file.flush();
      this.header.size = newSize;
    });
  }

  private async growL1(entries: number): Promise<void> {
    if (entries * 8 > MAX_L1_BYTES) throw new BlockError(this.filename, 'the L1 table would exceed its maximum size');
    const clusters = Math.ceil((entries * 8) / this.clusterSize);
    const l1 = new Uint8Array(clusters * this.clusterSize);
    l1.set(this.l1);
    const host = await this.refcounts.allocate(clusters);
    await this.file.write(host, l1);
    await this.file.flush();
    const hdr = new Uint8Array(12);
    const v = new DataView(hdr.buffer);
    v.setUint32(0, entries);
    v.setBigUint64(4, BigInt(host));
    await this.file.write(HEADER_FIELD.l1Size, hdr);
    await this.file.flush();
    const oldOffset = Number(this.header.l1TableOffset);
    const oldClusters = Math.ceil((this.header.l1Size * 8) / this.clusterSize);
    this.l1 = l1.subarray(0, entries * 8);
    this.header.l1Size = entries;
    this.header.l1TableOffset = BigInt(host);
    if (oldOffset !== 0 && oldClusters > 0) await this.refcounts.free(oldOffset, oldClusters);
  }

  /** Replace the in-memory L1 table (after a snapshot revert rewrote it). */
  setL1(l1: Uint8Array, offset: bigint, size: number): void {
    this.l1 = l1;
    this.header.l1TableOffset = offset;
    this.header.l1Size = size;
    this.l2Cache.clear();
    this.lastDecompressed = undefined;
  }

  /** Forget cached tables (the metadata was rewritten by a snapshot operation or repair). */
  dropCaches(): void {
    this.l2Cache.clear();
    this.refcounts.dropCache();
    this.lastDecompressed = undefined;
    this.compressedTail = undefined;
  }

  /**
   * Allocate every cluster up front ('metadata': mapping only, 'falloc': plus reserved
   * space, 'full': plus zeroes written).
   */
  async preallocate(mode: 'metadata' | 'falloc' | 'full'): Promise<void> {
    this.writable('preallocation');
    const total = Math.ceil(Number(this.header.size) / this.clusterSize);
    await this.lock.run(async () => {
      this.refcounts.growWithSpace = mode !== 'metadata';
      try {
        await this.preallocateLocked(mode, total);
      } finally {
        this.refcounts.growWithSpace = true;
      }
    });
  }

  private async preallocateLocked(mode: 'metadata' | 'falloc' | 'full', total: number): Promise<void> {
    for (let gc = 0; gc < total; ) {
      const l2 = await this.writableL2(gc);
      const n = Math.min(total - gc, this.l2Entries - l2.index);
      const host = await this.refcounts.allocate(n);
      const entries = [];
      for (let k = 0; k < n; k++) {
        const [hi, lo] = makeEntry(host + k * this.clusterSize, true);
        entries.push({ hi, lo, allocMask: ALL_SUBCLUSTERS, zeroMask: 0 });
      }
      const bytes = n * this.clusterSize;
      if (mode === 'full') {
        const z = new Uint8Array(Math.min(bytes, 1 << 20));
        for (let p = 0; p < bytes; p += z.length) await this.file.write(host + p, z.subarray(0, Math.min(z.length, bytes - p)));
      } else {
        if (mode === 'falloc') this.file.allocate(BigInt(host), BigInt(bytes));
        const len = await this.file.length();
        if (len < BigInt(host + bytes)) await this.file.truncate(BigInt(host + bytes));
      }
      await this.setL2Entries(l2, l2.index, entries);
      gc += n;
    }
  }

  async flush(): Promise<void> {
    if (!this.readOnly && !this.closed) await this.lock.run(() => this.applyReleases());
    await this.file.flush();
    if (this.backing && !this.backing.readOnly) await this.backing.flush();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    await this.lock.run(async () => {
      if (this.readOnly) return;
      await this.applyReleases();
      await this.refcounts.releaseReserve(true);
    });
    if (!this.readOnly) await this.file.flush();
    if (this.lazyDirty) {
      await this.setIncompatibleFeatures(this.header.incompatibleFeatures & ~INCOMPAT_DIRTY);
      this.lazyDirty = false;
    }
    this.closed = true;
    await this.file.close();
    if (this.backing) await this.backing.close();
  }
}

/** Resolve a backing file name relative to the image that names it. */
export function resolveBacking(imageFilename: string, backing: string): string {
  return isAbsolute(backing) ? backing : resolve(dirname(imageFilename), backing);
}

async function openBacking(filename: string, header: Qcow2Header, options: Qcow2OpenOptions): Promise<BlockDriver> {
  const path = resolveBacking(filename, header.backingFile ?? '');
  const chain = options.chain ?? [await realpath(filename).catch(() => filename)];
  let real: string;
  try {
    real = await realpath(path);
  } catch {
    throw new BlockError(filename, `backing file '${header.backingFile}' not found (${path})`);
  }
  if (chain.includes(real)) {
    throw new BlockError(filename, `backing chain loops: ${[...chain, real].join(' -> ')}`);
  }
  if (chain.length > 256) throw new BlockError(filename, `backing chain of ${chain[0]} is deeper than 256 images`);
  const format = header.backingFormat ?? (await probeFormat(path));
  const common = { readOnly: true, cache: options.cache as CacheMode | undefined, l2CacheBytes: options.l2CacheBytes, memoryIoInline: options.memoryIoInline };
  if (format === 'raw') return RawDriver.open(path, common);
  if (format === 'qcow2') return Qcow2Image.open(path, { ...common, chain: [...chain, real] });
  throw new BlockError(filename, `backing file '${header.backingFile}' has unsupported format '${format}'`);
}

export function openQcow2(filename: string, options: OpenOptions = {}): Promise<Qcow2Image> {
  return Qcow2Image.open(filename, options);
}

// Silence "unused" for helpers kept for the snapshot and check modules.
export { INCOMPAT_DIRTY };
