// Cluster reference counts: the refcount table (array of refcount block offsets) and the
// refcount blocks (arrays of 1..64-bit counts), plus the cluster allocator built on them.
//
// Every change is written through to the file at once, in an order that keeps the image
// consistent if the process dies between any two writes: a new refcount block is written
// before the table entry that points at it, and a cluster's refcount is raised before
// anything references the cluster (the worst a crash can leave is a leaked cluster).
// All callers hold the image's metadata lock, so nothing here races with itself.
import { BlockError } from '../errors.js';
import type { HostFile } from '../host-file.js';
import { HEADER_FIELD, MAX_REFTABLE_BYTES } from './header.js';

export const REFTABLE_OFFSET_MASK = 0xfffffffffffffe00n;

export class Refcounts {
  readonly clusterSize: number;
  readonly refcountBits: number;
  readonly maxRefcount: bigint;
  /** Refcount entries per refcount block. */
  readonly perBlock: number;
  /** Host offsets of the refcount blocks (0 = none). */
  table: number[];
  tableOffset: number;
  tableClusters: number;
  private blocks = new Map<number, Uint8Array>();
  private readonly maxCachedBlocks: number;
  /** No cluster below this index is free (an allocation hint, never wrong in the unsafe direction). */
  private freeHint = 0;

  constructor(
    private readonly file: HostFile,
    readonly clusterBits: number,
    readonly refcountOrder: number,
    table: number[],
    tableOffset: number,
    tableClusters: number,
    /** Length of the file in bytes, to know where never-used space starts. */
    public fileEnd: number,
  ) {
    this.clusterSize = 1 << clusterBits;
    this.refcountBits = 1 << refcountOrder;
    this.maxRefcount = this.refcountBits === 64 ? (1n << 64n) - 1n : (1n << BigInt(this.refcountBits)) - 1n;
    this.perBlock = (this.clusterSize * 8) / this.refcountBits;
    this.table = table;
    this.tableOffset = tableOffset;
    this.tableClusters = tableClusters;
    this.maxCachedBlocks = Math.max(4, Math.floor((16 << 20) / this.clusterSize));
  }

  static async load(file: HostFile, clusterBits: number, refcountOrder: number, tableOffset: number, tableClusters: number, fileEnd: number): Promise<Refcounts> {
    const clusterSize = 1 << clusterBits;
    const raw = new Uint8Array(tableClusters * clusterSize);
    await file.read(tableOffset, raw);
    const view = new DataView(raw.buffer);
    const table: number[] = [];
    for (let i = 0; i < raw.length / 8; i++) {
      const entry = Number(view.getBigUint64(i * 8) & REFTABLE_OFFSET_MASK);
      if (entry !== 0) {
        if (entry % clusterSize !== 0) throw new BlockError(file.filename, `refcount block ${i} offset 0x${entry.toString(16)} is not cluster-aligned`);
        if (entry + clusterSize > Math.ceil(fileEnd / clusterSize) * clusterSize) throw new BlockError(file.filename, `refcount block ${i} at 0x${entry.toString(16)} lies past the end of the file`);
        if (entry < tableOffset + tableClusters * clusterSize && tableOffset < entry + clusterSize) throw new BlockError(file.filename, `refcount block ${i} overlaps the refcount table`);
      }
      table.push(entry);
    }
    return new Refcounts(file, clusterBits, refcountOrder, table, tableOffset, tableClusters, fileEnd);
  }

  private async block(offset: number): Promise<Uint8Array> {
    let b = this.blocks.get(offset);
    if (b) {
      this.blocks.delete(offset);
      this.blocks.set(offset, b);
      return b;
    }
    if (offset % this.clusterSize !== 0) throw new BlockError(this.file.filename, `refcount block offset 0x${offset.toString(16)} is not cluster-aligned`);
    if (offset + this.clusterSize > this.fileEnd) throw new BlockError(this.file.filename, `refcount block at 0x${offset.toString(16)} lies past the end of the file`);
    b = new Uint8Array(this.clusterSize);
    await this.file.read(offset, b);
    this.blocks.set(offset, b);
    if (this.blocks.size > this.maxCachedBlocks) {
      const oldest = this.blocks.keys().next().value as number;
      this.blocks.delete(oldest);
    }
    return b;
  }

