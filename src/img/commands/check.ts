// `tsvirt img check`: qcow2 consistency check and repair (-r leaks|all) with qemu-img's report
// and exit status: 0 clean, 2 corruptions, 3 leaks, 1 the check itself failed, 63 no checks
// for this format.
import { checkQcow2, type CheckResult } from '../../block/qcow2/check.js';
import { probeFormat } from '../../block/probe.js';
import { ImgError, UsageError, oneLine } from '../errors.js';
import { getopt, Options } from '../getopt.js';
import type { ImgIO } from '../io.js';
import { checkFormatName } from '../open.js';
import { qemuJson } from '../qemu-json.js';
import { parseOutputFormat } from './map.js';

/** printf("%0.2f") of part/total*100: exact ties round to even, as glibc does (3.125 -> 3.12). */
export function percent(part: number, total: number): string {
  const scaled = BigInt(part) * 10000n;
  const t = BigInt(total);
  let hundredths = scaled / t;
  const twice = (scaled % t) * 2n;
  if (twice > t || (twice === t && hundredths % 2n === 1n)) hundredths += 1n;
  return `${hundredths / 100n}.${String(hundredths % 100n).padStart(2, '0')}`;
}

export function checkHuman(r: CheckResult, quiet: boolean): string {
  let out = '';
  if (r.corruptionsFixed || r.leaksFixed) {
    out += `The following inconsistencies were found and repaired:\n\n    ${r.leaksFixed} leaked clusters\n    ${r.corruptionsFixed} corruptions\n\nDouble checking the fixed image now...\n`;
  }
  if (!(r.corruptions || r.leaks || r.checkErrors)) {
    out += 'No errors were found on the image.\n';
  } else {
    if (r.corruptions) out += `\n${r.corruptions} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n`;
    if (r.leaks) out += `\n${r.leaks} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n`;
    if (r.checkErrors) out += `\n${r.checkErrors} internal errors have occurred during the check.\n`;
  }
  if (r.totalClusters !== 0 && r.allocatedClusters !== 0) {
    out += `${r.allocatedClusters}/${r.totalClusters} = ${percent(r.allocatedClusters, r.totalClusters)}% allocated, `
      + `${percent(r.fragmentedClusters, r.allocatedClusters)}% fragmented, ${percent(r.compressedClusters, r.allocatedClusters)}% compressed clusters\n`;
  }
  if (r.imageEndOffset) out += `Image end offset: ${r.imageEndOffset}\n`;
  // qemu -q silences the report but keeps the exit status.
  return quiet ? '' : out;
}

export function checkJson(r: CheckResult): string {
  const nonzero = (n: number): number | undefined => (n ? n : undefined);
  return qemuJson({
    filename: r.filename, format: r.format, 'check-errors': r.checkErrors,
    'image-end-offset': r.imageEndOffset || undefined,
    corruptions: nonzero(r.corruptions), leaks: nonzero(r.leaks),
    'corruptions-fixed': nonzero(r.corruptionsFixed), 'leaks-fixed': nonzero(r.leaksFixed),
    'total-clusters': r.totalClusters || undefined, 'allocated-clusters': r.allocatedClusters || undefined,
    'fragmented-clusters': nonzero(r.fragmentedClusters), 'compressed-clusters': nonzero(r.compressedClusters),
  }) + '\n';
}

/** A referenced cluster with refcount 0: only a rebuild of the refcount structure repairs it. */
const needsRebuild = (r: CheckResult): boolean => r.messages.some((m) => /refcount=0 reference=[1-9]/.test(m));

export async function check(argv: string[], io: ImgIO): Promise<number> {
  const { options, operands } = getopt(argv, {
    short: 'hf:r:T:qU',
    long: { help: { arg: false, alias: 'h' }, output: { arg: true }, repair: { arg: true, alias: 'r' }, 'force-share': { arg: false, alias: 'U' }, object: { arg: true }, 'image-opts': { arg: false } },
  });
  const opts = new Options(options);
  const output = parseOutputFormat(opts.get('output'));
  const repairText = opts.get('r');
  if (repairText !== undefined && repairText !== 'leaks' && repairText !== 'all') {
    throw new UsageError(`Unknown option value for -r (expecting 'leaks' or 'all'): ${repairText}`);
  }
  const repair = repairText as 'leaks' | 'all' | undefined;
  if (operands.length !== 1) throw new UsageError('Expecting one image file name');
  const filename = operands[0]!;
  checkFormatName(filename, opts.get('f'));
  let format: string;
  try {
    format = opts.get('f') ?? (await probeFormat(filename));
  } catch (err) {
    throw new ImgError(`Could not open '${filename}': ${oneLine(err).replace(`${filename}: `, '')}`);
  }
  if (format !== 'qcow2') throw new ImgError(`${filename}: This image format does not support checks`, 63);
  let result: CheckResult;
  try {
    if (repair === 'leaks') {
      // Like qemu: refcounts that must be rebuilt cannot be fixed by a leaks-only repair, and
      // the image is then left untouched.
      const dry = await checkQcow2(filename);
      if (needsRebuild(dry)) {
        for (const m of dry.messages) io.err(`${m}\n`);
        io.err('ERROR need to rebuild refcount structures\n');
        throw new ImgError(`${filename}: Check failed: refcount structures need a rebuild (use -r all)`);
      }
    }
    result = await checkQcow2(filename, repair ? { repair } : {});
  } catch (err) {
    if (err instanceof ImgError) throw err;
    const reason = oneLine(err);
    throw new ImgError(reason.startsWith(`${filename}: `) ? reason : `${filename}: ${reason}`);
  }
  for (const m of result.messages) io.err(`${m}\n`);
  if (output === 'json') io.out(checkJson(result));
  else io.out(checkHuman(result, opts.has('q')));
  if (result.checkErrors) throw new ImgError(`${filename}: Check failed`);
  if (result.corruptions) return 2;
  if (result.leaks) return 3;
  return 0;
}
