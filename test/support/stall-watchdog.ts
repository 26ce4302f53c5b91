// A stall watchdog for test files whose main thread may block for ever. node:test's own
// per-test `timeout` is a timer on the main thread's event loop, so it never fires when that
// thread spins in JavaScript or sits in a system call that does not return; the suite then
// hangs until an outer limit. Here the main thread only bumps a counter once a second, and a
// worker thread (which keeps running whatever the main thread does) watches the counter. When
// it stops moving for too long, the worker prints what every thread of the process is doing
// and the main thread's JavaScript stack, then kills the process so the test runner reports
// this file failed and moves on to the next one.
import { url as inspectorUrl } from 'node:inspector';
import { Worker, isMainThread } from 'node:worker_threads';

/** Seconds without a heartbeat after which the file is declared stalled, unless overridden. */
export const DEFAULT_STALL_SECONDS = 90;
export const STALL_SECONDS_ENV = 'TSVIRT_TEST_STALL_SECONDS';

export interface StallWatchdogOptions {
  /** How long the main thread may go without a heartbeat; the environment variable wins. */
  stallMs?: number;
  /** How long to wait for the main thread to hand over its JavaScript stack (default 5 s). */
  jsStackWaitMs?: number;
}

/** What the worker needs; passed as its workerData. */
export interface StallWatchdogWorkerData {
  heartbeat: SharedArrayBuffer;
  stallMs: number;
  pollMs: number;
  jsStackWaitMs: number;
  /** The test file whose main thread is watched (process.argv[1]). */
  file: string;
}

/**
 * The stall limit in milliseconds from TSVIRT_TEST_STALL_SECONDS, or `fallbackMs` when the
 * variable is unset or empty. Throws a one-line error for anything but a positive number.
 */
export function stallMsFromEnv(env: NodeJS.ProcessEnv = process.env, fallbackMs = DEFAULT_STALL_SECONDS * 1000): number {
  const v = env[STALL_SECONDS_ENV];
  if (v === undefined || v.trim() === '') return fallbackMs;
  const seconds = Number(v);
  if (!Number.isFinite(seconds) || seconds <= 0) {
    throw new Error(`${STALL_SECONDS_ENV}=${JSON.stringify(v)}: expected a positive number of seconds`);
  }
  return seconds * 1000;
}

let installed = false;

/**
 * Starts watching this process's main thread; call once at the top of a test file. The
 * heartbeat timer and the worker are unref'd, so an installed watchdog never keeps the
 * process alive. A second call does nothing.
 */
export function watchForStalls(options: StallWatchdogOptions = {}): void {
  if (!isMainThread) throw new Error('watchForStalls: call it on the main thread (it watches the main thread)');
  const optionMs = options.stallMs ?? DEFAULT_STALL_SECONDS * 1000;
  if (!Number.isFinite(optionMs) || optionMs <= 0) throw new Error(`watchForStalls: stallMs ${optionMs}: expected a positive number of milliseconds`);
  const stallMs = stallMsFromEnv(process.env, optionMs);
  const jsStackWaitMs = options.jsStackWaitMs ?? 5000;
  if (!Number.isFinite(jsStackWaitMs) || jsStackWaitMs < 0) throw new Error(`watchForStalls: jsStackWaitMs ${jsStackWaitMs}: expected a non-negative number of milliseconds`);
  if (installed) return;
  // A developer stopped at a breakpoint is not a stall.
  if (inspectorUrl() !== undefined) return;
  installed = true;

  // Several beats fit in one stall period, so one late timer never looks like a stall.
  const beatMs = Math.max(10, Math.min(1000, stallMs / 4));
  const heartbeat = new SharedArrayBuffer(4);
  const beats = new Int32Array(heartbeat);
  setInterval(() => { Atomics.add(beats, 0, 1); }, beatMs).unref();

  const workerData: StallWatchdogWorkerData = {
    heartbeat, stallMs, pollMs: Math.max(10, beatMs / 4), jsStackWaitMs, file: process.argv[1] ?? '(unknown file)',
  };
  const worker = new Worker(new URL('./stall-watchdog-worker.js', import.meta.url), { workerData });
  worker.unref();
  // Losing the watchdog must not fail the tests it guards: say so and carry on.
  worker.on('error', (e: Error) => {
    process.stderr.write(`stall watchdog for ${workerData.file} stopped: ${e.message}\n`);
  });
}
