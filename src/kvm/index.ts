// Public surface of the KVM bindings layer.
export * from './abi.js';
export { SyscallError, KvmError, errnoName, strerror } from './libc.js';
export * from './types.js';
export { Kvm } from './system.js';
export { VmFd, dirtyBitmapBytes } from './vm.js';
export { VcpuFd, type VcpuExit } from './vcpu.js';
export * from './kick.js';
export * from './microguest.js';
export { measureLoopRate, loopGuestCode, type LoopRate } from './loop-guest.js';
export { FdPoller, type FdCallback } from './fd-poller.js';
