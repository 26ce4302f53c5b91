// A QmpTarget without a VM behind it: it keeps the run state and emits the events a Machine
// emits, so the QMP server (the code under test) can be exercised without /dev/kvm. The
// host tests serve the real Machine instead.
import { EventEmitter } from 'node:events';
import type { QmpBlockInfo, QmpCpuInfo, QmpPciDevice, QmpTarget, RunState } from '../../../../src/qmp/target.js';

export class StateTarget extends EventEmitter implements QmpTarget {
  readonly uuid = '6a3c7a4e-2b1d-4c43-9a55-0f5f2d9c1e01';
  state: RunState = 'running';
  /** The image query-block reports (a real file gets an actual-size). */
  diskFile = 'disk.qcow2';
  diskFormat = 'qcow2';
  resets = 0;
  powerdowns = 0;

  constructor(readonly name: string | undefined = 'vm0', private readonly cpuCount = 2) {
    super();
  }

  runState(): RunState {
    return this.state;
  }

  async pause(): Promise<void> {
    this.state = 'paused';
    this.emit('stop');
  }

  async resume(): Promise<void> {
    this.state = 'running';
    this.emit('resume');
  }

  async reset(): Promise<void> {
    this.resets++;
    this.emit('reset', { guest: false, reason: 'host-qmp-system-reset' });
  }

  async powerdown(): Promise<void> {
    this.powerdowns++;
    this.emit('powerdown');
  }

  async quit(): Promise<void> {
    this.state = 'shutdown';
    this.emit('shutdown', { guest: false, reason: 'host-qmp-quit' });
  }

  cpus(): QmpCpuInfo[] {
    return Array.from({ length: this.cpuCount }, (_, i) => ({
      cpuIndex: i, threadId: 1000 + i, qomPath: `/machine/unattached/device[${i}]`,
      socketId: 0, coreId: i, threadId_: 0, target: 'x86_64' as const,
    }));
  }

  blockDevices(): QmpBlockInfo[] {
    return [{
      device: 'disk0', qdev: '/machine/peripheral/disk0/virtio-backend', removable: false, locked: false,
      readOnly: false, filename: this.diskFile, format: this.diskFormat, virtualSize: 1 << 30,
      cache: { writeback: true, direct: false, noFlush: false },
    }];
  }

  pciDevices(): QmpPciDevice[] {
    return [
      { bus: 0, slot: 0, function: 0, vendorId: 0x8086, deviceId: 0x1237, classCode: 0x060000,
        subsystemVendorId: 0x1af4, subsystemId: 0x1100, qdevId: '', bars: [] },
      { bus: 0, slot: 3, function: 0, vendorId: 0x1af4, deviceId: 0x1042, classCode: 0x010000,
        subsystemVendorId: 0x1af4, subsystemId: 0x0002, qdevId: 'disk0', irq: 11,
        bars: [
          { bar: 0, type: 'io', address: 0xc000, size: 0x80 },
          { bar: 1, type: 'memory', address: 0xfebf0000, size: 0x1000 },
          { bar: 4, type: 'memory', address: 0xfe000000, size: 0x4000, prefetch: true, memType64: true },
        ] },
    ];
  }
}
