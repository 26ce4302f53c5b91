// Consistency check and repair, like `qemu-img check`: every cluster the metadata reaches is
// counted, and the counts are compared with the stored refcounts. A stored refcount lower
// than the real one is a corruption (the cluster could be handed out twice); a higher one
// is a leak (space lost, data safe). Repair fixes leaks in place, or, for corruptions,
// writes a whole new refcount structure from the computed counts.
import { BlockError } from '../errors.js';
import { HostFile } from '../host-file.js';
import { HEADER_FIELD, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, INCOMPAT_EXTL2, parseHeader, type Qcow2Header } from './header.js';
import { decodeL2, offsetOf, readU64Parts, writeU64Parts, COPIED_HI } from './entries.js';
import { Refcounts, REFTABLE_OFFSET_MASK } from './refcounts.js';
import { readSnapshotTableExtent } from './snapshots.js';
import type { Qcow2Image } from './image.js';

export interface CheckResult {
  filename: string;
  format: 'qcow2';
  /** Refcounts too low, bad pointers, wrong COPIED flags (left after repair). */
  corruptions: number;
  /** Refcounts too high (left after repair). */
  leaks: number;
  /** Problems that stopped the check from seeing everything. */
  checkErrors: number;
  corruptionsFixed: number;
  leaksFixed: number;
  imageEndOffset: bigint;
  allocatedClusters: number;
  totalClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
  /** One line per problem found. */
  messages: string[];
}

export type RepairMode = 'leaks' | 'all';

interface Walk {
  refs: Uint32Array;
  corruptions: number;
  checkErrors: number;
  messages: string[];
  allocated: number;
  fragmented: number;
  compressed: number;
  /** Active L1 and L2 entries, whose COPIED flags are judged once the refcounts are known: file offset, L1 index for L1 entries. */
  copiedFlagEntries: Array<{ at: number; l1Index?: number }>;
  /** Messages to print after the refcount comparison's (qemu-img's order). */
  pendingNotes: string[];
  /** Clusters of the refcount table and blocks (a rebuild replaces them). */
  refcountStructures: Array<[number, number]>;
}

const MAX_MESSAGES = 1000;

function note(w: Walk, msg: string): void {
  if (w.messages.length < MAX_MESSAGES) w.messages.push(msg);
}

