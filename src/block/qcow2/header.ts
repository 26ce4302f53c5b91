// The qcow2 header (cluster 0): fixed fields, header extensions and the backing file name.
// Parsing validates every field an attacker controls, so later code can trust the numbers;
// each refusal is one line naming the file and the field.
import { BlockError } from '../errors.js';

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"

export const EXT_END = 0;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTL2 = 1n << 4n;
const INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;

export const V2_HEADER_LENGTH = 72;
export const V3_HEADER_LENGTH = 104; // without the compression type byte
export const V3_HEADER_LENGTH_WITH_COMPRESSION = 112;

/** Limits that keep a hostile header from making us allocate absurd amounts of memory. */
export const MAX_L1_BYTES = 32 * 1024 * 1024;
export const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
export const MAX_SNAPSHOTS = 65536;
export const MAX_BACKING_NAME = 1023;
/** The largest virtual size QEMU accepts (2^63 - 512, i.e. what off_t can address). */
export const MAX_VIRTUAL_SIZE = (1n << 63n) - 512n;

export interface HeaderExtension {
  type: number;
  data: Uint8Array;
}

export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: bigint;
  backingFileSize: number;
  clusterBits: number;
  size: bigint;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: bigint;
  refcountTableOffset: bigint;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: bigint;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  /** 0 = zlib (deflate), 1 = zstd */
  compressionType: number;
  /** Backing file name (undefined: none). */
  backingFile?: string;
  /** From the backing format extension. */
  backingFormat?: string;
  /** Feature name table entries: "type:bit" -> name. */
  featureNames: Map<string, string>;
  /** Extensions this implementation does not interpret, kept verbatim and written back. */
  unknownExtensions: HeaderExtension[];
  /** Interpreted-but-preserved extensions (bitmaps, feature table): written back as they were. */
  preservedExtensions: HeaderExtension[];
}

export const HEADER_FIELD = {
  size: 24,
  l1Size: 36,
  l1TableOffset: 40,
  refcountTableOffset: 48,
  refcountTableClusters: 56,
  nbSnapshots: 60,
  snapshotsOffset: 64,
  incompatibleFeatures: 72,
  compatibleFeatures: 80,
  autoclearFeatures: 88,
} as const;

function fail(filename: string, reason: string): never {
  throw new BlockError(filename, reason);
}

function featureName(h: Pick<Qcow2Header, 'featureNames'>, bit: number): string {
  return h.featureNames.get(`0:${bit}`) ?? `bit ${bit}`;
}

