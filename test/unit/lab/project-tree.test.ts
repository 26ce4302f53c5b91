import { test } from 'node:test';
import assert from 'node:assert/strict';
import { relative } from 'node:path';
import { translateArgs } from '../../guest-runner.js';
import { projectRoot } from '../../../src/lab/paths.js';
import { LAB_PROJECT_DIR, runtimePackages, toLabPath } from '../../../src/lab/project-tree.js';

const root = projectRoot();

test('runtime packages: dependencies and their own, the installed koffi binary package, no dev tools', () => {
  const names = runtimePackages(root).map((p) => relative(root, p));
  for (const n of ['node_modules/koffi', 'node_modules/@koromix/koffi-linux-x64', 'node_modules/commander', 'node_modules/ajv', 'node_modules/fast-deep-equal']) {
    assert.ok(names.includes(n), `${n} missing from ${names.join(', ')}`);
  }
  for (const n of ['node_modules/typescript', 'node_modules/eslint', 'node_modules/@types/node']) assert.ok(!names.includes(n), `${n} is a dev dependency`);
  assert.ok(!names.some((n) => n.includes('koffi-darwin') || n.includes('koffi-win32')));
});

test('host paths map into the lab project directory; outside paths are refused', () => {
  assert.equal(toLabPath(root, `${root}/dist/test/guest/x.test.js`), `${LAB_PROJECT_DIR}/dist/test/guest/x.test.js`);
  assert.equal(toLabPath(root, root), LAB_PROJECT_DIR);
  assert.throws(() => toLabPath(root, '/etc/passwd'), /\/etc\/passwd is outside the project .*: the lab cannot see it/);
});

test('guest suite arguments are translated and the reports under .cache are copied back', () => {
  const args = [
    '--test', '--test-concurrency=1', '--test-reporter=tap',
    `--test-reporter-destination=${root}/.cache/test-guest.tap`,
    '--test-reporter-destination=stdout',
    `${root}/dist/test/guest/lab/guest-image.test.js`,
    '/usr/share/elsewhere.js',
  ];
  const t = translateArgs(`${root}/`, args, toLabPath);
  assert.deepEqual(t.args, [
    '--test', '--test-concurrency=1', '--test-reporter=tap',
    `--test-reporter-destination=${LAB_PROJECT_DIR}/.cache/test-guest.tap`,
    '--test-reporter-destination=stdout',
    `${LAB_PROJECT_DIR}/dist/test/guest/lab/guest-image.test.js`,
    '/usr/share/elsewhere.js',
  ]);
  assert.deepEqual(t.copyBack, ['.cache/test-guest.tap']);
});