async function walk(file: HostFile, h: Qcow2Header, fileLength: number): Promise<Walk> {
  const cs = 1 << h.clusterBits;
  // One cluster of slack past the end of the file: a cluster allocated but not yet
  // (fully) written sits there, and is referenced legitimately.
  const nClusters = Math.ceil(fileLength / cs) + 1;
  const w: Walk = { refs: new Uint32Array(nClusters), corruptions: 0, checkErrors: 0, messages: [], allocated: 0, fragmented: 0, compressed: 0, copiedFlagEntries: [], pendingNotes: [], refcountStructures: [] };
  const extended = (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n;
  const entryBytes = extended ? 16 : 8;

  const ref = (offset: number, length: number, what: string): boolean => {
    if (length <= 0) return true;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + length - 1) / cs);
    if (last >= nClusters) {
      w.corruptions++;
      note(w, `ERROR ${what} at offset 0x${offset.toString(16)} lies past the end of the file`);
      return false;
    }
    for (let c = first; c <= last; c++) w.refs[c]++;
    return true;
  };

  ref(0, cs, 'header');
  ref(Number(h.refcountTableOffset), h.refcountTableClusters * cs, 'refcount table');
  w.refcountStructures.push([Number(h.refcountTableOffset), h.refcountTableClusters * cs]);

  // Refcount blocks.
  const reftable = new Uint8Array(h.refcountTableClusters * cs);
  await file.read(h.refcountTableOffset, reftable);
  const rv = new DataView(reftable.buffer);
  for (let i = 0; i < reftable.length / 8; i++) {
    const off = Number(rv.getBigUint64(i * 8) & REFTABLE_OFFSET_MASK);
    if (off === 0) continue;
    if (off % cs !== 0) {
      w.corruptions++;
      note(w, `ERROR refcount block ${i} is not cluster-aligned (0x${off.toString(16)})`);
      continue;
    }
    if (ref(off, cs, `refcount block ${i}`)) w.refcountStructures.push([off, cs]);
  }

  const l1s: Array<{ offset: number; size: number; active: boolean; name: string }> = [
    { offset: Number(h.l1TableOffset), size: h.l1Size, active: true, name: 'active L1 table' },
  ];
  if (h.nbSnapshots > 0) {
    try {
      const { snapshots: snaps, bytes } = await readSnapshotTableExtent(file, file.filename, h.snapshotsOffset, h.nbSnapshots, h.clusterBits, BigInt(fileLength));
      for (const s of snaps) l1s.push({ offset: Number(s.l1TableOffset), size: s.l1Size, active: false, name: `snapshot '${s.name}' L1 table` });
      ref(Number(h.snapshotsOffset), bytes, 'snapshot table');
    } catch (err) {
      w.checkErrors++;
      note(w, `ERROR reading the snapshot table: ${(err as Error).message}`);
    }
  }

  for (const l1info of l1s) {
    if (!ref(l1info.offset, l1info.size * 8, l1info.name)) continue;
    const l1 = new Uint8Array(l1info.size * 8);
    await file.read(l1info.offset, l1);
    for (let i = 0; i < l1info.size; i++) {
      const [hi, lo] = readU64Parts(l1, i * 8);
      const l2off = offsetOf(hi, lo);
      if (l2off === 0) continue;
      if (l2off % cs !== 0) {
        w.corruptions++;
        note(w, `ERROR ${l1info.name} entry ${i}: L2 table offset 0x${l2off.toString(16)} is not cluster-aligned`);
        continue;
      }
      if (!ref(l2off, cs, `L2 table (${l1info.name} entry ${i})`)) continue;
      if (l1info.active) w.copiedFlagEntries.push({ at: l1info.offset + i * 8, l1Index: i });
      const table = new Uint8Array(cs);
      await file.read(l2off, table);
      // Fragmentation is judged within each L2 table; compressed clusters always count
      // as fragmented (adjacent ones still share sectors), as qemu-img reports it.
      let nextContiguous = 0;
      for (let j = 0; j < cs / entryBytes; j++) {
        const e = decodeL2(table, j, h.clusterBits, extended);
        if (e.kind === 'compressed') {
          if (l1info.active) {
            w.allocated++;
            w.compressed++;
            w.fragmented++;
          }
          ref(e.compressedOffset, e.compressedLength, `compressed cluster (L2 at 0x${l2off.toString(16)} entry ${j})`);
          continue;
        }
        if (e.offset === 0) continue;
        if (e.offset % cs !== 0) {
          w.corruptions++;
          note(w, `ERROR L2 entry at 0x${(l2off + j * entryBytes).toString(16)}: data offset 0x${e.offset.toString(16)} is not cluster-aligned`);
          continue;
        }
        if (l1info.active) {
          w.allocated++;
          if (nextContiguous !== 0 && e.offset !== nextContiguous) w.fragmented++;
          nextContiguous = e.offset + cs;
          w.copiedFlagEntries.push({ at: l2off + j * entryBytes });
        }
        ref(e.offset, cs, `data cluster (L2 at 0x${l2off.toString(16)} entry ${j})`);
      }
    }
  }
  return w;
}

/**
 * The refcounts as stored. Refcount table entries that cannot be right (unaligned, past the
 * end of the file, on top of the table) are taken as absent: their clusters then count as
 * refcount 0, which the comparison reports, and a full repair rebuilds.
 */
async function storedRefcounts(file: HostFile, h: Qcow2Header, fileLength: number): Promise<Refcounts> {
  const cs = 1 << h.clusterBits;
  const raw = new Uint8Array(h.refcountTableClusters * cs);
  await file.read(h.refcountTableOffset, raw);
  const view = new DataView(raw.buffer);
  const tableStart = Number(h.refcountTableOffset);
  const tableEnd = tableStart + raw.length;
  const table: number[] = [];
  for (let i = 0; i < raw.length / 8; i++) {
    const off = Number(view.getBigUint64(i * 8) & REFTABLE_OFFSET_MASK);
    const bad = off % cs !== 0 || off + cs > Math.ceil(fileLength / cs) * cs || (off < tableEnd && tableStart < off + cs);
    table.push(off !== 0 && bad ? 0 : off);
  }
  return new Refcounts(file, h.clusterBits, h.refcountOrder, table, tableStart, h.refcountTableClusters, fileLength);
}

