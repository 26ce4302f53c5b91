// The guest console on virtio-serial port 0 with no UART console at all (console=hvc0 alone).
// Such a boot once stalled before any output; the stall was the vCPU thread's lost wake-up
// (fixed since), and these boots check it stays fixed. Nothing is retried: every boot must
// reach userspace and power off. With virtio_console a module, the kernel has no console
// until init loads it; the log written before that is replayed once hvc0 registers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Machine, type MachineExit } from '../../../src/vmm/machine.js';
import { guestKernelPath } from '../../../src/lab/paths.js';
import { GUEST_USERSPACE_LINE, guestInitrdWith } from '../../../src/lab/guest-image.js';
import { watchForStalls } from '../../support/stall-watchdog.js';

watchForStalls(); // a blocked main thread fails this file with a diagnosis instead of hanging the suite

const BOOTS = 3;
const BOOT_TIMEOUT_MS = 120_000;
const APPEND = 'console=hvc0 reboot=k panic=-1 quiet';

const SCRIPT = `
echo "fact console_tty=$(cat /sys/class/tty/console/active)"
echo "fact stdout=$(readlink /proc/$$/fd/1)"
echo "<3>tsvirt-kmsg: hvc0 only" > /dev/kmsg
echo "fact console_ready=yes"
line=$(timeout 60 head -n1)
echo "fact console_line=$line"
`;

interface Boot { exit: MachineExit | 'timeout'; output: string }

async function bootOnce(initrd: string): Promise<Boot> {
  const machine = await Machine.create({
    kernel: guestKernelPath(), initrd, append: APPEND, memory: '256M', cpus: 2, consoleDevice: 'virtio',
  });
  let output = '';
  let sent = false;
  machine.console.on('data', (d: Buffer) => {
    output += d.toString('latin1');
    if (!sent && output.includes('fact console_ready=yes')) {
      sent = true;
      machine.console.write('typed-on-hvc0\n');
    }
  });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    void machine.stop();
  }, BOOT_TIMEOUT_MS);
  try {
    await machine.start();
    const exit = await machine.waitForExit();
    return { exit: timedOut ? 'timeout' : exit, output };
  } finally {
    clearTimeout(timer);
  }
}

function fact(output: string, name: string): string | undefined {
  return new RegExp(`^fact ${name}=(.*?)\\r?$`, 'm').exec(output)?.[1];
}

test(`console=hvc0 alone: ${BOOTS} boots each reach userspace, carry the console both ways and power off`, { timeout: BOOTS * (BOOT_TIMEOUT_MS + 30_000) }, async () => {
  const initrd = await guestInitrdWith(SCRIPT);
  for (let i = 1; i <= BOOTS; i++) {
    const { exit, output } = await bootOnce(initrd);
    const tail = `boot ${i} of ${BOOTS}, output:\n${output.slice(-3000)}`;
    assert.notEqual(exit, 'timeout', `boot ${i} did not finish within ${BOOT_TIMEOUT_MS} ms; ${tail}`);
    assert.ok(output.includes(GUEST_USERSPACE_LINE), tail);
    assert.equal(fact(output, 'console_tty'), 'hvc0', tail);
    assert.equal(fact(output, 'stdout'), '/dev/hvc0', tail);
    const kmsg = output.match(/^\[ *\d+\.\d+\] tsvirt-kmsg: hvc0 only\r?$/gm) ?? [];
    assert.equal(kmsg.length, 1, `the kernel message once, through hvc0; ${tail}`);
    assert.equal(fact(output, 'console_line'), 'typed-on-hvc0', tail);
    assert.ok(output.includes('tsvirt-guest: exit 0'), tail);
    assert.deepEqual(exit, { code: 0, reason: 'guest-shutdown' });
  }
});
