// The guest image's init, booted by the host's QEMU in plain software emulation (no KVM
// needed, a few seconds): the userspace line, an overlay's /test.sh with its exit status,
// and without a script an interactive console shell that powers off when it exits.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { guestInitrdWith } from '../../../src/lab/guest-image.js';
import { guestInitrdPath, guestKernelPath } from '../../../src/lab/paths.js';

interface Boot { output: string; code: number | null }

function bootTcg(initrd: string, onLine?: (line: string, write: (s: string) => void) => void): Promise<Boot> {
  const args = [
    '-accel', 'tcg', '-cpu', 'qemu64', '-m', '256', '-nodefaults', '-display', 'none', '-no-reboot',
    '-serial', 'stdio', '-kernel', guestKernelPath(), '-initrd', initrd,
    '-append', 'console=ttyS0 panic=-1 quiet', '-device', 'virtio-rng-pci',
  ];
  return new Promise((resolve, reject) => {
    const child = spawn('qemu-system-x86_64', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    let pending = '';
    child.stdout.on('data', (c: Buffer) => {
      output += c.toString();
      pending += c.toString();
      const lines = pending.split(/\r?\n/);
      pending = lines.pop() ?? '';
      for (const l of lines) onLine?.(l, (s) => child.stdin.write(s));
    });
    child.stderr.on('data', (c: Buffer) => { output += c.toString(); });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`guest did not power off within 120 s:\n${output}`)); }, 120_000);
    child.on('error', (e) => { clearTimeout(timer); reject(e); });
    child.on('close', (code) => { clearTimeout(timer); resolve({ output, code }); });
  });
}

test('the guest runs the overlay script, reports its status and powers off', async () => {
  const initrd = await guestInitrdWith('echo "script sees $(cat /msg.txt)"\ngrep -c "^virtio_rng " /proc/modules\nexit 42\n', { 'msg.txt': 'the extra file' });
  const boot = await bootTcg(initrd);
  assert.equal(boot.code, 0, boot.output);
  const lines = boot.output.split(/\r?\n/);
  const up = lines.indexOf('tsvirt-guest: userspace up');
  assert.ok(up >= 0, boot.output);
  assert.ok(lines.indexOf('script sees the extra file') > up, boot.output);
  assert.ok(lines.includes('1'), `virtio_rng not loaded:\n${boot.output}`);
  assert.equal(lines.filter((l) => l.startsWith('tsvirt-guest: exit')).join('|'), 'tsvirt-guest: exit 42');
});

test('without a script the console gets a shell; leaving it powers the guest off', async () => {
  let sent = false;
  const boot = await bootTcg(guestInitrdPath(), (line, write) => {
    if (!sent && line.startsWith('tsvirt-guest: interactive shell')) {
      sent = true;
      write('echo "shell says $((6 * 7))"\nexit\n');
    }
  });
  assert.equal(boot.code, 0, boot.output);
  assert.ok(sent, boot.output);
  assert.match(boot.output, /shell says 42/);
  assert.doesNotMatch(boot.output, /tsvirt-guest: exit/);
});
