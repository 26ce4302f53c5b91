// Chooses where the guest suite runs: directly when this machine's /dev/kvm runs guest code
// fast enough, else inside the nested lab (decidePlacement in src/lab/placement.ts; override
// with TSVIRT_PLACEMENT=direct|lab). In the lab, host paths under the project are rewritten
// to the lab's project directory, and files the test runner writes under .cache (the TAP
// report it counts results from) are copied back when the lab run ends.
import { spawn } from 'node:child_process';
import { relative, resolve } from 'node:path';

export type TestRunner = (args: string[]) => Promise<number>;

/** Whole guest suite limit inside the lab (boot included), inside the CI budget;
 *  TSVIRT_GUEST_SUITE_TIMEOUT (seconds) changes it. */
function labSuiteTimeoutSeconds(): number {
  const v = process.env.TSVIRT_GUEST_SUITE_TIMEOUT;
  if (v === undefined || v === '') return 1800;
  const n = Number(v);
  if (!(n > 0)) throw new Error(`TSVIRT_GUEST_SUITE_TIMEOUT=${v}: expected a positive number of seconds`);
  return n;
}

function direct(args: string[]): Promise<number> {
  return new Promise((done) => {
    const child = spawn(process.execPath, args, { stdio: 'inherit' });
    child.on('error', () => done(1));
    child.on('exit', (code) => done(code ?? 1));
  });
}

/** Rewrites every project path in `args` (bare or as --flag=PATH) for the lab. */
export function translateArgs(root: string, args: string[], toLabPath: (root: string, p: string) => string): { args: string[]; copyBack: string[] } {
  const copyBack: string[] = [];
  const rootDir = resolve(root);
  const out = args.map((arg) => {
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const prefix = eq >= 0 ? arg.slice(0, eq + 1) : '';
    const value = eq >= 0 ? arg.slice(eq + 1) : arg;
    if (!value.startsWith('/')) return arg;
    const rel = relative(rootDir, value);
    if (rel.startsWith('..')) return arg;
    if (rel.startsWith('.cache/') && !rel.startsWith('.cache/lab/')) copyBack.push(rel);
    return prefix + toLabPath(rootDir, value);
  });
  return { args: out, copyBack };
}

/** Runs of the guest suite in a fresh lab when the lab host itself fails (see below). */
const LAB_HOST_ATTEMPTS = 3;

export async function guestTestRunner(root: string): Promise<TestRunner> {
  const { placementVerdict } = await import('../src/lab/placement.js');
  const verdict = await placementVerdict();
  process.stdout.write(`guest suite placement: ${verdict.placement} (${verdict.reason})\n`);
  if (verdict.placement === 'direct') return direct;

  const { labBuilt } = await import('../src/lab/paths.js');
  const { labExec, LabError } = await import('../src/lab/exec.js');
  const { toLabPath } = await import('../src/lab/project-tree.js');
  return async (args) => {
    try {
      if (!labBuilt()) {
        const { buildLab } = await import('../src/lab/build.js');
        await buildLab();
      }
      const t = translateArgs(root, args, toLabPath);
      const exec = (): ReturnType<typeof labExec> => labExec(['node', ...t.args], {
        copyBack: t.copyBack, timeoutSeconds: labSuiteTimeoutSeconds(), root: resolve(root),
      });
      // The emulated lab host can fail under the suite: it reset (seen once with the 64-vCPU
      // guest, no message from QEMU or the lab kernel), its kernel reported a CPU stuck in
      // nested-virtualization code (seen under QEMU's guests too), or it never ran (silent
      // until the boot limit). That says nothing of the tests, so the suite runs again in a
      // fresh lab, up to LAB_HOST_ATTEMPTS times in all: on a busy day two failures in a row
      // were seen, the first a soft lockup in QEMU's own process. Test failures and every
      // other lab failure stand.
      let result: Awaited<ReturnType<typeof labExec>> | undefined;
      for (let attempt = 1; !result; attempt++) {
        try {
          result = await exec();
        } catch (err) {
          if (!(err instanceof LabError) || !err.hostFailed || attempt >= LAB_HOST_ATTEMPTS) throw err;
          process.stdout.write(`guest suite: ${err.message}; the lab host failed under the suite, running it again (attempt ${attempt + 1} of ${LAB_HOST_ATTEMPTS})\n`);
        }
      }
      process.stdout.write(`(lab: booted in ${result.bootSeconds.toFixed(1)} s, ran ${result.totalSeconds.toFixed(1)} s in all)\n`);
      return result.exitCode;
    } catch (err) {
      if (err instanceof LabError) for (const line of err.logTail) process.stderr.write(`lab log| ${line}\n`);
      process.stderr.write(`guest suite: ${(err as Error).message}\n`);
      return 1;
    }
  };
}
