import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

// KVM_CREATE_VM gives up with EINTR when a signal arrives meanwhile. A CPU profile sampling
// every 10 us (SIGPROF) made Machine.create fail this way about every other run; the VM
// must be created regardless.
test('VMs are created while signals keep arriving (a CPU profiler\'s SIGPROF)', () => {
  const system = fileURLToPath(new URL('../../../src/kvm/system.js', import.meta.url));
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-prof-'));
  try {
    const script = `
      const { Kvm } = await import(${JSON.stringify(system)});
      const kvm = Kvm.open();
      for (let i = 0; i < 40; i++) kvm.createVm().close();
      process.stdout.write('created');`;
    for (let run = 0; run < 3; run++) {
      const r = spawnSync(process.execPath, ['--cpu-prof', '--cpu-prof-interval', '10', '--cpu-prof-dir', dir, '--input-type=module', '-e', script],
        { encoding: 'utf8', timeout: 60_000 });
      assert.equal(r.stdout, 'created', r.stderr.split('\n').find((l) => l.includes('Error')) ?? r.stderr);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
