// Sizes as qemu-img reads and prints them: "64M", "1.5G", "512" in, "64 MiB" out.
import { ImgError } from './errors.js';

const UNITS: Record<string, number> = { b: 0, k: 10, m: 20, g: 30, t: 40, p: 50, e: 60 };

/**
 * Parses a size with an optional binary suffix (k, M, G, T, P, E; case-insensitive; B = bytes).
 * Fractions are allowed with a suffix ("1.5G") as in qemu. Returns undefined when malformed so
 * each caller can word its own error like qemu-img does.
 */
export function parseSize(text: string, defaultUnit = 'b'): bigint | undefined {
  const m = /^\s*(\d+(?:\.\d*)?|\.\d+)\s*([bkmgtpeBKMGTPE]?)$/.exec(text);
  if (!m) return undefined;
  const [, number, suffix] = m as unknown as [string, string, string];
  const shift = UNITS[(suffix || defaultUnit).toLowerCase()]!;
  const [whole, fraction = ''] = number.split('.');
  const multiplier = 1n << BigInt(shift);
  let value = BigInt(whole || '0') * multiplier;
  if (fraction.replace(/0+$/, '') !== '') {
    if (shift === 0) return undefined; // qemu rejects fractional byte counts
    const scale = 10n ** BigInt(fraction.length);
    value += (BigInt(fraction) * multiplier) / scale;
  }
  if (value >= 1n << 63n) return undefined;
  return value;
}

/** Like parseSize but throws the qemu-img message for an image size. */
export function parseImageSize(text: string): bigint {
  const size = parseSize(text);
  if (size === undefined) {
    throw new ImgError('Invalid image size specified. You may use k, M, G, T, P or E suffixes for '
      + 'kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.');
  }
  return size;
}

/** C's "%0.3g": three significant digits, trailing zeros dropped. */
function threeSignificant(value: number): string {
  if (value === 0) return '0';
  return String(Number(value.toPrecision(3)));
}

/**
 * Human size as qemu prints it ("196 KiB", "64 MiB", "1.5 GiB"): the unit switches up once the
 * integer part would reach 1000, so there are never four digits before the point.
 */
export function humanSize(bytes: bigint | number): string {
  const suffixes = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'];
  const value = Number(bytes);
  let exponent = 0;
  const scaled = value / (1000 / 1024);
  if (scaled > 0) exponent = Math.floor(Math.log2(scaled)) + 1; // frexp's exponent
  const index = Math.min(suffixes.length - 1, Math.max(0, Math.trunc((exponent - 1) / 10)));
  return `${threeSignificant(value / 2 ** (index * 10))} ${suffixes[index]}B`;
}