  static getEntry(block: Uint8Array, index: number, order: number): bigint {
    const bits = 1 << order;
    if (bits < 8) {
      const perByte = 8 / bits;
      const shift = (index % perByte) * bits;
      return BigInt((block[Math.floor(index / perByte)] >> shift) & ((1 << bits) - 1));
    }
    const bytes = bits / 8;
    if (bytes <= 4) {
      // Plain number arithmetic up to 32 bits: exact, and much cheaper than BigInt steps.
      let n = 0;
      for (let i = 0; i < bytes; i++) n = n * 256 + block[index * bytes + i];
      return BigInt(n);
    }
    let v = 0n;
    for (let i = 0; i < bytes; i++) v = (v << 8n) | BigInt(block[index * bytes + i]);
    return v;
  }

  /** Set an entry in a block buffer; returns the byte range that changed. */
  static setEntry(block: Uint8Array, index: number, order: number, value: bigint): [number, number] {
    const bits = 1 << order;
    if (bits < 8) {
      const perByte = 8 / bits;
      const shift = (index % perByte) * bits;
      const at = Math.floor(index / perByte);
      const mask = ((1 << bits) - 1) << shift;
      block[at] = (block[at] & ~mask) | ((Number(value) << shift) & mask);
      return [at, at + 1];
    }
    const bytes = bits / 8;
    let v = value;
    for (let i = bytes - 1; i >= 0; i--) {
      block[index * bytes + i] = Number(v & 0xffn);
      v >>= 8n;
    }
    return [index * bytes, index * bytes + bytes];
  }

  /** Clusters at or after `from` described by block `index` whose refcount is not zero. */
  async nonZeroInBlock(index: number, from: number): Promise<number[]> {
    if (index >= this.table.length || this.table[index] === 0) return [];
    const block = await this.block(this.table[index]);
    const out: number[] = [];
    const bytesPerEntry = this.refcountBits / 8;
    for (let byte = 0; byte < block.length; byte++) {
      if (block[byte] === 0) continue;
      // Every entry sharing this byte (sub-byte refcounts) or starting in it.
      const firstEntry = bytesPerEntry >= 1 ? Math.floor(byte / bytesPerEntry) : byte * (8 / this.refcountBits);
      const lastEntry = bytesPerEntry >= 1 ? firstEntry : firstEntry + 8 / this.refcountBits - 1;
      for (let e = firstEntry; e <= lastEntry; e++) {
        const c = index * this.perBlock + e;
        if (c >= from && out[out.length - 1] !== c && Refcounts.getEntry(block, e, this.refcountOrder) !== 0n) out.push(c);
      }
      if (bytesPerEntry > 1) byte = (firstEntry + 1) * bytesPerEntry - 1;
    }
    return out;
  }

  /** Whether an entry of a block buffer is zero: its bytes looked at, no BigInt made. */
  static entryIsZero(block: Uint8Array, index: number, order: number): boolean {
    if (order < 3) return Refcounts.getEntry(block, index, order) === 0n;
    const bytes = (1 << order) >> 3;
    for (let at = index * bytes, end = at + bytes; at < end; at++) if (block[at] !== 0) return false;
    return true;
  }

  /**
   * Whether `cluster` is free, when that is known without reading (its block cached or
   * absent), else undefined: the allocator's scans over thousands of clusters then take no
   * await, and make no BigInt, per cluster.
   */
  private isFree(cluster: number): boolean | undefined {
    const b = Math.floor(cluster / this.perBlock);
    if (b >= this.table.length || this.table[b] === 0) return true;
    const block = this.blocks.get(this.table[b]!);
    return block && Refcounts.entryIsZero(block, cluster % this.perBlock, this.refcountOrder);
  }

