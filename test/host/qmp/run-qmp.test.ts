// End to end on this host: `tsvirt run --qmp` serves a real Machine, `tsvirt qmp` drives it.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { testKernel } from './support/qemu.js';

const cli = fileURLToPath(new URL('../../../src/cli/main.js', import.meta.url));

interface Run { code: number | null; stdout: string; stderr: string }

function collect(child: ChildProcess, timeoutMs: number, what: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d) => { stdout += d; });
    child.stderr?.on('data', (d) => { stderr += d; });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`${what} did not finish within ${timeoutMs} ms`)); }, timeoutMs);
    child.on('exit', (code) => { clearTimeout(timer); resolve({ code, stdout, stderr }); });
  });
}

const tsvirt = (args: string[], timeoutMs = 15_000): Promise<Run> =>
  collect(spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] }), timeoutMs, `tsvirt ${args.join(' ')}`);

describe('tsvirt run --qmp with tsvirt qmp', { skip: existsSync('/dev/kvm') ? false : '/dev/kvm is missing' }, () => {
  let dir: string;
  let kernel: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'tsvirt-run-qmp-'));
    kernel = testKernel();
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('serves two monitors; stop through one is seen by the other; quit ends the VM with status 0', { timeout: 90_000 }, async () => {
    const a = join(dir, 'a.qmp');
    const b = join(dir, 'b.qmp');
    const vm = spawn(process.execPath, [cli, 'run', '--kernel', kernel, '--memory', '256M', '--console', 'none', '--name', 'e2e',
      '--qmp', `unix:${a},server=on,wait=off`, '--qmp', `unix:${b},server=on,wait=off`], { stdio: ['ignore', 'pipe', 'pipe'] });
    const finished = collect(vm, 60_000, 'tsvirt run');
    try {
      for (let i = 0; i < 300 && !(existsSync(a) && existsSync(b)); i++) await new Promise((r) => setTimeout(r, 50));
      assert.ok(existsSync(a) && existsSync(b), 'both QMP sockets appear');
      const name = await tsvirt(['qmp', a, 'query-name']);
      assert.equal(name.code, 0, name.stderr);
      assert.deepEqual(JSON.parse(name.stdout), { name: 'e2e' });
      assert.equal((await tsvirt(['qmp', b, 'stop'])).code, 0);
      assert.equal(JSON.parse((await tsvirt(['qmp', a, 'query-status'])).stdout).status, 'paused');
      assert.equal(JSON.parse((await tsvirt(['qmp', a, 'human-monitor-command', 'command-line=info status'])).stdout), 'VM status: paused\r\n');
      const bad = await tsvirt(['qmp', b, 'cont', 'now=1']);
      assert.equal(bad.code, 1);
      assert.equal(bad.stderr, "tsvirt qmp: cont: GenericError: Parameter 'now' is unexpected\n");
      assert.equal((await tsvirt(['qmp', b, 'cont'])).code, 0);
      assert.equal(JSON.parse((await tsvirt(['qmp', a, 'query-status'])).stdout).status, 'running');
      assert.equal((await tsvirt(['qmp', a, 'quit'])).code, 0);
      const result = await finished;
      assert.equal(result.code, 0, result.stderr);
      assert.equal(existsSync(a) || existsSync(b), false, 'the sockets are removed when the VM ends');
    } finally {
      vm.kill('SIGKILL');
    }
  });

  it('refuses a non-loopback tcp monitor with one line naming it', { timeout: 30_000 }, async () => {
    const r = await tsvirt(['run', '--kernel', kernel, '--memory', '256M', '--console', 'none', '--qmp', 'tcp:0.0.0.0:4444,server=on']);
    assert.equal(r.code, 1);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.match(r.stderr, /invalid QMP address 'tcp:0\.0\.0\.0:4444,server=on': host 0\.0\.0\.0 is not a loopback address/);
  });
});
