// bin/tsvirt, the installed command: it must find the CLI through npm's symlink and from any
// directory, turn libuv's io_uring on for `img` (not for the VMM), and leave a caller's own
// choice alone.
// A stand-in `node` first on PATH reports what the launcher handed it.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../../..', import.meta.url));
const launcher = join(root, 'bin', 'tsvirt');

test('bin/tsvirt runs the CLI, img with UV_USE_IO_URING=1 unless the caller set it, through a symlink and from any directory', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvirt-launcher-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'node'), '#!/bin/sh\necho "io_uring=${UV_USE_IO_URING-unset}"\nfor a in "$@"; do echo "arg=$a"; done\n');
  chmodSync(join(dir, 'node'), 0o755);
  const link = join(dir, 'linked-tsvirt');
  symlinkSync(launcher, link);
  const run = (command: string, env: Record<string, string | undefined>, args = ['img', 'info', 'a file.qcow2']): string[] => {
    const merged: Record<string, string | undefined> = { ...process.env, PATH: `${dir}:${process.env.PATH ?? ''}`, ...env };
    for (const [k, v] of Object.entries(merged)) if (v === undefined) delete merged[k];
    const r = spawnSync(command, args, { cwd: dir, encoding: 'utf8', env: merged as NodeJS.ProcessEnv, timeout: 10_000 });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.trim().split('\n');
  };
  const cli = join(root, 'dist', 'src', 'cli', 'main.js');
  assert.deepEqual(run(link, { UV_USE_IO_URING: undefined }), ['io_uring=1', `arg=${cli}`, 'arg=img', 'arg=info', 'arg=a file.qcow2']);
  assert.deepEqual(run(launcher, { UV_USE_IO_URING: '0' }).slice(0, 2), ['io_uring=0', `arg=${cli}`]);
  assert.deepEqual(run(launcher, { UV_USE_IO_URING: undefined }, ['run', '--kernel', 'k']), ['io_uring=unset', `arg=${cli}`, 'arg=run', 'arg=--kernel', 'arg=k']);
  assert.deepEqual(run(launcher, { UV_USE_IO_URING: '1' }, ['run']).slice(0, 1), ['io_uring=1']);
});