  /** Whether `cluster` is free, its refcount block read (isFree could not tell). */
  private async readIsFree(cluster: number): Promise<boolean> {
    return (await this.get(cluster)) === 0n;
  }

  async get(cluster: number): Promise<bigint> {
    const b = Math.floor(cluster / this.perBlock);
    if (b >= this.table.length || this.table[b] === 0) return 0n;
    const block = await this.block(this.table[b]);
    return Refcounts.getEntry(block, cluster % this.perBlock, this.refcountOrder);
  }

  async set(cluster: number, value: bigint): Promise<void> {
    if (value < 0n || value > this.maxRefcount) {
      throw new BlockError(this.file.filename, `refcount of cluster ${cluster} would become ${value} (limit ${this.maxRefcount} with ${this.refcountBits}-bit refcounts)`);
    }
    const b = Math.floor(cluster / this.perBlock);
    await this.ensureBlock(b);
    const offset = this.table[b];
    const block = await this.block(offset);
    const [from, to] = Refcounts.setEntry(block, cluster % this.perBlock, this.refcountOrder, value);
    await this.file.write(offset + from, block.slice(from, to));
    if (value === 0n && cluster < this.freeHint) this.freeHint = cluster;
  }

  /** Set the refcounts of clusters [start, start+count) (blocks must exist): one write per block. */
  private async setRun(start: number, count: number, value: bigint): Promise<void> {
    for (let c = start; c < start + count; ) {
      const b = Math.floor(c / this.perBlock);
      const offset = this.table[b];
      const block = await this.block(offset);
      const end = Math.min(start + count, (b + 1) * this.perBlock);
      let from: number;
      let to: number;
      if (this.refcountOrder >= 3 && value <= 0xffn) {
        // Whole-byte entries and a value that fits the last byte (the allocator's 0 and 1):
        // the bytes are written directly, where setEntry would make BigInts per cluster.
        const bytes = this.refcountBits >> 3;
        const low = Number(value);
        from = (c % this.perBlock) * bytes;
        to = ((end - 1) % this.perBlock) * bytes + bytes;
        block.fill(0, from, to);
        if (low !== 0) for (let at = from + bytes - 1; at < to; at += bytes) block[at] = low;
        c = end;
      } else {
        from = Infinity;
        to = 0;
        for (; c < end; c++) {
          const [f, t] = Refcounts.setEntry(block, c % this.perBlock, this.refcountOrder, value);
          from = Math.min(from, f);
          to = Math.max(to, t);
        }
      }
      await this.file.write(offset + from, block.slice(from, to));
    }
  }

  async add(cluster: number, delta: bigint): Promise<bigint> {
    const v = (await this.get(cluster)) + delta;
    if (v < 0n) throw new BlockError(this.file.filename, `refcount of cluster ${cluster} would drop below zero`);
    await this.set(cluster, v);
    return v;
  }

  /** Change the refcount of every cluster touched by [offset, offset+length). */
  async addRange(offset: number, length: number, delta: bigint): Promise<void> {
    if (length <= 0) return;
    const first = Math.floor(offset / this.clusterSize);
    const last = Math.floor((offset + length - 1) / this.clusterSize);
    for (let c = first; c <= last; c++) await this.add(c, delta);
  }

  /** First run of `count` clusters with refcount 0, at or after the hint. Pure search: changes nothing. */
  private async findFree(count: number): Promise<number> {
    let start = this.freeHint;
    let run = 0;
    for (let c = this.freeHint; ; c++) {
      const b = Math.floor(c / this.perBlock);
      if (b >= this.table.length || this.table[b] === 0) {
        // A whole missing refcount block: all of its clusters are free.
        if (run === 0) start = c;
        const blockEnd = (b + 1) * this.perBlock;
        run += blockEnd - c;
        if (run >= count) return start;
        c = blockEnd - 1;
        continue;
      }
      if (this.isFree(c) ?? (await this.readIsFree(c))) {
        if (run === 0) start = c;
        run++;
        if (run >= count) return start;
      } else {
        run = 0;
        if (c === this.freeHint) this.freeHint = c + 1;
      }
    }
  }

