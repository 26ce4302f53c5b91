// What `img info` shows about a qcow2 image: the header's facts plus the file's real size.
import { stat } from 'node:fs/promises';
import { BlockError } from '../errors.js';
import { HostFile } from '../host-file.js';
import { COMPAT_LAZY_REFCOUNTS, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, INCOMPAT_EXTL2, parseHeader } from './header.js';
import { readSnapshotTable, type Qcow2Snapshot } from './snapshots.js';

export interface Qcow2Info {
  filename: string;
  format: 'qcow2';
  virtualSize: bigint;
  /** Bytes the file occupies on disk. */
  actualSize: bigint;
  clusterSize: number;
  backingFile?: string;
  backingFormat?: string;
  snapshots: Qcow2Snapshot[];
  formatSpecific: {
    compat: '0.10' | '1.1';
    compressionType: 'zlib' | 'zstd';
    lazyRefcounts: boolean;
    refcountBits: number;
    corrupt: boolean;
    extendedL2: boolean;
    dirtyFlag: boolean;
  };
}

export async function qcow2Info(filename: string): Promise<Qcow2Info> {
  const file = await HostFile.open(filename, { readOnly: true });
  try {
    const length = await file.length();
    const first = new Uint8Array(Number(length < 2097152n ? length : 2097152n));
    await file.read(0, first);
    const h = parseHeader(filename, first, length);
    const st = await stat(filename).catch((err: Error) => {
      throw new BlockError(filename, `cannot stat: ${err.message}`);
    });
    return {
      filename,
      format: 'qcow2',
      virtualSize: h.size,
      actualSize: BigInt(st.blocks) * 512n,
      clusterSize: 1 << h.clusterBits,
      backingFile: h.backingFile,
      backingFormat: h.backingFormat,
      snapshots: await readSnapshotTable(file, filename, h.snapshotsOffset, h.nbSnapshots, h.clusterBits, length),
      formatSpecific: {
        compat: h.version === 2 ? '0.10' : '1.1',
        compressionType: h.compressionType === 1 ? 'zstd' : 'zlib',
        lazyRefcounts: (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n,
        refcountBits: 1 << h.refcountOrder,
        corrupt: (h.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n,
        extendedL2: (h.incompatibleFeatures & INCOMPAT_EXTL2) !== 0n,
        dirtyFlag: (h.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n,
      },
    };
  } finally {
    await file.close();
  }
}
