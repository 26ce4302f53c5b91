// Where a host file has holes. qemu asks the file under a qcow2 image too: a data cluster whose
// host range is a hole (preallocation=metadata) reads as zeroes, and map/measure report it so.
import { openSync, closeSync } from 'node:fs';
import koffi from 'koffi';

const SEEK_DATA = 3;
const SEEK_HOLE = 4;

let lseekC: ((fd: number, offset: bigint, whence: number) => bigint) | undefined;

const ENXIO = 6;

/**
 * lseek(2); -1n when there is no data (SEEK_DATA) at or after offset (ENXIO), and -2n when
 * the call failed otherwise: then nothing is known, and the caller must assume data.
 */
function lseek(fd: number, offset: bigint, whence: number): bigint {
  if (!lseekC) {
    const fn = koffi.load('libc.so.6').func('int64_t lseek(int fd, int64_t offset, int whence)');
    lseekC = (f, o, w) => BigInt(fn(f, o, w) as number | bigint);
  }
  const r = lseekC(fd, offset, whence);
  return r >= 0n ? r : koffi.errno() === ENXIO ? -1n : -2n;
}

/** An open host file answering "is [offset, offset+length) a hole, and up to where?". */
export class HostHoles {
  private readonly fd: number;
  constructor(filename: string) {
    this.fd = openSync(filename, 'r');
  }

  /** Length of the leading run of [offset, offset+length) that is all hole (zero) or all data. */
  probe(offset: bigint, length: bigint): { hole: boolean; length: bigint } {
    const end = offset + length;
    const data = lseek(this.fd, offset, SEEK_DATA);
    if (data === -2n) return { hole: false, length }; // the file system cannot tell: read it
    if (data < 0n) return { hole: true, length }; // no data from here to the end of the file
    if (data > offset) return { hole: true, length: (data < end ? data : end) - offset };
    const hole = lseek(this.fd, offset, SEEK_HOLE);
    if (hole < 0n) return { hole: false, length };
    return { hole: false, length: (hole < end ? hole : end) - offset };
  }

  close(): void {
    closeSync(this.fd);
  }
}