  /**
   * Clusters whose refcount is already 1 on disk (and made durable by a barrier) but which
   * nothing references yet: allocations are handed out from here, so the barrier between
   * "refcount raised" and "L2 entry written" is paid once per reservation rather than once
   * per allocation. A crash leaves the unused rest as leaked clusters; close() returns it.
   */
  private reserveStart = 0;
  private reserveEnd = 0;
  /**
   * False on a lazy-refcount image marked dirty while open: a crash makes the next open
   * rebuild every refcount, so raising one need not be durable before the entry that uses it.
   */
  orderingBarriers = true;
  /**
   * Set by an image that writes new table entries back later, after a barrier of its own
   * (writeBackTables): a reservation then needs no barrier of its own.
   */
  deferredOrdering = false;
  private reserveSize = 0;
  /** Reserved clusters at or past this offset were past the end of the file: they read as zeroes. */
  private zeroFrom = Infinity;

  /** Whether a cluster just handed out has never been written (reads as zeroes). */
  isUnwritten(offset: number): boolean {
    return offset >= this.zeroFrom;
  }

  /**
   * Whether the file grows with space allocated behind it (see allocate). Off while
   * preallocation=metadata maps clusters that stay holes in the file, as qemu-img leaves them.
   */
  growWithSpace = true;

  /** Allocate `count` contiguous clusters (refcount 1); returns the host offset of the first. */
  async allocate(count: number): Promise<number> {
    if (count <= 0) throw new RangeError('cluster count must be positive');
    if (this.reserveEnd - this.reserveStart < count) {
      await this.releaseReserve();
      // Start with about 1 MiB and double while allocations keep coming, up to 32 MiB
      // (at most 4096 clusters): few barriers for streaming writes, bounded leaks after a crash.
      const cap = Math.max(1, Math.min(4096, Math.floor((32 << 20) / this.clusterSize)));
      this.reserveSize = this.reserveSize === 0 ? Math.max(1, Math.min(256, Math.floor((1 << 20) / this.clusterSize))) : Math.min(cap, this.reserveSize * 2);
      const want = Math.max(count, this.reserveSize);
      const [start, got] = await this.allocateRun(count, want);
      // The file grows to cover the reservation before the barrier, so a table entry that
      // reaches the disk always points inside the file, whatever happened to the data.
      const length = Number(await this.file.length());
      const end = (start + got) * this.clusterSize;
      if (end > length && !this.file.isBlockDevice) {
        // The file grows by fallocate, not truncate: the clusters then exist on disk
        // (unwritten, reading as zeroes). With O_DIRECT a partial write into one is an
        // overwrite, which the file system lets run in parallel (a write into a hole
        // allocates and takes the inode exclusively, so such writes ran one at a time);
        // through the page cache, writes into allocated space skip the page-by-page space
        // reservation of delayed allocation and ran at about twice the speed. A memory file
        // system has neither: there the call only moves the page allocation the writes would
        // do into one synchronous step of up to 32 MiB on the caller's thread, the VMM's main
        // thread (docs/design.md, "KVM's counters").
        const grown = this.growWithSpace && !this.file.inMemory && this.file.allocate(BigInt(length), BigInt(end - length));
        if (!grown) await this.file.truncate(BigInt(end));
      }
      this.zeroFrom = Math.max(length, start * this.clusterSize);
      if (this.orderingBarriers && !this.deferredOrdering) await this.file.barrier();
      this.reserveStart = start;
      this.reserveEnd = start + got;
    }
    const start = this.reserveStart;
    this.reserveStart += count;
    return start * this.clusterSize;
  }

