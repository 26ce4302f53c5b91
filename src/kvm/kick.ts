// Kicking a vCPU thread out of KVM_RUN.
//
// KVM_RUN returns EINTR when a signal with a handler is delivered to the thread running it.
// Node leaves SIGUSR2 at its default action (terminate the process), so the first use installs
// a no-op listener through process.on(), which makes libuv install a real handler process-wide;
// pthread_kill then aims the signal at the one vCPU thread. A signal can arrive just before the
// thread enters KVM_RUN and be lost, so a pause also sets kvm_run.immediate_exit (KVM_RUN then
// returns EINTR at once) and repeats the kick until the thread reports back.
// process.on() for signals only works on the main thread: call installKickHandler() there
// (kickThread() from a worker then works too, the handler being process-wide).
import { isMainThread } from 'node:worker_threads';
import { pthreadKill } from './libc.js';

export const KICK_SIGNAL = 'SIGUSR2';
/** SIGUSR2 on Linux x86-64. */
export const KICK_SIGNAL_NUMBER = 12;

let installed = false;
const noop = (): void => {};

/** Installs the no-op SIGUSR2 handler (idempotent; main thread only). */
export function installKickHandler(): void {
  if (installed) return;
  process.on(KICK_SIGNAL, noop);
  installed = true;
}

/** Sends the kick signal to one thread (a pthread_t from pthreadSelf() in that thread). */
export function kickThread(thread: bigint): void {
  // Only the main thread can know whether the handler is installed (workers have their own module state).
  if (isMainThread && !installed) throw new Error('kickThread: installKickHandler() was not called on the main thread; SIGUSR2 would terminate the process');
  pthreadKill(thread, KICK_SIGNAL_NUMBER);
}
