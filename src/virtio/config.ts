// Parsers for the virtio command-line options (`tsvirt run --disk/--channel/--rng`, and the
// same strings in library use). Every mistake is a one-line ConfigError naming the option,
// the key and the bad value.

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export type CacheOption = 'none' | 'writeback' | 'writethrough';

export interface DiskConfig {
  path: string;
  format?: 'raw' | 'qcow2';
  readOnly: boolean;
  cache?: CacheOption;
  serial?: string;
  logicalBlockSize?: number;
  physicalBlockSize?: number;
  /** Fixed PCI slot. */
  addr?: number;
  /** Request queues; default one per vCPU. */
  numQueues?: number;
  /** Host I/O error policy: report to the guest (default) or pause the VM. */
  errorPolicy?: 'report' | 'stop';
}

export interface ChannelConfig {
  name: string;
  path: string;
}

export interface RngConfig {
  rateLimit?: { bytes: number; periodMs: number };
  addr?: number;
}

/** Split "a,b=c" on commas; ",," is a literal comma (as in QEMU). */
function splitOptions(text: string): string[] {
  const parts: string[] = [];
  let current = '';
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (ch === ',' && text[i + 1] === ',') {
      current += ',';
      i++;
    } else if (ch === ',') {
      parts.push(current);
      current = '';
    } else current += ch;
  }
  parts.push(current);
  return parts;
}

function keyValues(option: string, text: string, firstIsPath: boolean): { path?: string; pairs: Array<[string, string | undefined]> } {
  const parts = splitOptions(text);
  let path: string | undefined;
  if (firstIsPath && parts.length > 0 && !parts[0]!.includes('=')) path = parts.shift();
  const pairs: Array<[string, string | undefined]> = [];
  for (const part of parts) {
    if (part === '') throw new ConfigError(`${option}: empty option in '${text}'`);
    const eq = part.indexOf('=');
    pairs.push(eq < 0 ? [part, undefined] : [part.slice(0, eq), part.slice(eq + 1)]);
  }
  return { ...(path !== undefined ? { path } : {}), pairs };
}

function need(option: string, key: string, value: string | undefined): string {
  if (value === undefined || value === '') throw new ConfigError(`${option}: ${key} needs a value (${key}=...)`);
  return value;
}

function integer(option: string, key: string, value: string | undefined, min: number, max: number): number {
  const v = need(option, key, value);
  if (!/^\d+$/.test(v) || Number(v) < min || Number(v) > max) {
    throw new ConfigError(`${option}: ${key}=${v} is not an integer in ${min}..${max}`);
  }
  return Number(v);
}

function blockSize(option: string, key: string, value: string | undefined): number {
  const n = integer(option, key, value, 512, 65536);
  if (n & (n - 1)) throw new ConfigError(`${option}: ${key}=${n} is not a power of two`);
  return n;
}

function flag(option: string, key: string, value: string | undefined): boolean {
  if (value === undefined || ['on', 'true', 'yes', '1'].includes(value)) return true;
  if (['off', 'false', 'no', '0'].includes(value)) return false;
  throw new ConfigError(`${option}: ${key}=${value} is not on/off`);
}

function pciSlot(option: string, value: string | undefined): number {
  const v = need(option, 'addr', value);
  const n = /^0x[0-9a-f]+$/i.test(v) ? Number.parseInt(v, 16) : /^\d+$/.test(v) ? Number(v) : NaN;
  if (!(n >= 1 && n <= 31)) throw new ConfigError(`--${option.replace(/^--/, '')}: addr=${v} is not a PCI slot in 1..31`);
  return n;
}

