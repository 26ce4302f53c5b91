// How `tsvirt img bench` gets the I/O set-up it measures. libuv reads two variables once, as
// the process starts, so code cannot change them afterwards:
//   UV_THREADPOOL_SIZE  the thread pool has 4 threads unless it says otherwise. With O_DIRECT
//                       (cache=none) every request occupies a pool thread for the device's
//                       whole latency, so 4 threads cap the requests in flight at 4 whatever
//                       the queue depth asked for;
//   UV_USE_IO_URING     1: file I/O is submitted to io_uring instead of the pool (Node.js 20
//                       ships it off: its risk is io_uring keeping the credentials of a
//                       process that later changes user, which tsvirt never does).
// `bench` therefore runs itself once more when it was started from the command line with a
// set-up other than the one it needs (its timing starts after that, like qemu-img's). Its
// default engine is io_uring: small random requests then need no trip through the pool
// (docs/design.md, "Disk I/O through io_uring"). Other commands keep the pool, which
// measured faster for their large buffered transfers.
import { spawn } from 'node:child_process';
import { basename, dirname } from 'node:path';
import { ImgError } from './errors.js';

/** Pool threads for I/O-bound runs: 16 measured best for O_DIRECT reads and writes at queue depth 32 on two cores (4 left reads at half speed). */
export const IO_THREADS = 16;

/** The I/O engines `bench -i` accepts, as qemu-img names them, and whether each is io_uring. */
export const AIO_ENGINES: Record<string, boolean> = { threads: false, io_uring: true };

/** `bench`'s engine when -i does not name one. */
export const DEFAULT_BENCH_ENGINE = 'io_uring';

/** Whether this process is `tsvirt img <argv...>` started from the command line (not the library API). */
function startedAs(argv: string[]): boolean {
  const script = process.argv[1] ?? '';
  if (basename(script) !== 'main.js' || basename(dirname(script)) !== 'cli') return false;
  const rest = process.argv.slice(2);
  return rest[0] === 'img' && rest.length === argv.length + 1 && argv.every((a, i) => rest[i + 1] === a);
}

/** Whether libuv submits file I/O to io_uring in a process started with `env` (libuv's own reading: atoi). */
export function usingIoUring(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.UV_USE_IO_URING !== undefined && (Number.parseInt(env.UV_USE_IO_URING, 10) || 0) !== 0;
}

/** The variables a process started with `env` must change to run `bench` with `engine` (an AIO_ENGINES name, or none). */
export function ioSetupChanges(env: NodeJS.ProcessEnv, engine?: string): Record<string, string> {
  const changes: Record<string, string> = {};
  if (!env.UV_THREADPOOL_SIZE) changes.UV_THREADPOOL_SIZE = String(IO_THREADS);
  if (engine !== undefined && Object.hasOwn(AIO_ENGINES, engine) && AIO_ENGINES[engine] !== usingIoUring(env)) {
    changes.UV_USE_IO_URING = AIO_ENGINES[engine] ? '1' : '0';
  }
  return changes;
}

/**
 * When this process is the command line running `img <argv...>` and its pool is the default
 * size or its io_uring use differs from `engine` (an AIO_ENGINES name), run the same command
 * again with IO_THREADS pool threads and the engine's setting, output passed straight
 * through; resolves to its exit status. Undefined when there is no need. A library caller
 * whose process has another engine runs with it, unless the engine was `asked` for (-i):
 * then it gets an error, as only a new process can switch.
 */
export function rerunWithIoSetup(argv: string[], engine: string, asked: boolean): Promise<number> | undefined {
  const env = ioSetupChanges(process.env, engine);
  if (Object.keys(env).length === 0) return undefined;
  if (!startedAs(argv)) {
    if (env.UV_USE_IO_URING === undefined || !asked) return undefined;
    throw new ImgError(`-i ${engine}: this process was started with UV_USE_IO_URING=${process.env.UV_USE_IO_URING ?? 'unset'}; start it with UV_USE_IO_URING=${env.UV_USE_IO_URING}`);
  }
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
      stdio: 'inherit',
      env: { ...process.env, ...env },
    });
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}
