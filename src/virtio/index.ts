// virtio: split virtqueues, the virtio-pci transport, blk/console/rng devices, option parsers
// and attachVirtioDevices (library namespace `virtio`).
export * from './queue.js';
export * from './device.js';
export * from './pci-transport.js';
export * from './blk.js';
export * from './console.js';
export * from './port-backends.js';
export * from './rng.js';
export * from './config.js';
export * from './attach.js';
export * from './kvm-notify.js';
