// The machine on this host's own KVM, with micro-guests (a Linux guest needs the lab).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine, MachineError } from '../../../src/vmm/machine.js';
import type { MachineConfig } from '../../../src/vmm/config.js';
import { GuestRamError } from '../../../src/vmm/guest-ram.js';
import { hostMemoryLimit } from '../../../src/memory/host-ram.js';
import { acpiPortsGuest, GUEST_ADDRESS, helloGuest, localPortsGuest, pciConfigGuest, powerOffGuest, resetGuest } from './micro-guests.js';
import { waitFor } from '../../support/wait.js';
import { bzImagePayload } from '../../../src/arch/x86/kernel-payload.js';
import { debianKernelOrSkip } from '../../unit/arch/debian-kernel.js';

const TIMEOUT = 20_000;

function collect(m: Machine): { text: () => string } {
  let out = '';
  m.console.on('data', (d: Buffer) => { out += d.toString('latin1'); });
  return { text: () => out };
}

test('a machine runs its guest, pauses, resumes, resets and stops, with events', { timeout: 60_000 }, async () => {
  const m = await Machine.create({ cpus: 2, memory: '64M', name: 'micro' }, { rawBoot: { code: helloGuest('Hi\n'), address: GUEST_ADDRESS } });
  const events: string[] = [];
  for (const e of ['stop', 'resume', 'reset', 'shutdown', 'exit'] as const) {
    m.on(e, (info?: { guest?: boolean; reason?: string }) => events.push(info?.reason ? `${e}:${info.reason}` : e));
  }
  const out = collect(m);
  // A failed step must not leave the machine running: its vCPU threads would keep this file's process alive.
  try {
    assert.equal(m.runState(), 'prelaunch');
    assert.equal(m.name, 'micro');
    assert.match(m.uuid, /^[0-9a-f-]{36}$/);
    await m.start();
    assert.equal(m.runState(), 'running');
    // "Hi\n" then the RTC's status register A (0x26 = '&').
    await waitFor('guest output', () => out.text() === 'Hi\n&', TIMEOUT);
    // The vCPU thread counts an exit once it has served it: the last character can reach
    // the console before its exit is counted.
    await waitFor('six exits counted', () => { const s = m.exitStats(); return s.local + s.forwarded + s.mainThread >= 6; }, TIMEOUT);
    assert.deepEqual(m.exitStats(), { local: 6, forwarded: 0, mainThread: 0 }, 'console and RTC reads are served on the vCPU thread');

    await m.pause();
    assert.equal(m.runState(), 'paused');
    await m.resume();
    assert.equal(m.runState(), 'running');
    const cpus = m.cpus();
    assert.deepEqual(cpus.map((c) => c.cpuIndex), [0, 1]);
    assert.ok(cpus.every((c) => c.threadId > 0 && c.threadId !== process.pid), 'each vCPU has its own thread');
    assert.notEqual(cpus[0]!.threadId, cpus[1]!.threadId);

    await m.reset();
    await waitFor('output after reset', () => out.text() === 'Hi\n&Hi\n&', TIMEOUT);
    assert.equal(m.runState(), 'running');
    await m.stop();
    const exit = await m.waitForExit();
    assert.deepEqual(exit, { code: 0, reason: 'host-stop' });
    assert.equal(m.runState(), 'shutdown');
    assert.deepEqual(events, ['stop', 'resume', 'reset:host-qmp-system-reset', 'shutdown:host-signal', 'exit:host-stop']);
  } finally {
    if (m.result === null) await m.stop();
  }
});

/** Start a one-vCPU machine on a micro-guest and wait for `length` bytes of its output. */
async function runUntilOutput(code: Uint8Array, length: number, config: Partial<MachineConfig> = {}): Promise<{ m: Machine; bytes: Buffer }> {
  // The vCPU thread from the first instruction: these guests test what the thread serves.
  const m = await Machine.create({ cpus: 1, memory: '32M', ...config }, { rawBoot: { code, address: GUEST_ADDRESS }, earlyVcpu: false });
  const out = collect(m);
  await m.start();
  try {
    await waitFor('guest output', () => out.text().length === length, TIMEOUT);
  } catch (err) {
    await m.stop();
    throw err;
  }
  return { m, bytes: Buffer.from(out.text(), 'latin1') };
}

