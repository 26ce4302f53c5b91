// The guest-physical memory interface that devices, loaders and queues depend on.
// Implementations: RAM backed by host mappings registered with KVM (the VMM), and a
// plain buffer (tests). Every access is bounds-checked against the regions; a guest
// address can never reach host memory outside the region that holds it.

export class GuestMemoryError extends Error {
  constructor(
    readonly address: bigint,
    readonly length: number,
    message?: string,
  ) {
    super(message ?? `guest address 0x${address.toString(16)} (+${length}) is outside guest memory`);
    this.name = 'GuestMemoryError';
  }
}

export interface GuestMemory {
  /** Total bytes of guest RAM. */
  readonly size: bigint;
  /**
   * A view of `length` bytes at guest-physical `address`, aliasing guest RAM (writes go to
   * the guest). Throws GuestMemoryError when the range is not wholly inside one region.
   */
  slice(address: bigint, length: number): Uint8Array;
  /** Like slice(), but undefined instead of an error when the range is not inside (no exception on hostile input). */
  sliceInside(address: bigint, length: number): Uint8Array | undefined;
  /**
   * sliceInside() for an address held as a number, as virtqueues read them: the per-buffer
   * lookup of the I/O path then needs no BigInt. Addresses past 2^53 are never inside.
   */
  viewInside(address: number, length: number): Uint8Array | undefined;
  /** Whether [address, address+length) lies wholly inside one region. */
  contains(address: bigint, length: number): boolean;
  read(address: bigint, into: Uint8Array): void;
  write(address: bigint, data: Uint8Array): void;
  readU8(address: bigint): number;
  readU16(address: bigint): number;
  readU32(address: bigint): number;
  readU64(address: bigint): bigint;
  writeU8(address: bigint, value: number): void;
  writeU16(address: bigint, value: number): void;
  writeU32(address: bigint, value: number): void;
  writeU64(address: bigint, value: bigint): void;
}
