// The block driver interface: what devices (virtio-blk, NVMe...) and tools (tsvirt img)
// see of a disk image, whatever its format. Formats implement it in their own modules;
// openImage() probes the format and returns the right driver.
import type { IoUring } from '../kvm/io-uring.js';
import { BlockError } from './errors.js';
import { RawDriver } from './raw.js';
import { openQcow2 } from './qcow2/image.js';
import { probeFormat } from './probe.js';

export { BlockError } from './errors.js';
export { probeFormat } from './probe.js';

/** A stretch of an image's bytes as mapped: `at` bytes into the range asked of mapForRead. */
export interface MappedRun {
  readonly at: number;
  readonly bytes: Buffer;
}

/** The runs, in order, that cover a range asked of mapForRead; release() gives them all back. */
export interface MappedRange {
  readonly runs: MappedRun[];
  release(): void;
}

export interface BlockTopology {
  logicalBlockSize: number;
  physicalBlockSize: number;
  alignmentOffset: number;
  minimumIoSize: number;
  optimalIoSize: number;
  discardGranularity: number;
}

export type CacheMode = 'none' | 'writeback' | 'writethrough' | 'directsync' | 'unsafe';

export interface OpenOptions {
  readOnly?: boolean;
  cache?: CacheMode;
  /** 'raw' or 'qcow2'; probed from the file's first bytes when absent. */
  format?: string;
  /** Open the backing chain (default true). Without it, unallocated areas read as zeroes. */
  backing?: boolean;
  /** Bytes of L2 table cache (qcow2). */
  l2CacheBytes?: number;
  /** The image file's reads and writes go through this ring (not its backing files'). */
  ring?: IoUring;
  /**
   * Reads and writes of image files on a memory file system run on the calling thread (see
   * HostFileOptions.memoryIoInline): for a VMM, whose main thread otherwise pays a
   * thread-pool round trip per request.
   */
  memoryIoInline?: boolean;
}

export interface BlockStatus {
  length: bigint;
  data: boolean;
  zero: boolean;
  /** 0 = this image, 1 = its backing file, ... */
  depth: number;
  hostOffset?: bigint;
  compressed?: boolean;
}

export interface BlockDriver {
  readonly format: string;
  readonly filename: string;
  readonly readOnly: boolean;
  /** Virtual size in bytes. */
  size(): bigint;
  topology(): BlockTopology;
  /** Scatter-gather I/O at a byte offset (preadv/pwritev semantics). Many may be in flight at once. */
  readv(offset: bigint, buffers: Uint8Array[]): Promise<void>;
  writev(offset: bigint, buffers: Uint8Array[]): Promise<void>;
  flush(): Promise<void>;
  discard(offset: bigint, length: bigint): Promise<void>;
  writeZeroes(offset: bigint, length: bigint, opts?: { mayUnmap?: boolean }): Promise<void>;
  resize(newSize: bigint): Promise<void>;
  /** Allocation status of the extent starting at offset (at most length bytes long). */
  blockStatus(offset: bigint, length: bigint): Promise<BlockStatus>;
  /**
   * The bytes of [offset, offset+length) as they stand in the host's page cache, without a
   * copy, when the driver can offer them (an image open read-only: a raw one's bytes, a
   * qcow2 one's data clusters, a run for each stretch that follows on in the file; see
   * block/leased-mapping.ts); undefined otherwise, and the caller reads instead. The caller
   * releases them when done and touches them no more after.
   */
  mapForRead?(offset: bigint, length: bigint): MappedRange | undefined;
  close(): Promise<void>;
}

export const SUPPORTED_FORMATS = ['raw', 'qcow2'] as const;

/** Open a disk image of any supported format (probed unless options.format says). */
export async function openImage(filename: string, options: OpenOptions = {}): Promise<BlockDriver> {
  const format = options.format ?? (await probeFormat(filename));
  switch (format) {
    case 'raw':
      return RawDriver.open(filename, options);
    case 'qcow2':
      return openQcow2(filename, options);
    default:
      throw new BlockError(filename, `unknown image format '${format}' (supported: ${SUPPORTED_FORMATS.join(', ')})`);
  }
}
