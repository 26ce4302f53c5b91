// Runs one of the host's build tools (apt-get, dpkg-deb, mkfs, ldd) for the lab's image
// builds and turns its failure into one line: the tool that is missing, or the tool, its first
// arguments and the last line it printed.
import { execFileSync } from 'node:child_process';

export interface ToolRun {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** What the tool is needed for, for the "not installed" message: "build the lab". */
  purpose: string;
}

/** The tool's standard output; throws a one-line Error when it is missing or fails. */
export function runTool(command: string, args: string[], opts: ToolRun): string {
  try {
    return execFileSync(command, args, {
      cwd: opts.cwd, env: opts.env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20,
    });
  } catch (err) {
    const e = err as { stderr?: string; code?: string; message: string };
    if (e.code === 'ENOENT') throw new Error(`${command} is not installed (needed to ${opts.purpose})`);
    const detail = (e.stderr ?? e.message).trim().split('\n').pop();
    throw new Error(`${command} ${args.slice(0, 4).join(' ')}${args.length > 4 ? ' ...' : ''} failed: ${detail}`);
  }
}