/** Write a complete new refcount structure describing `refs`, after the end of the file. */
async function rebuildRefcounts(file: HostFile, h: Qcow2Header, w: Walk): Promise<void> {
  const cs = 1 << h.clusterBits;
  // The old refcount structures are replaced, so they no longer count.
  const refs = w.refs.slice();
  for (const [off, len] of w.refcountStructures) {
    for (let c = Math.floor(off / cs); c < Math.ceil((off + len) / cs); c++) if (refs[c] > 0) refs[c]--;
  }
  const perBlock = (cs * 8) / (1 << h.refcountOrder);
  const start = refs.length;
  let blocks = 0;
  let tableClusters = 1;
  for (let iter = 0; iter < 64; iter++) {
    const total = start + tableClusters + blocks;
    const needBlocks = Math.ceil(total / perBlock);
    const needTable = Math.ceil((needBlocks * 8) / cs);
    if (needBlocks === blocks && needTable === tableClusters) break;
    blocks = needBlocks;
    tableClusters = needTable;
  }
  const total = start + tableClusters + blocks;
  const all = new Uint32Array(total);
  all.set(refs);
  for (let c = start; c < total; c++) all[c] = 1;
  const tableOffset = start * cs;
  const blocksOffset = (start + tableClusters) * cs;
  const table = new Uint8Array(tableClusters * cs);
  const tv = new DataView(table.buffer);
  for (let b = 0; b < blocks; b++) {
    const block = new Uint8Array(cs);
    for (let i = 0; i < perBlock && b * perBlock + i < total; i++) {
      const v = all[b * perBlock + i];
      if (v !== 0) Refcounts.setEntry(block, i, h.refcountOrder, BigInt(v));
    }
    await file.write(blocksOffset + b * cs, block);
    tv.setBigUint64(b * 8, BigInt(blocksOffset + b * cs));
  }
  await file.write(tableOffset, table);
  await file.flush();
  const hdr = new Uint8Array(12);
  const hv = new DataView(hdr.buffer);
  hv.setBigUint64(0, BigInt(tableOffset));
  hv.setUint32(8, tableClusters);
  await file.write(HEADER_FIELD.refcountTableOffset, hdr);
  await file.flush();
  h.refcountTableOffset = BigInt(tableOffset);
  h.refcountTableClusters = tableClusters;
}