/** Parse and validate the header found in `buf` (at least the first cluster, or the whole file if smaller). */
export function parseHeader(filename: string, buf: Uint8Array, fileLength: bigint): Qcow2Header {
  if (buf.length < V2_HEADER_LENGTH) fail(filename, `truncated qcow2 header (${buf.length} bytes, need ${V2_HEADER_LENGTH})`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (view.getUint32(0) !== QCOW2_MAGIC) fail(filename, 'not a qcow2 image (bad magic)');
  const version = view.getUint32(4);
  if (version !== 2 && version !== 3) fail(filename, `unsupported qcow2 version ${version} (supported: 2, 3)`);
  const clusterBits = view.getUint32(20);
  if (clusterBits < 9 || clusterBits > 21) fail(filename, `cluster_bits ${clusterBits} out of range 9..21`);
  const clusterSize = 1 << clusterBits;
  const h: Qcow2Header = {
    version,
    backingFileOffset: view.getBigUint64(8),
    backingFileSize: view.getUint32(16),
    clusterBits,
    size: view.getBigUint64(24),
    cryptMethod: view.getUint32(32),
    l1Size: view.getUint32(36),
    l1TableOffset: view.getBigUint64(40),
    refcountTableOffset: view.getBigUint64(48),
    refcountTableClusters: view.getUint32(56),
    nbSnapshots: view.getUint32(60),
    snapshotsOffset: view.getBigUint64(64),
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: V2_HEADER_LENGTH,
    compressionType: 0,
    featureNames: new Map(),
    unknownExtensions: [],
    preservedExtensions: [],
  };
  if (version === 3) {
    if (buf.length < V3_HEADER_LENGTH) fail(filename, `truncated qcow2 v3 header (${buf.length} bytes)`);
    h.incompatibleFeatures = view.getBigUint64(72);
    h.compatibleFeatures = view.getBigUint64(80);
    h.autoclearFeatures = view.getBigUint64(88);
    h.refcountOrder = view.getUint32(96);
    h.headerLength = view.getUint32(100);
    if (h.headerLength < V3_HEADER_LENGTH) fail(filename, `header_length ${h.headerLength} is below the v3 minimum ${V3_HEADER_LENGTH}`);
    if (h.headerLength > clusterSize || h.headerLength > buf.length) fail(filename, `header_length ${h.headerLength} exceeds the first cluster`);
    if (h.headerLength > V3_HEADER_LENGTH) h.compressionType = view.getUint8(104);
  }
  if (h.refcountOrder > 6) fail(filename, `refcount_order ${h.refcountOrder} out of range 0..6`);
  if (h.cryptMethod !== 0) fail(filename, 'encrypted qcow2 images are not supported');

  // Extensions first: the feature name table gives unknown feature bits their names.
  const extEnd = h.backingFileOffset > 0n && h.backingFileOffset < BigInt(clusterSize) ? Number(h.backingFileOffset) : clusterSize;
  let pos = h.version === 3 ? h.headerLength : V2_HEADER_LENGTH;
  while (pos + 8 <= Math.min(extEnd, buf.length)) {
    const type = view.getUint32(pos);
    const length = view.getUint32(pos + 4);
    if (type === EXT_END) break;
    if (pos + 8 + length > Math.min(extEnd, buf.length)) fail(filename, `header extension 0x${type.toString(16)} runs past the first cluster`);
    const data = buf.slice(pos + 8, pos + 8 + length);
    switch (type) {
      case EXT_BACKING_FORMAT:
        h.backingFormat = new TextDecoder().decode(data).replace(/\0+$/, '');
        break;
      case EXT_FEATURE_TABLE:
        for (let i = 0; i + 48 <= data.length; i += 48) {
          const name = new TextDecoder().decode(data.subarray(i + 2, i + 48)).replace(/\0.*$/s, '');
          h.featureNames.set(`${data[i]}:${data[i + 1]}`, name);
        }
        h.preservedExtensions.push({ type, data });
        break;
      case EXT_BITMAPS:
        h.preservedExtensions.push({ type, data });
        break;
      case EXT_CRYPTO:
        fail(filename, 'encrypted qcow2 images are not supported');
        break;
      case EXT_DATA_FILE:
        h.preservedExtensions.push({ type, data });
        break;
      default:
        h.unknownExtensions.push({ type, data });
    }
    pos += 8 + ((length + 7) & ~7);
  }

  const unknown = h.incompatibleFeatures & ~INCOMPAT_KNOWN;
  if (h.incompatibleFeatures & INCOMPAT_DATA_FILE) fail(filename, `uses an external data file (incompatible feature '${featureName(h, 2)}'), which is not supported`);
  if (unknown) {
    const bits: string[] = [];
    for (let b = 0; b < 64; b++) if (unknown & (1n << BigInt(b))) bits.push(featureName(h, b));
    fail(filename, `unsupported incompatible qcow2 feature(s): ${bits.join(', ')}`);
  }
  if (h.version === 2 && h.refcountOrder !== 4) fail(filename, 'qcow2 v2 images must use 16-bit refcounts');
  if ((h.incompatibleFeatures & INCOMPAT_COMPRESSION) === 0n && h.compressionType !== 0) {
    fail(filename, `compression type ${h.compressionType} set without the compression-type feature bit`);
  }
  if (h.compressionType > 1) fail(filename, `unknown compression type ${h.compressionType}`);
  if ((h.incompatibleFeatures & INCOMPAT_EXTL2) && clusterBits < 14) fail(filename, 'extended L2 entries need clusters of at least 16 KiB');

  // Sizes and tables.
  if (h.size > MAX_VIRTUAL_SIZE) fail(filename, `virtual size ${h.size} is too large`);
  const entryBytes = h.incompatibleFeatures & INCOMPAT_EXTL2 ? 16 : 8;
  const l2Entries = BigInt(clusterSize / entryBytes);
  const clusters = (h.size + BigInt(clusterSize) - 1n) >> BigInt(clusterBits);
  const l1Needed = (clusters + l2Entries - 1n) / l2Entries;
  if (BigInt(h.l1Size) * 8n > BigInt(MAX_L1_BYTES)) fail(filename, `L1 table of ${h.l1Size} entries is too large`);
  if (BigInt(h.l1Size) < l1Needed) fail(filename, `L1 table of ${h.l1Size} entries is too small for the virtual size ${h.size}`);
  const align = BigInt(clusterSize - 1);
  const checkTable = (name: string, offset: bigint, bytes: bigint): void => {
    if (bytes === 0n) return;
    if (offset & align) fail(filename, `${name} offset 0x${offset.toString(16)} is not cluster-aligned`);
    if (offset === 0n) fail(filename, `${name} overlaps the header at offset 0`);
    if (offset + bytes > fileLength) fail(filename, `${name} at offset 0x${offset.toString(16)} (+${bytes}) extends past the end of the file (${fileLength} bytes)`);
  };
  const reftableBytes = BigInt(h.refcountTableClusters) * BigInt(clusterSize);
  if (h.refcountTableClusters === 0) fail(filename, 'refcount table is empty');
  if (reftableBytes > BigInt(MAX_REFTABLE_BYTES)) fail(filename, `refcount table of ${h.refcountTableClusters} clusters is too large`);
  checkTable('refcount table', h.refcountTableOffset, reftableBytes);
  checkTable('L1 table', h.l1TableOffset, BigInt(h.l1Size) * 8n);
  const overlap = (a: bigint, al: bigint, b: bigint, bl: bigint): boolean => al > 0n && bl > 0n && a < b + bl && b < a + al;
  if (overlap(h.l1TableOffset, BigInt(h.l1Size) * 8n, h.refcountTableOffset, reftableBytes)) fail(filename, 'L1 table overlaps the refcount table');
  if (h.nbSnapshots > MAX_SNAPSHOTS) fail(filename, `${h.nbSnapshots} snapshots is more than the ${MAX_SNAPSHOTS} supported`);
  if (h.nbSnapshots > 0) {
    if (h.snapshotsOffset & align) fail(filename, `snapshot table offset 0x${h.snapshotsOffset.toString(16)} is not cluster-aligned`);
    if (h.snapshotsOffset === 0n) fail(filename, 'snapshot table overlaps the header at offset 0');
    if (h.snapshotsOffset + 40n * BigInt(h.nbSnapshots) > fileLength) fail(filename, 'snapshot table extends past the end of the file');
  }

  if (h.backingFileOffset !== 0n) {
    if (h.backingFileSize === 0 || h.backingFileSize > MAX_BACKING_NAME) fail(filename, `backing file name length ${h.backingFileSize} out of range 1..${MAX_BACKING_NAME}`);
    const end = h.backingFileOffset + BigInt(h.backingFileSize);
    if (end > BigInt(buf.length)) fail(filename, 'backing file name lies outside the first cluster');
    h.backingFile = new TextDecoder().decode(buf.subarray(Number(h.backingFileOffset), Number(end)));
  }
  return h;
}

/** Serialise the header, its extensions and the backing file name into one cluster. */
export function serializeHeader(filename: string, h: Qcow2Header): Uint8Array {
  const clusterSize = 1 << h.clusterBits;
  const buf = new Uint8Array(clusterSize);
  const view = new DataView(buf.buffer);
  view.setUint32(0, QCOW2_MAGIC);
  view.setUint32(4, h.version);
  view.setUint32(20, h.clusterBits);
  view.setBigUint64(24, h.size);
  view.setUint32(32, h.cryptMethod);
  view.setUint32(36, h.l1Size);
  view.setBigUint64(40, h.l1TableOffset);
  view.setBigUint64(48, h.refcountTableOffset);
  view.setUint32(56, h.refcountTableClusters);
  view.setUint32(60, h.nbSnapshots);
  view.setBigUint64(64, h.snapshotsOffset);
  let pos = V2_HEADER_LENGTH;
  if (h.version === 3) {
    const headerLength = Math.max(h.headerLength, V3_HEADER_LENGTH_WITH_COMPRESSION);
    view.setBigUint64(72, h.incompatibleFeatures);
    view.setBigUint64(80, h.compatibleFeatures);
    view.setBigUint64(88, h.autoclearFeatures);
    view.setUint32(96, h.refcountOrder);
    view.setUint32(100, headerLength);
    view.setUint8(104, h.compressionType);
    pos = headerLength;
  }
  const exts: HeaderExtension[] = [];
  if (h.backingFormat) exts.push({ type: EXT_BACKING_FORMAT, data: new TextEncoder().encode(h.backingFormat) });
  exts.push(...h.preservedExtensions, ...h.unknownExtensions);
  for (const e of exts) {
    if (pos + 8 + e.data.length + 8 > clusterSize) fail(filename, 'header extensions do not fit in the first cluster');
    view.setUint32(pos, e.type);
    view.setUint32(pos + 4, e.data.length);
    buf.set(e.data, pos + 8);
    pos += 8 + ((e.data.length + 7) & ~7);
  }
  pos += 8; // end-of-extensions marker (type 0, length 0)
  if (h.backingFile) {
    const name = new TextEncoder().encode(h.backingFile);
    if (name.length > MAX_BACKING_NAME) fail(filename, `backing file name longer than ${MAX_BACKING_NAME} bytes`);
    if (pos + name.length > clusterSize) fail(filename, 'backing file name does not fit in the first cluster');
    buf.set(name, pos);
    view.setBigUint64(8, BigInt(pos));
    view.setUint32(16, name.length);
    pos += name.length;
  }
  return buf.subarray(0, Math.max(pos, h.version === 3 ? V3_HEADER_LENGTH_WITH_COMPRESSION : V2_HEADER_LENGTH));
}
