// Runs the crash writer (crash-writer.ts) in a child process and kills it with SIGKILL a
// little after its n-th flush: shared by the kill -9 tests of plain and lazy-refcount images.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const writer = fileURLToPath(new URL('./crash-writer.js', import.meta.url));

/** What the writer reported before it died: the last operation flushed, and the last started. */
export interface WriterProgress { lastFlushed: number; lastStarted: number }

/**
 * Run the writer on `file` with the operations of `seed` until it has flushed `flushes`
 * times, SIGKILL it `extraMs` later (or after 20 s in any case), and report its progress.
 */
export function runAndKill(file: string, seed: number, flushes: number, extraMs = 3): Promise<WriterProgress> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [writer, file, String(seed)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let lastFlushed = -1;
    let lastStarted = -1;
    let seen = 0;
    let stderr = '';
    let buffered = '';
    let killing = false;
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout.on('data', (d: Buffer) => {
      buffered += d.toString();
      const lines = buffered.split('\n');
      buffered = lines.pop() ?? '';
      for (const line of lines) {
        const [what, n] = line.split(' ');
        if (what === 'start') lastStarted = Number(n);
        if (what === 'flushed') {
          lastFlushed = Number(n);
          if (++seen >= flushes && !killing) {
            killing = true;
            setTimeout(() => child.kill('SIGKILL'), extraMs);
          }
        }
      }
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (signal !== 'SIGKILL') reject(new Error(`writer exited by itself (code ${code}): ${stderr}`));
      else resolve({ lastFlushed, lastStarted });
    });
  });
}