async function checkFile(file: HostFile, h: Qcow2Header, repair: RepairMode | undefined): Promise<CheckResult> {
  const cs = 1 << h.clusterBits;
  let fileLength = Number(await file.length());
  let w = await walk(file, h, fileLength);
  let stored = await storedRefcounts(file, h, fileLength);
  const result: CheckResult = {
    filename: file.filename, format: 'qcow2', corruptions: 0, leaks: 0, checkErrors: w.checkErrors,
    corruptionsFixed: 0, leaksFixed: 0, imageEndOffset: 0n, allocatedClusters: w.allocated,
    totalClusters: Number((h.size + BigInt(cs) - 1n) / BigInt(cs)), fragmentedClusters: w.fragmented,
    compressedClusters: w.compressed, messages: w.messages,
  };

  const compare = async (): Promise<{ low: number[]; high: number[]; highest: number }> => {
    const low: number[] = [];
    const high: number[] = [];
    let highest = 0;
    const visit = async (c: number): Promise<boolean> => {
      let s = 0n;
      try {
        s = await stored.get(c);
      } catch (err) {
        w.checkErrors++;
        note(w, `ERROR cannot read refcount of cluster ${c}: ${(err as Error).message}`);
        return false;
      }
      const real = BigInt(c < w.refs.length ? w.refs[c] : 0);
      if (s !== 0n || real !== 0n) highest = c;
      if (s < real) low.push(c);
      else if (s > real) high.push(c);
      return true;
    };
    for (let c = 0; c < w.refs.length; c++) if (!(await visit(c))) break;
    // Refcounts stored for clusters past the end of the file (a crash between allocating
    // and writing leaves those) are leaks too.
    for (let b = 0; b < stored.table.length; b++) {
      if (stored.table[b] === 0 || (b + 1) * stored.perBlock <= w.refs.length) continue;
      if (stored.table[b] + cs > fileLength) continue;
      for (const c of await stored.nonZeroInBlock(b, w.refs.length)) if (!(await visit(c))) break;
    }
    return { low, high, highest };
  };

  let { low, high, highest } = await compare();
  let flagErrors = await wrongCopiedFlags(file, w, stored, cs);

  if (repair && !file.readOnly) {
    if (repair === 'all' && (low.length > 0 || w.corruptions > 0)) {
      if (low.length > 0 || high.length > 0) {
        await rebuildRefcounts(file, h, w);
        result.corruptionsFixed += low.length;
        result.leaksFixed += high.length;
      }
    } else if (high.length > 0) {
      for (const c of high) await stored.set(c, BigInt(c < w.refs.length ? w.refs[c] : 0));
      result.leaksFixed += high.length;
    }
    if (repair === 'all') {
      // The flags follow the refcounts as they now stand (rebuilt, leaks fixed, or as they
      // were), as qemu-img does: a leak fixed from 2 to 1 makes a shared entry exclusive.
      const repaired = await storedRefcounts(file, h, Number(await file.length()));
      for (const f of w.copiedFlagEntries) {
        const { raw, hi, lo, copied, wrong } = await judgeCopiedFlag(file, f.at, repaired, cs, 'throw');
        if (wrong) {
          writeU64Parts(raw, 0, copied ? (hi | COPIED_HI) >>> 0 : (hi & ~COPIED_HI) >>> 0, lo);
          await file.write(f.at, raw);
          result.corruptionsFixed++;
        }
      }
    }
    await file.flush();
    // Re-run on the repaired image: the result reports what is left.
    fileLength = Number(await file.length());
    w = await walk(file, h, fileLength);
    stored = await storedRefcounts(file, h, fileLength);
    ({ low, high, highest } = await compare());
    flagErrors = await wrongCopiedFlags(file, w, stored, cs);
  }
  for (const c of low) note(w, `ERROR cluster ${c} refcount=${await stored.get(c)} reference=${c < w.refs.length ? w.refs[c] : 0}`);
  for (const c of high) note(w, `Leaked cluster ${c} refcount=${await stored.get(c)} reference=${c < w.refs.length ? w.refs[c] : 0}`);
  for (const m of w.pendingNotes) note(w, m);
  // Counted last: the refcount comparison adds the refcounts it could not read.
  result.checkErrors = w.checkErrors;
  result.corruptions = w.corruptions + low.length + flagErrors;
  result.leaks = high.length;
  result.imageEndOffset = BigInt((highest + 1) * cs);
  result.messages = w.messages;
  return result;
}

/** An active table entry as it now is in the file, and what its COPIED flag should be. */
interface CopiedJudgement {
  /** The entry's 8 bytes (the first word of an extended L2 entry), and as words. */
  raw: Uint8Array;
  hi: number;
  lo: number;
  /** The stored refcount of the cluster it points to. */
  refcount: bigint;
  /** Whether the flag should be set: the refcount is 1 (qemu-img's rule). */
  copied: boolean;
  /** The flag in the entry is not what it should be. */
  wrong: boolean;
}

/**
 * Judge the COPIED flag of the active entry at file offset `at` against `refcounts`; the
 * entry is read afresh (a repair may have rewritten it). When the refcount cannot be read,
 * `unreadable` decides: 'skip' gives undefined (the check: the refcount comparison has
 * reported that block), 'throw' rethrows (a repair stops rather than set a flag it cannot
 * judge).
 */
