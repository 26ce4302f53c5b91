// The block layer's public surface: drivers, formats and the qcow2 tools' building blocks.
export * from './driver.js';
export { HostFile, type HostFileOptions } from './host-file.js';
export { RawDriver, createRaw } from './raw.js';
export { Qcow2Image, openQcow2, type Qcow2OpenOptions } from './qcow2/image.js';
export { createQcow2, type CreateQcow2Options, type Preallocation } from './qcow2/create.js';
export { checkQcow2, type CheckResult, type RepairMode } from './qcow2/check.js';
export { qcow2Info, type Qcow2Info } from './qcow2/info.js';
export { createSnapshot, applySnapshot, deleteSnapshot, listSnapshots, type Qcow2Snapshot } from './qcow2/snapshots.js';
export { listQcow2Snapshots, createQcow2Snapshot, applyQcow2Snapshot, deleteQcow2Snapshot, setQcow2Backing } from './qcow2/api.js';
export { parseHeader, serializeHeader, type Qcow2Header } from './qcow2/header.js';
