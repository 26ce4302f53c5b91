// Creating qcow2 images: header, refcount table, refcount blocks and an empty L1 table,
// laid out at the start of the file; preallocation then goes through the normal driver.
import { BlockError } from '../errors.js';
import { createEmptyFile, HostFile } from '../host-file.js';
import { openImage } from '../driver.js';
import {
  COMPAT_LAZY_REFCOUNTS, INCOMPAT_EXTL2, MAX_L1_BYTES, MAX_VIRTUAL_SIZE, V2_HEADER_LENGTH,
  V3_HEADER_LENGTH_WITH_COMPRESSION, serializeHeader, type Qcow2Header,
} from './header.js';
import { Refcounts } from './refcounts.js';
import { Qcow2Image, resolveBacking } from './image.js';

export type Preallocation = 'off' | 'metadata' | 'falloc' | 'full';

export interface CreateQcow2Options {
  /** Virtual size in bytes; defaults to the backing file's size. */
  size?: bigint;
  clusterSize?: number;
  compat?: '0.10' | '1.1';
  backingFile?: string;
  backingFormat?: string;
  preallocation?: Preallocation;
  lazyRefcounts?: boolean;
  refcountBits?: number;
  extendedL2?: boolean;
}

export async function createQcow2(filename: string, options: CreateQcow2Options): Promise<void> {
  const clusterSize = options.clusterSize ?? 65536;
  const compat = options.compat ?? '1.1';
  const refcountBits = options.refcountBits ?? 16;
  const extendedL2 = options.extendedL2 ?? false;
  const prealloc = options.preallocation ?? 'off';
  const bad = (reason: string): never => {
    throw new BlockError(filename, reason);
  };
  if (!Number.isInteger(clusterSize) || clusterSize < 512 || clusterSize > 2 * 1024 * 1024 || (clusterSize & (clusterSize - 1)) !== 0) {
    bad(`cluster size ${clusterSize} must be a power of two between 512 and 2 MiB`);
  }
  if (compat !== '0.10' && compat !== '1.1') bad(`unknown compat level '${compat}' (0.10 or 1.1)`);
  if (![1, 2, 4, 8, 16, 32, 64].includes(refcountBits)) bad(`refcount bits ${refcountBits} must be a power of two up to 64`);
  if (compat === '0.10' && refcountBits !== 16) bad('compat=0.10 images need 16-bit refcounts');
  if (compat === '0.10' && options.lazyRefcounts) bad('lazy refcounts need compat=1.1');
  if (compat === '0.10' && extendedL2) bad('extended L2 entries need compat=1.1');
  if (extendedL2 && clusterSize < 16384) bad('extended L2 entries need clusters of at least 16 KiB');
  if (options.backingFormat && !options.backingFile) bad('a backing format needs a backing file');
  if (!['off', 'metadata', 'falloc', 'full'].includes(prealloc)) bad(`unknown preallocation mode '${prealloc}'`);
  if (options.backingFile && prealloc !== 'off') bad('preallocation cannot be combined with a backing file');

  let size = options.size;
  if (options.backingFile) {
    const path = resolveBacking(filename, options.backingFile);
    const backing = await openImage(path, { readOnly: true, format: options.backingFormat }).catch((err: Error) => {
      throw new BlockError(filename, `cannot open backing file '${options.backingFile}': ${err.message}`);
    });
    if (size === undefined) size = backing.size();
    await backing.close();
  }
  if (size === undefined) bad('no size given and no backing file to take it from');
  if ((size as bigint) < 0n) bad(`invalid size ${size}`);
  // Disks are made of 512-byte sectors: round up as qemu-img does.
  const virtualSize = (((size as bigint) + 511n) / 512n) * 512n;
  if (virtualSize < 0n || virtualSize > MAX_VIRTUAL_SIZE) bad(`invalid size ${virtualSize}`);

  const clusterBits = Math.log2(clusterSize);
  const entryBytes = extendedL2 ? 16 : 8;
  const l2Entries = BigInt(clusterSize / entryBytes);
  const clusters = (virtualSize + BigInt(clusterSize) - 1n) / BigInt(clusterSize);
  const l1Size = Number((clusters + l2Entries - 1n) / l2Entries);
  if (l1Size * 8 > MAX_L1_BYTES) bad(`size ${virtualSize} needs an L1 table larger than 32 MiB; use bigger clusters`);
  const l1Clusters = Math.ceil((l1Size * 8) / clusterSize);
  const refcountOrder = Math.log2(refcountBits);
  const perBlock = (clusterSize * 8) / refcountBits;

  // Layout: header, refcount table, refcount blocks, L1 table. The blocks must describe
  // all of these, including themselves, and the table must hold every block.
  let tableClusters = 1;
  let blocks = 1;
  for (let i = 0; i < 64; i++) {
    const total = 1 + tableClusters + blocks + l1Clusters;
    const needBlocks = Math.ceil(total / perBlock);
    const needTable = Math.ceil((needBlocks * 8) / clusterSize);
    if (needBlocks === blocks && needTable === tableClusters) break;
    blocks = Math.max(blocks, needBlocks);
    tableClusters = Math.max(tableClusters, needTable);
  }
  const total = 1 + tableClusters + blocks + l1Clusters;
  const tableOffset = clusterSize;
  const blocksOffset = (1 + tableClusters) * clusterSize;
  const l1Offset = (1 + tableClusters + blocks) * clusterSize;

  const header: Qcow2Header = {
    version: compat === '0.10' ? 2 : 3,
    backingFileOffset: 0n,
    backingFileSize: 0,
    clusterBits,
    size: virtualSize,
    cryptMethod: 0,
    l1Size,
    l1TableOffset: BigInt(l1Offset),
    refcountTableOffset: BigInt(tableOffset),
    refcountTableClusters: tableClusters,
    nbSnapshots: 0,
    snapshotsOffset: 0n,
    incompatibleFeatures: extendedL2 ? INCOMPAT_EXTL2 : 0n,
    compatibleFeatures: options.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0n,
    autoclearFeatures: 0n,
    refcountOrder,
    headerLength: compat === '0.10' ? V2_HEADER_LENGTH : V3_HEADER_LENGTH_WITH_COMPRESSION,
    compressionType: 0,
    backingFile: options.backingFile,
    backingFormat: options.backingFormat,
    featureNames: new Map(),
    unknownExtensions: [],
    preservedExtensions: [],
  };
  const headerBytes = serializeHeader(filename, header);

  await createEmptyFile(filename);
  const file = await HostFile.open(filename);
  try {
    const table = new Uint8Array(tableClusters * clusterSize);
    const tv = new DataView(table.buffer);
    for (let b = 0; b < blocks; b++) {
      const block = new Uint8Array(clusterSize);
      for (let i = 0; i < perBlock && b * perBlock + i < total; i++) Refcounts.setEntry(block, i, refcountOrder, 1n);
      await file.write(blocksOffset + b * clusterSize, block);
      tv.setBigUint64(b * 8, BigInt(blocksOffset + b * clusterSize));
    }
    await file.write(tableOffset, table);
    await file.truncate(BigInt(total * clusterSize));
    await file.write(0, headerBytes);
    await file.flush();
  } finally {
    await file.close();
  }
  if (prealloc !== 'off') {
    const image = await Qcow2Image.open(filename, { backing: false });
    try {
      await image.preallocate(prealloc);
    } finally {
      await image.close();
    }
  }
}
