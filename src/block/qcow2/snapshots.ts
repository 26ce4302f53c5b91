// Internal snapshots: the snapshot table (one entry per snapshot, each with its own copy
// of the L1 table) and the operations on it. A snapshot shares clusters with the active
// image; the refcount of a cluster counts the L1 tables (active and snapshots) that reach
// it, and the COPIED flag marks entries whose cluster has refcount 1 (safe to write in place).
import { BlockError } from '../errors.js';
import type { HostFile } from '../host-file.js';
import { HEADER_FIELD, INCOMPAT_DIRTY, MAX_SNAPSHOTS } from './header.js';
import { decodeL2, makeEntry, offsetOf, readU64Parts, writeU64Parts, COPIED_HI } from './entries.js';
import type { Qcow2Image } from './image.js';
import type { Refcounts } from './refcounts.js';

const MAX_SNAPSHOT_TABLE_BYTES = 64 * 1024 * 1024;
const MAX_EXTRA_DATA = 1024;

export interface Qcow2Snapshot {
  id: string;
  name: string;
  l1TableOffset: bigint;
  l1Size: number;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: bigint;
  vmStateSize: bigint;
  /** Virtual disk size when the snapshot was taken (undefined in old v2 entries). */
  diskSize?: bigint;
  icount?: bigint;
  /** Extra data beyond the fields above, kept as it was. */
  extraTail: Uint8Array;
}

export async function readSnapshotTable(file: HostFile, filename: string, offset: bigint, count: number, clusterBits: number, fileLength: bigint): Promise<Qcow2Snapshot[]> {
  return (await readSnapshotTableExtent(file, filename, offset, count, clusterBits, fileLength)).snapshots;
}

/** The snapshot table and the number of bytes it occupies on disk (as written, whoever wrote it). */
export async function readSnapshotTableExtent(file: HostFile, filename: string, offset: bigint, count: number, clusterBits: number, fileLength: bigint): Promise<{ snapshots: Qcow2Snapshot[]; bytes: number }> {
  if (count === 0) return { snapshots: [], bytes: 0 };
  if (count > MAX_SNAPSHOTS) throw new BlockError(filename, `${count} snapshots is more than the ${MAX_SNAPSHOTS} supported`);
  const out: Qcow2Snapshot[] = [];
  let pos = Number(offset);
  const end = Number(fileLength);
  for (let i = 0; i < count; i++) {
    if (pos - Number(offset) > MAX_SNAPSHOT_TABLE_BYTES) throw new BlockError(filename, 'snapshot table is too large');
    if (pos + 40 > end) throw new BlockError(filename, `snapshot table entry ${i} lies past the end of the file`);
    const fixed = new Uint8Array(40);
    await file.read(pos, fixed);
    const v = new DataView(fixed.buffer);
    const idLen = v.getUint16(12);
    const nameLen = v.getUint16(14);
    const extraLen = v.getUint32(36);
    if (extraLen > MAX_EXTRA_DATA) throw new BlockError(filename, `snapshot table entry ${i} has ${extraLen} bytes of extra data (limit ${MAX_EXTRA_DATA})`);
    const varLen = extraLen + idLen + nameLen;
    if (pos + 40 + varLen > end) throw new BlockError(filename, `snapshot table entry ${i} lies past the end of the file`);
    const rest = new Uint8Array(varLen);
    await file.read(pos + 40, rest);
    const extra = rest.subarray(0, extraLen);
    const ev = new DataView(extra.buffer, extra.byteOffset, extra.byteLength);
    const l1TableOffset = v.getBigUint64(0);
    const l1Size = v.getUint32(8);
    if (l1TableOffset % BigInt(1 << clusterBits) !== 0n) throw new BlockError(filename, `snapshot ${i} L1 table offset 0x${l1TableOffset.toString(16)} is not cluster-aligned`);
    if (l1Size * 8 > 32 * 1024 * 1024) throw new BlockError(filename, `snapshot ${i} L1 table of ${l1Size} entries is too large`);
    if (l1TableOffset + BigInt(l1Size) * 8n > fileLength) throw new BlockError(filename, `snapshot ${i} L1 table lies past the end of the file`);
    const sn: Qcow2Snapshot = {
      l1TableOffset,
      l1Size,
      dateSec: v.getUint32(16),
      dateNsec: v.getUint32(20),
      vmClockNsec: v.getBigUint64(24),
      vmStateSize: BigInt(v.getUint32(32)),
      id: new TextDecoder().decode(rest.subarray(extraLen, extraLen + idLen)),
      name: new TextDecoder().decode(rest.subarray(extraLen + idLen, varLen)),
      extraTail: new Uint8Array(0),
    };
    if (extraLen >= 8) sn.vmStateSize = ev.getBigUint64(0);
    if (extraLen >= 16) sn.diskSize = ev.getBigUint64(8);
    if (extraLen >= 24) sn.icount = ev.getBigUint64(16);
    if (extraLen > 24) sn.extraTail = extra.slice(24);
    out.push(sn);
    pos += 40 + varLen;
    pos = Math.ceil(pos / 8) * 8;
  }
  return { snapshots: out, bytes: pos - Number(offset) };
}

