// The L2 table cache: recently used L2 tables, whole, keyed by host offset; its size in
// tables comes from the l2CacheBytes open option. The cache may hold what the file lacks:
// while a write of the table is on its way (`pending`), or while entries changed in memory
// wait to be written back (`dirtyTo` > 0, see the image's writeBackTables). Such tables are
// pinned: evicting one would lose the change or reload it stale from disk.
import type { HostFile } from '../host-file.js';

export interface CachedTable {
  buf: Uint8Array;
  /** Writes of this table still on their way to disk. */
  pending: number;
  /** Byte range [dirtyFrom, dirtyTo) changed in memory only (dirtyTo 0: none). */
  dirtyFrom?: number;
  dirtyTo?: number;
}

export class L2Cache {
  private tables = new Map<number, CachedTable>();
  private loading = new Map<number, Promise<CachedTable>>();

  constructor(
    private readonly file: HostFile,
    private readonly clusterSize: number,
    /** Tables kept; more only while pinned. */
    readonly capacity: number,
  ) {}

  /** The table at `offset` if it is cached (marked recently used), with no await: the hot path of every request. */
  peek(offset: number): CachedTable | undefined {
    const cached = this.tables.get(offset);
    if (cached) {
      this.tables.delete(offset);
      this.tables.set(offset, cached);
    }
    return cached;
  }

  /** The table at `offset`, from the cache or the file. Concurrent loads of one table share one read. */
  async get(offset: number): Promise<CachedTable> {
    const cached = this.tables.get(offset);
    if (cached) {
      // Map order is the LRU order: move to the back.
      this.tables.delete(offset);
      this.tables.set(offset, cached);
      return cached;
    }
    const inFlight = this.loading.get(offset);
    if (inFlight) return inFlight;
    const p = (async () => {
      const buf = new Uint8Array(this.clusterSize);
      await this.file.read(offset, buf);
      const t: CachedTable = { buf, pending: 0 };
      this.put(offset, t);
      return t;
    })();
    this.loading.set(offset, p);
    try {
      return await p;
    } finally {
      this.loading.delete(offset);
    }
  }

  /** Add a table created in memory (a new or copied L2 table). */
  put(offset: number, table: CachedTable): void {
    this.tables.set(offset, table);
    if (this.tables.size <= this.capacity) return;
    for (const [off, t] of this.tables) {
      if (this.tables.size <= this.capacity) break;
      if (t.pending === 0 && !t.dirtyTo) this.tables.delete(off);
    }
  }

  delete(offset: number): void {
    this.tables.delete(offset);
  }

  clear(): void {
    for (const t of this.tables.values()) if (t.dirtyTo) throw new Error('L2 cache cleared while a table waits to be written back');
    this.tables.clear();
  }
}
