import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseQmpEndpoint } from '../../../src/qmp/address.js';
import { parseClientAddress } from '../../../src/qmp/client.js';

describe('QMP endpoint specs', () => {
  it('parses unix listeners with QEMU defaults (a server waits for its first client)', () => {
    assert.deepEqual(parseQmpEndpoint('unix:/run/vm.qmp,server=on,wait=off'),
      { kind: 'unix', path: '/run/vm.qmp', server: true, wait: false });
    assert.deepEqual(parseQmpEndpoint('unix:vm.qmp,server=on'), { kind: 'unix', path: 'vm.qmp', server: true, wait: true });
    assert.deepEqual(parseQmpEndpoint('unix:vm.qmp,server,nowait'), { kind: 'unix', path: 'vm.qmp', server: true, wait: false });
    assert.deepEqual(parseQmpEndpoint('unix:vm.qmp'), { kind: 'unix', path: 'vm.qmp', server: false, wait: false });
  });

  it('parses loopback tcp listeners', () => {
    assert.deepEqual(parseQmpEndpoint('tcp:127.0.0.1:4444,server=on,wait=off'),
      { kind: 'tcp', host: '127.0.0.1', port: 4444, server: true, wait: false });
    assert.deepEqual(parseQmpEndpoint('tcp:[::1]:0,server=on,wait=off'),
      { kind: 'tcp', host: '::1', port: 0, server: true, wait: false });
    assert.equal(parseQmpEndpoint('tcp::4444,server=on').kind, 'tcp');
  });

  it('refuses tcp on a non-loopback address', () => {
    assert.throws(() => parseQmpEndpoint('tcp:0.0.0.0:4444,server=on'),
      { message: "invalid QMP address 'tcp:0.0.0.0:4444,server=on': host 0.0.0.0 is not a loopback address (QMP controls the VM; use 127.0.0.1 or ::1)" });
    assert.throws(() => parseQmpEndpoint('tcp:192.168.1.2:4444,server=on'), /not a loopback address/);
  });

  it('explains each malformed spec in one line', () => {
    assert.throws(() => parseQmpEndpoint('stdio'), { message: "invalid QMP address 'stdio': expected unix:PATH or tcp:HOST:PORT" });
    assert.throws(() => parseQmpEndpoint('unix:,server=on'), /the socket path is empty/);
    assert.throws(() => parseQmpEndpoint('tcp:127.0.0.1:http,server=on'), /'http' is not a TCP port/);
    assert.throws(() => parseQmpEndpoint('tcp:127.0.0.1:70000,server=on'), /'70000' is not a TCP port/);
    assert.throws(() => parseQmpEndpoint('tcp:4444'), /expected tcp:HOST:PORT/);
    assert.throws(() => parseQmpEndpoint('unix:a,server=maybe'), /option server must be on or off, not 'maybe'/);
    assert.throws(() => parseQmpEndpoint('unix:a,speed=9'), /unknown option 'speed'/);
    assert.throws(() => parseQmpEndpoint('unix:a,wait=off'), /wait= only applies with server=on/);
  });

  it('parses client addresses', () => {
    assert.deepEqual(parseClientAddress('/run/vm.qmp'), { path: '/run/vm.qmp' });
    assert.deepEqual(parseClientAddress('unix:/run/vm.qmp,server=on'), { path: '/run/vm.qmp' });
    assert.deepEqual(parseClientAddress('tcp:127.0.0.1:4444'), { host: '127.0.0.1', port: 4444 });
    assert.throws(() => parseClientAddress('tcp:127.0.0.1:x'), /expected tcp:HOST:PORT/);
  });
});
