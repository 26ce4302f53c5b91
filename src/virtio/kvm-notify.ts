// Queue doorbells as KVM ioeventfds: KVM completes the guest's notify write in the kernel
// and signals an eventfd, so a kick costs no exit to userspace; the eventfd watcher then
// calls the queue's handler on the main thread.
import type { IoEventFd } from '../kvm/types.js';
import type { EventfdWatcher } from '../kvm/eventfd-watcher.js';
import { close, EFD_NONBLOCK, eventfd } from '../kvm/libc.js';
import type { NotifyDoorbell, NotifyRegistrar } from './pci-transport.js';

export interface IoeventfdTarget {
  registerIoeventfd(io: IoEventFd): void;
  unregisterIoeventfd(io: IoEventFd): void;
}

export class KvmNotifyRegistrar implements NotifyRegistrar {
  private readonly active = new Map<string, IoEventFd>();

  private readonly currentVm: () => IoeventfdTarget;

  /**
   * `vm` is the VmFd or a getter for the current one (the machine builds a new VM on reset;
   * call the host bridge's reset() before the old VM goes so its ioeventfds are deassigned),
   * `watcher` the VMM's eventfd watcher.
   */
  constructor(vm: IoeventfdTarget | (() => IoeventfdTarget), private readonly watcher: Pick<EventfdWatcher, 'watch' | 'unwatch'>) {
    this.currentVm = typeof vm === 'function' ? vm : () => vm;
  }

  private static key(d: NotifyDoorbell): string {
    return `${d.address}:${d.datamatch}`;
  }

  register(doorbell: NotifyDoorbell, onNotify: () => void): void {
    const fd = eventfd(0, EFD_NONBLOCK);
    const io: IoEventFd = { fd, address: doorbell.address, length: doorbell.length, datamatch: BigInt(doorbell.datamatch) };
    try {
      this.currentVm().registerIoeventfd(io);
    } catch (error) {
      close(fd);
      throw error;
    }
    // The watcher drains the eventfd: several kicks in a row are one notify.
    this.watcher.watch(fd, onNotify);
    this.active.set(KvmNotifyRegistrar.key(doorbell), io);
  }

  unregister(doorbell: NotifyDoorbell): void {
    const key = KvmNotifyRegistrar.key(doorbell);
    const io = this.active.get(key);
    if (!io) return;
    this.active.delete(key);
    this.watcher.unwatch(io.fd);
    try {
      this.currentVm().unregisterIoeventfd(io);
    } catch {
      // The VM it was registered with is already gone; closing the fd is all that is left.
    }
    close(io.fd);
  }

  /** Drop every doorbell (machine teardown). */
  closeAll(): void {
    for (const [key, io] of [...this.active]) {
      this.active.delete(key);
      this.watcher.unwatch(io.fd);
      try {
        this.currentVm().unregisterIoeventfd(io);
      } catch {}
      close(io.fd);
    }
  }

  get registeredCount(): number { return this.active.size; }
}
