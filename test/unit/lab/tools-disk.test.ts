// The parsers behind the fio tools disk build: which packages to fetch (apt-cache depends)
// and which files fio loads (ldd).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseAptDepends, parseLdd } from '../../../src/lab/tools-disk.js';

test('apt-cache depends: first-choice hard dependencies per package; alternatives and virtual names skipped', () => {
  const text = [
    'fio',
    '  Depends: libaio1',
    '  Depends: libc6',
    ' |Depends: libgcc-s1',
    '  Depends: libgcc1',
    '  Depends: <python3:any>',
    '  PreDepends: init-system-helpers',
    '  Suggests: gnuplot',
    'libaio1',
    '  Depends: libc6',
    '',
  ].join('\n');
  const deps = parseAptDepends(text);
  assert.deepEqual(deps.get('fio'), ['libaio1', 'libc6', 'libgcc-s1', 'init-system-helpers']);
  assert.deepEqual(deps.get('libaio1'), ['libc6']);
  assert.equal(deps.size, 2);
});

test('ldd: soname to resolved path, "not found" kept so the build can name it', () => {
  const text = [
    '\tlinux-vdso.so.1 (0x00007ffd2b5f2000)',
    '\tlibaio.so.1 => /stage/lib/x86_64-linux-gnu/libaio.so.1 (0x00007f0a1c000000)',
    '\tlibrbd.so.1 => not found',
    '\t/lib64/ld-linux-x86-64.so.2 (0x00007f0a1c400000)',
  ].join('\n');
  const libs = parseLdd(text);
  assert.deepEqual([...libs], [
    ['libaio.so.1', '/stage/lib/x86_64-linux-gnu/libaio.so.1'],
    ['librbd.so.1', 'not found'],
  ]);
});