test('the vCPU thread answers absent ports, the PM timer and RTC reads itself', { timeout: 60_000 }, async () => {
  const { m, bytes } = await runUntilOutput(localPortsGuest(), 7);
  try {
    assert.equal(bytes[0], 0xff, 'a read of a port nobody claims floats to all ones');
    assert.equal(bytes[1], 0x26, 'RTC register A after reset');
    // The periodic flag comes and goes with the default rate; IRQF stays clear, nothing being enabled.
    assert.equal(bytes[2]! & 0x8f, 0, `RTC register C read through the main thread's chip: 0x${bytes[2]!.toString(16)}`);
    // Two reads a few exits apart: the 24-bit count moved forward, by less than a second's worth.
    const ticks = bytes.readUInt32LE(3);
    assert.ok(ticks > 0 && ticks < 3_579_545, `PM timer advanced by ${ticks} ticks`);
    assert.deepEqual(m.exitStats(), { local: 14, forwarded: 1, mainThread: 0 }, 'only the read of RTC register C went to the main thread');
  } finally {
    await m.stop();
  }
});

test('the vCPU thread answers reads of the ACPI PM1 registers and the i8042 status, and GPE0 whole', { timeout: 60_000 }, async () => {
  const { m, bytes } = await runUntilOutput(acpiPortsGuest(), 4);
  try {
    assert.deepEqual([...bytes], [0x00, 0x5a, 0x14, 0x01],
      'PM1 enable 0 after reset, the GPE0 enable byte written, i8042 status SYS|KEYLOCK, PM1 control SCI_EN');
    assert.deepEqual(m.exitStats(), { local: 9, forwarded: 0, mainThread: 0 }, 'none of these went to the main thread');
  } finally {
    await m.stop();
  }
});

test('the vCPU thread answers PCI config reads and the 0xCF8 latch from the bridge’s shared config space', { timeout: 60_000 }, async () => {
  const { m, bytes } = await runUntilOutput(pciConfigGuest(), 10, { rng: true });
  try {
    assert.deepEqual([...bytes], [0x36, 0x1b, 0x08, 0x00, 0xf4, 0x1a, 0x44, 0x10, 0x00, 0x80],
      'host bridge 1b36:0008, virtio-rng 1af4:1044 in slot 1, its base class 0x00 (unclassified), the latch\'s enable bit');
    assert.deepEqual(m.exitStats(), { local: 17, forwarded: 0, mainThread: 0 }, 'none of these went to the main thread');
  } finally {
    await m.stop();
  }
});

test('reset while paused stays paused until resumed', { timeout: 60_000 }, async () => {
  const m = await Machine.create({ memory: '32M' }, { rawBoot: { code: helloGuest('P'), address: GUEST_ADDRESS } });
  const out = collect(m);
  await m.start();
  await waitFor('first boot', () => out.text() === 'P&', TIMEOUT);
  await m.pause();
  await m.reset();
  assert.equal(m.runState(), 'paused');
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(out.text(), 'P&', 'nothing runs while paused');
  await m.resume();
  await waitFor('second boot', () => out.text() === 'P&P&', TIMEOUT);
  await m.quit();
  assert.equal((await m.waitForExit()).reason, 'host-qmp-quit');
});

