// The block layer's public surface: drivers, formats and the qcow2 tools' building blocks.
//
//   openImage(file, { readOnly, cache, format, backing, l2CacheBytes }) -> BlockDriver
//     probes raw/qcow2; a qcow2 image opens its backing chain (any depth, any format,
//     loops refused). Reads and writes are scatter-gather and may be issued concurrently.
//   createRaw / createQcow2        new images (qcow2: v2/v3, 512 B..2 MiB clusters, 1..64-bit
//                                  refcounts, extended L2, lazy refcounts, preallocation)
//   checkQcow2                     qemu-img-check-like consistency check, optional repair
//   qcow2Info                      what `img info` prints (format-specific fields included)
//   *Qcow2Snapshot(s)              internal snapshots by file name; createSnapshot & co. on an
//                                  open Qcow2Image
//   Qcow2Image.writeCompressed     store a whole cluster deflate-compressed (img convert -c)
//   setQcow2Backing                rewrite the backing file name/format (rebase -u)
//
// Module map: host-file (the file or device, cache modes, barriers), raw, probe, and
// qcow2/{header, entries, l2-cache, refcounts (+ allocator), compression, image (the driver),
// snapshots, check, create, info, api}.
export * from './driver.js';
export { HostFile, alignedBuffer, type HostFileOptions } from './host-file.js';
export { RawDriver, createRaw } from './raw.js';
export { Qcow2Image, openQcow2, type Qcow2OpenOptions } from './qcow2/image.js';
export { createQcow2, type CreateQcow2Options, type Preallocation } from './qcow2/create.js';
export { checkQcow2, type CheckResult, type RepairMode } from './qcow2/check.js';
export { qcow2Info, type Qcow2Info } from './qcow2/info.js';
export { createSnapshot, applySnapshot, deleteSnapshot, listSnapshots, type Qcow2Snapshot } from './qcow2/snapshots.js';
export { listQcow2Snapshots, createQcow2Snapshot, applyQcow2Snapshot, deleteQcow2Snapshot, setQcow2Backing } from './qcow2/api.js';
export { parseHeader, serializeHeader, type Qcow2Header } from './qcow2/header.js';
