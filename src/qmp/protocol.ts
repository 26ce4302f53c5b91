// The QMP wire format: message shapes, error classes, the version tsvirt reports.
import type { JsonValue } from './json-stream.js';

/**
 * tsvirt speaks the QMP dialect of QEMU 7.2 (Debian 12's QEMU, which the compatibility test
 * runs against): same greeting, negotiation, command and event shapes. Clients that branch
 * on the QEMU version therefore pick 7.2 behaviour; the package field says it is tsvirt.
 */
export const QEMU_COMPAT_VERSION = { major: 7, minor: 2, micro: 0 } as const;
export const TSVIRT_VERSION = '0.1.0';
export const QMP_PACKAGE = `tsvirt ${TSVIRT_VERSION}`;

/** QEMU's error classes (qapi ErrorClass). */
export type QmpErrorClass = 'GenericError' | 'CommandNotFound' | 'DeviceNotActive' | 'DeviceNotFound' | 'KVMMissingCap';

/** Thrown by command handlers; becomes {"error": {"class", "desc"}} on the wire. */
export class QmpError extends Error {
  constructor(readonly errorClass: QmpErrorClass, readonly desc: string) {
    super(desc);
    this.name = 'QmpError';
  }
}

export interface QmpGreeting {
  QMP: {
    version: { qemu: { micro: number; minor: number; major: number }; package: string };
    capabilities: string[];
  };
}

export interface QmpTimestamp { seconds: number; microseconds: number }

export interface QmpEventMessage {
  event: string;
  data?: { [key: string]: JsonValue };
  timestamp: QmpTimestamp;
}

export type QmpReply =
  | { return: JsonValue; id?: JsonValue }
  | { error: { class: string; desc: string }; id?: JsonValue };

/** Wall-clock time of an event, as QEMU stamps it. */
export function qmpTimestamp(nowMs = Date.now()): QmpTimestamp {
  return { seconds: Math.floor(nowMs / 1000), microseconds: (nowMs % 1000) * 1000 };
}
