// A real Machine behind the QMP server: the monitor's view of state, vCPUs and lifecycle.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Machine } from '../../../src/vmm/machine.js';
import { QmpClient, startQmpServers } from '../../../src/qmp/index.js';
import { GUEST_ADDRESS, helloGuest } from './micro-guests.js';

test('QMP drives a machine: status, cpus, stop/cont, system_reset, quit', { timeout: 60_000 }, async () => {
  const machine = await Machine.create({ cpus: 2, memory: '32M', name: 'qmp-micro' }, { rawBoot: { code: helloGuest('Q'), address: GUEST_ADDRESS } });
  const socket = join(mkdtempSync(join(tmpdir(), 'tsvirt-qmp-')), 'qmp.sock');
  const server = await startQmpServers(machine, [`unix:${socket},server=on,wait=off`]);
  const qmp = await QmpClient.connect(socket, { timeoutMs: 10_000 });
  try {
    assert.deepEqual(await qmp.execute('query-status'), { status: 'prelaunch', running: false, singlestep: false });
    assert.deepEqual(await qmp.execute('query-name'), { name: 'qmp-micro' });
    await machine.start();
    assert.equal((await qmp.execute('query-status') as { status: string }).status, 'running');
    const cpus = await qmp.execute('query-cpus-fast') as Array<{ 'cpu-index': number; 'thread-id': number }>;
    assert.deepEqual(cpus.map((c) => c['cpu-index']), [0, 1]);
    assert.ok(cpus.every((c) => c['thread-id'] > 0));

    const stopped = qmp.waitForEvent('STOP');
    await qmp.execute('stop');
    await stopped;
    assert.equal(machine.runState(), 'paused');
    const resumed = qmp.waitForEvent('RESUME');
    await qmp.execute('cont');
    await resumed;
    assert.equal(machine.runState(), 'running');

    const reset = qmp.waitForEvent('RESET');
    await qmp.execute('system_reset');
    const r = await reset;
    assert.deepEqual(r.data, { guest: false, reason: 'host-qmp-system-reset' });

    const shutdown = qmp.waitForEvent('SHUTDOWN');
    await qmp.execute('quit').catch(() => undefined); // the connection may close with the VM
    assert.deepEqual((await shutdown).data, { guest: false, reason: 'host-qmp-quit' });
    assert.deepEqual(await machine.waitForExit(), { code: 0, reason: 'host-qmp-quit' });
  } finally {
    qmp.close();
    await server.close();
    if (!machine.result) await machine.stop();
  }
});
