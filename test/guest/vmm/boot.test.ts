// Linux guests on tsvirt: boot the lab's Debian cloud kernel to userspace and check what the
// guest sees. Each boot costs seconds in the lab, so every boot checks several things.
import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Machine, type MachineExit } from '../../../src/vmm/machine.js';
import type { MachineConfig } from '../../../src/vmm/config.js';
import { guestKernelPath } from '../../../src/lab/paths.js';
import { GUEST_USERSPACE_LINE, guestInitrdWith } from '../../../src/lab/guest-image.js';
import { watchForStalls } from '../../support/stall-watchdog.js';
import { unpackedKernelFor } from '../../../src/vmm/kernel-cache.js';

watchForStalls(); // a blocked main thread fails this file with a diagnosis instead of hanging the suite

const BOOT_TIMEOUT_MS = 240_000;
const APPEND = 'console=ttyS0 reboot=k panic=-1 quiet';

// What every check script prints: CPU count, online mask, x2APIC lines and CPU flags.
const FACTS = [
  'echo "fact cpus=$(grep -c ^processor /proc/cpuinfo)"',
  'echo "fact online=$(cat /sys/devices/system/cpu/online)"',
  'dmesg | grep -q "x2apic enabled" && echo "fact x2apic=enabled"',
  'echo "fact flags=$(grep -m1 ^flags /proc/cpuinfo | cut -d: -f2)"',
  'echo "fact clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"',
  'echo "fact ktext=$(grep -w _text /proc/kallsyms | cut -d" " -f1)"',
].join('\n');
// A kernel's first boot unpacks it into the kernel cache before the guest starts (the CLI test
// below boots so, with a cache of its own); the machines here find it there already. Either
// way tsvirt places the kernel and chooses its KASLR offset.
before(async () => {
  const kernel = guestKernelPath();
  const unpacked = unpackedKernelFor(kernel, readFileSync(kernel));
  await unpacked?.stored;
  unpacked?.release();
});

/** Where the kernel's text starts without KASLR (__START_KERNEL_map + 16 MiB). */
const LINKED_TEXT = 0xffffffff81000000n;

interface Boot {
  exit: MachineExit;
  /** The machine's KASLR offset (see Machine.kaslrOffset). */
  kaslrOffset: bigint | undefined;
  /** Lock prefixes tsvirt elided at the last boot (see Machine.lockPrefixesElided). */
  lockPrefixesElided: number;
  output: string;
  facts: Map<string, string>;
  resets: number;
}

function facts(output: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of output.matchAll(/^fact (\w+)=(.*?)\r?$/gm)) if (!out.has(m[1]!)) out.set(m[1]!, m[2]!.trim());
  return out;
}

/**
 * Boot with `script` as the guest's test; `untilOutput` (optional) ends the run early when the
 * console output satisfies it (for reboot loops).
 */
async function boot(config: MachineConfig, script: string, untilOutput?: (out: string) => boolean, limitMs = BOOT_TIMEOUT_MS): Promise<Boot> {
  const initrd = await guestInitrdWith(script + '\n');
  const t0 = performance.now();
  const machine = await Machine.create({ kernel: guestKernelPath(), initrd, append: APPEND, memory: '256M', ...config });
  const created = performance.now();
  let output = '';
  let resets = 0;
  machine.on('reset', () => resets++);
  machine.console.on('data', (d: Buffer) => {
    output += d.toString('latin1');
    if (untilOutput?.(output)) void machine.stop();
  });
  const timer = setTimeout(() => void machine.stop(), limitMs);
  await machine.start();
  const exit = await machine.waitForExit();
  clearTimeout(timer);
  const up = output.indexOf(GUEST_USERSPACE_LINE) >= 0;
  process.stdout.write(`# ${config.cpus ?? 1} vCPUs: created in ${((created - t0) / 1000).toFixed(1)} s, ran ${((performance.now() - created) / 1000).toFixed(1)} s${up ? '' : ' (no userspace)'}\n`);
  return { exit, output, facts: facts(output), resets, kaslrOffset: machine.kaslrOffset, lockPrefixesElided: machine.lockPrefixesElided };
}

let hostFlags: string[] = [];

test('8 vCPUs: Linux boots to userspace, sees all CPUs, runs x2APIC and powers off with exit 0', { timeout: BOOT_TIMEOUT_MS + 10_000 }, async () => {
  const r = await boot({ cpus: 8 }, FACTS);
  assert.ok(r.output.includes(GUEST_USERSPACE_LINE), `no userspace line in:\n${r.output.slice(-2000)}`);
  assert.ok(r.output.includes('tsvirt-guest: exit 0'));
  assert.deepEqual(r.exit, { code: 0, reason: 'guest-shutdown' });
  assert.equal(r.facts.get('cpus'), '8');
  assert.equal(r.facts.get('online'), '0-7');
  assert.equal(r.facts.get('x2apic'), 'enabled');
  assert.equal(r.facts.get('clocksource'), 'kvm-clock');
  // The kernel was unpacked by tsvirt (the kernel cache) and randomized by its relocation
  // stub: the guest's kernel text is where the chosen offset put it.
  assert.ok(r.kaslrOffset !== undefined, 'tsvirt placed the kernel and chose a KASLR offset');
  assert.equal(r.facts.get('ktext'), (LINKED_TEXT + r.kaslrOffset).toString(16));
  assert.equal(r.lockPrefixesElided, 0, 'eight CPUs keep their lock prefixes');
  hostFlags = r.facts.get('flags')!.split(/\s+/);
  assert.ok(hostFlags.includes('x2apic') && hostFlags.includes('hypervisor'));
});

