// Under nested virtualization KVM_CREATE_VM is the slowest system call of a start-up: 62-80 ms
// in the lab, where the whole of Machine.create takes about 300 ms. It depends on nothing in
// the machine's config, so `tsvirt run` issues it on the thread pool as soon as it has parsed
// its flags, while the main thread is still loading the VMM's modules; Machine.create adopts
// the VM it made. Like file-preload.ts, this module stays outside the VMM bundle, so the run
// command and the machine share its state.
import { closeSync, constants, openSync } from 'node:fs';
import { koffi } from '../kvm/ffi.js';

/** _IO(KVMIO, 0x01); a unit test checks it against the ABI table in src/kvm/abi.ts. */
export const KVM_CREATE_VM_REQUEST = 0xae01;

let ioctl: ReturnType<ReturnType<typeof koffi.load>['func']> | undefined;
let pending: Promise<number | undefined> | undefined;

/**
 * Start creating a VM on the thread pool (once). The promise resolves to its descriptor, or to
 * undefined when that did not work: the machine then creates the VM itself and reports any
 * error with its own wording. A signal interrupting the call (EINTR) also ends up there.
 */
export function preloadVm(kvmPath = '/dev/kvm'): void {
  if (pending) return;
  pending = new Promise((resolve) => {
    let kvmFd: number;
    try {
      kvmFd = openSync(kvmPath, constants.O_RDWR); // (libuv adds O_CLOEXEC)
    } catch {
      resolve(undefined);
      return;
    }
    try {
      // A prototype of its own with an integer argument (not libc.ts's variadic one): koffi
      // runs it on the thread pool with .async.
      ioctl ??= koffi.load('libc.so.6').func('int ioctl(int fd, unsigned long request, unsigned long arg)');
      ioctl.async(kvmFd, KVM_CREATE_VM_REQUEST, 0, (err: unknown, vmFd: number) => {
        // The VM holds its own reference to KVM: the system descriptor is not needed any more.
        closeSync(kvmFd);
        resolve(!err && vmFd >= 0 ? vmFd : undefined);
      });
    } catch {
      closeSync(kvmFd);
      resolve(undefined);
    }
  });
}

/** The VM preloadVm() is making, if it was called; handed out once. */
export function takePreloadedVm(): Promise<number | undefined> | undefined {
  const vm = pending;
  pending = undefined;
  return vm;
}

/** Close a preloaded VM nobody took (the config turned out bad, say). */
export async function discardPreloadedVm(): Promise<void> {
  const fd = await takePreloadedVm();
  if (fd !== undefined) closeSync(fd);
}
