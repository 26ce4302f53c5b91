// Image information as qemu-img shows it (`info`, human and JSON), built from the qcow2 header
// (parsed by the block layer), the snapshot table and the host file's allocation.
import { open, stat } from 'node:fs/promises';
import { parseHeader, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, INCOMPAT_EXTL2, COMPAT_LAZY_REFCOUNTS } from '../block/qcow2/header.js';
import { probeFormat } from '../block/probe.js';
import { ImgError, oneLine } from './errors.js';
import { resolveBacking } from './chain.js';
import { humanSize } from './size.js';
import { qdictOrder, type JsonValue } from './qemu-json.js';

export interface SnapshotInfo {
  id: string;
  name: string;
  vmStateSize: bigint;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: bigint;
  icount?: bigint;
  l1TableOffset: bigint;
  l1Size: number;
}

export interface ImageInfo {
  filename: string;
  format: string;
  virtualSize: bigint;
  actualSize: bigint;
  clusterSize?: number;
  backingFilename?: string;
  fullBackingFilename?: string;
  backingFormat?: string;
  dirty: boolean;
  snapshots: SnapshotInfo[];
  /** qcow2 "format-specific" data, keys as qemu names them. */
  formatSpecific?: Record<string, JsonValue>;
}

/** Reads the qcow2 snapshot table: fixed 40-byte entries, extra data, id, name, 8-byte padding. */
export function parseSnapshotTable(filename: string, buf: Buffer, count: number): SnapshotInfo[] {
  const out: SnapshotInfo[] = [];
  let pos = 0;
  for (let i = 0; i < count; i++) {
    if (pos + 40 > buf.length) throw new ImgError(`${filename}: snapshot table is truncated (entry ${i})`);
    const l1TableOffset = buf.readBigUInt64BE(pos);
    const l1Size = buf.readUInt32BE(pos + 8);
    const idSize = buf.readUInt16BE(pos + 12);
    const nameSize = buf.readUInt16BE(pos + 14);
    const dateSec = buf.readUInt32BE(pos + 16);
    const dateNsec = buf.readUInt32BE(pos + 20);
    const vmClockNsec = buf.readBigUInt64BE(pos + 24);
    let vmStateSize = BigInt(buf.readUInt32BE(pos + 32));
    const extraSize = buf.readUInt32BE(pos + 36);
    const extra = pos + 40;
    if (extraSize >= 8) vmStateSize = buf.readBigUInt64BE(extra);
    const icount = extraSize >= 24 ? buf.readBigUInt64BE(extra + 16) : undefined;
    let p = extra + extraSize;
    if (p + idSize + nameSize > buf.length) throw new ImgError(`${filename}: snapshot table is truncated (entry ${i})`);
    const id = buf.toString('utf8', p, p + idSize);
    p += idSize;
    const name = buf.toString('utf8', p, p + nameSize);
    p += nameSize;
    pos = (p + 7) & ~7;
    out.push({ id, name, vmStateSize, dateSec, dateNsec, vmClockNsec, icount, l1TableOffset, l1Size });
  }
  return out;
}

/** Bytes the host file really occupies (st_blocks), which is what qemu calls "disk size". */
async function allocatedBytes(filename: string): Promise<bigint> {
  const st = await stat(filename, { bigint: true });
  return st.blocks * 512n;
}

