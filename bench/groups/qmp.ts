// QMP round-trip latency: query-status over a unix socket, one request in flight at a time,
// against `tsvirt run --qmp` and against QEMU, both as separate processes started here with
// the same kernel (the guest's progress does not matter: only the monitor is measured).
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { QmpClient } from '../../src/qmp/client.js';
import { qemuUnavailable, startQemu, testKernel } from '../../test/host/qmp/support/qemu.js';
import type { BenchGroup, BenchRow } from '../main.js';

const WARMUP = 200;
const SAMPLES = 2000;
const cli = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

async function waitForSocket(path: string, child: ChildProcess, what: string): Promise<void> {
  for (let i = 0; i < 300 && !existsSync(path); i++) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode} before opening ${path}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  if (!existsSync(path)) throw new Error(`${what} did not open ${path} within 15 s`);
}

/** Microseconds per query-status round trip: [median, p99]. */
async function roundTrips(socket: string): Promise<[number, number]> {
  const client = await QmpClient.connect(socket, { timeoutMs: 5000 });
  try {
    for (let i = 0; i < WARMUP; i++) await client.execute('query-status');
    const samples: number[] = [];
    for (let i = 0; i < SAMPLES; i++) {
      const t0 = process.hrtime.bigint();
      await client.execute('query-status');
      samples.push(Number(process.hrtime.bigint() - t0) / 1000);
    }
    samples.sort((a, b) => a - b);
    return [samples[Math.floor(SAMPLES / 2)]!, samples[Math.floor(SAMPLES * 0.99)]!];
  } finally {
    client.close();
  }
}

async function run(): Promise<BenchRow[]> {
  const why = qemuUnavailable();
  if (why) throw new Error(`QMP benchmark needs QEMU and /dev/kvm: ${why}`);
  const kernel = testKernel();
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-bench-qmp-'));
  const ourSocket = join(dir, 'tsvirt.qmp');
  const tsvirt = spawn(process.execPath, [cli, 'run', '--kernel', kernel, '--memory', '256M', '--console', 'none',
    '--qmp', `unix:${ourSocket},server=on,wait=off`], { stdio: 'ignore' });
  const qemu = await startQemu(kernel, join(dir, 'qemu.qmp'));
  try {
    await waitForSocket(ourSocket, tsvirt, 'tsvirt run');
    const [ourMedian, ourP99] = await roundTrips(ourSocket);
    const [theirMedian, theirP99] = await roundTrips(qemu.socket);
    return [
      { name: 'query-status round trip, median', ours: ourMedian, reference: theirMedian, unit: 'µs', higherIsBetter: false },
      { name: 'query-status round trip, p99', ours: ourP99, reference: theirP99, unit: 'µs', higherIsBetter: false },
    ];
  } finally {
    tsvirt.kill('SIGTERM');
    await qemu.stop();
    if (tsvirt.exitCode === null) {
      await new Promise((resolve) => {
        const timer = setTimeout(() => { tsvirt.kill('SIGKILL'); resolve(undefined); }, 5000);
        tsvirt.once('exit', () => { clearTimeout(timer); resolve(undefined); });
      });
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

export const group: BenchGroup = { title: 'QMP monitor (tsvirt run vs QEMU)', run };