  /**
   * Give the unused reserved clusters back (refcount 0). With `trim`, a file that ends
   * inside the released space (it was grown for the reservation) is cut back to where
   * the used clusters end.
   */
  async releaseReserve(trim = false): Promise<void> {
    const n = this.reserveEnd - this.reserveStart;
    if (n > 0) {
      await this.setRun(this.reserveStart, n, 0n);
      if (this.reserveStart < this.freeHint) this.freeHint = this.reserveStart;
      const length = Number(await this.file.length());
      const start = this.reserveStart * this.clusterSize;
      if (trim && !this.file.isBlockDevice && length > start && length <= this.reserveEnd * this.clusterSize) {
        await this.file.truncate(BigInt(start));
      }
    }
    this.reserveStart = this.reserveEnd = 0;
    this.zeroFrom = Infinity;
  }

  /**
   * Raise the refcounts of a free run of at least `count` and at most `want` clusters
   * (as many as are free there); returns its first cluster index and length.
   */
  private async allocateRun(count: number, want: number): Promise<[number, number]> {
    for (;;) {
      const start = await this.findFree(count);
      let got = count;
      while (got < want) {
        const b = Math.floor((start + got) / this.perBlock);
        if (b < this.table.length && this.table[b] !== 0 && !(this.isFree(start + got) ?? (await this.readIsFree(start + got)))) break;
        got++;
      }
      // Make sure refcount blocks exist for the whole run; creating one may take a cluster
      // inside the run, in which case search again.
      for (let c = start; c < start + got; c += this.perBlock - (c % this.perBlock)) {
        await this.ensureBlock(Math.floor(c / this.perBlock));
      }
      let stillFree = true;
      for (let c = start; c < start + got; c++) {
        if (!(this.isFree(c) ?? (await this.readIsFree(c)))) {
          stillFree = false;
          break;
        }
      }
      if (!stillFree) continue;
      await this.setRun(start, got, 1n);
      if (start === this.freeHint) this.freeHint = start + got;
      const end = (start + got) * this.clusterSize;
      if (end > this.fileEnd) this.fileEnd = end;
      return [start, got];
    }
  }

  async free(offset: number, count = 1): Promise<void> {
    for (let i = 0; i < count; i++) await this.add(offset / this.clusterSize + i, -1n);
  }

  /** Make sure refcount block `index` exists, creating it (and growing the table) if needed. */
  async ensureBlock(index: number): Promise<void> {
    while (index >= this.table.length || this.table[index] === 0) {
      if (index >= this.table.length) {
        await this.growTable(index + 1);
        continue;
      }
      const c = await this.findFree(1);
      const home = Math.floor(c / this.perBlock);
      const block = new Uint8Array(this.clusterSize);
      if (home === index) {
        // The new block describes itself.
        Refcounts.setEntry(block, c % this.perBlock, this.refcountOrder, 1n);
        await this.file.write(c * this.clusterSize, block);
      } else if (home < this.table.length && this.table[home] !== 0) {
        await this.set(c, 1n);
        await this.file.write(c * this.clusterSize, block);
      } else {
        await this.ensureBlock(home);
        continue;
      }
      await this.setTableEntry(index, c * this.clusterSize);
      this.blocks.set(c * this.clusterSize, block);
      const end = (c + 1) * this.clusterSize;
      if (end > this.fileEnd) this.fileEnd = end;
    }
  }

  private async setTableEntry(index: number, offset: number): Promise<void> {
    const entry = new Uint8Array(8);
    new DataView(entry.buffer).setBigUint64(0, BigInt(offset));
    await this.file.write(this.tableOffset + index * 8, entry);
    this.table[index] = offset;
  }

