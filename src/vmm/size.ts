// Memory sizes as users write them: "512M", "2G", "1.5G", "4096K", or a bare number of MiB
// (QEMU's -m convention). Sizes are binary (K = 1024). The result is bytes.

const UNITS: Record<string, bigint> = {
  '': 1024n * 1024n, // bare number: MiB
  B: 1n,
  K: 1024n,
  M: 1024n ** 2n,
  G: 1024n ** 3n,
  T: 1024n ** 4n,
};

export class SizeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SizeError';
  }
}

/** Parse a size; `what` names the setting in the error ("memory size"). */
export function parseSize(text: string, what = 'size'): bigint {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) throw new SizeError(`${what} "${text}" is not a size (examples: 512M, 2G)`);
  const unit = UNITS[m[2]!.toUpperCase()]!;
  const [whole, frac = ''] = m[1]!.split('.');
  // Exact decimal arithmetic: "1.5G" must not pick up binary floating-point error.
  const scale = 10n ** BigInt(frac.length);
  const numerator = (BigInt(whole!) * scale + BigInt(frac || '0')) * unit;
  if (numerator % scale !== 0n) throw new SizeError(`${what} "${text}" is not a whole number of bytes`);
  return numerator / scale;
}

/** "512 MiB", "2 GiB", "1536 MiB": the largest binary unit that divides the size exactly. */
export function formatSize(bytes: bigint): string {
  for (const [suffix, unit] of [['TiB', 1024n ** 4n], ['GiB', 1024n ** 3n], ['MiB', 1024n ** 2n], ['KiB', 1024n]] as const) {
    if (bytes >= unit && bytes % unit === 0n) return `${bytes / unit} ${suffix}`;
  }
  return `${bytes} bytes`;
}
