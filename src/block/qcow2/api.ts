// File-level qcow2 operations for tools (tsvirt img): each opens the image, does one
// thing and closes it again.
import { BlockError } from '../errors.js';
import { Qcow2Image } from './image.js';
import { applySnapshot, createSnapshot, deleteSnapshot, listSnapshots, type Qcow2Snapshot } from './snapshots.js';

async function withImage<T>(filename: string, readOnly: boolean, fn: (image: Qcow2Image) => Promise<T>): Promise<T> {
  const image = await Qcow2Image.open(filename, { readOnly, backing: false });
  try {
    return await fn(image);
  } finally {
    await image.close();
  }
}

export function listQcow2Snapshots(filename: string): Promise<Qcow2Snapshot[]> {
  return withImage(filename, true, listSnapshots);
}

export function createQcow2Snapshot(filename: string, name: string): Promise<Qcow2Snapshot> {
  return withImage(filename, false, (image) => createSnapshot(image, name));
}

export function applyQcow2Snapshot(filename: string, idOrName: string): Promise<void> {
  return withImage(filename, false, (image) => applySnapshot(image, idOrName));
}

export function deleteQcow2Snapshot(filename: string, idOrName: string): Promise<void> {
  return withImage(filename, false, (image) => deleteSnapshot(image, idOrName));
}

/** Change the backing file named in the header (no data is copied: `rebase -u`). */
export async function setQcow2Backing(filename: string, backingFile: string | undefined, backingFormat?: string): Promise<void> {
  if (!backingFile && backingFormat) throw new BlockError(filename, 'a backing format needs a backing file');
  return withImage(filename, false, async (image) => {
    image.header.backingFile = backingFile;
    image.header.backingFormat = backingFile ? backingFormat : undefined;
    if (!backingFile) image.header.backingFileOffset = 0n;
    await image.rewriteHeader();
  });
}
