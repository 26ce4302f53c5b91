// A 64-vCPU Linux guest. It is alone in its file, so it runs in a fresh test process: 64
// vCPU threads are 64 isolates, and in the lab they take about a minute to start (see
// docs/design.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Machine } from '../../../src/vmm/machine.js';
import { guestKernelPath } from '../../../src/lab/paths.js';
import { GUEST_USERSPACE_LINE, guestInitrdWith } from '../../../src/lab/guest-image.js';

const LIMIT_MS = 420_000;

test('64 vCPUs all come online', { timeout: LIMIT_MS + 20_000 }, async () => {
  const initrd = await guestInitrdWith([
    'echo "fact cpus=$(grep -c ^processor /proc/cpuinfo)"',
    'echo "fact online=$(cat /sys/devices/system/cpu/online)"',
  ].join('\n') + '\n');
  const t0 = performance.now();
  const machine = await Machine.create({
    kernel: guestKernelPath(), initrd, cpus: 64, memory: '1G', append: 'console=ttyS0 reboot=k panic=-1 quiet',
  });
  const created = performance.now();
  let output = '';
  machine.console.on('data', (d: Buffer) => { output += d.toString('latin1'); });
  const timer = setTimeout(() => void machine.stop(), LIMIT_MS);
  await machine.start();
  const exit = await machine.waitForExit();
  clearTimeout(timer);
  process.stdout.write(`# 64 vCPUs: created in ${((created - t0) / 1000).toFixed(1)} s, ran ${((performance.now() - created) / 1000).toFixed(1)} s\n`);
  assert.ok(output.includes(GUEST_USERSPACE_LINE), output.slice(-2000));
  assert.deepEqual(exit, { code: 0, reason: 'guest-shutdown' });
  assert.match(output, /^fact cpus=64\r?$/m);
  assert.match(output, /^fact online=0-63\r?$/m);
});
