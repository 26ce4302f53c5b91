// Placement: measured, cached per boot, overridable; the lab's own KVM counts as fast.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { labExec } from '../../../src/lab/exec.js';
import { decidePlacement, placementVerdict } from '../../../src/lab/placement.js';
import { LAB_PROJECT_DIR } from '../../../src/lab/project-tree.js';

const bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();

async function withEnv<T>(env: Record<string, string | undefined>, body: () => Promise<T>): Promise<T> {
  const saved: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(env)) {
    saved[k] = process.env[k];
    if (v === undefined) delete process.env[k]; else process.env[k] = v;
  }
  try {
    return await body();
  } finally {
    for (const [k, v] of Object.entries(saved)) if (v === undefined) delete process.env[k]; else process.env[k] = v;
  }
}

test('TSVIRT_PLACEMENT overrides the measurement; a bad value is one clear error', async () => {
  await withEnv({ TSVIRT_PLACEMENT: 'lab' }, async () => assert.equal(await decidePlacement(), 'lab'));
  await withEnv({ TSVIRT_PLACEMENT: 'direct' }, async () => assert.equal(await decidePlacement(), 'direct'));
  await withEnv({ TSVIRT_PLACEMENT: 'cloud' }, async () => {
    await assert.rejects(decidePlacement(), /^Error: TSVIRT_PLACEMENT=cloud: expected direct or lab$/);
  });
});

test('the verdict is measured once per boot and then read from the cache', async () => {
  const cache = mkdtempSync(join(tmpdir(), 'placement-'));
  try {
    await withEnv({ TSVIRT_CACHE: cache, TSVIRT_PLACEMENT: undefined }, async () => {
      const file = join(cache, 'lab', 'placement.json');
      // A verdict from another boot is ignored and replaced by a fresh measurement.
      mkdirSync(join(cache, 'lab'));
      writeFileSync(file, JSON.stringify({ placement: 'direct', reason: 'old', iterationsPerSecond: 1, bootId: 'another-boot' }));
      const fresh = await placementVerdict();
      assert.notEqual(fresh.reason, 'old');
      assert.equal(fresh.bootId, bootId);
      assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), fresh);
      // This boot's cached verdict is used as is (the reason proves nothing was re-measured).
      const planted = { placement: fresh.placement === 'lab' ? 'direct' : 'lab', reason: 'planted', iterationsPerSecond: 1, bootId };
      writeFileSync(file, JSON.stringify(planted));
      const started = Date.now();
      assert.equal(await decidePlacement(), planted.placement);
      assert.ok(Date.now() - started < 500);
    });
  } finally {
    rmSync(cache, { recursive: true, force: true });
  }
});

test("inside the lab the calibration finds a KVM fast enough for direct guests", async () => {
  const script = `(async () => {
    const { calibrate } = await import('file://${LAB_PROJECT_DIR}/dist/src/lab/placement.js');
    console.log('VERDICT ' + JSON.stringify(await calibrate()));
  })().catch((e) => { console.error(e); process.exit(1); });`;
  const out = new PassThrough();
  let text = '';
  out.on('data', (c: Buffer) => { text += c.toString(); });
  const result = await labExec(['node', '-e', script], { stdout: out, stderr: out, timeoutSeconds: 300 });
  assert.equal(result.exitCode, 0, text);
  const m = /VERDICT (\{.*\})/.exec(text);
  assert.ok(m, text);
  const verdict = JSON.parse(m[1]!) as { placement: string; reason: string };
  assert.equal(verdict.placement, 'direct', verdict.reason);
});
