// The compressed kernel inside a bzImage, unpacked by the VMM instead of by the guest.
//
// A bzImage's protected-mode part is a small decompressor plus the real kernel, compressed
// ("the payload": setup-header fields payload_offset and payload_length, boot protocol 2.08).
// Booted the usual way, the guest runs the decompressor first; under nested virtualization
// that took 0.65 s of a 6 s boot in the lab, every page it writes costing an exit. Unpacked
// here, the payload is an ELF vmlinux followed by its relocation table (for KASLR), which
// linux-loader.ts places and relocates as the decompressor would have.
import { gunzipSync } from 'node:zlib';
import { LZ4_LEGACY_MAGIC, lz4LegacyDecode } from './lz4.js';
import { u32 } from './le-bytes.js';
import { KernelLoadError, parseSetupHeader } from './linux-loader.js';

const HDR_PAYLOAD_OFFSET = 0x248;
const HDR_PAYLOAD_LENGTH = 0x24c;
/** payload_offset and payload_length came with boot protocol 2.08. */
const PAYLOAD_PROTOCOL = 0x0208;
/** No kernel unpacks to more than this (the decompressor's own limit is far lower). */
const MAX_UNPACKED = 1 << 30;

export type PayloadCompression = 'lz4' | 'gzip' | 'xz' | 'zstd' | 'lzma' | 'bzip2' | 'lzo' | 'unknown';

/** A payload that cannot be unpacked; the message names the problem. */
export class KernelPayloadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KernelPayloadError';
  }
}

/**
 * The compressed payload of a bzImage, or undefined when its header does not locate one
 * (a header the loader refuses locates none: the loader reports it).
 */
export function bzImagePayload(kernel: Uint8Array): Uint8Array | undefined {
  let hdr: ReturnType<typeof parseSetupHeader>;
  try {
    hdr = parseSetupHeader(kernel);
  } catch (err) {
    if (err instanceof KernelLoadError) return undefined;
    throw err;
  }
  if (hdr.version < PAYLOAD_PROTOCOL) return undefined;
  const start = (hdr.setupSects + 1) * 512 + u32(kernel, HDR_PAYLOAD_OFFSET);
  const length = u32(kernel, HDR_PAYLOAD_LENGTH);
  if (length === 0 || start + length > kernel.length) return undefined;
  return kernel.subarray(start, start + length);
}

/** The compression of a payload, told by its first bytes (the kernel's own decompressors' magics). */
export function payloadCompression(payload: Uint8Array): PayloadCompression {
  const b = payload;
  if (b.length >= 4 && u32(b, 0) === LZ4_LEGACY_MAGIC) return 'lz4';
  if (b.length >= 2 && b[0] === 0x1f && (b[1] === 0x8b || b[1] === 0x9e)) return 'gzip';
  if (b.length >= 6 && b[0] === 0xfd && b[1] === 0x37 && b[2] === 0x7a && b[3] === 0x58 && b[4] === 0x5a) return 'xz';
  if (b.length >= 4 && u32(b, 0) === 0xfd2fb528) return 'zstd';
  if (b.length >= 3 && b[0] === 0x5d && b[1] === 0x00 && b[2] === 0x00) return 'lzma';
  if (b.length >= 3 && b[0] === 0x42 && b[1] === 0x5a && b[2] === 0x68) return 'bzip2';
  if (b.length >= 3 && b[0] === 0x89 && b[1] === 0x4c && b[2] === 0x5a) return 'lzo';
  return 'unknown';
}

/** Whether this VMM can unpack a payload compressed this way (the others are left to the guest). */
export function canUnpack(compression: PayloadCompression): boolean {
  return compression === 'lz4' || compression === 'gzip';
}

/**
 * The length the payload unpacks to, from its trailer: the kernel's build appends it to an
 * LZ4 payload, and gzip ends with it (modulo 2^32, which no kernel reaches).
 */
export function unpackedLength(payload: Uint8Array): number {
  return payload.length < 4 ? 0 : u32(payload, payload.length - 4);
}

/**
 * The payload unpacked: the kernel's ELF image, then its relocation table when it has one.
 * Throws KernelPayloadError for a payload that does not decode, or one compressed in a way
 * canUnpack() refuses.
 */
export function unpackPayload(payload: Uint8Array): Uint8Array {
  const compression = payloadCompression(payload);
  if (compression === 'gzip') {
    try {
      return gunzipSync(payload, { maxOutputLength: MAX_UNPACKED });
    } catch (err) {
      throw new KernelPayloadError(`the kernel's gzip payload does not decode: ${(err as Error).message}`);
    }
  }
  if (compression !== 'lz4') throw new KernelPayloadError(`the kernel's payload is ${compression}-compressed: only lz4 and gzip are unpacked here`);
  // The kernel's build appends the unpacked length to an LZ4 payload.
  if (payload.length < 8) throw new KernelPayloadError('the kernel\'s lz4 payload is truncated');
  const length = unpackedLength(payload);
  if (length === 0 || length > MAX_UNPACKED) throw new KernelPayloadError(`the kernel's lz4 payload claims an unpacked size of ${length} bytes`);
  const out = new Uint8Array(length);
  let written: number;
  try {
    written = lz4LegacyDecode(payload.subarray(0, payload.length - 4), out);
  } catch (err) {
    throw new KernelPayloadError(`the kernel's lz4 payload does not decode: ${(err as Error).message}`);
  }
  if (written !== length) throw new KernelPayloadError(`the kernel's lz4 payload unpacked to ${written} bytes, its trailer says ${length}`);
  return out;
}
