// Node runs file I/O on libuv's thread pool, which has 4 threads unless UV_THREADPOOL_SIZE
// says otherwise when the process starts: the pool is created while the program's modules
// are still loading, so setting the variable from our code comes too late. With O_DIRECT
// (cache=none) every request occupies a pool thread for the device's whole latency, so 4
// threads cap the requests in flight at 4 whatever the queue depth asked for.
// `tsvirt img bench` therefore runs itself once more with a larger pool when it was started
// from the command line without one (its timing starts after that, like qemu-img's).
import { spawn } from 'node:child_process';
import { basename, dirname } from 'node:path';

/** Pool threads for I/O-bound runs: 16 measured best for O_DIRECT reads and writes at queue depth 32 on two cores (4 left reads at half speed). */
export const IO_THREADS = 16;

/** Whether this process is `tsvirt img <argv...>` started from the command line (not the library API). */
function startedAs(argv: string[]): boolean {
  const script = process.argv[1] ?? '';
  if (basename(script) !== 'main.js' || basename(dirname(script)) !== 'cli') return false;
  const rest = process.argv.slice(2);
  return rest[0] === 'img' && rest.length === argv.length + 1 && argv.every((a, i) => rest[i + 1] === a);
}

/**
 * When the thread pool has its default size and this process is the command line running
 * `img <argv...>`, run the same command again with IO_THREADS pool threads, output passed
 * straight through; resolves to its exit status. Undefined when there is no need.
 */
export function rerunWithIoThreads(argv: string[]): Promise<number> | undefined {
  if (process.env.UV_THREADPOOL_SIZE || !startedAs(argv)) return undefined;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
      stdio: 'inherit',
      env: { ...process.env, UV_THREADPOOL_SIZE: String(IO_THREADS) },
    });
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}
