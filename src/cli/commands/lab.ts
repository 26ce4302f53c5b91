// `tsvirt lab build|exec|demo|status`: the nested lab (see src/lab). Lab failures (no QEMU,
// images not built, no /dev/kvm inside, timeouts) print one clear line (after the tail of
// the lab kernel log when the lab had started) and exit with LAB_FAILURE_EXIT, so they are
// told apart from the command's own exit status, which `exec` returns unchanged.
import type { Command } from 'commander';

/** Like `docker run`: 125 means the lab itself failed, not the command. */
export const LAB_FAILURE_EXIT = 125;

interface ExecFlags { cpus: string; memory: string; timeout: string; tty?: boolean }

async function reportLabFailure(err: unknown): Promise<boolean> {
  const { LabError } = await import('../../lab/exec.js');
  const { LabImageMissingError } = await import('../../lab/paths.js');
  if (!(err instanceof LabError) && !(err instanceof LabImageMissingError)) return false;
  if (err instanceof LabError) for (const line of err.logTail) if (line.trim()) process.stderr.write(`lab log| ${line}\n`);
  process.stderr.write(`tsvirt lab: ${err.message.replace(/^lab: /, '')}\n`);
  process.exitCode = LAB_FAILURE_EXIT;
  return true;
}

function parseExecFlags(flags: ExecFlags, parseMemoryMiB: (s: string) => number): { cpus: number; memoryMiB: number; timeoutSeconds: number } {
  const cpus = Number(flags.cpus);
  if (!/^\d+$/.test(flags.cpus) || cpus < 1 || cpus > 16) throw new Error(`lab exec: --cpus ${flags.cpus} must be an integer from 1 to 16`);
  const timeoutSeconds = Number(flags.timeout);
  if (!/^\d+(\.\d+)?$/.test(flags.timeout) || timeoutSeconds <= 0) throw new Error(`lab exec: --timeout ${flags.timeout} must be a positive number of seconds`);
  let memoryMiB: number;
  try {
    memoryMiB = parseMemoryMiB(flags.memory);
  } catch (err) {
    throw new Error((err as Error).message); // a usage error (exit 1), not a lab failure
  }
  if (memoryMiB < 512) throw new Error(`lab exec: memory ${memoryMiB} MiB is too small (at least 512 MiB)`);
  return { cpus, memoryMiB, timeoutSeconds };
}

export function register(program: Command): void {
  const lab = program
    .command('lab')
    .description('the nested lab: a kvm_amd Linux host under QEMU emulation, for running Linux guests where /dev/kvm is slow');

  lab.command('build')
    .description('download the Debian cloud kernel and build the guest and lab host images (cached under .cache/lab)')
    .action(async () => {
      const { buildLab } = await import('../../lab/build.js');
      await buildLab();
    });

  const withExecFlags = (c: Command, timeoutDefault: string): Command => c
    .option('--cpus <n>', 'vCPUs of the lab host', '2')
    .option('--memory <size>', 'memory of the lab host (e.g. 3G, 3072M)', '3G')
    .option('--timeout <seconds>', 'limit for the whole run, boot included', timeoutDefault);

  withExecFlags(lab.command('exec'), '600')
    .description('boot the lab and run COMMAND in the project directory there (tsvirt is on PATH); exit with its status')
    .option('--tty', "give the command this terminal (stdin and stdout), e.g. for an interactive shell")
    .argument('<command...>', 'the command and its arguments (put -- before it)')
    .action(async (command: string[], flags: ExecFlags) => {
      const { labExec, parseMemoryMiB } = await import('../../lab/exec.js');
      const opts = parseExecFlags(flags, parseMemoryMiB);
      try {
        const result = await labExec(command, { ...opts, interactive: Boolean(flags.tty) });
        process.exitCode = result.exitCode;
      } catch (err) {
        if (!(await reportLabFailure(err))) throw err;
      }
    });

  withExecFlags(lab.command('demo'), '3600')
    .description('boot the demo guest (tsvirt run) inside the lab, building the lab first if needed; interactive on a terminal')
    .action(async (flags: ExecFlags) => {
      const { labExec, parseMemoryMiB } = await import('../../lab/exec.js');
      const { labBuilt } = await import('../../lab/paths.js');
      const opts = parseExecFlags(flags, parseMemoryMiB);
      try {
        if (!labBuilt()) {
          const { buildLab } = await import('../../lab/build.js');
          await buildLab();
        }
        const interactive = Boolean(process.stdin.isTTY && process.stdout.isTTY);
        if (interactive) process.stderr.write('tsvirt lab: booting the lab, then the demo guest; exit its shell to power off\n');
        const result = await labExec(['tsvirt', 'run'], { ...opts, interactive });
        process.exitCode = result.exitCode;
      } catch (err) {
        if (!(await reportLabFailure(err))) throw err;
      }
    });

  lab.command('status')
    .description('show the lab build and where guest workloads run on this machine (direct or lab)')
    .action(async () => {
      const { readBuildInfo } = await import('../../lab/build.js');
      const { labCacheDir } = await import('../../lab/paths.js');
      const { placementVerdict } = await import('../../lab/placement.js');
      const info = readBuildInfo();
      process.stdout.write(`cache: ${labCacheDir()}\n`);
      process.stdout.write(info
        ? `built: kernel ${info.kernelRelease}, ${info.layout} layout, at ${info.builtAt}\n`
        : 'built: no (run `tsvirt lab build`)\n');
      const v = await placementVerdict();
      process.stdout.write(`placement: ${v.placement} (${v.reason})\n`);
    });
}
