// Starting vCPU threads. A thread is a worker_threads isolate that must boot and load its
// modules before it can run a vCPU; under nested virtualization that takes seconds. Nothing
// in it depends on the machine until `attach`, so the machine starts its threads first and
// builds the VM while they boot, and `tsvirt run` starts them even earlier, before it loads
// the VMM's modules (prestartVcpuThreads), so the isolates boot on the other host CPU while
// the main thread is busy. The `tsvirt` launcher starts them earlier still, before it loads
// the run bundle (prestartForRunArgs): CommonJS, like the launcher, so that this module and
// its thread registry are one instance for the launcher, the bundle and the ES modules.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { freshBundle } from './bundles.cjs';
import { CTL_COMMAND_SEQ, CTL_RUN_STATE, CTL_WORDS, PARK, QUIT } from './vcpu-control.cjs';
import type { VcpuReport, VcpuWorkerData } from './vcpu-channel.js' with { 'resolution-mode': 'import' };

export interface StartedVcpuThread {
  index: number;
  worker: Worker;
  control: Int32Array;
  /** Resolves with the thread's pthread handle and kernel thread id once it is up. */
  ready: Promise<{ thread: bigint; threadId: number }>;
  /** Receives every report after `ready` (set by the machine that adopts the thread). */
  onReport: (report: VcpuReport) => void;
  /** Resolves when the thread has exited. */
  exited: Promise<void>;
}

/** How long a thread asked to quit may take before it is terminated anyway. */
const QUIT_TIMEOUT_MS = 30_000;

/**
 * What a vCPU thread runs: the build's CommonJS bundle of it when current, loaded with its
 * code cache by a one-line entry script (bundles.cts), else the compiled module.
 */
function defaultWorkerEntry(): { script: string } | URL {
  const bundle = freshBundle('vcpu-worker.bundle.cjs');
  if (!bundle) return pathToFileURL(join(__dirname, 'vcpu-worker.js'));
  const loader = join(__dirname, 'bundles.cjs');
  return { script: `require(${JSON.stringify(loader)}).runCachedBundle(${JSON.stringify(bundle)});` };
}

let defaultEntry: { script: string } | URL | undefined;

/** Start one parked vCPU thread (it does nothing until attached to a vCPU). */
export function startVcpuThread(index: number, url?: URL): StartedVcpuThread {
  const entry = url ?? (defaultEntry ??= defaultWorkerEntry());
  const control = new Int32Array(new SharedArrayBuffer(CTL_WORDS * 4));
  control[CTL_RUN_STATE] = PARK;
  const data: VcpuWorkerData = { index, control: control.buffer as SharedArrayBuffer, traceOrigin: performance.timeOrigin };
  // A vCPU thread allocates almost nothing: small heap limits keep each isolate's setup
  // cheap (in the lab, 64 vCPU threads started in 66 s with a 2 MB young generation and
  // did not start within 490 s with the default).
  const worker = new Worker(entry instanceof URL ? entry : entry.script, {
    eval: !(entry instanceof URL), workerData: data, name: `vcpu${index}`, resourceLimits: { maxOldGenerationSizeMb: 32, maxYoungGenerationSizeMb: 2 },
  });
  const started: StartedVcpuThread = {
    index, worker, control, ready: Promise.resolve({ thread: 0n, threadId: 0 }), onReport: () => undefined,
    exited: new Promise((resolve) => worker.once('exit', () => resolve())),
  };
  started.ready = new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    const onExit = (code: number): void => reject(new Error(`exited with code ${code} before it was ready`));
    worker.once('error', onError);
    worker.once('exit', onExit);
    worker.on('message', (m: VcpuReport) => {
      if (m.type === 'ready') {
        worker.off('error', onError);
        worker.off('exit', onExit);
        resolve({ thread: m.thread, threadId: m.threadId });
      } else {
        started.onReport(m);
      }
    });
  });
  // A thread nobody adopts (or that fails) must not surface as an unhandled rejection here;
  // whoever awaits `ready` sees the error.
  started.ready.catch(() => undefined);
  return started;
}

/** Most vCPUs a guest can have: APIC ids 0..254 fit xAPIC/x2APIC without interrupt remapping. */
export const MAX_VCPUS = 255;

