// The human monitor commands reachable through QMP's human-monitor-command. Only the
// read-only ones scripts commonly use are provided; anything else is refused with a clear
// error rather than guessed at. Output is formatted like QEMU's (lines end in CR LF).
import { QEMU_COMPAT_VERSION, QMP_PACKAGE, QmpError } from './protocol.js';
import type { QmpTarget } from './target.js';

/** Each supported command with its output, formatted as QEMU formats it. */
const INFO_COMMANDS: Record<string, (target: QmpTarget, currentCpu: number) => string> = {
  status: (target) => infoStatus(target),
  cpus: (target, currentCpu) => infoCpus(target, currentCpu),
  version: () => `${QEMU_COMPAT_VERSION.major}.${QEMU_COMPAT_VERSION.minor}.${QEMU_COMPAT_VERSION.micro}${QMP_PACKAGE}\r\n`,
  name: (target) => (target.name === undefined ? '' : `${target.name}\r\n`),
  uuid: (target) => `${target.uuid}\r\n`,
  kvm: () => 'kvm support: enabled\r\n',
};

export const SUPPORTED_HMP_COMMANDS = Object.keys(INFO_COMMANDS).map((c) => `info ${c}`);

function infoStatus(target: QmpTarget): string {
  const state = target.runState();
  const summary = state === 'running' ? 'running' : 'paused';
  const detail = state === 'running' || state === 'paused' ? '' : ` (${state})`;
  return `VM status: ${summary}${detail}\r\n`;
}

function infoCpus(target: QmpTarget, currentCpu: number): string {
  return target.cpus()
    .map((cpu) => `${cpu.cpuIndex === currentCpu ? '*' : ' '} CPU #${cpu.cpuIndex}: thread_id=${cpu.threadId}\r\n`)
    .join('');
}

export function runHumanCommand(target: QmpTarget, commandLine: string, cpuIndex: number | undefined): string {
  const cpus = target.cpus();
  if (cpuIndex !== undefined && !cpus.some((cpu) => cpu.cpuIndex === cpuIndex)) {
    throw new QmpError('GenericError', "Parameter 'cpu-index' expects a CPU number");
  }
  const words = commandLine.trim().split(/\s+/);
  const command = words.join(' ');
  const info = words[0] === 'info' && words.length === 2 ? INFO_COMMANDS[words[1]!] : undefined;
  if (info && Object.hasOwn(INFO_COMMANDS, words[1]!)) return info(target, cpuIndex ?? cpus[0]?.cpuIndex ?? 0);
  throw new QmpError('GenericError',
    `human monitor command '${command}' is not supported (supported: ${SUPPORTED_HMP_COMMANDS.join(', ')})`);
}
