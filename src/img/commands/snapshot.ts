// `tsvirt img snapshot`: list (-l, the default), create (-c), apply (-a) and delete (-d)
// internal qcow2 snapshots.
import { applyQcow2Snapshot, createQcow2Snapshot, deleteQcow2Snapshot, listQcow2Snapshots } from '../../block/qcow2/api.js';
import { probeFormat } from '../../block/probe.js';
import { ImgError, UsageError, oneLine } from '../errors.js';
import { getopt } from '../getopt.js';
import type { ImgIO } from '../io.js';
import { SNAPSHOT_HEADER, snapshotRow } from '../info.js';
import { checkFormatName } from '../open.js';

export async function snapshot(argv: string[], io: ImgIO): Promise<number> {
  const { options, operands } = getopt(argv, {
    short: 'la:c:d:f:hqU',
    long: { help: { arg: false, alias: 'h' }, 'force-share': { arg: false, alias: 'U' }, object: { arg: true }, 'image-opts': { arg: false } },
  });
  const actions = options.filter((o) => ['l', 'a', 'c', 'd'].includes(o.name));
  if (actions.length > 1) throw new UsageError("Cannot mix '-l', '-a', '-c', '-d'");
  if (operands.length !== 1) throw new UsageError('Expecting one image file name');
  const filename = operands[0]!;
  const format = options.find((o) => o.name === 'f')?.value;
  checkFormatName(filename, format);
  const action = actions[0] ?? { name: 'l', value: undefined };
  const name = action.value ?? '';
  const verb = { l: 'list snapshots of', a: 'apply snapshot', c: 'create snapshot', d: 'delete snapshot' }[action.name]!;
  let actual: string;
  try {
    actual = format ?? (await probeFormat(filename));
  } catch (err) {
    throw new ImgError(`Could not open '${filename}': ${oneLine(err).replace(`${filename}: `, '')}`);
  }
  const what = action.name === 'l' ? `Could not ${verb} '${filename}'` : `Could not ${verb} '${name}'`;
  if (actual !== 'qcow2') throw new ImgError(`${what}: ${filename}: snapshots need the qcow2 format`);
  try {
    switch (action.name) {
      case 'l': {
        const list = await listQcow2Snapshots(filename);
        if (list.length > 0) io.out(['Snapshot list:', SNAPSHOT_HEADER, ...list.map((s) => snapshotRow(s))].join('\n') + '\n');
        break;
      }
      case 'c':
        await createQcow2Snapshot(filename, name);
        break;
      case 'a':
        await applyQcow2Snapshot(filename, name);
        break;
      case 'd':
        await deleteQcow2Snapshot(filename, name);
        break;
    }
  } catch (err) {
    const reason = oneLine(err);
    throw new ImgError(`${what}: ${reason.startsWith(filename) ? reason : `${filename}: ${reason}`}`);
  }
  return 0;
}
