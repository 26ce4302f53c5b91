// Public surface of the KVM bindings layer.
export * from './abi.js';
export * from './libc.js';
export * from './types.js';
export { Kvm } from './system.js';
export { VmFd, dirtyBitmapBytes } from './vm.js';
export { VcpuFd, type VcpuExit } from './vcpu.js';
