// The `-o key=value,...` option strings of qemu-img: parsing (with qemu's ",," escape for a
// literal comma and bare keys meaning on/off) and validation of the qcow2/raw creation options.
import { ImgError } from './errors.js';
import { parseSize } from './size.js';

/** Splits "a=b,c=d" into ordered pairs; ",," is a literal comma, a bare "x" means x=on, "nox" x=off. */
export function parseOptionString(text: string): Array<[string, string]> {
  const pairs: Array<[string, string]> = [];
  let current = '';
  const parts: string[] = [];
  for (let i = 0; i < text.length; i++) {
    if (text[i] === ',') {
      if (text[i + 1] === ',') {
        current += ',';
        i++;
        continue;
      }
      parts.push(current);
      current = '';
      continue;
    }
    current += text[i];
  }
  parts.push(current);
  for (const part of parts) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    if (eq >= 0) pairs.push([part.slice(0, eq), part.slice(eq + 1)]);
    else if (part.startsWith('no') && part.length > 2) pairs.push([part.slice(2), 'off']);
    else pairs.push([part, 'on']);
  }
  return pairs;
}

/** Several -o options accumulate, as in qemu-img. */
export function joinOptionStrings(list: string[]): string {
  return list.filter((s) => s !== '').join(',');
}

export function isHelpRequest(list: string[]): boolean {
  return list.some((s) => s === 'help' || s === '?');
}

export type Preallocation = 'off' | 'metadata' | 'falloc' | 'full';

export interface CreateOptions {
  size?: bigint;
  backingFile?: string;
  backingFormat?: string;
  clusterSize?: number;
  compat?: '0.10' | '1.1';
  preallocation?: Preallocation;
  lazyRefcounts?: boolean;
  refcountBits?: number;
  extendedL2?: boolean;
  compressionType?: 'zlib';
}

const QCOW2_KEYS = ['size', 'backing_file', 'backing_fmt', 'cluster_size', 'compat', 'preallocation',
  'lazy_refcounts', 'refcount_bits', 'extended_l2', 'compression_type', 'encryption'] as const;
const RAW_KEYS = ['size', 'preallocation'] as const;

export function creationKeys(format: string): readonly string[] {
  return format === 'qcow2' ? QCOW2_KEYS : RAW_KEYS;
}

export function optionHelp(format: string): string {
  const describe: Record<string, string> = {
    size: 'size           - Virtual disk size',
    backing_file: 'backing_file   - File name of a base image',
    backing_fmt: 'backing_fmt    - Image format of the base image',
    cluster_size: 'cluster_size   - qcow2 cluster size (default 65536)',
    compat: 'compat         - Compatibility level (0.10 or 1.1)',
    preallocation: 'preallocation  - Preallocation mode (allowed values: off, metadata, falloc, full)',
    lazy_refcounts: 'lazy_refcounts - Postpone refcount updates',
    refcount_bits: 'refcount_bits  - Width of a reference count entry in bits',
    extended_l2: 'extended_l2    - Extended L2 tables',
    compression_type: 'compression_type - Compression method used for image cluster compression (zlib)',
    encryption: 'encryption     - Deprecated, must be off',
  };
  const lines = [`Supported options:`];
  for (const key of creationKeys(format)) lines.push(`  ${describe[key] ?? key}`);
  return lines.join('\n') + '\n';
}

function onOff(filename: string, key: string, value: string): boolean {
  if (value === 'on' || value === 'true' || value === 'yes') return true;
  if (value === 'off' || value === 'false' || value === 'no') return false;
  throw new ImgError(`${filename}: Parameter '${key}' expects 'on' or 'off'`);
}

/** Validates -o pairs for a format; messages follow qemu-img's wording and name the file. */
export function parseCreateOptions(filename: string, format: string, text: string): CreateOptions {
  const allowed = creationKeys(format);
  const out: CreateOptions = {};
  for (const [key, value] of parseOptionString(text)) {
    if (!allowed.includes(key)) throw new ImgError(`${filename}: Invalid parameter '${key}'`);
    switch (key) {
      case 'size': {
        const size = parseSize(value);
        if (size === undefined) throw new ImgError(`${filename}: Parameter 'size' expects a non-negative number below 2^64`);
        out.size = size;
        break;
      }
      case 'backing_file': out.backingFile = value; break;
      case 'backing_fmt': out.backingFormat = value; break;
      case 'cluster_size': {
        const size = parseSize(value);
        if (size === undefined) throw new ImgError(`${filename}: Parameter 'cluster_size' expects a non-negative number below 2^64`);
        const n = Number(size);
        if (n < 512 || n > 2 * 1024 * 1024 || (n & (n - 1)) !== 0) {
          throw new ImgError(`${filename}: Cluster size must be a power of two between 512 and 2048k`);
        }
        out.clusterSize = n;
        break;
      }
      case 'compat':
        if (value === '0.10' || value === 'v2') out.compat = '0.10';
        else if (value === '1.1' || value === 'v3') out.compat = '1.1';
        else throw new ImgError(`${filename}: Invalid parameter '${value}'`);
        break;
      case 'preallocation':
        if (!['off', 'metadata', 'falloc', 'full'].includes(value) || (format === 'raw' && value === 'metadata')) {
          throw new ImgError(`${filename}: Parameter 'preallocation' does not accept value '${value}'`);
        }
        out.preallocation = value as Preallocation;
        break;
      case 'lazy_refcounts': out.lazyRefcounts = onOff(filename, key, value); break;
      case 'extended_l2': out.extendedL2 = onOff(filename, key, value); break;
      case 'refcount_bits': {
        const bits = Number(value);
        if (!Number.isInteger(bits) || bits < 1 || bits > 64 || (bits & (bits - 1)) !== 0) {
          throw new ImgError(`${filename}: Refcount width must be a power of two and may not exceed 64 bits`);
        }
        out.refcountBits = bits;
        break;
      }
      case 'compression_type':
        if (value !== 'zlib') throw new ImgError(`${filename}: Unsupported compression type '${value}' (only zlib)`);
        out.compressionType = 'zlib';
        break;
      case 'encryption':
        if (onOff(filename, key, value)) throw new ImgError(`${filename}: encryption is not supported`);
        break;
    }
  }
  if (out.compat === '0.10') {
    if (out.lazyRefcounts) throw new ImgError(`${filename}: Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)`);
    if (out.refcountBits !== undefined && out.refcountBits !== 16) throw new ImgError(`${filename}: Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)`);
    if (out.extendedL2) throw new ImgError(`${filename}: Extended L2 entries are only supported with compatibility level 1.1 and above (use compat=1.1 or greater)`);
  }
  if (out.extendedL2 && out.clusterSize !== undefined && out.clusterSize < 16384) {
    throw new ImgError(`${filename}: Extended L2 entries are only supported with cluster sizes of at least 16384 bytes`);
  }
  if (out.backingFile && out.preallocation && out.preallocation !== 'off') {
    throw new ImgError(`${filename}: Backing file and preallocation can only be used at the same time if extended_l2 is on`);
  }
  return out;
}
