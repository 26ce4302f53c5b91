// A 64-vCPU Linux guest, booted through `tsvirt run` in its own process: 64 vCPU threads are
// 64 isolates, and in the lab they take about a minute to start (see docs/design.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { guestKernelPath } from '../../../src/lab/paths.js';
import { GUEST_USERSPACE_LINE, guestInitrdWith } from '../../../src/lab/guest-image.js';
import { watchForStalls } from '../../support/stall-watchdog.js';

watchForStalls(); // a blocked main thread fails this file with a diagnosis instead of hanging the suite

const LIMIT_MS = 420_000;

test('64 vCPUs all come online', { timeout: LIMIT_MS + 20_000 }, async () => {
  const initrd = await guestInitrdWith([
    'echo "fact cpus=$(grep -c ^processor /proc/cpuinfo)"',
    'echo "fact online=$(cat /sys/devices/system/cpu/online)"',
  ].join('\n') + '\n');
  const log = join(mkdtempSync(join(tmpdir(), 'tsvirt-64-')), 'console.log');
  const cli = fileURLToPath(new URL('../../../src/cli/tsvirt.cjs', import.meta.url));
  const start = performance.now();
  const code = await new Promise<number>((resolve, reject) => {
    const child = spawn(process.execPath, [cli, 'run', '--kernel', guestKernelPath(), '--initrd', initrd, '--cpus', '64',
      '--memory', '1G', '--append', 'console=ttyS0 reboot=k panic=-1 quiet', '--console', `file:${log}`],
    { stdio: ['ignore', 'inherit', 'inherit'] });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error('tsvirt run --cpus 64 did not end')); }, LIMIT_MS);
    child.on('exit', (c) => { clearTimeout(timer); resolve(c ?? 1); });
  });
  process.stdout.write(`# 64 vCPUs: tsvirt run took ${((performance.now() - start) / 1000).toFixed(1)} s\n`);
  const output = readFileSync(log, 'latin1');
  assert.equal(code, 0, output.slice(-2000));
  assert.ok(output.includes(GUEST_USERSPACE_LINE));
  assert.match(output, /^fact cpus=64\r?$/m);
  assert.match(output, /^fact online=0-63\r?$/m);
});