  /**
   * Move the refcount table to a larger place at the end of the image. The new table and any
   * refcount blocks needed to describe it are placed together in never-used space, written,
   * and only then does the header switch to them; the old table is freed last.
   */
  private async growTable(minEntries: number): Promise<void> {
    const cs = this.clusterSize;
    const perTableCluster = cs / 8;
    let start = Math.ceil(Math.max(this.fileEnd, (this.tableOffset + this.tableClusters * cs)) / cs);
    // Skip anything in use past the end of file (leaks after a crash can sit there).
    for (;;) {
      let used = -1;
      for (let c = start; c < start + 8; c++) if ((await this.get(c)) !== 0n) used = c;
      if (used < 0) break;
      start = used + 1;
    }
    let entries = Math.max(minEntries, this.table.length * 2, perTableCluster);
    let tableClusters = 0;
    let newBlocks: number[] = [];
    for (let iter = 0; iter < 64; iter++) {
      tableClusters = Math.ceil(entries / perTableCluster);
      // Blocks needed to describe [start, start + tableClusters + newBlocks.length).
      const total = tableClusters + newBlocks.length;
      const needed: number[] = [];
      for (let b = Math.floor(start / this.perBlock); b <= Math.floor((start + total - 1) / this.perBlock); b++) {
        if (b >= this.table.length || this.table[b] === 0) needed.push(b);
      }
      const maxIndex = Math.max(minEntries - 1, ...needed);
      if (needed.length === newBlocks.length && maxIndex < tableClusters * perTableCluster) {
        newBlocks = needed;
        break;
      }
      newBlocks = needed;
      entries = Math.max(entries, maxIndex + 1);
    }
    if (tableClusters * cs > MAX_REFTABLE_BYTES) throw new BlockError(this.file.filename, 'refcount table would exceed its maximum size');
    const tableStart = start;
    const blocksStart = start + tableClusters;
    const newTable = this.table.slice();
    while (newTable.length < tableClusters * perTableCluster) newTable.push(0);
    newBlocks.forEach((b, i) => (newTable[b] = (blocksStart + i) * cs));
    // Write the new blocks with the refcounts of everything placed in this step.
    const placed = tableClusters + newBlocks.length;
    for (let i = 0; i < newBlocks.length; i++) {
      const b = newBlocks[i];
      const block = new Uint8Array(cs);
      for (let c = tableStart; c < tableStart + placed; c++) {
        if (Math.floor(c / this.perBlock) === b) Refcounts.setEntry(block, c % this.perBlock, this.refcountOrder, 1n);
      }
      await this.file.write((blocksStart + i) * cs, block);
      this.blocks.set((blocksStart + i) * cs, block);
    }
    // Placed clusters described by blocks that already existed.
    for (let c = tableStart; c < tableStart + placed; c++) {
      const b = Math.floor(c / this.perBlock);
      if (!newBlocks.includes(b)) {
        const block = await this.block(newTable[b]);
        const [from, to] = Refcounts.setEntry(block, c % this.perBlock, this.refcountOrder, 1n);
        await this.file.write(newTable[b] + from, block.slice(from, to));
      }
    }
    const raw = new Uint8Array(tableClusters * cs);
    const view = new DataView(raw.buffer);
    newTable.forEach((o, i) => view.setBigUint64(i * 8, BigInt(o)));
    await this.file.write(tableStart * cs, raw);
    await this.file.flush();
    const hdr = new Uint8Array(12);
    const hv = new DataView(hdr.buffer);
    hv.setBigUint64(0, BigInt(tableStart * cs));
    hv.setUint32(8, tableClusters);
    await this.file.write(HEADER_FIELD.refcountTableOffset, hdr);
    await this.file.flush();
    const oldOffset = this.tableOffset;
    const oldClusters = this.tableClusters;
    this.table = newTable;
    this.tableOffset = tableStart * cs;
    this.tableClusters = tableClusters;
    const end = (tableStart + placed) * cs;
    if (end > this.fileEnd) this.fileEnd = end;
    for (let i = 0; i < oldClusters; i++) await this.add(oldOffset / cs + i, -1n);
  }

  /** Forget cached blocks (after the structures were rewritten behind our back, e.g. by a repair). */
  dropCache(): void {
    this.blocks.clear();
    this.freeHint = 0;
  }
}
