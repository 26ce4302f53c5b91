// The I/O engines of `tsvirt img bench`, named as qemu-img's -i names them:
//   io_uring  (the default) the process's own io_uring (src/kvm/io-uring.ts): requests are
//             written into the ring and completions handled the moment they arrive, with no
//             thread between the disk and the code waiting for it;
//   threads   libuv's thread pool, which runs each preadv/pwritev on a pool thread. libuv
//             sizes the pool from UV_THREADPOOL_SIZE once, as the process starts (4 threads
//             unless it says otherwise). With O_DIRECT (cache=none) every request occupies a
//             pool thread for the device's whole latency, so 4 threads cap the requests in
//             flight at 4 whatever the queue depth asked for: `bench -i threads`, started
//             from the command line with the default pool, runs itself once more with a
//             bigger one (its timing starts after that, like qemu-img's).
// Other commands keep the pool, with one exception: an uncompressed convert whose pool work
// is only the output's writes (convertWritesOnly) gives it a single thread.
import { createRequire } from 'node:module';
import { basename, dirname } from 'node:path';
import type { CacheMode } from '../block/driver.js';
import { LeasedMapping } from '../block/leased-mapping.js';
import { probeRegularFileSync } from '../block/probe.js';

/** Pool threads for I/O-bound runs: 16 measured best for O_DIRECT reads and writes at queue depth 32 on two cores (4 left reads at half speed). */
export const IO_THREADS = 16;

/** The I/O engines `bench -i` accepts, as qemu-img names them. */
export const AIO_ENGINES = ['io_uring', 'threads'] as const;
export type AioEngine = (typeof AIO_ENGINES)[number];

export function isAioEngine(name: string): name is AioEngine {
  return (AIO_ENGINES as readonly string[]).includes(name);
}

/** The command line's scripts: the `tsvirt` launcher and the ES module CLI behind it. */
const CLI_SCRIPTS = new Set(['tsvirt.cjs', 'main.js']);

/**
 * Whether `processArgv` (this process's, by default) is `tsvirt img <argv...>` started from
 * the command line, not the library API.
 */
export function startedAs(argv: string[], processArgv: readonly string[] = process.argv): boolean {
  const script = processArgv[1] ?? '';
  if (!CLI_SCRIPTS.has(basename(script)) || basename(dirname(script)) !== 'cli') return false;
  const rest = processArgv.slice(2);
  return rest[0] === 'img' && rest.length === argv.length + 1 && argv.every((a, i) => rest[i + 1] === a);
}

/** The variables a process started with `env` must change to run `bench` with `engine`. */
export function ioSetupChanges(env: NodeJS.ProcessEnv, engine: AioEngine): Record<string, string> {
  return engine === 'threads' && !env.UV_THREADPOOL_SIZE ? { UV_THREADPOOL_SIZE: String(IO_THREADS) } : {};
}

/**
 * When this process is the command line running `img <argv...>` and `engine` needs a
 * set-up it was not started with, run the same command again with it, output passed
 * straight through; resolves to its exit status. Undefined when there is no need, or when
 * the caller is the library API (which runs with the process it has).
 */
export function rerunWithIoSetup(argv: string[], engine: AioEngine): Promise<number> | undefined {
  const env = ioSetupChanges(process.env, engine);
  if (Object.keys(env).length === 0 || !startedAs(argv)) return undefined;
  return new Promise((resolve, reject) => {
    // node:child_process is loaded here: every other `tsvirt img` run would pay about 3 ms
    // of its start for it.
    const { spawn } = createRequire(import.meta.url)('node:child_process') as typeof import('node:child_process');
    const child = spawn(process.execPath, [...process.execArgv, ...process.argv.slice(1)], {
      stdio: 'inherit',
      env: { ...process.env, ...env },
    });
    child.on('error', reject);
    child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}

/**
 * Whether a convert leaves the thread pool nothing but the output's writes: uncompressed,
 * its output written through the page cache, and every source a regular file read through
 * the page cache, raw or qcow2 without a backing file, which convert reads through the
 * file's leased mapping (see block/leased-mapping.ts) rather than with reads on the pool.
 * Decided before any file is opened, from a synchronous look at each source. What is still
 * read on the pool then shares its one thread with the writes: correct, only slower (a
 * source whose lease is refused because a writer holds it, a qcow2 source's compressed
 * clusters and table loads).
 */
export function convertWritesOnly(options: {
  sources: string[];
  sourceFormat: string | undefined;
  sourceCache: CacheMode;
  targetCache: CacheMode;
  compress: boolean;
}): boolean {
  if (options.compress || !LeasedMapping.supported) return false;
  if (options.targetCache !== 'writeback' && options.targetCache !== 'unsafe') return false;
  if (options.sourceCache === 'none' || options.sourceCache === 'directsync') return false;
  return options.sources.every((s) => {
    const probe = probeRegularFileSync(s);
    if (!probe) return false;
    // Read as raw whatever its header says (-f raw), or as its own format.
    const format = options.sourceFormat ?? probe.format;
    return format === 'raw' || (format === 'qcow2' && probe.format === 'qcow2' && !probe.backing);
  });
}