/** `path[,format=raw|qcow2][,readonly][,cache=..][,serial=..][,logical_block_size=..][,physical_block_size=..][,addr=N][,num_queues=N][,werror=report|stop]` */
export function parseDiskOption(text: string): DiskConfig {
  const option = '--disk';
  const { path: first, pairs } = keyValues(option, text, true);
  let path = first;
  const disk: DiskConfig = { path: '', readOnly: false };
  for (const [key, value] of pairs) {
    switch (key) {
      case 'file':
      case 'path':
        path = need(option, key, value);
        break;
      case 'format': {
        const v = need(option, key, value);
        if (v !== 'raw' && v !== 'qcow2') throw new ConfigError(`${option}: format=${v} is not raw or qcow2`);
        disk.format = v;
        break;
      }
      case 'readonly':
        disk.readOnly = flag(option, key, value);
        break;
      case 'cache': {
        const v = need(option, key, value);
        if (v !== 'none' && v !== 'writeback' && v !== 'writethrough') {
          throw new ConfigError(`${option}: cache=${v} is not none, writeback or writethrough`);
        }
        disk.cache = v;
        break;
      }
      case 'serial': {
        const v = need(option, key, value);
        if (new TextEncoder().encode(v).length > 20) throw new ConfigError(`${option}: serial=${v} is longer than 20 bytes`);
        disk.serial = v;
        break;
      }
      case 'logical_block_size':
        disk.logicalBlockSize = blockSize(option, key, value);
        break;
      case 'physical_block_size':
        disk.physicalBlockSize = blockSize(option, key, value);
        break;
      case 'addr':
        disk.addr = pciSlot(option, value);
        break;
      case 'num_queues':
        disk.numQueues = integer(option, key, value, 1, 64);
        break;
      case 'werror': {
        const v = need(option, key, value);
        if (v !== 'report' && v !== 'stop') throw new ConfigError(`${option}: werror=${v} is not report or stop`);
        disk.errorPolicy = v;
        break;
      }
      default:
        throw new ConfigError(`${option}: unknown key '${key}' in '${text}'`);
    }
  }
  if (!path) throw new ConfigError(`${option}: no image path in '${text}'`);
  disk.path = path;
  if (disk.logicalBlockSize && disk.physicalBlockSize && disk.physicalBlockSize < disk.logicalBlockSize) {
    throw new ConfigError(`${option}: physical_block_size=${disk.physicalBlockSize} is smaller than logical_block_size=${disk.logicalBlockSize}`);
  }
  return disk;
}

/** `name=NAME,path=SOCKET`: a virtio-serial port backed by a unix socket server. */
export function parseChannelOption(text: string): ChannelConfig {
  const option = '--channel';
  const { pairs } = keyValues(option, text, false);
  let name: string | undefined;
  let path: string | undefined;
  for (const [key, value] of pairs) {
    if (key === 'name') {
      name = need(option, key, value);
      if (!/^[A-Za-z0-9._-]{1,127}$/.test(name)) throw new ConfigError(`${option}: name=${name} must be 1-127 of [A-Za-z0-9._-]`);
    } else if (key === 'path') path = need(option, key, value);
    else throw new ConfigError(`${option}: unknown key '${key}' in '${text}'`);
  }
  if (!name) throw new ConfigError(`${option}: name=... is missing in '${text}'`);
  if (!path) throw new ConfigError(`${option}: path=... is missing in '${text}'`);
  return { name, path };
}

/** `[rate=BYTES/PERIOD_MS][,addr=N]`; an empty string means no limit. */
export function parseRngOption(text: string): RngConfig {
  const option = '--rng';
  const config: RngConfig = {};
  if (text.trim() === '') return config;
  for (const [key, value] of keyValues(option, text, false).pairs) {
    if (key === 'rate') {
      const v = need(option, key, value);
      const m = /^(\d+)\/(\d+)$/.exec(v);
      if (!m || Number(m[1]) < 1 || Number(m[2]) < 1) throw new ConfigError(`${option}: rate=${v} is not BYTES/PERIOD_MS with both positive`);
      config.rateLimit = { bytes: Number(m[1]), periodMs: Number(m[2]) };
    } else if (key === 'addr') config.addr = pciSlot(option, value);
    else throw new ConfigError(`${option}: unknown key '${key}' in '${text}'`);
  }
  return config;
}
