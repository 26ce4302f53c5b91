// Boot benchmark: time from process start to the guest's first userspace line, and the VMM's
// resident memory besides guest RAM, tsvirt against QEMU (-M pc and -M microvm) with the same
// kernel, initrd, memory and command line, measured in the same lab run (a Linux guest needs
// the nested lab's fast /dev/kvm; see src/lab).
//
// Run on the host, the group starts the lab once and runs this same file inside it as a
// probe, which prints one JSON line with the measurements.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Writable } from 'node:stream';
import type { BenchGroup, BenchRow } from '../main.js';

const MEMORY_MIB = 256;
const APPEND = 'console=ttyS0 reboot=k panic=-1 quiet';
const USERSPACE_LINE = 'tsvirt-guest: userspace up';
const PROBE_TIMEOUT_MS = 180_000;
/**
 * Boots per VMM. The lab shares two host cores with whatever else runs, so one boot can be
 * seconds off; the VMMs take turns round by round (a load change hits all of them) and each
 * reports its median boot. Five rounds: with three, single boots half a second apart on
 * both sides moved the ratio by 0.1 from one run to the next.
 */
const ROUNDS = 5;

interface Sample {
  /** Milliseconds from spawn to the userspace line. */
  bootMs: number;
  /** KiB resident in the VMM process outside the guest RAM mapping. */
  vmmRssKiB: number;
}

/**
 * Resident KiB of `pid` outside its guest RAM: every mapping's Rss except the one mapping of
 * exactly the guest's size (both VMMs keep guest RAM in one anonymous mapping of that size).
 */
function rssBesidesGuestRam(pid: number, guestKiB: number): number {
  const smaps = readFileSync(`/proc/${pid}/smaps`, 'utf8');
  let total = 0;
  let currentSize = 0;
  for (const line of smaps.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (m) {
      currentSize = (parseInt(m[2]!, 16) - parseInt(m[1]!, 16)) / 1024;
      continue;
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss && currentSize !== guestKiB) total += Number(rss[1]);
  }
  return total;
}

/** Start `command`, wait for the userspace line on its output, sample memory, kill it. */
function measure(command: string, args: string[], env?: NodeJS.ProcessEnv): Promise<Sample> {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(env ? { env: { ...process.env, ...env } } : {}) });
    let out = '';
    let done = false;
    const timer = setTimeout(() => finish(new Error(`${command}: no userspace line within ${PROBE_TIMEOUT_MS} ms:\n${out.slice(-1500)}`)), PROBE_TIMEOUT_MS);
    const finish = (err: Error | null, sample?: Sample): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      if (err) reject(err); else resolve(sample!);
    };
    const onData = (d: Buffer): void => {
      out += d.toString('latin1');
      if (!done && out.includes(USERSPACE_LINE)) {
        const bootMs = performance.now() - start;
        // With TSVIRT_BOOT_TRACE set, the VMM's start-up steps of every boot go on record.
        if (process.env.TSVIRT_BOOT_TRACE && command === process.execPath) {
          const steps = out.split('\n').filter((line) => line.startsWith('tsvirt-trace '));
          process.stderr.write(`${steps.join('\n')}\ntsvirt-trace ${bootMs.toFixed(1)} userspace line (spawn to line)\n`);
        }
        // Sampled at once, at the same point of the boot for every VMM (the guest then sleeps).
        try {
          finish(null, { bootMs, vmmRssKiB: rssBesidesGuestRam(child.pid!, MEMORY_MIB * 1024) });
        } catch (err) {
          finish(err as Error);
        }
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', (err) => finish(err));
    child.on('exit', (code) => finish(new Error(`${command} exited (${code}) before userspace:\n${out.slice(-1500)}`)));
  });
}

