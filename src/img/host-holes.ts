// Where a host file has holes. qemu asks the file under a qcow2 image too: a data cluster whose
// host range is a hole (preallocation=metadata) reads as zeroes, and map/measure report it so.
import { openSync, closeSync } from 'node:fs';
import { seekDataOrHole } from '../kvm/libc.js';

/** An open host file answering "is [offset, offset+length) a hole, and up to where?". */
export class HostHoles {
  private readonly fd: number;
  constructor(filename: string) {
    this.fd = openSync(filename, 'r');
  }

  /** Length of the leading run of [offset, offset+length) that is all hole (zero) or all data. */
  probe(offset: bigint, length: bigint): { hole: boolean; length: bigint } {
    const end = offset + length;
    const data = seekDataOrHole(this.fd, offset, 'data');
    if (data === -2n) return { hole: false, length }; // the file system cannot tell: read it
    if (data < 0n) return { hole: true, length }; // no data from here to the end of the file
    if (data > offset) return { hole: true, length: (data < end ? data : end) - offset };
    const hole = seekDataOrHole(this.fd, offset, 'hole');
    if (hole < 0n) return { hole: false, length };
    return { hole: false, length: (hole < end ? hole : end) - offset };
  }

  close(): void {
    closeSync(this.fd);
  }
}
