// Little-endian fields read out of byte arrays: boot protocol headers, ELF headers, LZ4 frames.

export function u16(b: Uint8Array, at: number): number {
  return b[at]! | (b[at + 1]! << 8);
}

export function u32(b: Uint8Array, at: number): number {
  return (b[at]! | (b[at + 1]! << 8) | (b[at + 2]! << 16) | (b[at + 3]! << 24)) >>> 0;
}

export function u64(b: Uint8Array, at: number): bigint {
  return BigInt(u32(b, at)) | (BigInt(u32(b, at + 4)) << 32n);
}