test('a guest reset through the i8042 restarts the guest, or ends it with noReboot', { timeout: 60_000 }, async () => {
  const m = await Machine.create({ memory: '32M' }, { rawBoot: { code: resetGuest('R'), address: GUEST_ADDRESS } });
  const resets: Array<{ guest: boolean; reason: string }> = [];
  m.on('reset', (info) => resets.push(info));
  const out = collect(m);
  await m.start();
  await waitFor('two boots', () => out.text().length >= 2, TIMEOUT);
  assert.ok(resets.length >= 1);
  assert.deepEqual(resets[0], { guest: true, reason: 'guest-reset' });
  await m.stop();

  const once = await Machine.create({ memory: '32M', noReboot: true }, { rawBoot: { code: resetGuest('R'), address: GUEST_ADDRESS } });
  const out2 = collect(once);
  const shutdowns: Array<{ guest: boolean; reason: string }> = [];
  once.on('shutdown', (info) => shutdowns.push(info));
  await once.start();
  const exit = await once.waitForExit();
  assert.deepEqual(exit, { code: 0, reason: 'guest-reset' });
  assert.deepEqual(shutdowns, [{ guest: true, reason: 'guest-reset' }]);
  assert.equal(out2.text(), 'R', 'booted once');
});

test('a guest writing S5 to the ACPI PM control register powers the machine off with code 0', { timeout: 60_000 }, async () => {
  const m = await Machine.create({ memory: '32M' }, { rawBoot: { code: powerOffGuest('bye'), address: GUEST_ADDRESS } });
  const out = collect(m);
  await m.start();
  const exit = await m.waitForExit();
  assert.deepEqual(exit, { code: 0, reason: 'guest-shutdown' });
  assert.equal(out.text(), 'bye');
});

test('a corrupt or missing kernel file is a clear error naming it, before anything runs', { timeout: 30_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-kernel-'));
  const corrupt = join(dir, 'vmlinuz');
  writeFileSync(corrupt, Buffer.alloc(8192, 0x41));
  await assert.rejects(Machine.create({ kernel: corrupt, memory: '32M' }), (err: Error) => {
    assert.ok(err instanceof MachineError);
    assert.match(err.message, new RegExp(`^kernel ${corrupt}: not a Linux kernel`));
    return true;
  });
  const tiny = join(dir, 'tiny');
  writeFileSync(tiny, Buffer.from([1, 2, 3]));
  await assert.rejects(Machine.create({ kernel: tiny, memory: '32M' }), /kernel .*tiny: kernel image is truncated/);
  await assert.rejects(Machine.create({ kernel: join(dir, 'absent'), memory: '32M' }), /kernel .*absent: cannot read \(ENOENT\)/);
  await assert.rejects(Machine.create({ kernel: corrupt, initrd: join(dir, 'none.img'), memory: '32M' }), /initrd .*none\.img: cannot read \(ENOENT\)/);
});

test('a bzImage whose compressed kernel does not unpack is refused with an error naming the file, unless the guest is left to unpack it', { timeout: 60_000 }, async (t) => {
  const k = debianKernelOrSkip(t);
  if (!k) return;
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-kernel-'));
  const broken = join(dir, 'vmlinuz-broken');
  const bytes = new Uint8Array(k.bytes);
  // The first LZ4 block claims more bytes than the payload holds: nothing decodes.
  const payload = bzImagePayload(bytes)!;
  new DataView(payload.buffer, payload.byteOffset).setUint32(4, 0x7fffffff, true);
  writeFileSync(broken, bytes);
  const saved = process.env.TSVIRT_CACHE;
  process.env.TSVIRT_CACHE = join(dir, 'cache');
  try {
    // Its first boot unpacks it into the kernel cache, on a thread of its own, before the
    // guest runs: that finds it corrupt, and the machine is not made.
    await assert.rejects(Machine.create({ kernel: broken, memory: '128M' }), (err: Error) => {
      assert.ok(err instanceof MachineError);
      assert.match(err.message, new RegExp(`^kernel ${broken}: the kernel's lz4 payload unpacked to 0 bytes, its trailer says \\d+$`));
      return true;
    });
    // kernelCache: false leaves the payload to the kernel's own decompressor in the guest.
    const left = await Machine.create({ kernel: broken, memory: '128M', kernelCache: false });
    assert.equal(left.kaslrOffset, undefined);
    await left.stop();
    assert.equal((await left.waitForExit()).code, 0);
  } finally {
    if (saved === undefined) delete process.env.TSVIRT_CACHE;
    else process.env.TSVIRT_CACHE = saved;
  }
});

