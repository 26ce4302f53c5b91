// Child process for the crash test: writes to a qcow2 image forever with a seeded sequence
// of operations, printing "start N" before operation N and "flushed N" once everything up
// to N is flushed. The parent kills it with SIGKILL at some point.
import { openImage, createSnapshot, deleteSnapshot, listSnapshots, type Qcow2Image } from '../../../src/block/index.js';
import { crashOps } from './crash-ops.js';

const [file, seedText] = process.argv.slice(2);
const img = (await openImage(file)) as Qcow2Image;
let i = 0;
for (const op of crashOps(Number(seedText), Number(img.size()))) {
  process.stdout.write(`start ${i}\n`);
  if (op.kind === 'write') await img.writev(BigInt(op.offset), [op.data]);
  else if (op.kind === 'zero') await img.writeZeroes(BigInt(op.offset), BigInt(op.length), { mayUnmap: op.unmap });
  else if (op.kind === 'discard') await img.discard(BigInt(op.offset), BigInt(op.length));
  else {
    await createSnapshot(img, `s${seedText}-${i}`);
    const all = await listSnapshots(img);
    if (all.length > 3) await deleteSnapshot(img, all[0].id);
  }
  if (i % 3 === 2) {
    await img.flush();
    process.stdout.write(`flushed ${i}\n`);
  }
  i++;
}
