// The ACPI MCFG table that tells the guest where ECAM lives. The arch layer's table builder
// places it in the XSDT; this module only knows its byte layout.

export interface McfgOptions {
  ecamBase: bigint;
  startBus?: number;
  endBus?: number;
  oemId?: string;
  oemTableId?: string;
}

export function buildMcfgTable(options: McfgOptions): Uint8Array {
  const length = 36 + 8 + 16;
  const table = new Uint8Array(length);
  const dv = new DataView(table.buffer);
  const ascii = (text: string, offset: number, width: number): void => {
    for (let i = 0; i < width; i++) table[offset + i] = i < text.length ? text.charCodeAt(i) : 0x20;
  };
  ascii('MCFG', 0, 4);
  dv.setUint32(4, length, true);
  table[8] = 1;
  ascii(options.oemId ?? 'TSVIRT', 10, 6);
  ascii(options.oemTableId ?? 'TSVIRTPC', 16, 8);
  dv.setUint32(24, 1, true);
  ascii('TSVT', 28, 4);
  dv.setUint32(32, 1, true);
  dv.setBigUint64(44, options.ecamBase, true);
  dv.setUint16(52, 0, true);
  table[54] = options.startBus ?? 0;
  table[55] = options.endBus ?? 0;
  let sum = 0;
  for (const b of table) sum = (sum + b) & 0xff;
  table[9] = (0x100 - sum) & 0xff;
  return table;
}
