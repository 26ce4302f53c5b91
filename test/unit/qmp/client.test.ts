import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { QmpClient, QmpCommandError, QmpConnectionError } from '../../../src/qmp/client.js';
import { QmpServer } from '../../../src/qmp/server.js';
import { StateTarget } from './support/state-target.js';

let dir: string;
before(() => { dir = mkdtempSync(join(tmpdir(), 'tsvirt-qmp-client-')); });
after(() => rmSync(dir, { recursive: true, force: true }));

async function withServer(run: (path: string, target: StateTarget) => Promise<void>): Promise<void> {
  const path = join(dir, `s${Math.random().toString(36).slice(2)}.sock`);
  const target = new StateTarget();
  const server = new QmpServer(target);
  await server.listen(`unix:${path},server=on,wait=off`);
  try {
    await run(path, target);
  } finally {
    await server.close();
  }
}

describe('QmpClient', () => {
  it('connects, negotiates and runs commands', () => withServer(async (path) => {
    const qmp = await QmpClient.connect(path);
    try {
      assert.equal(qmp.greeting?.QMP.version.package.startsWith('tsvirt'), true);
      assert.deepEqual(await qmp.execute('query-status'), { status: 'running', singlestep: false, running: true });
      assert.equal(await qmp.execute('human-monitor-command', { 'command-line': 'info status' }), 'VM status: running\r\n');
    } finally {
      qmp.close();
    }
  }));

  it('rejects with QmpCommandError carrying the class and desc', () => withServer(async (path) => {
    const qmp = await QmpClient.connect(`unix:${path}`);
    try {
      await assert.rejects(qmp.execute('nope'), (err: unknown) => {
        assert.ok(err instanceof QmpCommandError);
        assert.equal(err.errorClass, 'CommandNotFound');
        assert.equal(err.desc, 'The command nope has not been found');
        return true;
      });
      await assert.rejects(qmp.execute('query-status', { x: 1 }), { message: "query-status: GenericError: Parameter 'x' is unexpected" });
    } finally {
      qmp.close();
    }
  }));

  it('delivers events both as "event" and by name', () => withServer(async (path) => {
    const qmp = await QmpClient.connect(path);
    try {
      const all: string[] = [];
      qmp.on('event', (e: { event: string }) => all.push(e.event));
      const reset = new Promise<unknown>((resolve) => qmp.once('RESET', resolve));
      const stop = qmp.waitForEvent('STOP', 2000);
      await qmp.execute('stop');
      assert.equal((await stop).event, 'STOP');
      await qmp.execute('system_reset');
      assert.deepEqual(await reset, { guest: false, reason: 'host-qmp-system-reset' });
      assert.deepEqual(all, ['STOP', 'RESET']);
    } finally {
      qmp.close();
    }
  }));

  it('runs concurrent commands and matches each reply to its request', () => withServer(async (path) => {
    const qmp = await QmpClient.connect(path);
    try {
      const [a, b, c] = await Promise.all([qmp.execute('query-name'), qmp.execute('query-kvm'), qmp.execute('query-uuid')]);
      assert.deepEqual(a, { name: 'vm0' });
      assert.deepEqual(b, { enabled: true, present: true });
      assert.ok(typeof (c as { UUID: string }).UUID === 'string');
    } finally {
      qmp.close();
    }
  }));

  it('times out on a server that never answers, naming the address', async () => {
    const path = join(dir, 'mute.sock');
    const sockets: net.Socket[] = [];
    const mute = net.createServer((s) => sockets.push(s)).listen(path);
    try {
      await assert.rejects(QmpClient.connect(path, { timeoutMs: 150 }),
        (err: unknown) => err instanceof QmpConnectionError && /greeting from .*mute\.sock: nothing within 150 ms/.test(err.message));
    } finally {
      for (const s of sockets) s.destroy();
      mute.close();
    }
  });

  it('times out a command without a reply and fails pending commands when the server goes', async () => {
    const path = join(dir, 'half.sock');
    const sockets: net.Socket[] = [];
    // Greets and negotiates, then never answers again.
    const half = net.createServer((s) => {
      sockets.push(s);
      s.write('{"QMP": {"version": {"qemu": {"micro": 0, "minor": 0, "major": 1}, "package": ""}, "capabilities": []}}\r\n');
      s.once('data', (d) => s.write(`{"return": {}, "id": ${JSON.parse(d.toString()).id}}\r\n`));
    }).listen(path);
    try {
      const qmp = await QmpClient.connect(path, { timeoutMs: 1000 });
      await assert.rejects(qmp.execute('query-status', undefined, 100), /query-status to .*: no reply within 100 ms/);
      const pending = qmp.execute('query-status');
      sockets[0]!.end();
      await assert.rejects(pending, /QMP connection to .* closed/);
      await assert.rejects(qmp.execute('query-status'), /closed/);
    } finally {
      half.close();
    }
  });

  it('fails to connect with an error naming the socket', async () => {
    const path = join(dir, 'absent.sock');
    await assert.rejects(QmpClient.connect(path, { timeoutMs: 500 }), { message: `QMP connection to ${path}: connect ENOENT ${path}` });
  });
});
