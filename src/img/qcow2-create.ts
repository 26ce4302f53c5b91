// Writing a new, empty qcow2 image: header, refcount table, refcount blocks and an empty L1
// table, laid out as qemu does (header, reftable, refblocks, L1). The block layer has no
// creation entry point yet, so the image tool lays the file out itself using the block layer's
// header serialiser; everything after creation goes through the qcow2 driver.
import { open } from 'node:fs/promises';
import { serializeHeader, type Qcow2Header } from '../block/qcow2/header.js';
import { openQcow2 } from '../block/qcow2/image.js';
import type { CreateOptions } from './create-options.js';

const INCOMPAT_EXTENDED_L2 = 1n << 4n;
const COMPAT_LAZY_REFCOUNTS = 1n << 0n;

export async function createQcow2(filename: string, size: bigint, options: CreateOptions): Promise<void> {
  const clusterSize = options.clusterSize ?? 65536;
  const clusterBits = Math.log2(clusterSize);
  const version = options.compat === '0.10' ? 2 : 3;
  const refcountBits = options.refcountBits ?? 16;
  const extendedL2 = options.extendedL2 ?? false;
  const l2EntryBytes = extendedL2 ? 16 : 8;
  const bytesPerL2 = BigInt(clusterSize / l2EntryBytes) * BigInt(clusterSize);
  const l1Size = Number((size + bytesPerL2 - 1n) / bytesPerL2);
  const l1Clusters = Math.max(1, Math.ceil((l1Size * 8) / clusterSize));
  const refcountsPerBlock = (clusterSize * 8) / refcountBits;
  // Fixed point: refcount blocks must count every metadata cluster, themselves included.
  let blocks = 1;
  let tableClusters = 1;
  for (;;) {
    const total = 1 + tableClusters + blocks + l1Clusters;
    const needBlocks = Math.ceil(total / refcountsPerBlock);
    const needTable = Math.max(1, Math.ceil((needBlocks * 8) / clusterSize));
    if (needBlocks === blocks && needTable === tableClusters) break;
    blocks = needBlocks;
    tableClusters = needTable;
  }
  const reftableAt = 1;
  const refblocksAt = reftableAt + tableClusters;
  const l1At = refblocksAt + blocks;
  const totalClusters = l1At + l1Clusters;

  const header: Qcow2Header = {
    version, backingFileOffset: 0n, backingFileSize: 0, clusterBits, size, cryptMethod: 0,
    l1Size, l1TableOffset: BigInt(l1At * clusterSize),
    refcountTableOffset: BigInt(reftableAt * clusterSize), refcountTableClusters: tableClusters,
    nbSnapshots: 0, snapshotsOffset: 0n,
    incompatibleFeatures: extendedL2 ? INCOMPAT_EXTENDED_L2 : 0n,
    compatibleFeatures: options.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0n,
    autoclearFeatures: 0n, refcountOrder: Math.log2(refcountBits), headerLength: 112, compressionType: 0,
    backingFile: options.backingFile, backingFormat: options.backingFile ? options.backingFormat : undefined,
    featureNames: new Map(), unknownExtensions: [], preservedExtensions: [],
  };
  const image = Buffer.alloc(totalClusters * clusterSize);
  Buffer.from(serializeHeader(filename, header)).copy(image, 0);
  for (let b = 0; b < blocks; b++) {
    image.writeBigUInt64BE(BigInt((refblocksAt + b) * clusterSize), reftableAt * clusterSize + b * 8);
  }
  // Refcount 1 for each metadata cluster, in entries of refcountBits bits (big-endian bit order).
  const refblocks = image.subarray(refblocksAt * clusterSize, l1At * clusterSize);
  for (let c = 0; c < totalClusters; c++) {
    const bit = c * refcountBits;
    if (refcountBits >= 8) {
      const bytes = refcountBits / 8;
      refblocks[(bit >> 3) + bytes - 1] = 1;
    } else {
      const byte = bit >> 3;
      const shift = bit & 7; // sub-byte refcounts are packed starting at the least significant bits
      refblocks[byte]! |= 1 << shift;
    }
  }
  const handle = await open(filename, 'w');
  try {
    await handle.write(image, 0, image.length, 0);
  } finally {
    await handle.close();
  }
  if (options.preallocation && options.preallocation !== 'off') {
    const driver = await openQcow2(filename, { backing: false });
    try {
      await driver.preallocate(options.preallocation);
      await driver.flush();
    } finally {
      await driver.close();
    }
  }
}
