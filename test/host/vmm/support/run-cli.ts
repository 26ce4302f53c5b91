// Runs `tsvirt run` as a child process for the CLI error-path tests: every bad input must
// end the command with exit status 1 and exactly one line on stderr, before any guest runs.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('../../../../src/cli/tsvirt.cjs', import.meta.url));

export function runCli(args: string[]): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, 'run', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`tsvirt run ${args.join(' ')} hung`)); }, 20_000);
    child.on('exit', (code) => { clearTimeout(timer); resolve({ code: code ?? 1, stderr }); });
  });
}

/** Asserts that `tsvirt run ARGS` fails with status 1 and one stderr line matching `pattern`. */
export async function failsWithOneLine(args: string[], pattern: RegExp): Promise<void> {
  const r = await runCli(args);
  assert.equal(r.code, 1, `exit status for ${args.join(' ')}`);
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `one line, got: ${r.stderr}`);
  assert.match(lines[0]!, pattern);
}