async function readQcow2Info(filename: string, info: ImageInfo): Promise<void> {
  const handle = await open(filename, 'r');
  try {
    const length = (await handle.stat({ bigint: true })).size;
    const first = Buffer.alloc(Number(length < 2n << 20n ? length : 2n << 20n));
    await handle.read(first, 0, first.length, 0);
    const header = parseHeader(filename, first, length);
    info.virtualSize = header.size;
    info.clusterSize = 1 << header.clusterBits;
    if (header.backingFile !== undefined) {
      info.backingFilename = header.backingFile;
      info.fullBackingFilename = resolveBacking(filename, header.backingFile);
      info.backingFormat = header.backingFormat;
    }
    info.dirty = (header.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n;
    if (header.nbSnapshots > 0) {
      // Entries are variable-length; 64 KiB per 100 snapshots is generous, and the table is bounded.
      const tableBytes = Math.min(Number(length - header.snapshotsOffset), 64 * 1024 + header.nbSnapshots * 1024);
      const table = Buffer.alloc(Math.max(0, tableBytes));
      await handle.read(table, 0, table.length, Number(header.snapshotsOffset));
      info.snapshots = parseSnapshotTable(filename, table, header.nbSnapshots);
    }
    const data: Record<string, JsonValue> = {
      compat: header.version === 2 ? '0.10' : '1.1',
      'compression-type': header.compressionType === 1 ? 'zstd' : 'zlib',
    };
    if (header.version === 3) {
      data['lazy-refcounts'] = (header.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n;
    }
    data['refcount-bits'] = 1 << header.refcountOrder;
    if (header.version === 3) {
      data.corrupt = (header.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n;
      data['extended-l2'] = (header.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
    }
    info.formatSpecific = data;
  } finally {
    await handle.close();
  }
}

/** Gathers what `info` prints about one image (not following the backing chain). */
export async function imageInfo(filename: string, format?: string): Promise<ImageInfo> {
  try {
    const probed = format ?? (await probeFormat(filename));
    const info: ImageInfo = {
      filename, format: probed, virtualSize: 0n, actualSize: await allocatedBytes(filename), dirty: false, snapshots: [],
    };
    if (probed === 'qcow2') await readQcow2Info(filename, info);
    else if (probed === 'raw') info.virtualSize = (await stat(filename, { bigint: true })).size;
    else throw new ImgError(`${filename}: Unknown file format '${probed}'`);
    return info;
  } catch (err) {
    if (err instanceof ImgError) throw err;
    const reason = oneLine(err);
    throw new ImgError(`Could not open '${filename}': ${reason.startsWith(`${filename}: `) ? reason.slice(filename.length + 2) : reason}`);
  }
}

export function snapshotJson(s: SnapshotInfo): JsonValue {
  return {
    id: s.id, name: s.name, 'vm-state-size': s.vmStateSize, 'date-sec': s.dateSec, 'date-nsec': s.dateNsec,
    'vm-clock-sec': s.vmClockNsec / 1000000000n, 'vm-clock-nsec': s.vmClockNsec % 1000000000n,
    icount: s.icount,
  };
}

/** The object `info --output json` prints, with qemu's key names. */
export function infoJson(info: ImageInfo): JsonValue {
  return {
    'virtual-size': info.virtualSize,
    filename: info.filename,
    'cluster-size': info.clusterSize,
    format: info.format,
    'actual-size': info.actualSize,
    'dirty-flag': info.dirty,
    'backing-filename': info.backingFilename,
    'full-backing-filename': info.fullBackingFilename,
    'backing-filename-format': info.backingFormat,
    snapshots: info.snapshots.length > 0 ? info.snapshots.map(snapshotJson) : undefined,
    'format-specific': info.formatSpecific ? { type: info.format, data: info.formatSpecific } : undefined,
  };
}

const pad2 = (n: number | bigint): string => String(n).padStart(2, '0');

/** One row of qemu's snapshot table: id, tag, VM state size, local date, VM clock, icount. */
export function snapshotRow(s: SnapshotInfo): string {
  const d = new Date(s.dateSec * 1000);
  const date = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  const ms = s.vmClockNsec / 1000000n;
  const clock = `${pad2(ms / 3600000n)}:${pad2((ms / 60000n) % 60n)}:${pad2((ms / 1000n) % 60n)}.${String(ms % 1000n).padStart(3, '0')}`;
  const icount = s.icount === undefined || s.icount === 0xffffffffffffffffn ? '' : String(s.icount);
  return `${s.id.padEnd(9)} ${s.name.padEnd(16)} ${humanSize(s.vmStateSize).padStart(8)}${date.padStart(20)}${clock.padStart(13)}${icount.padStart(11)}`;
}

export const SNAPSHOT_HEADER = `${'ID'.padEnd(10)}${'TAG'.padEnd(17)}${'VM SIZE'.padStart(8)}${'DATE'.padStart(20)}${'VM CLOCK'.padStart(13)}${'ICOUNT'.padStart(11)}`;

/** `info`'s human text for one image. */
export function infoHuman(info: ImageInfo): string {
  const lines = [
    `image: ${info.filename}`,
    `file format: ${info.format}`,
    `virtual size: ${humanSize(info.virtualSize)} (${info.virtualSize} bytes)`,
    `disk size: ${humanSize(info.actualSize)}`,
  ];
  if (info.clusterSize !== undefined) lines.push(`cluster_size: ${info.clusterSize}`);
  if (info.backingFilename !== undefined) {
    const full = info.fullBackingFilename ?? info.backingFilename;
    lines.push(`backing file: ${info.backingFilename}${full !== info.backingFilename ? ` (actual path: ${full})` : ''}`);
    if (info.backingFormat !== undefined) lines.push(`backing file format: ${info.backingFormat}`);
  }
  if (info.snapshots.length > 0) {
    lines.push('Snapshot list:', SNAPSHOT_HEADER, ...info.snapshots.map(snapshotRow));
  }
  if (info.formatSpecific) {
    lines.push('Format specific information:');
    for (const key of qdictOrder(Object.keys(info.formatSpecific))) {
      lines.push(`    ${key.replace(/-/g, ' ')}: ${String(info.formatSpecific[key])}`);
    }
  }
  return lines.join('\n') + '\n';
}
