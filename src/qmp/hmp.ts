// The human monitor commands reachable through QMP's human-monitor-command. Only the
// read-only ones scripts commonly use are provided; anything else is refused with a clear
// error rather than guessed at. Output is formatted like QEMU's (lines end in CR LF).
import { QmpError } from './protocol.js';
import type { QmpTarget } from './target.js';

export const SUPPORTED_HMP_COMMANDS = ['info status', 'info cpus'] as const;

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
  if (command === 'info status') return infoStatus(target);
  if (command === 'info cpus') return infoCpus(target, cpuIndex ?? cpus[0]?.cpuIndex ?? 0);
  throw new QmpError('GenericError',
    `human monitor command '${command}' is not supported (supported: ${SUPPORTED_HMP_COMMANDS.join(', ')})`);
}
