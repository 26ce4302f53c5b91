// Where a subcommand writes: the process's streams normally, buffers in tests of the library API.
import { createRequire } from 'node:module';

export interface ImgIO {
  out(text: string): void;
  err(text: string): void;
  /** True when stderr is a terminal (the progress bar draws only then, unless forced). */
  readonly errIsTTY: boolean;
  /**
   * Called by a command whose work is bulk I/O with little JavaScript per byte (an
   * uncompressed convert), when it owns the process: the command line. The library entry
   * point leaves it out, so embedding never changes the caller's process-wide settings.
   */
  bulkCopyOnly?(): void;
  /**
   * Called by a convert whose thread-pool work is only its output's writes
   * (io-threads.convertWritesOnly), before its first file request, when it owns the process:
   * the command line. The library entry point leaves it out.
   */
  writesOnlyOnPool?(): void;
}

export const processIO: ImgIO = {
  out: (text) => void process.stdout.write(text),
  err: (text) => void process.stderr.write(text),
  // Asked only when a progress bar may draw: touching process.stderr builds its stream
  // (about 1.5 ms of the start-up of every command).
  get errIsTTY() {
    return Boolean(process.stderr.isTTY);
  },
  bulkCopyOnly: optimizingCompilerOff,
  writesOnlyOnPool: onePoolThread,
};

/**
 * Gives libuv's thread pool one thread, unless the process was started with a size of its
 * own. Only before the pool's first request does this take effect: libuv reads the variable
 * when it starts the pool. For the converts io-threads.convertWritesOnly picks: the kernel
 * serialises buffered writes to one file on its inode lock, so with more pool threads all
 * but one spin on that lock (0.08-0.12 s of CPU per GiB written, which on two cores comes
 * out of the main thread's share); with one, the writes queued in the pool follow each
 * other with no gap. A 2 GiB half-holes raw to qcow2 convert took 0.331-0.341 s against
 * 0.343-0.385 s with four threads (best to median of twelve alternated runs; qemu-img
 * 0.344-0.452 s); the one with its holes written as zeroes 0.354-0.418 s against
 * 0.404-0.533 s.
 */
export function onePoolThread(): void {
  if (process.env.UV_THREADPOOL_SIZE === undefined) process.env.UV_THREADPOOL_SIZE = '1';
}

/** Whether optimizingCompilerOff switched the optimizer off (and so restoreCompilerFlags must switch it back). */
let compilerSwitchedOff = false;

/**
 * Turns V8's optimizing compiler (TurboFan) off for the rest of the process. For a copy of
 * a few seconds its background compilations cost more CPU than the code they produce saves,
 * on a machine whose cores the copy's own system calls need: a convert of 1 GiB of data
 * (raw to qcow2) took 0.43-0.46 s with it and 0.34-0.37 s without (development host,
 * alternated runs), its user time falling from 0.30 to 0.15 s. A compressed convert,
 * where JavaScript runs per cluster, measured slightly slower without it, so it keeps it.
 */
export function optimizingCompilerOff(): void {
  // Already off from the command line: nothing to switch, and nothing to switch back.
  if (compilerSwitchedOff || process.execArgv.includes('--no-opt')) return;
  setV8Flags('--no-opt');
  compilerSwitchedOff = true;
}

/**
 * Puts V8's flags back as the process started, after optimizingCompilerOff. The command line
 * calls it before it writes the bundle's code cache: V8 stamps a cache with the flags in force
 * when it is made and refuses it under any others, so a cache made with the optimizer off
 * would be refused, and made again, by every later convert.
 */
export function restoreCompilerFlags(): void {
  if (!compilerSwitchedOff) return;
  setV8Flags('--opt');
  compilerSwitchedOff = false;
}

function setV8Flags(flags: string): void {
  // node:v8 is loaded here, not at start: the other subcommands never need it.
  (createRequire(import.meta.url)('node:v8') as typeof import('node:v8')).setFlagsFromString(flags);
}

/** Collects output in memory; used by the library entry point and unit tests. */
export class BufferIO implements ImgIO {
  stdout = '';
  stderr = '';
  readonly errIsTTY = false;
  out(text: string): void {
    this.stdout += text;
  }
  err(text: string): void {
    this.stderr += text;
  }
}