async function judgeCopiedFlag(file: HostFile, at: number, refcounts: Refcounts, cs: number, unreadable: 'throw'): Promise<CopiedJudgement>;
async function judgeCopiedFlag(file: HostFile, at: number, refcounts: Refcounts, cs: number, unreadable: 'skip'): Promise<CopiedJudgement | undefined>;
async function judgeCopiedFlag(file: HostFile, at: number, refcounts: Refcounts, cs: number, unreadable: 'skip' | 'throw'): Promise<CopiedJudgement | undefined> {
  const raw = await readAt(file, at, 8);
  const [hi, lo] = readU64Parts(raw, 0);
  let refcount: bigint;
  try {
    refcount = await refcounts.get(offsetOf(hi, lo) / cs);
  } catch (err) {
    if (unreadable === 'throw') throw err;
    return undefined;
  }
  const copied = refcount === 1n;
  return { raw, hi, lo, refcount, copied, wrong: copied !== ((hi & COPIED_HI) !== 0) };
}

/**
 * Active table entries whose COPIED flag disagrees with "the stored refcount is 1", each one
 * a corruption, counted and reported like qemu-img (which judges the flag by the stored
 * refcount: a used cluster with refcount 0 is then two errors, the count and the flag).
 * The messages go out after the refcount comparison's.
 */
async function wrongCopiedFlags(file: HostFile, w: Walk, stored: Refcounts, cs: number): Promise<number> {
  let errors = 0;
  for (const f of w.copiedFlagEntries) {
    const judged = await judgeCopiedFlag(file, f.at, stored, cs, 'skip');
    if (!judged?.wrong) continue;
    const { hi, lo, refcount } = judged;
    errors++;
    const entry = ((BigInt(hi) << 32n) | BigInt(lo)).toString(16);
    w.pendingNotes.push(f.l1Index === undefined
      ? `ERROR OFLAG_COPIED data cluster: l2_entry=${entry} refcount=${refcount}`
      : `ERROR OFLAG_COPIED L2 cluster: l1_index=${f.l1Index} l1_entry=${entry} refcount=${refcount}`);
  }
  return errors;
}

async function readAt(file: HostFile, at: number, n: number): Promise<Uint8Array> {
  const b = new Uint8Array(n);
  await file.read(at, b);
  return b;
}

/**
 * Check a qcow2 image's consistency like `qemu-img check`; with `repair`, fix leaks
 * ('leaks') or everything that can be fixed ('all'). The result counts what remains.
 */
export async function checkQcow2(filename: string, options: { repair?: RepairMode } = {}): Promise<CheckResult> {
  const file = await HostFile.open(filename, { readOnly: !options.repair });
  try {
    const fileLength = await file.length();
    const first = new Uint8Array(Number(fileLength < 2097152n ? fileLength : 2097152n));
    await file.read(0, first);
    const h = parseHeader(filename, first, fileLength);
    const result = await checkFile(file, h, options.repair);
    if (options.repair === 'all' && result.corruptions === 0 && h.version === 3 && h.incompatibleFeatures & (INCOMPAT_DIRTY | INCOMPAT_CORRUPT)) {
      const buf = new Uint8Array(8);
      new DataView(buf.buffer).setBigUint64(0, h.incompatibleFeatures & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT));
      await file.write(HEADER_FIELD.incompatibleFeatures, buf);
      await file.flush();
    }
    return result;
  } finally {
    await file.close();
  }
}

/** Rebuild the refcounts of an image open read-write (a dirty image after a crash with lazy refcounts). */
export async function repairOpenImage(image: Qcow2Image): Promise<void> {
  const result = await checkFile(image.file, image.header, 'all');
  if (result.corruptions > 0) {
    throw new BlockError(image.filename, `refcount repair left ${result.corruptions} corruption(s): ${result.messages[0] ?? ''}`);
  }
  const h = image.header;
  image.refcounts = await Refcounts.load(image.file, h.clusterBits, h.refcountOrder, Number(h.refcountTableOffset), h.refcountTableClusters, Number(await image.file.length()));
  const l1 = new Uint8Array(h.l1Size * 8);
  await image.file.read(h.l1TableOffset, l1);
  image.setL1(l1, h.l1TableOffset, h.l1Size);
  image.dropCaches();
}