test('a named CPU model hides features the host has; a guest reboot restarts the machine', { timeout: BOOT_TIMEOUT_MS + 10_000 }, async () => {
  const twice = (out: string): boolean => out.split(GUEST_USERSPACE_LINE).length - 1 >= 2;
  const r = await boot({ cpus: 1, cpu: 'x86-64-v1,-vme' }, `${FACTS}\nreboot -f`, twice);
  assert.equal(r.facts.get('cpus'), '1');
  assert.ok(r.resets >= 1, 'reset event');
  assert.ok(twice(r.output), 'booted again after the reboot');
  // One CPU: both boots ran a kernel whose lock prefixes tsvirt had elided (smp-locks.ts).
  assert.ok(r.lockPrefixesElided > 1000, `${r.lockPrefixesElided} lock prefixes elided`);
  const flags = r.facts.get('flags')!.split(/\s+/);
  assert.ok(hostFlags.includes('sse4_2'), 'the lab host offers sse4_2');
  assert.equal(flags.includes('sse4_2'), false, 'x86-64-v1 has no sse4_2');
  assert.equal(flags.includes('popcnt'), false, 'x86-64-v1 has no popcnt');
  assert.ok(flags.includes('sse2') && flags.includes('lm'));
});

test('2 vCPUs with noReboot and nokaslr: a guest reboot ends the machine with exit 0; the kernel runs where it was linked', { timeout: BOOT_TIMEOUT_MS + 10_000 }, async () => {
  const r = await boot({ cpus: 2, noReboot: true, append: `${APPEND} nokaslr` }, `${FACTS}\nreboot -f`);
  assert.deepEqual(r.exit, { code: 0, reason: 'guest-reset' });
  assert.equal(r.resets, 0);
  assert.equal(r.facts.get('cpus'), '2');
  assert.equal(r.facts.get('online'), '0-1');
  // nokaslr: the kernel tsvirt placed from its cache, without the relocation stub.
  assert.equal(r.kaslrOffset, undefined);
  assert.equal(r.facts.get('ktext'), LINKED_TEXT.toString(16));
});

test('tsvirt run boots a kernel from the command line, unpacking it into an empty kernel cache first, and exits 0 when the guest powers off', { timeout: BOOT_TIMEOUT_MS + 10_000 }, async () => {
  const initrd = await guestInitrdWith(`${FACTS}\n`);
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-run-'));
  const log = join(dir, 'console.log');
  const cli = fileURLToPath(new URL('../../../src/cli/tsvirt.cjs', import.meta.url));
  const code = await new Promise<number>((resolve, reject) => {
    // A kernel cache of its own, empty: this is the kernel's first boot, which tsvirt unpacks
    // into the cache on a thread of its own before the guest starts.
    const child = spawn(process.execPath, [cli, 'run', '--kernel', guestKernelPath(), '--initrd', initrd, '--cpus', '1',
      '--memory', '256M,thp=off', '--append', APPEND, '--console', `file:${log}`, '--name', 'cli-guest'], {
      stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, TSVIRT_CACHE: join(dir, 'cache') },
    });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error('tsvirt run did not end')); }, BOOT_TIMEOUT_MS);
    child.on('exit', (c) => { clearTimeout(timer); resolve(c ?? 1); });
  });
  const output = readFileSync(log, 'latin1');
  assert.equal(code, 0, output.slice(-2000));
  assert.ok(output.includes('tsvirt-guest: exit 0'));
  assert.equal(facts(output).get('cpus'), '1');
});

test('RTC: the guest reads wall time, and an alarm set through /sys/class/rtc fires IRQ 8', { timeout: BOOT_TIMEOUT_MS + 10_000 }, async () => {
  // rtc-cmos takes the alarm (rtcwake, wakealarm, and the update events a read of /dev/rtc0
  // waits for) from the chip's alarm interrupt. Once it fired, the kernel clears wakealarm.
  const script = [
    'rtc_irqs() { awk \'/rtc0/ { print $2 }\' /proc/interrupts; }',
    'echo "fact epoch=$(date +%s)"',
    'echo "fact irqs_before=$(rtc_irqs)"',
    'echo +2 > /sys/class/rtc/rtc0/wakealarm',
    'echo "fact alarm_set=$(cat /sys/class/rtc/rtc0/wakealarm)"',
    'sleep 4',
    'echo "fact irqs_after=$(rtc_irqs)"',
    'echo "fact alarm_after=$(cat /sys/class/rtc/rtc0/wakealarm)"',
  ].join('\n');
  const hostEpoch = Date.now() / 1000;
  // Booted as QEMU boots it, by the kernel's own decompressor (and with its own lock patching).
  const r = await boot({ cpus: 1, kernelCache: false }, script);
  assert.ok(r.output.includes('tsvirt-guest: exit 0'), r.output.slice(-2000));
  assert.equal(r.kaslrOffset, undefined, 'the decompressor chose its own KASLR offset');
  assert.equal(r.lockPrefixesElided, 0);
  const guestEpoch = Number(r.facts.get('epoch'));
  assert.ok(Math.abs(guestEpoch - hostEpoch) < 120, `guest clock ${guestEpoch} vs host ${hostEpoch}`);
  assert.match(r.facts.get('alarm_set') ?? '', /^\d+$/, 'the alarm was set');
  const before = Number(r.facts.get('irqs_before'));
  const after = Number(r.facts.get('irqs_after'));
  assert.ok(Number.isInteger(before) && after > before, `rtc0 interrupts: ${before} before, ${after} after the alarm`);
  assert.equal(r.facts.get('alarm_after'), '', 'the alarm fired and was cleared');
});