export function serializeSnapshotTable(snapshots: Qcow2Snapshot[]): Uint8Array {
  const parts: Uint8Array[] = [];
  let total = 0;
  for (const sn of snapshots) {
    const id = new TextEncoder().encode(sn.id);
    const name = new TextEncoder().encode(sn.name);
    const extraLen = sn.icount !== undefined || sn.extraTail.length > 0 ? 24 + sn.extraTail.length : 16;
    const len = Math.ceil((40 + extraLen + id.length + name.length) / 8) * 8;
    const buf = new Uint8Array(len);
    const v = new DataView(buf.buffer);
    v.setBigUint64(0, sn.l1TableOffset);
    v.setUint32(8, sn.l1Size);
    v.setUint16(12, id.length);
    v.setUint16(14, name.length);
    v.setUint32(16, sn.dateSec);
    v.setUint32(20, sn.dateNsec);
    v.setBigUint64(24, sn.vmClockNsec);
    v.setUint32(32, sn.vmStateSize > 0xffffffffn ? 0 : Number(sn.vmStateSize));
    v.setUint32(36, extraLen);
    v.setBigUint64(40, sn.vmStateSize);
    v.setBigUint64(48, sn.diskSize ?? 0n);
    if (extraLen >= 24) v.setBigUint64(56, sn.icount ?? 0xffffffffffffffffn);
    buf.set(sn.extraTail, 64);
    buf.set(id, 40 + extraLen);
    buf.set(name, 40 + extraLen + id.length);
    parts.push(buf);
    total += len;
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * Add `addend` to the refcount of every cluster reachable from an L1 table (its L2 tables
 * and their data clusters). With addend 0 nothing changes but the COPIED flags are
 * recomputed. When `fixFlags` is set, the COPIED flags of the tables are rewritten to match
 * the new refcounts.
 */
export async function updateTreeRefcounts(file: HostFile, refcounts: Refcounts, l1: Uint8Array, l1Offset: number | undefined, clusterBits: number, extended: boolean, addend: bigint, fixFlags: boolean): Promise<void> {
  const cs = 1 << clusterBits;
  const entryBytes = extended ? 16 : 8;
  for (let i = 0; i < l1.length / 8; i++) {
    const [l1hi, l1lo] = readU64Parts(l1, i * 8);
    const l2off = offsetOf(l1hi, l1lo);
    if (l2off === 0) continue;
    const table = new Uint8Array(cs);
    await file.read(l2off, table);
    let changed = false;
    for (let j = 0; j < cs / entryBytes; j++) {
      const e = decodeL2(table, j, clusterBits, extended);
      if (e.kind === 'compressed') {
        if (addend !== 0n) await refcounts.addRange(e.compressedOffset, e.compressedLength, addend);
      } else if (e.offset !== 0) {
        const rc = addend !== 0n ? await refcounts.add(e.offset / cs, addend) : await refcounts.get(e.offset / cs);
        if (fixFlags && (rc === 1n) !== e.copied) {
          const [hi, lo] = readU64Parts(table, j * entryBytes);
          writeU64Parts(table, j * entryBytes, rc === 1n ? (hi | COPIED_HI) >>> 0 : (hi & ~COPIED_HI) >>> 0, lo);
          changed = true;
        }
      }
    }
    if (changed) await file.write(l2off, table);
    const rc = addend !== 0n ? await refcounts.add(l2off / cs, addend) : await refcounts.get(l2off / cs);
    if (fixFlags && (rc === 1n) !== ((l1hi & COPIED_HI) !== 0)) {
      const [hi, lo] = makeEntry(l2off, rc === 1n);
      writeU64Parts(l1, i * 8, hi, lo);
      if (l1Offset !== undefined) await file.write(l1Offset + i * 8, l1.slice(i * 8, i * 8 + 8));
    }
  }
}

/**
 * Snapshot operations change refcounts and COPIED flags of many clusters, and no order of
 * those writes is consistent at every step (a cluster's refcount and its entry's flag live
 * in different clusters). So the image is marked dirty for the duration (v3): after a
 * crash in the middle, the next read-write open rebuilds refcounts and flags.
 */
async function dirtyWhile<T>(image: Qcow2Image, fn: () => Promise<T>): Promise<T> {
  // Start from exact refcounts: deferred releases applied, reserved clusters returned.
  await image.settleMetadata();
  // An image open with lazy refcounts is dirty already and must stay so until close.
  const v3 = image.header.version === 3 && (image.header.incompatibleFeatures & INCOMPAT_DIRTY) === 0n;
  if (v3) await image.setIncompatibleFeatures(image.header.incompatibleFeatures | INCOMPAT_DIRTY);
  const result = await fn();
  await image.settleMetadata();
  if (v3) {
    await image.file.flush();
    await image.setIncompatibleFeatures(image.header.incompatibleFeatures & ~INCOMPAT_DIRTY);
  }
  return result;
}

async function loadSnapshots(image: Qcow2Image): Promise<Qcow2Snapshot[]> {
  const h = image.header;
  return readSnapshotTable(image.file, image.filename, h.snapshotsOffset, h.nbSnapshots, h.clusterBits, await image.file.length());
}

/** Write a new snapshot table, switch the header to it, free the old one. */
async function replaceSnapshotTable(image: Qcow2Image, snapshots: Qcow2Snapshot[]): Promise<void> {
  const h = image.header;
  const cs = image.clusterSize;
  const oldOffset = Number(h.snapshotsOffset);
  const oldBytes = (await readSnapshotTableExtent(image.file, image.filename, h.snapshotsOffset, h.nbSnapshots, h.clusterBits, await image.file.length())).bytes;
  const table = serializeSnapshotTable(snapshots);
  let offset = 0;
  if (table.length > 0) {
    offset = await image.refcounts.allocate(Math.ceil(table.length / cs));
    await image.file.write(offset, table);
    await image.file.flush();
  }
  const hdr = new Uint8Array(12);
  const v = new DataView(hdr.buffer);
  v.setUint32(0, snapshots.length);
  v.setBigUint64(4, BigInt(offset));
  await image.file.write(HEADER_FIELD.nbSnapshots, hdr);
  await image.file.flush();
  h.nbSnapshots = snapshots.length;
  h.snapshotsOffset = BigInt(offset);
  if (oldOffset !== 0 && oldBytes > 0) await image.refcounts.free(oldOffset, Math.ceil(oldBytes / cs));
}

function find(image: Qcow2Image, snapshots: Qcow2Snapshot[], idOrName: string): number {
  let i = snapshots.findIndex((s) => s.id === idOrName);
  if (i < 0) i = snapshots.findIndex((s) => s.name === idOrName);
  if (i < 0) throw new BlockError(image.filename, `no snapshot with id or name '${idOrName}'`);
  return i;
}

export async function listSnapshots(image: Qcow2Image): Promise<Qcow2Snapshot[]> {
  return loadSnapshots(image);
}

export async function createSnapshot(image: Qcow2Image, name: string, options: { vmClockNsec?: bigint; date?: Date } = {}): Promise<Qcow2Snapshot> {
  if (image.readOnly) throw new BlockError(image.filename, 'snapshot create refused: image is open read-only');
  if (name.length === 0 || new TextEncoder().encode(name).length > 65535) throw new BlockError(image.filename, 'snapshot name must be 1..65535 bytes');
  if (image.refcounts.refcountBits < 2) throw new BlockError(image.filename, 'snapshots need refcounts of at least 2 bits (this image has 1-bit refcounts)');
  return image.exclusive(() => dirtyWhile(image, async () => {
    const snapshots = await loadSnapshots(image);
    if (snapshots.some((s) => s.name === name)) throw new BlockError(image.filename, `a snapshot named '${name}' already exists`);
    if (snapshots.length >= MAX_SNAPSHOTS) throw new BlockError(image.filename, 'too many snapshots');
    const cs = image.clusterSize;
    const h = image.header;
    await image.file.flush();
    // The snapshot's own copy of the L1 table.
    const l1Copy = image.l1.slice(0, h.l1Size * 8);
    let l1Offset = 0;
    if (l1Copy.length > 0) {
      l1Offset = await image.refcounts.allocate(Math.ceil(l1Copy.length / cs));
      await image.file.write(l1Offset, l1Copy);
    }
    // Every cluster the active image reaches gains a reference; active entries lose COPIED.
    await updateTreeRefcounts(image.file, image.refcounts, image.l1, Number(h.l1TableOffset), h.clusterBits, image.extendedL2, 1n, true);
    image.dropCaches();
    const now = options.date ?? new Date();
    const maxId = snapshots.reduce((m, s) => Math.max(m, Number.parseInt(s.id, 10) || 0), 0);
    const sn: Qcow2Snapshot = {
      id: String(maxId + 1),
      name,
      l1TableOffset: BigInt(l1Offset),
      l1Size: h.l1Size,
      dateSec: Math.floor(now.getTime() / 1000),
      dateNsec: (now.getTime() % 1000) * 1e6,
      vmClockNsec: options.vmClockNsec ?? 0n,
      vmStateSize: 0n,
      diskSize: h.size,
      extraTail: new Uint8Array(0),
    };
    await replaceSnapshotTable(image, [...snapshots, sn]);
    await image.file.flush();
    return sn;
  }));
}

export async function deleteSnapshot(image: Qcow2Image, idOrName: string): Promise<void> {
  if (image.readOnly) throw new BlockError(image.filename, 'snapshot delete refused: image is open read-only');
  await image.exclusive(() => dirtyWhile(image, async () => {
    const snapshots = await loadSnapshots(image);
    const i = find(image, snapshots, idOrName);
    const sn = snapshots[i];
    const h = image.header;
    const cs = image.clusterSize;
    // Unlink first, then release: a crash in between only leaks clusters.
    await replaceSnapshotTable(image, snapshots.filter((_, k) => k !== i));
    const l1 = new Uint8Array(sn.l1Size * 8);
    await image.file.read(sn.l1TableOffset, l1);
    await updateTreeRefcounts(image.file, image.refcounts, l1, undefined, h.clusterBits, image.extendedL2, -1n, false);
    if (sn.l1Size > 0) await image.refcounts.free(Number(sn.l1TableOffset), Math.ceil((sn.l1Size * 8) / cs));
    await updateTreeRefcounts(image.file, image.refcounts, image.l1, Number(h.l1TableOffset), h.clusterBits, image.extendedL2, 0n, true);
    image.dropCaches();
    await image.file.flush();
  }));
}

/** Revert the active image to a snapshot (the snapshot stays). */
export async function applySnapshot(image: Qcow2Image, idOrName: string): Promise<void> {
  if (image.readOnly) throw new BlockError(image.filename, 'snapshot apply refused: image is open read-only');
  await image.exclusive(() => dirtyWhile(image, async () => {
    const snapshots = await loadSnapshots(image);
    const sn = snapshots[find(image, snapshots, idOrName)];
    const h = image.header;
    const cs = image.clusterSize;
    const snL1 = new Uint8Array(sn.l1Size * 8);
    await image.file.read(sn.l1TableOffset, snL1);
    // The snapshot's tree gains the active image's reference first (crash: leaks only).
    await updateTreeRefcounts(image.file, image.refcounts, snL1, undefined, h.clusterBits, image.extendedL2, 1n, false);
    const oldL1 = image.l1.slice(0, h.l1Size * 8);
    const size = Math.max(sn.l1Size, h.l1Size);
    const newL1 = new Uint8Array(size * 8);
    newL1.set(snL1);
    let l1Offset = Number(h.l1TableOffset);
    if (sn.l1Size > h.l1Size) {
      l1Offset = await image.refcounts.allocate(Math.ceil(newL1.length / cs));
    }
    await image.file.write(l1Offset, newL1);
    await image.file.flush();
    const hdr = new Uint8Array(12);
    const v = new DataView(hdr.buffer);
    v.setUint32(0, size);
    v.setBigUint64(4, BigInt(l1Offset));
    await image.file.write(HEADER_FIELD.l1Size, hdr);
    if (sn.diskSize !== undefined && sn.diskSize !== h.size) {
      const sz = new Uint8Array(8);
      new DataView(sz.buffer).setBigUint64(0, sn.diskSize);
      await image.file.write(HEADER_FIELD.size, sz);
      h.size = sn.diskSize;
    }
    await image.file.flush();
    const oldOffset = Number(h.l1TableOffset);
    const oldClusters = Math.ceil((h.l1Size * 8) / cs);
    image.setL1(newL1, BigInt(l1Offset), size);
    await updateTreeRefcounts(image.file, image.refcounts, oldL1, undefined, h.clusterBits, image.extendedL2, -1n, false);
    if (l1Offset !== oldOffset && oldClusters > 0) await image.refcounts.free(oldOffset, oldClusters);
    await updateTreeRefcounts(image.file, image.refcounts, image.l1, l1Offset, h.clusterBits, image.extendedL2, 0n, true);
    image.dropCaches();
    await image.file.flush();
  }));
}
