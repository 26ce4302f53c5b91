// QMP endpoint specs as QEMU's -qmp takes them:
//   unix:PATH[,server=on|off][,wait=on|off]
//   tcp:HOST:PORT[,server=on|off][,wait=on|off]
// server=on listens (the usual case); without it the VM connects out to a listening client.
// wait=on (QEMU's default for a server) holds VM start until the first client connects.
// The monitor controls the whole VM, so TCP is only allowed on loopback addresses.

export type QmpEndpoint =
  | { kind: 'unix'; path: string; server: boolean; wait: boolean }
  | { kind: 'tcp'; host: string; port: number; server: boolean; wait: boolean };

export class QmpAddressError extends Error {
  constructor(spec: string, why: string) {
    super(`invalid QMP address '${spec}': ${why}`);
    this.name = 'QmpAddressError';
  }
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1', '[::1]']);

export function isLoopbackHost(host: string): boolean {
  return LOOPBACK.has(host) || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

function onOff(spec: string, key: string, value: string | undefined): boolean {
  // QEMU accepts a bare "server" / "nowait"-style flag as on.
  if (value === undefined || value === 'on' || value === 'yes' || value === 'true') return true;
  if (value === 'off' || value === 'no' || value === 'false') return false;
  throw new QmpAddressError(spec, `option ${key} must be on or off, not '${value}'`);
}

export function parseQmpEndpoint(spec: string): QmpEndpoint {
  const [head = '', ...options] = spec.split(',');
  let server = false;
  let wait: boolean | undefined;
  for (const option of options) {
    const eq = option.indexOf('=');
    const key = eq < 0 ? option : option.slice(0, eq);
    const value = eq < 0 ? undefined : option.slice(eq + 1);
    if (key === 'server') server = onOff(spec, key, value);
    else if (key === 'wait') wait = onOff(spec, key, value);
    else if (key === 'nowait') wait = false;
    else throw new QmpAddressError(spec, `unknown option '${key}' (expected server= or wait=)`);
  }
  if (!server && wait !== undefined) throw new QmpAddressError(spec, 'wait= only applies with server=on');
  const waitForClient = server && (wait ?? true);
  if (head.startsWith('unix:')) {
    const path = head.slice('unix:'.length);
    if (path === '') throw new QmpAddressError(spec, 'the socket path is empty');
    return { kind: 'unix', path, server, wait: waitForClient };
  }
  if (head.startsWith('tcp:')) {
    const rest = head.slice('tcp:'.length);
    const colon = rest.lastIndexOf(':');
    if (colon < 0) throw new QmpAddressError(spec, 'expected tcp:HOST:PORT');
    const host = rest.slice(0, colon) || '127.0.0.1';
    const portText = rest.slice(colon + 1);
    const port = Number(portText);
    if (!/^\d+$/.test(portText) || port > 65535) throw new QmpAddressError(spec, `'${portText}' is not a TCP port`);
    if (!isLoopbackHost(host)) {
      throw new QmpAddressError(spec, `host ${host} is not a loopback address (QMP controls the VM; use 127.0.0.1 or ::1)`);
    }
    return { kind: 'tcp', host: host.replace(/^\[(.*)\]$/, '$1'), port, server, wait: waitForClient };
  }
  throw new QmpAddressError(spec, 'expected unix:PATH or tcp:HOST:PORT');
}