/** The median boot time, with the memory of that same boot. */
function medianSample(samples: Sample[]): Sample {
  const sorted = [...samples].sort((x, y) => x.bootMs - y.bootMs);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/**
 * Microseconds per port-I/O exit round trip through each of tsvirt's exit paths: a tiny guest
 * writes `count` times to one port, then powers off. The UART's scratch register is served on
 * the vCPU thread; the ACPI PM1 status port (a write of 0 clears no flag) goes through the
 * main-thread mailbox.
 */
async function exitCost(port: number, count: number): Promise<number> {
  const { Machine } = await import('../../src/vmm/machine.js');
  const { GuestCode } = await import('../../src/kvm/index.js');
  const code = new GuestCode('real').movDxImm16(port).movAlImm8(0).movEcxImm32(count);
  const top = code.offset;
  code.outDxAl().decCounter().jnzBack(top);
  code.movDxImm16(0x604).movEaxImm32((5 << 10) | (1 << 13)).outDxAx(); // ACPI S5: power off
  const machine = await Machine.create({ memory: '32M', console: 'none' }, {
    rawBoot: { code: Uint8Array.from([...code.bytes(), 0xfa, 0xf4]), address: 0x8000 },
    earlyVcpu: false, // the paths of a vCPU thread are what is measured
  });
  const start = performance.now();
  await machine.start();
  await machine.waitForExit();
  return ((performance.now() - start) * 1000) / count;
}

/** Inside the lab: boot each VMM once and print the results as one JSON line. */
async function probe(): Promise<void> {
  const exits = { vcpuThreadUs: await exitCost(0x3ff, 5_000), mainThreadUs: await exitCost(0x600, 5_000) };
  const { guestKernelPath } = await import('../../src/lab/paths.js');
  const { guestInitrdWith } = await import('../../src/lab/guest-image.js');
  const kernel = guestKernelPath();
  const initrd = await guestInitrdWith('sleep 5\n');
  const cli = fileURLToPath(new URL('../../src/cli/tsvirt.cjs', import.meta.url));
  const qemuCommon = ['-enable-kvm', '-cpu', 'host', '-m', String(MEMORY_MIB), '-smp', '1', '-nodefaults', '-no-user-config',
    '-display', 'none', '-serial', 'stdio', '-kernel', kernel, '-initrd', initrd, '-append', APPEND];
  const vmms: Record<'tsvirt' | 'qemu' | 'microvm', [string, string[]]> = {
    tsvirt: [process.execPath, [cli, 'run', '--kernel', kernel, '--initrd', initrd, '--memory', `${MEMORY_MIB}M`,
      '--cpus', '1', '--append', APPEND, '--console', 'stdio']],
    qemu: ['qemu-system-x86_64', ['-M', 'pc', ...qemuCommon]],
    microvm: ['qemu-system-x86_64', ['-M', 'microvm', ...qemuCommon]],
  };
  // TSVIRT_BOOT_BENCH_COMPARE=1: variants of tsvirt take their turns too, each boot printed
  // by the host side: without the start-up bundles, and (TSVIRT_BOOT_BENCH_BASELINE=PATH, a
  // CLI inside dist/, e.g. an older build copied there) another build.
  const variants: Record<string, [string, string[], NodeJS.ProcessEnv]> = {};
  if (process.env.TSVIRT_BOOT_BENCH_COMPARE) {
    const [command, args] = vmms.tsvirt;
    variants['tsvirt-unbundled'] = [command, args, { TSVIRT_UNBUNDLED: '1' }];
    const baseline = process.env.TSVIRT_BOOT_BENCH_BASELINE;
    if (baseline) variants['tsvirt-baseline'] = [command, [fileURLToPath(new URL(`../../../${baseline}`, import.meta.url)), ...args.slice(1)], {}];
  }
  // TSVIRT_BOOT_BENCH_NODE_FLAGS='--flag-a;--flag-b --flag-c': each set of node flags is a
  // variant of tsvirt taking its turn (V8 flags are not allowed in NODE_OPTIONS).
  for (const set of (process.env.TSVIRT_BOOT_BENCH_NODE_FLAGS ?? '').split(';').map((x) => x.trim()).filter(Boolean)) {
    const [command, args] = vmms.tsvirt;
    variants[`tsvirt ${set}`] = [command, [...set.split(/\s+/), ...args], {}];
  }
  const samples: Record<string, Sample[]> = {};
  const first: Record<string, Sample> = {};
  // Every tsvirt variant starts with an empty kernel cache of this run's own.
  const cacheDir = mkdtempSync(join(tmpdir(), 'tsvirt-boot-bench-'));
  const all = [...Object.entries(vmms), ...Object.entries(variants)].map(([name, [command, args, env]]) =>
    [name, command, args, command === process.execPath ? { ...env, TSVIRT_CACHE: cacheDir } : env] as const);
  // A first round of its own, for every VMM: the files' first reads, tsvirt's code caches
  // and its kernel cache (a kernel it has not seen is its own decompressor's while tsvirt
  // fills the cache) are paid there. It is reported on its own row, and the rounds after it
  // are the steady state.
  for (const [name, command, args, env] of all) first[name] = await measure(command, args, env);
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, command, args, env] of all) (samples[name] ??= []).push(await measure(command, args, env));
  }
  rmSync(cacheDir, { recursive: true, force: true });
  const results = {
    tsvirt: medianSample(samples.tsvirt!), qemu: medianSample(samples.qemu!), microvm: medianSample(samples.microvm!), exits,
    first: { tsvirt: first.tsvirt!, qemu: first.qemu! },
    boots: samples,
  };
  process.stdout.write(`BOOT-BENCH ${JSON.stringify(results)}\n`);
}

