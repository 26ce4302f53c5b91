// The project's test command (npm test, after build and lint): runs every suite and
// prints one closing summary line. Suites:
//   unit   pure TypeScript, no kernel access
//   host   needs the machine's own /dev/kvm (micro-guests) or host QEMU (control plane)
//   guest  needs a KVM that runs Linux guests at native speed: run directly when the
//          host's KVM is fast, else inside the nested lab (see src/lab)
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../..', import.meta.url));

interface Counts { passed: number; failed: number; skipped: number }

function testFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...testFiles(path));
    else if (name.endsWith('.test.js')) out.push(path);
  }
  return out.sort();
}

function run(command: string, args: string[]): Promise<number> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { cwd: root, stdio: 'inherit' });
    child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1)));
  });
}

function tapCounts(file: string): Counts {
  const counts: Counts = { passed: 0, failed: 0, skipped: 0 };
  if (!existsSync(file)) return counts;
  const text = readFileSync(file, 'utf8');
  const grab = (key: string): number => {
    const m = new RegExp(`^# ${key} (\\d+)$`, 'm').exec(text);
    return m ? Number(m[1]) : 0;
  };
  counts.passed = grab('pass');
  counts.failed = grab('fail') + grab('cancelled');
  counts.skipped = grab('skipped') + grab('todo');
  return counts;
}

async function suite(name: string, files: string[], runner: (args: string[]) => Promise<number>): Promise<Counts> {
  if (files.length === 0) return { passed: 0, failed: 0, skipped: 0 };
  const tap = join(root, '.cache', `test-${name}.tap`);
  rmSync(tap, { force: true });
  process.stdout.write(`\n== ${name} tests (${files.length} files)\n`);
  const args = [
    '--test', '--test-concurrency=1',
    '--test-reporter=spec', '--test-reporter-destination=stdout',
    '--test-reporter=tap', `--test-reporter-destination=${tap}`,
    ...files,
  ];
  const code = await runner(args);
  const counts = tapCounts(tap);
  if (code !== 0 && counts.failed === 0) counts.failed = 1; // the runner itself failed
  return counts;
}

async function main(): Promise<number> {
  const only = process.argv.slice(2);
  const want = (s: string): boolean => only.length === 0 || only.includes(s);
  const total: Counts = { passed: 0, failed: 0, skipped: 0 };
  const add = (c: Counts): void => {
    total.passed += c.passed; total.failed += c.failed; total.skipped += c.skipped;
  };
  const direct = (args: string[]): Promise<number> => run(process.execPath, args);
  if (want('unit')) add(await suite('unit', testFiles(join(root, 'dist/test/unit')), direct));
  if (want('host')) {
    const hostFiles = testFiles(join(root, 'dist/test/host'));
    const host = await suite('host', hostFiles, direct);
    add(host);
  }
  if (want('guest')) {
    const { guestTestRunner } = await import('./guest-runner.js');
    const files = testFiles(join(root, 'dist/test/guest'));
    const runner = await guestTestRunner(root);
    const guest = await suite('guest', files, runner);
    add(guest);
  }
  process.stdout.write(`\ntests: ${total.passed} passed, ${total.failed} failed, ${total.skipped} skipped\n`);
  return total.failed > 0 ? 1 : 0;
}

process.exitCode = await main();
