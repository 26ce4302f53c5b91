// Driving and reading real eventfds in tests: signal one as KVM would, drain its counter.
import { readNonBlocking, write } from '../../src/kvm/libc.js';

/** Adds `value` to the eventfd's counter, as KVM does when it signals it. */
export function signal(fd: number, value: number): void {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(value), true);
  write(fd, bytes);
}

/** The eventfd counter (reading resets it), or -1 when it is zero. */
export function drain(fd: number): number {
  const bytes = new Uint8Array(8);
  return readNonBlocking(fd, bytes) < 0 ? -1 : Number(new DataView(bytes.buffer).getBigUint64(0, true));
}