const prestarted = new Map<number, StartedVcpuThread>();

/**
 * The vCPU count a machine will most likely have, known before its config is validated:
 * `cpus` (the --cpus flag), else what the config file says, else 1. Only a hint (a wrong
 * guess costs a thread started for nothing, or one started later); 0 when it is not a
 * sane count or the file cannot be read (that is reported when the config is loaded).
 */
export function vcpuCountHint(cpus: string | undefined, configFile: string | undefined): number {
  let count: unknown = 1;
  if (cpus !== undefined) count = Number(cpus);
  else if (configFile !== undefined) {
    try {
      count = (JSON.parse(readFileSync(configFile, 'utf8')) as { cpus?: unknown }).cpus ?? 1;
    } catch {
      return 0;
    }
  }
  return Number.isInteger(count) && (count as number) >= 1 && (count as number) <= MAX_VCPUS ? count as number : 0;
}

/**
 * The vCPU count `tsvirt run ARGS` will most likely ask for, read from --cpus and --config
 * the simple way, for the launcher (the run command parses its flags properly later, and
 * starts what this missed). 0 for a request for help, which starts no machine.
 */
export function vcpuCountFromRunArgs(args: readonly string[]): number {
  const value = (name: string): string | undefined => {
    let found: string | undefined;
    for (let i = 0; i < args.length && args[i] !== '--'; i++) {
      if (args[i] === name) found = args[i + 1];
      else if (args[i]!.startsWith(`${name}=`)) found = args[i]!.slice(name.length + 1);
    }
    return found;
  };
  if (args.some((a) => a === '--help' || a === '-h')) return 0;
  return vcpuCountHint(value('--cpus'), value('--config'));
}

/** For the launcher: prestart the threads `tsvirt run ARGS` will most likely need. */
export function prestartForRunArgs(args: readonly string[]): void {
  prestartVcpuThreads(vcpuCountFromRunArgs(args));
}

/**
 * Start vCPU threads 0..count-1 now, for the next machine this process creates with the
 * default worker. Threads it does not use are terminated when it takes its own.
 */
export function prestartVcpuThreads(count: number): void {
  for (let i = 0; i < count; i++) {
    if (prestarted.has(i)) continue;
    const t = startVcpuThread(i);
    // Unadopted, it must not keep the process alive (say the config turns out to be bad).
    t.worker.unref();
    prestarted.set(i, t);
  }
}

/**
 * Threads for a machine of `count` vCPUs: the prestarted ones first (with the default worker
 * only), new ones for the rest. Prestarted threads beyond `count` are ended.
 */
export function takeVcpuThreads(count: number, url?: URL): StartedVcpuThread[] {
  const threads = Array.from({ length: count }, (_, i) => {
    const early = url === undefined ? prestarted.get(i) : undefined;
    if (!early) return startVcpuThread(i, url);
    prestarted.delete(i);
    early.worker.ref();
    return early;
  });
  if (url === undefined) void stopPrestartedVcpuThreads();
  return threads;
}

/**
 * End a thread without cutting it short: ask it to quit and wait until it has. A thread may
 * still be loading its modules, and terminating it in the middle of a native call (koffi's
 * set-up) aborts the whole process; asked to quit, it finishes loading, sees QUIT and returns.
 */
export async function stopVcpuThread(t: StartedVcpuThread): Promise<void> {
  // Waiting on it must keep the process alive (a prestarted thread is unreferenced).
  t.worker.ref();
  Atomics.store(t.control, CTL_RUN_STATE, QUIT);
  Atomics.add(t.control, CTL_COMMAND_SEQ, 1);
  Atomics.notify(t.control, CTL_COMMAND_SEQ);
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([t.exited, new Promise<void>((resolve) => { timer = setTimeout(resolve, QUIT_TIMEOUT_MS); })]);
  clearTimeout(timer);
  await t.worker.terminate();
}

/** End the prestarted threads no machine took (`tsvirt run` failed before it had a machine). */
export async function stopPrestartedVcpuThreads(): Promise<void> {
  const threads = [...prestarted.values()];
  prestarted.clear();
  await Promise.all(threads.map(stopVcpuThread));
}
