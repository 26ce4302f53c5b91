// The tsvirt library: import { Machine } from 'tsvirt'.
export * from './memory/guest-memory.js';
export * from './memory/region-memory.js';
export * from './vmm/index.js';
export * from './kvm/index.js';
export * from './memory/host-ram.js';
export {
  QmpClient, QmpCommandError, QmpConnectionError, QmpServer, startQmpServers, QmpRegistry, QmpError,
  createCoreRegistry, arg as qmpArg,
  type QmpTarget, type RunState, type QmpCpuInfo, type QmpBlockInfo, type QmpPciDevice, type QmpCommand,
  type CommandContext as QmpCommandContext, type QmpClientOptions, type QmpEventMessage,
} from './qmp/index.js';
export * from './block/index.js';
export * as x86 from './arch/x86/index.js';
export * as pci from './pci/index.js';
export * as virtio from './virtio/index.js';
export { labCacheDir, guestKernelPath, guestInitrdPath } from './lab/paths.js';
export { guestInitrdWith } from './lab/guest-image.js';
export { labExec, LabError, type LabExecOptions, type LabExecResult } from './lab/exec.js';
export { decidePlacement, type Placement } from './lab/placement.js';
export { CpioWriter, cpioArchive } from './lab/cpio.js';
export { runImg, ImgError, BufferIO as ImgBufferIO, type ImgIO } from './img/index.js';
