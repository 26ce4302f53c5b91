// `tsvirt run` knows the kernel and initrd paths as soon as it has parsed its flags. Reading
// them can then start on the thread pool while the main thread is still loading the VMM's
// modules, instead of after: under nested virtualization the read of a 14 MB kernel and its
// initrd is tens of milliseconds on the way to the first KVM_RUN. Machine.create takes a
// read started here, or reads the file itself. The run command and the machine share this
// module's state: both are in the run bundle, or both load the module itself.
import { closeSync, fstatSync, openSync, read } from 'node:fs';

const started = new Map<string, Promise<Uint8Array>>();

/**
 * Fills `into` from `fd` at `position` on the thread pool, read after read until it is full
 * or the file ends; resolves to the number of bytes read.
 */
export function readFully(fd: number, into: Uint8Array, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const next = (done: number): void => {
      if (done === into.length) return resolve(done);
      read(fd, into, done, into.length - done, position + done, (err, n) => {
        if (err) reject(err);
        else if (n === 0) resolve(done);
        else next(done + n);
      });
    };
    next(0);
  });
}

/**
 * The whole file in one read on the thread pool. fs.readFile reads in 512 KiB pieces, each
 * waiting for a turn of the main thread's event loop, which is busy loading modules.
 */
async function readWhole(path: string): Promise<Uint8Array> {
  const fd = openSync(path, 'r');
  try {
    const buffer = Buffer.allocUnsafe(fstatSync(fd).size);
    const n = await readFully(fd, buffer, 0);
    return new Uint8Array(buffer.buffer, buffer.byteOffset, n);
  } finally {
    closeSync(fd);
  }
}

/** Start reading `path` in the background (once per path). */
export function preloadFile(path: string): void {
  if (started.has(path)) return;
  const reading = readWhole(path);
  // A read nobody takes (the config turned out bad) must not end the process as unhandled.
  reading.catch(() => undefined);
  started.set(path, reading);
}

/** The background read of `path`, if one was started; it is handed out once. */
export function takePreloadedFile(path: string): Promise<Uint8Array> | undefined {
  const reading = started.get(path);
  started.delete(path);
  return reading;
}
