// The raw format: the image is the disk, byte for byte. Holes in a sparse file are
// reported by blockStatus as zero, unallocated extents.
import { BlockError } from './errors.js';
import { createEmptyFile, HostFile } from './host-file.js';
import type { BlockDriver, BlockStatus, BlockTopology, MappedRange, OpenOptions } from './driver.js';


export class RawDriver implements BlockDriver {
  readonly format = 'raw';
  private virtualSize: bigint;

  private constructor(
    private readonly file: HostFile,
    size: bigint,
  ) {
    this.virtualSize = size;
  }

  static async open(filename: string, options: OpenOptions = {}): Promise<RawDriver> {
    const file = await HostFile.open(filename, { readOnly: options.readOnly, cache: options.cache, ring: options.ring, memoryIoInline: options.memoryIoInline });
    return new RawDriver(file, await file.length());
  }

  get filename(): string {
    return this.file.filename;
  }

  get readOnly(): boolean {
    return this.file.readOnly;
  }

  size(): bigint {
    return this.virtualSize;
  }

  topology(): BlockTopology {
    const block = this.file.direct ? 4096 : 512;
    return {
      logicalBlockSize: 512,
      physicalBlockSize: block,
      alignmentOffset: 0,
      minimumIoSize: block,
      optimalIoSize: 0,
      discardGranularity: 4096,
    };
  }

  private check(offset: bigint, length: bigint, what: string): void {
    if (offset < 0n || length < 0n || offset + length > this.virtualSize) {
      throw new BlockError(this.filename, `${what} of ${length} bytes at offset ${offset} is beyond the disk size ${this.virtualSize}`);
    }
  }

  mapForRead(offset: bigint, length: bigint): MappedRange | undefined {
    if (offset < 0n || length <= 0n || offset + length > this.virtualSize) return undefined;
    const mapped = this.file.mapForRead(Number(offset), Number(length));
    return mapped && { runs: [{ at: 0, bytes: mapped.bytes }], release: mapped.release };
  }

  // Reads and writes hand back the file's own promise, with no async frame of their own in
  // between (one per request); a refusal still arrives as a rejection.
  readv(offset: bigint, buffers: Uint8Array[]): Promise<void> {
    try {
      this.check(offset, BigInt(buffers.reduce((n, b) => n + b.length, 0)), 'read');
      return this.file.readv(offset, buffers);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  writev(offset: bigint, buffers: Uint8Array[]): Promise<void> {
    try {
      if (this.readOnly) throw new BlockError(this.filename, 'write refused: image is open read-only');
      this.check(offset, BigInt(buffers.reduce((n, b) => n + b.length, 0)), 'write');
      return this.file.writev(offset, buffers);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /**
   * The read done on the calling thread if the file can do it at once (HostFile.readvNow);
   * false, with nothing reported, when it cannot or the range is not on the disk: readv()
   * then runs it, and reports.
   */
  readvNow(offset: bigint, buffers: Uint8Array[]): boolean {
    return this.withinDisk(offset, buffers) && this.file.readvNow(Number(offset), buffers);
  }

  /** As readvNow, for a write (never on a read-only image). */
  writevNow(offset: bigint, buffers: Uint8Array[]): boolean {
    return !this.readOnly && this.withinDisk(offset, buffers) && this.file.writevNow(Number(offset), buffers);
  }

  private withinDisk(offset: bigint, buffers: Uint8Array[]): boolean {
    let bytes = 0;
    for (const b of buffers) bytes += b.length;
    const size = Number(this.virtualSize);
    // In numbers where they are exact (a disk below 2^53 bytes: a request whose end rounds
    // is past it anyway), in BigInt otherwise.
    if (size <= Number.MAX_SAFE_INTEGER) return offset >= 0n && Number(offset) + bytes <= size;
    return offset >= 0n && offset + BigInt(bytes) <= this.virtualSize;
  }

  flush(): Promise<void> {
    return this.file.flush();
  }

  async discard(offset: bigint, length: bigint): Promise<void> {
    if (this.readOnly) throw new BlockError(this.filename, 'discard refused: image is open read-only');
    this.check(offset, length, 'discard');
    this.file.punchHole(offset, length);
  }

  async writeZeroes(offset: bigint, length: bigint, opts: { mayUnmap?: boolean } = {}): Promise<void> {
    if (this.readOnly) throw new BlockError(this.filename, 'write refused: image is open read-only');
    this.check(offset, length, 'write-zeroes');
    if (opts.mayUnmap && this.file.punchHole(offset, length)) return;
    if (this.file.zeroRange(offset, length)) return;
    const chunk = new Uint8Array(1 << 20);
    for (let pos = offset; pos < offset + length; ) {
      const n = (offset + length - pos) < BigInt(chunk.length) ? Number(offset + length - pos) : chunk.length;
      await this.file.write(pos, chunk.subarray(0, n));
      pos += BigInt(n);
    }
  }

  async resize(newSize: bigint): Promise<void> {
    if (this.readOnly) throw new BlockError(this.filename, 'resize refused: image is open read-only');
    if (newSize < 0n) throw new BlockError(this.filename, `invalid size ${newSize}`);
    await this.file.truncate(newSize);
    this.virtualSize = newSize;
  }

  async blockStatus(offset: bigint, length: bigint): Promise<BlockStatus> {
    this.check(offset, length, 'block status');
    const end = offset + length;
    const hole = this.file.seek(offset, 'hole');
    const data = this.file.seek(offset, 'data');
    if (hole < 0n && data < 0n) return { length, data: true, zero: false, depth: 0, hostOffset: offset };
    if (data === offset || (data < 0n && hole > offset) || (hole > offset && data <= offset)) {
      const stop = hole < 0n || hole > end ? end : hole;
      return { length: stop - offset, data: true, zero: false, depth: 0, hostOffset: offset };
    }
    const stop = data < 0n || data > end ? end : data;
    return { length: stop - offset, data: false, zero: true, depth: 0 };
  }

  close(): Promise<void> {
    return this.file.close();
  }
}

/** Create (or truncate to) a raw image of `size` bytes; preallocation 'falloc'/'full' reserves or writes it. */
export async function createRaw(filename: string, options: { size: bigint; preallocation?: 'off' | 'falloc' | 'full' }): Promise<void> {
  if (options.size < 0n) throw new BlockError(filename, `invalid size ${options.size}`);
  await createEmptyFile(filename);
  const file = await HostFile.open(filename);
  try {
    await file.truncate(options.size);
    if (options.preallocation === 'falloc' && options.size > 0n) file.allocate(0n, options.size);
    if (options.preallocation === 'full') {
      const chunk = new Uint8Array(1 << 20);
      for (let pos = 0n; pos < options.size; pos += BigInt(chunk.length)) {
        const n = options.size - pos < BigInt(chunk.length) ? Number(options.size - pos) : chunk.length;
        await file.write(pos, chunk.subarray(0, n));
      }
    }
  } finally {
    await file.close();
  }
}
