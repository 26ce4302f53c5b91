// GuestMemory over a list of non-overlapping regions, each a byte array placed at a
// guest-physical address. The byte arrays may be plain buffers (tests) or views of host
// mappings that KVM also sees (the VMM): this class does not care where bytes live.
import { GuestMemory, GuestMemoryError } from './guest-memory.js';

export interface MemoryRegion {
  /** Guest-physical address of the first byte. */
  readonly guestAddress: bigint;
  readonly bytes: Uint8Array;
}

/** Largest guest address handled as a plain number (2^53 - 1); beyond it nothing is inside. */
const MAX_EXACT_ADDRESS = BigInt(Number.MAX_SAFE_INTEGER);

export class RegionGuestMemory implements GuestMemory {
  readonly size: bigint;
  private readonly regions: readonly MemoryRegion[];
  private readonly views: DataView[];
  // Region bounds as plain numbers: a lookup then compares numbers instead of doing BigInt
  // arithmetic, which allocates. A virtio-blk request of 1 MiB can carry 254 buffers, each
  // looked up here, so this is on the data path.
  private readonly starts: number[];
  private readonly ends: number[];
  /** Each region's backing store and where the region starts in it, for views made with `new`. */
  private readonly buffers: ArrayBufferLike[];
  private readonly byteOffsets: number[];
  /** Offset within its region of the range the last find() placed (avoids returning an object). */
  private foundOffset = 0;

  constructor(regions: readonly MemoryRegion[]) {
    const sorted = [...regions].sort((a, b) => (a.guestAddress < b.guestAddress ? -1 : 1));
    for (let i = 1; i < sorted.length; i++) {
      const prev = sorted[i - 1]!;
      if (prev.guestAddress + BigInt(prev.bytes.length) > sorted[i]!.guestAddress) {
        throw new Error(`guest memory regions overlap at 0x${sorted[i]!.guestAddress.toString(16)}`);
      }
    }
    for (const r of sorted) {
      if (r.guestAddress < 0n || r.guestAddress + BigInt(r.bytes.length) > MAX_EXACT_ADDRESS) {
        throw new Error(`guest memory region at 0x${r.guestAddress.toString(16)} lies beyond 2^53`);
      }
    }
    this.regions = sorted;
    this.views = sorted.map((r) => new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength));
    this.starts = sorted.map((r) => Number(r.guestAddress));
    this.ends = sorted.map((r) => Number(r.guestAddress) + r.bytes.length);
    this.buffers = sorted.map((r) => r.bytes.buffer);
    this.byteOffsets = sorted.map((r) => r.bytes.byteOffset);
    this.size = sorted.reduce((sum, r) => sum + BigInt(r.bytes.length), 0n);
  }

  /** A single zero-filled region of `size` bytes at guest address 0 (for tests and tools). */
  static ofSize(size: number): RegionGuestMemory {
    return new RegionGuestMemory([{ guestAddress: 0n, bytes: new Uint8Array(size) }]);
  }

  get regionList(): readonly MemoryRegion[] {
    return this.regions;
  }

  /** Index of the region holding [address, address+length), or -1; sets foundOffset. */
  private find(address: bigint, length: number): number {
    if (address < 0n || address > MAX_EXACT_ADDRESS) return -1;
    return this.findNumber(Number(address), length);
  }

  /** find() for an address held as a number. */
  private findNumber(start: number, length: number): number {
    if (!(start >= 0 && length >= 0)) return -1;
    const end = start + length;
    for (let i = 0; i < this.starts.length; i++) {
      const regionStart = this.starts[i]!;
      if (start >= regionStart && end <= this.ends[i]!) {
        this.foundOffset = start - regionStart;
        return i;
      }
    }
    return -1;
  }

  /** Index of the region holding the range (its offset in foundOffset); throws when there is none. */
  private locate(address: bigint, length: number): number {
    const index = this.find(address, length);
    if (index < 0) throw new GuestMemoryError(address, length);
    return index;
  }

  contains(address: bigint, length: number): boolean {
    return this.find(address, length) >= 0;
  }

  slice(address: bigint, length: number): Uint8Array {
    const index = this.locate(address, length);
    return this.regions[index]!.bytes.subarray(this.foundOffset, this.foundOffset + length);
  }

  sliceInside(address: bigint, length: number): Uint8Array | undefined {
    const index = this.find(address, length);
    return index < 0 ? undefined : this.regions[index]!.bytes.subarray(this.foundOffset, this.foundOffset + length);
  }

  viewInside(address: number, length: number): Uint8Array | undefined {
    const index = this.findNumber(address, length);
    // `new Uint8Array(buffer, ...)` costs about half of subarray(), which looks up the
    // species constructor; a 1 MiB request makes 256 of these views.
    return index < 0 ? undefined : new Uint8Array(this.buffers[index]!, this.byteOffsets[index]! + this.foundOffset, length);
  }

  read(address: bigint, into: Uint8Array): void {
    into.set(this.slice(address, into.length));
  }

  write(address: bigint, data: Uint8Array): void {
    this.slice(address, data.length).set(data);
  }

  readU8(address: bigint): number {
    const index = this.locate(address, 1);
    return this.views[index]!.getUint8(this.foundOffset);
  }
  readU16(address: bigint): number {
    const index = this.locate(address, 2);
    return this.views[index]!.getUint16(this.foundOffset, true);
  }
  readU32(address: bigint): number {
    const index = this.locate(address, 4);
    return this.views[index]!.getUint32(this.foundOffset, true);
  }
  readU64(address: bigint): bigint {
    const index = this.locate(address, 8);
    return this.views[index]!.getBigUint64(this.foundOffset, true);
  }
  writeU8(address: bigint, value: number): void {
    const index = this.locate(address, 1);
    this.views[index]!.setUint8(this.foundOffset, value);
  }
  writeU16(address: bigint, value: number): void {
    const index = this.locate(address, 2);
    this.views[index]!.setUint16(this.foundOffset, value, true);
  }
  writeU32(address: bigint, value: number): void {
    const index = this.locate(address, 4);
    this.views[index]!.setUint32(this.foundOffset, value, true);
  }
  writeU64(address: bigint, value: bigint): void {
    const index = this.locate(address, 8);
    this.views[index]!.setBigUint64(this.foundOffset, value, true);
  }
}
