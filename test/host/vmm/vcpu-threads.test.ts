// vCPU threads start before their machine exists (src/vmm/vcpu-threads.cts), so a start-up
// that fails can have to end threads that are still loading their modules. Terminating a
// thread in the middle of one of koffi's native calls can abort the whole process ("FATAL
// ERROR ... napi_throw", seen once in the CLI error-path tests); stopVcpuThread asks the
// thread to quit instead. These runs check that threads stopped at once, still loading, end,
// and that their process then exits normally. Each run is a child process, so an abort or a
// hang shows as its exit status.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const threadsModule = fileURLToPath(new URL('../../../src/vmm/vcpu-threads.cjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'tsvirt-threads-'));

/** Runs `source` as a module file (workers inherit the parent's flags, so no --eval). */
function runModule(name: string, source: string): SpawnSyncReturns<string> {
  const file = join(dir, `${name}.mjs`);
  writeFileSync(file, source);
  return spawnSync(process.execPath, [file], { encoding: 'utf8', timeout: 60_000 });
}

test('threads stopped while still loading end cleanly, and so does the process', { timeout: 120_000 }, () => {
  const script = `
    const { startVcpuThread, stopVcpuThread } = await import(${JSON.stringify(threadsModule)});
    const threads = Array.from({ length: 4 }, (_, i) => startVcpuThread(i));
    await Promise.all(threads.map(stopVcpuThread));
    process.stdout.write('stopped ' + threads.length);`;
  for (let run = 0; run < 5; run++) {
    const r = runModule('stop-while-loading', script);
    assert.equal(r.status, 0, `run ${run}: exit ${r.status}, stderr: ${r.stderr.slice(0, 500)}`);
    assert.equal(r.stdout, 'stopped 4');
    assert.doesNotMatch(r.stderr, /FATAL/);
  }
});

test('prestarted threads nobody took are stopped, and keep no process alive', { timeout: 60_000 }, () => {
  const script = `
    const { prestartVcpuThreads, stopPrestartedVcpuThreads } = await import(${JSON.stringify(threadsModule)});
    prestartVcpuThreads(2);
    await stopPrestartedVcpuThreads();
    process.stdout.write('done');`;
  const r = runModule('prestarted', script);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, 'done');
});

test('vCPU threads carry QEMU\'s names ("CPU N/KVM"), which tools and diagnostics show', { timeout: 60_000 }, () => {
  const script = `
    import { readFileSync } from 'node:fs';
    const { startVcpuThread, stopVcpuThread } = await import(${JSON.stringify(threadsModule)});
    const threads = [startVcpuThread(0), startVcpuThread(3)];
    const ids = await Promise.all(threads.map(async (t) => (await t.ready).threadId));
    const names = ids.map((id) => readFileSync('/proc/self/task/' + id + '/comm', 'utf8').trim());
    await Promise.all(threads.map(stopVcpuThread));
    process.stdout.write(JSON.stringify(names));`;
  const r = runModule('names', script);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), ['CPU 0/KVM', 'CPU 3/KVM']);
});
