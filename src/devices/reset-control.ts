// The PCI reset control register at port 0xCF9 (Intel chipsets; also the FADT's ACPI reset
// register on our machine). Writing a value with RST_CPU (bit 2) set resets the machine;
// `reboot=pci` and the ACPI reset path in Linux use it.

export const RESET_CONTROL_PORT = 0xcf9;
export const RST_SYS = 0x02;
export const RST_CPU = 0x04;

export class ResetControl {
  private value = 0;

  constructor(private readonly onReset: () => void) {}

  read(_offset: bigint | number, data: Uint8Array): void {
    data.fill(0);
    data[0] = this.value;
  }

  write(_offset: bigint | number, data: Uint8Array): void {
    const v = data[0] ?? 0;
    this.value = v & RST_SYS; // only SYS_RST is remembered; RST_CPU is a trigger
    if (v & RST_CPU) this.onReset();
  }

  reset(): void {
    this.value = 0;
  }
}