export const group: BenchGroup = {
  title: `Boot: process start to guest userspace (1 vCPU, 256 MiB, in the lab, median of ${ROUNDS} after a first round)`,
  async run(): Promise<BenchRow[]> {
    const { labExec } = await import('../../src/lab/exec.js');
    let text = '';
    const sink = new Writable({ write(chunk: Buffer, _e, cb) { text += chunk.toString(); cb(); } });
    const probePath = fileURLToPath(import.meta.url);
    const { toLabPath } = await import('../../src/lab/project-tree.js');
    const { projectRoot } = await import('../../src/lab/paths.js');
    // TSVIRT_BOOT_TRACE=1 npm run bench -- boot: also print each tsvirt boot's start-up steps;
    // the comparison switches (probe(), above) are passed on too.
    const passed = ['TSVIRT_BOOT_TRACE', 'TSVIRT_BOOT_BENCH_COMPARE', 'TSVIRT_BOOT_BENCH_BASELINE', 'TSVIRT_BOOT_BENCH_NODE_FLAGS'].filter((name) => process.env[name]);
    const trace = passed.length > 0 ? ['env', ...passed.map((name) => `${name}=${process.env[name]}`)] : [];
    const command = [...trace, 'node', toLabPath(projectRoot(), probePath), '--probe'];
    const result = await labExec(command, { stdout: sink, stderr: sink, timeoutSeconds: 900 });
    const m = /^BOOT-BENCH (.*)$/m.exec(text);
    if (result.exitCode !== 0 || !m) throw new Error(`boot probe failed in the lab (exit ${result.exitCode}): ${text.slice(-800)}`);
    const r = JSON.parse(m[1]!) as Record<'tsvirt' | 'qemu' | 'microvm', Sample> & {
      exits: { vcpuThreadUs: number; mainThreadUs: number };
      first: Record<'tsvirt' | 'qemu', Sample>;
      boots: Record<string, Sample[]>;
    };
    if (process.env.TSVIRT_BOOT_TRACE) process.stdout.write(`${text.split('\n').filter((l) => l.startsWith('tsvirt-trace ')).join('\n')}\n`);
    // Every boot, so the spread behind the medians is on record.
    process.stdout.write(`first round: tsvirt ${(r.first.tsvirt.bootMs / 1000).toFixed(2)} s, qemu ${(r.first.qemu.bootMs / 1000).toFixed(2)} s\n`);
    for (const [name, boots] of Object.entries(r.boots)) {
      process.stdout.write(`boot ${name}: ${boots.map((b) => `${(b.bootMs / 1000).toFixed(2)} s/${(b.vmmRssKiB / 1024).toFixed(0)} MiB`).join(', ')}\n`);
    }
    return [
      { name: 'boot to userspace vs QEMU -M pc', ours: r.tsvirt.bootMs / 1000, reference: r.qemu.bootMs / 1000, unit: 's', higherIsBetter: false },
      { name: 'boot to userspace vs QEMU -M microvm', ours: r.tsvirt.bootMs / 1000, reference: r.microvm.bootMs / 1000, unit: 's', higherIsBetter: false },
      // The first round: tsvirt's kernel cache is empty then (the guest decompresses, the cache fills).
      { name: 'first boot of a kernel vs QEMU -M pc (one boot each)', ours: r.first.tsvirt.bootMs / 1000, reference: r.first.qemu.bootMs / 1000, unit: 's', higherIsBetter: false },
      { name: 'VMM RSS besides guest RAM vs QEMU -M pc', ours: r.tsvirt.vmmRssKiB / 1024, reference: r.qemu.vmmRssKiB / 1024, unit: 'MiB', higherIsBetter: false },
      { name: 'VMM RSS besides guest RAM vs QEMU -M microvm', ours: r.tsvirt.vmmRssKiB / 1024, reference: r.microvm.vmmRssKiB / 1024, unit: 'MiB', higherIsBetter: false },
      // Reference here: the main-thread mailbox path, to show what serving the console on the vCPU thread saves.
      { name: 'console port exit on the vCPU thread vs main-thread exit', ours: r.exits.vcpuThreadUs, reference: r.exits.mainThreadUs, unit: 'us/exit', higherIsBetter: false },
    ];
  },
};

if (process.argv.includes('--probe') && import.meta.url === `file://${process.argv[1]}`) await probe();
