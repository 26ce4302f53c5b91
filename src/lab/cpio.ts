// A writer for the "newc" cpio format (the one the Linux kernel unpacks as an initramfs).
// Each entry is a 110-byte ASCII header of hexadecimal fields, the NUL-terminated name and
// the data, with name and data each padded to a 4-byte boundary; the archive ends with the
// entry named "TRAILER!!!". The kernel accepts several archives one after another, which is
// how a test script gets added to a prebuilt initrd without rebuilding it.
import { closeSync, lstatSync, openSync, readFileSync, readlinkSync, readdirSync, writeSync } from 'node:fs';
import { join } from 'node:path';

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const TRAILER = 'TRAILER!!!';

export type CpioSink = (chunk: Uint8Array) => void;

/** Streams entries to a sink; call finish() once to write the trailer. */
export class CpioWriter {
  private inode = 1;
  private written = 0;
  private finished = false;
  private readonly dirs = new Set<string>();

  constructor(private readonly sink: CpioSink) {}

  /** Bytes written so far. */
  get size(): number {
    return this.written;
  }

  /** A directory; its parents are added first when missing. */
  directory(path: string, mode = 0o755): void {
    const name = normalize(path);
    if (name === '' || this.dirs.has(name)) return;
    this.parents(name);
    this.dirs.add(name);
    this.entry(name, S_IFDIR | (mode & 0o7777), new Uint8Array(0), 2);
  }

  file(path: string, data: Uint8Array | string, mode = 0o644): void {
    const name = normalize(path);
    this.parents(name);
    const bytes = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    this.entry(name, S_IFREG | (mode & 0o7777), bytes, 1);
  }

  /** A device node, e.g. /dev/console (character device 5:1) so init has a console before devtmpfs. */
  charDevice(path: string, major: number, minor: number, mode = 0o600): void {
    const name = normalize(path);
    this.parents(name);
    this.entry(name, S_IFCHR | (mode & 0o7777), new Uint8Array(0), 1, false, [major, minor]);
  }

  symlink(path: string, target: string): void {
    const name = normalize(path);
    this.parents(name);
    this.entry(name, S_IFLNK | 0o777, Buffer.from(target, 'utf8'), 1);
  }

  /** Copies a file, symlink or whole directory tree from the host into the archive at `path`. */
  copyFromHost(hostPath: string, path: string): void {
    const st = lstatSync(hostPath);
    if (st.isSymbolicLink()) this.symlink(path, readlinkSync(hostPath));
    else if (st.isDirectory()) {
      this.directory(path, st.mode);
      for (const child of readdirSync(hostPath).sort()) this.copyFromHost(join(hostPath, child), `${normalize(path)}/${child}`);
    } else if (st.isFile()) this.file(path, readFileSync(hostPath), st.mode);
    else throw new Error(`cpio: ${hostPath} is neither a file, a directory nor a symlink`);
  }

  finish(): void {
    if (this.finished) throw new Error('cpio: archive already finished');
    this.entry(TRAILER, 0, new Uint8Array(0), 1, true);
    this.finished = true;
  }

  private parents(name: string): void {
    const parts = name.split('/');
    for (let i = 1; i < parts.length; i++) this.directory(parts.slice(0, i).join('/'));
  }

  private entry(name: string, mode: number, data: Uint8Array, nlink: number, trailer = false, rdev: [number, number] = [0, 0]): void {
    if (this.finished) throw new Error(`cpio: cannot add ${name} after the trailer`);
    const nameBytes = Buffer.from(name + '\0', 'utf8');
    const fields = [
      trailer ? 0 : this.inode++, mode, 0 /* uid */, 0 /* gid */, nlink, 0 /* mtime: reproducible */,
      data.length, 0, 0 /* dev major/minor */, rdev[0], rdev[1], nameBytes.length, 0 /* checksum */,
    ];
    const header = '070701' + fields.map((v) => hex8(v)).join('');
    this.put(Buffer.from(header, 'ascii'));
    this.put(nameBytes);
    this.pad();
    if (data.length > 0) this.put(data);
    this.pad();
  }

  private put(bytes: Uint8Array): void {
    this.sink(bytes);
    this.written += bytes.length;
  }

  private pad(): void {
    const rest = (4 - (this.written % 4)) % 4;
    if (rest > 0) this.put(new Uint8Array(rest));
  }
}

function hex8(value: number): string {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new Error(`cpio: field value ${value} does not fit 32 bits`);
  return value.toString(16).padStart(8, '0');
}

function normalize(path: string): string {
  const name = path.replace(/^\/+/, '').replace(/\/+$/, '');
  if (name.split('/').some((p) => p === '..')) throw new Error(`cpio: path ${path} leaves the archive root`);
  return name;
}

/** Builds a whole archive in memory (for small archives such as test overlays). */
export function cpioArchive(build: (writer: CpioWriter) => void): Buffer {
  const chunks: Uint8Array[] = [];
  const writer = new CpioWriter((c) => chunks.push(Buffer.from(c)));
  build(writer);
  writer.finish();
  return Buffer.concat(chunks);
}

/** Streams an archive into a file (for large archives: nothing is held in memory). */
export function writeCpioFile(path: string, build: (writer: CpioWriter) => void): number {
  const fd = openSync(path, 'w');
  try {
    const writer = new CpioWriter((c) => { writeSync(fd, c); });
    build(writer);
    writer.finish();
    return writer.size;
  } finally {
    closeSync(fd);
  }
}