test('a kernel placed by the VMM on one CPU has its lock prefixes elided before it runs; on two, with noreplace-smp or unpacked by the guest, not', { timeout: 60_000 }, async (t) => {
  const k = debianKernelOrSkip(t);
  if (!k) return;
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-kernel-'));
  const saved = process.env.TSVIRT_CACHE;
  process.env.TSVIRT_CACHE = join(dir, 'cache');
  try {
    const elided = async (config: Partial<MachineConfig>): Promise<number> => {
      const m = await Machine.create({ kernel: k.path, memory: '128M', ...config });
      const count = m.lockPrefixesElided;
      await m.stop();
      await m.waitForExit();
      return count;
    };
    assert.ok(await elided({}) > 1000, 'one CPU, at the first boot of the kernel (which unpacks it into the empty cache)');
    assert.ok(await elided({}) > 1000, 'one CPU, placed from the cache');
    assert.equal(await elided({ cpus: 2 }), 0, 'two CPUs keep their locks');
    assert.equal(await elided({ append: 'console=ttyS0 noreplace-smp' }), 0, 'the kernel told to keep them');
    assert.equal(await elided({ kernelCache: false }), 0, 'the guest unpacks and places the kernel itself');
  } finally {
    if (saved === undefined) delete process.env.TSVIRT_CACHE;
    else process.env.TSVIRT_CACHE = saved;
  }
});

test('a memory size the host cannot give fails before the guest starts', { timeout: 30_000 }, async () => {
  const tooMuch = BigInt(hostMemoryLimit()) * 2n;
  const gib = tooMuch / (1024n ** 3n) + 1n;
  await assert.rejects(
    Machine.create({ memory: `${gib}G` }, { rawBoot: { code: helloGuest('x'), address: GUEST_ADDRESS } }),
    (err: Error) => {
      assert.ok(err instanceof GuestRamError);
      assert.match(err.message, new RegExp(`^guest memory ${gib} GiB is more than this host can give \\(\\d+ (MiB|GiB) of RAM and swap\\)$`));
      return true;
    },
  );
});

test('more vCPUs than the schema allows is a config error', async () => {
  await assert.rejects(Machine.create({ cpus: 300 }, { rawBoot: { code: helloGuest('x'), address: GUEST_ADDRESS } }), /^ConfigError: config: cpus: must be <= 255$/m);
});

test('a CPU model asking for features this host lacks is refused with the list', { timeout: 30_000 }, async (t) => {
  const { Kvm } = await import('../../../src/kvm/index.js');
  const { CPU_MODELS, checkModel } = await import('../../../src/arch/x86/cpu-models.js');
  const kvm = Kvm.open();
  const supported = kvm.supportedCpuid();
  kvm.close();
  const lacking = Object.keys(CPU_MODELS).map((name) => ({ name, missing: checkModel(name, supported) })).find((m) => m.missing.length > 0);
  if (!lacking) {
    t.skip('this host offers every feature of every named model');
    return;
  }
  await assert.rejects(
    Machine.create({ cpu: lacking.name, memory: '32M' }, { rawBoot: { code: helloGuest('x'), address: GUEST_ADDRESS } }),
    (err: Error) => {
      assert.equal(err.message, `CPU model "${lacking.name}" needs features this host's KVM does not offer: ${lacking.missing.join(', ')}`);
      return true;
    },
  );
  await assert.rejects(Machine.create({ cpu: 'Pentium', memory: '32M' }, { rawBoot: { code: helloGuest('x'), address: GUEST_ADDRESS } }), /unknown CPU model "Pentium"/);
});
